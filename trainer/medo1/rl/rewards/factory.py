"""A reward from its recipe section (`build_reward`), and any reward as TRL's reward functions (`trl_reward_funcs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from medo1.rl.rewards.answer_match import AnswerMatchReward
from medo1.rl.rewards.base import Reward, RewardOutput
from medo1.rl.rewards.config import AnswerMatchRewardConfig, JudgeRewardConfig, VerifierRewardConfig
from medo1.rl.rewards.verifier import VerifierReward


def build_reward(
    config: VerifierRewardConfig | AnswerMatchRewardConfig | JudgeRewardConfig, device: str | torch.device = "cpu"
) -> Reward:
    if isinstance(config, VerifierRewardConfig):
        return VerifierReward(config, device=device)
    if isinstance(config, AnswerMatchRewardConfig):
        return AnswerMatchReward(config)
    if isinstance(config, JudgeRewardConfig):
        from medo1.rl.rewards.judge import JudgeReward

        return JudgeReward(config)
    raise TypeError(f"unknown reward config {type(config).__name__}")


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content or ""
    if isinstance(completion, dict):
        return completion.get("content", "") or ""
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def trl_reward_funcs(reward: Reward) -> list[Callable[..., list[float]]]:
    """Reward functions for TRL's GRPOTrainer (the dataset needs a `reference` column).

    The first returns the reward; the others return the format-ok, correct and (judge) failed flags
    as 0/1 so that, weighted 0, TRL logs their rates. All share one scoring per batch. A completion
    without a reward is None in all four (so a skipped judge verdict is not in `reward_failed`'s rate
    under TRL: the judge's own warnings count those).
    """
    last: dict[str, Any] = {"key": None, "output": None}

    def score(completions: list[Any], reference: list[str]) -> RewardOutput:
        texts = [_completion_text(c) for c in completions]
        key = (tuple(texts), tuple(reference))
        if last["key"] != key:
            last["key"], last["output"] = key, reward(texts, list(reference))
        return last["output"]

    def column(values: list, output: RewardOutput) -> list[float | None]:
        # A completion without a reward is None in every column: TRL then counts it unscorable (advantage 0, left
        # out of the group baseline and of the logged means; grpo_trainer.py / rloo_trainer.py).
        return [None if r is None else float(v) for r, v in zip(output.rewards, values)]

    def reward_func(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.rewards, output)

    def format_ok(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.format_ok, output)

    def correct(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.correct, output)

    def failed(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.failed or [False] * len(output), output)

    funcs = [reward_func, format_ok, correct, failed]
    for func, name in zip(funcs, (reward.name, "format_ok", "verifier_true", "reward_failed")):
        func.__name__ = func.__qualname__ = name
    return funcs
