"""What every reward returns (`reward(responses, references) -> RewardOutput`), shared by the rule, verifier and judge
rewards in `medo1.rl.rewards` and `medo1.rl.judge`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class RewardOutput:
    rewards: list[float | None]
    """None: no reward (a judge's `on_failure: skip`); the response then takes no part in the update."""
    format_ok: list[bool]
    correct: list[bool]
    scores: list[float | None] = field(default_factory=list)
    """Verifier P("True") per response; None where the model was not asked (bad format, or a rule)."""
    failed: list[bool] = field(default_factory=list)
    """Judge: responses whose verdict could not be had; empty for the other rewards."""
    interrupted: bool = False
    """Judge: SIGTERM cut the scoring short (the verdicts still missing are failed); the rollout is not trained on."""

    def __len__(self) -> int:
        return len(self.rewards)


def check_lengths(responses: Sequence[str], references: Sequence[str]) -> None:
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
