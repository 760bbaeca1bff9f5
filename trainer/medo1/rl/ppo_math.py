"""PPO arithmetic on padded (batch, response_length) tensors with a 0/1 mask of real response tokens.

Every reduction is masked, so ragged responses padded on the right contribute only their own tokens.
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries (Bessel's correction, as a whitening estimate)."""
    count = mask.sum()
    mean = masked_mean(values, mask)
    squared = ((values - mean) ** 2 * mask).sum()
    return squared / (count - 1).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: -kl_coef * (logp - ref_logp) everywhere, plus the sequence score on its last token.

    Returns (rewards, per-token kl), both zero outside the mask.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    has_tokens = mask.sum(dim=1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, kl


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each response; the value after the last real token is 0 (the episode ends there).

    Returns (advantages, returns = advantages + values), zero outside the mask.
    """
    rewards, values = rewards * mask, values * mask
    length = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate; `weights` (importance weights of off-policy samples) scale each token's term."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    loss = masked_mean(per_token if weights is None else per_token * weights, mask)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
        "approx_kl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
    }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, {"value_clip_fraction": masked_mean((clipped_error > unclipped_error).float(), mask)}


IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def importance_weights(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_max: float | None,
    clip_min: float | None = None,
) -> torch.Tensor:
    """Importance weights of responses sampled by another engine (vLLM) than the trainer's policy.

    ratio = pi_trainer / pi_sampler of each sampled token (`token_*`) or of the whole response (`sequence_*`, one
    ratio for all its tokens); `*_truncate` clips it to [clip_min, clip_max], `*_mask` sets it to 0 outside that
    range. The modes and bounds are TRL 1.16's `vllm_importance_sampling_*` (trl/trainer/grpo_config.py,
    applied in grpo_trainer.py as a factor on each token's loss). A NaN sampler log-prob (vLLM could not score the
    token) counts as no gap. Zero outside `mask`.
    """
    if mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"importance sampling mode {mode!r}: one of {', '.join(IMPORTANCE_SAMPLING_MODES)}")
    diff = torch.nan_to_num((trainer_logprobs - sampler_logprobs) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    return ratio.expand_as(mask) * mask


def logprob_gap(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor):
    """(mean, max) of |trainer - sampler| log-prob over the response tokens, leaving out NaN sampler values."""
    gap = (trainer_logprobs - sampler_logprobs).abs()
    valid = mask.bool() & ~torch.isnan(gap)
    if not valid.any():
        zero = torch.zeros((), device=gap.device)
        return zero, zero
    return gap[valid].mean(), gap[valid].max()
