"""What every reward returns (`reward(responses, references) -> RewardOutput`) and the one rule that turns a format
check and a verdict into a reward, shared by the verifier, answer-match and judge rewards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from medo1.rl.rewards.config import RewardValues


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


Reward = Callable[[Sequence[str], Sequence[str]], RewardOutput]


def check_lengths(responses: Sequence[str], references: Sequence[str]) -> None:
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")


def published_rewards(
    values: RewardValues, format_ok: Sequence[bool], correct: Sequence[bool], no_verdict: Sequence[bool] = ()
) -> list[float | None]:
    """The published HuatuoGPT-o1 rule (its RL stage's reward function): a response that breaks the format gets
    `reward_bad_format` whatever its answer; a well-formed one `reward_correct` or `reward_wrong`; one left without a
    verdict (`no_verdict`: a judge's skipped or interrupted call) gets None."""
    unscored = list(no_verdict) or [False] * len(format_ok)
    return [
        values.reward_bad_format
        if not ok_format
        else None
        if missing
        else values.reward_correct
        if ok
        else values.reward_wrong
        for ok_format, ok, missing in zip(format_ok, correct, unscored, strict=True)
    ]
