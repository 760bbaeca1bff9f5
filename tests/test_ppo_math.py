"""PPO arithmetic against plain per-sequence reference computations on random ragged batches."""

from __future__ import annotations

import math

import pytest
import torch

from medo1.rl import ppo_math


def ragged_batch(seed: int, batch: int = 5, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    lengths = [length, 1, 4, 0, 7][:batch]
    mask = torch.zeros(batch, length)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    tensors = {name: torch.randn(batch, length, generator=gen) for name in ("a", "b", "c", "d")}
    return lengths, mask, tensors, gen


def flat(values, lengths):
    return [float(values[row, t]) for row, n in enumerate(lengths) for t in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_mean_var_whiten_match_plain_statistics(seed):
    lengths, mask, t, _ = ragged_batch(seed)
    xs = flat(t["a"], lengths)
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    assert float(ppo_math.masked_mean(t["a"], mask)) == pytest.approx(mean, abs=1e-6)
    assert float(ppo_math.masked_var(t["a"], mask)) == pytest.approx(var, abs=1e-5)
    white = ppo_math.masked_whiten(t["a"], mask)
    expected = [(x - mean) / math.sqrt(var + 1e-8) for x in xs]
    assert flat(white, lengths) == pytest.approx(expected, abs=1e-5)
    assert float((white * (1 - mask)).abs().sum()) == 0.0  # padding stays zero
    kept = ppo_math.masked_whiten(t["a"], mask, shift_mean=False)
    assert flat(kept, lengths) == pytest.approx([e + mean for e in expected], abs=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_kl_penalty_and_score_on_last_token(seed):
    lengths, mask, t, gen = ragged_batch(seed)
    scores = torch.randn(len(lengths), generator=gen)
    rewards, kl = ppo_math.kl_penalized_rewards(scores, t["a"], t["b"], mask, kl_coef=0.03)
    for row, n in enumerate(lengths):
        for step in range(t["a"].size(1)):
            expected_kl = float(t["a"][row, step] - t["b"][row, step]) if step < n else 0.0
            expected = -0.03 * expected_kl + (float(scores[row]) if step == n - 1 else 0.0)
            assert float(kl[row, step]) == pytest.approx(expected_kl, abs=1e-6)
            assert float(rewards[row, step]) == pytest.approx(expected, abs=1e-6)


def reference_gae(rewards, values, n, gamma, lam):
    advantages = [0.0] * n
    running = 0.0
    for step in reversed(range(n)):
        next_value = values[step + 1] if step + 1 < n else 0.0
        delta = rewards[step] + gamma * next_value - values[step]
        running = delta + gamma * lam * running
        advantages[step] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_gae_matches_a_per_sequence_loop(gamma, lam):
    lengths, mask, t, _ = ragged_batch(7)
    advantages, returns = ppo_math.generalized_advantages(t["a"], t["b"], mask, gamma, lam)
    for row, n in enumerate(lengths):
        exp_adv, exp_ret = reference_gae(t["a"][row, :n].tolist(), t["b"][row, :n].tolist(), n, gamma, lam)
        assert advantages[row, :n].tolist() == pytest.approx(exp_adv, abs=1e-5)
        assert returns[row, :n].tolist() == pytest.approx(exp_ret, abs=1e-5)
        assert float(advantages[row, n:].abs().sum() + returns[row, n:].abs().sum()) == 0.0


def test_gae_with_lambda_one_is_monte_carlo_return_minus_value():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 5.0 is padding and must be ignored
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    advantages, returns = ppo_math.generalized_advantages(rewards, values, mask, 1.0, 1.0)
    assert returns[0, :3].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert advantages[0, :3].tolist() == pytest.approx([0.8, 0.6, 0.4])


@pytest.mark.parametrize("seed", [0, 5])
def test_clipped_policy_loss_matches_reference(seed):
    lengths, mask, t, _ = ragged_batch(seed)
    old, new, adv = t["a"], t["a"] + 0.4 * t["b"], t["c"]
    loss, stats = ppo_math.clipped_policy_loss(new, old, adv, mask, clip=0.2)
    terms, clipped, kls = [], [], []
    for row, n in enumerate(lengths):
        for step in range(n):
            ratio = math.exp(float(new[row, step] - old[row, step]))
            a = float(adv[row, step])
            unclipped, clipped_term = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
            terms.append(max(unclipped, clipped_term))
            clipped.append(1.0 if clipped_term > unclipped else 0.0)
            kls.append(0.5 * float(new[row, step] - old[row, step]) ** 2)
    assert float(loss) == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert float(stats["clip_fraction"]) == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert float(stats["approx_kl"]) == pytest.approx(sum(kls) / len(kls), abs=1e-6)
    assert 0.0 < float(stats["clip_fraction"]) < 1.0


@pytest.mark.parametrize("seed", [0, 5])
def test_clipped_value_loss_matches_reference(seed):
    lengths, mask, t, _ = ragged_batch(seed)
    old, new, returns = t["a"], t["a"] + t["b"], t["c"]
    loss, stats = ppo_math.clipped_value_loss(new, old, returns, mask, clip=0.2)
    terms, clipped = [], []
    for row, n in enumerate(lengths):
        for step in range(n):
            v, v_old, r = float(new[row, step]), float(old[row, step]), float(returns[row, step])
            v_clip = v_old + min(max(v - v_old, -0.2), 0.2)
            terms.append(max((v - r) ** 2, (v_clip - r) ** 2))
            clipped.append(1.0 if (v_clip - r) ** 2 > (v - r) ** 2 else 0.0)
    assert float(loss) == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-5)
    assert float(stats["value_clip_fraction"]) == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)


def test_policy_gradient_points_toward_positive_advantages():
    logits = torch.zeros(1, 3, requires_grad=True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 0.0]])
    loss, _ = ppo_math.clipped_policy_loss(logits, old, adv, torch.ones(1, 3), clip=0.2)
    loss.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descent raises logp of the good token, lowers the bad
    assert logits.grad[0, 2] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_importance_weights_modes_match_plain_per_token_and_per_sequence_ratios(seed):
    """The modes and bounds of TRL 1.16's vllm_importance_sampling_* on a ragged batch, computed by hand."""
    lengths, mask, t, _ = ragged_batch(seed)
    trainer, sampler = t["a"], t["b"]
    for mode in ppo_math.IMPORTANCE_SAMPLING_MODES:
        weights = ppo_math.importance_weights(trainer, sampler, mask, mode, clip_max=2.0, clip_min=0.5)
        for row, n in enumerate(lengths):
            seq_ratio = math.exp(sum(float(trainer[row, k] - sampler[row, k]) for k in range(n)))
            for k in range(weights.size(1)):
                got = float(weights[row, k])
                if k >= n:
                    assert got == 0.0
                    continue
                ratio = seq_ratio if mode.startswith("sequence") else math.exp(float(trainer[row, k] - sampler[row, k]))
                if mode.endswith("truncate"):
                    expected = min(max(ratio, 0.5), 2.0)
                else:
                    expected = ratio if 0.5 <= ratio <= 2.0 else 0.0
                assert got == pytest.approx(expected, rel=1e-5), (mode, row, k)


def test_importance_weights_of_a_known_gap_and_nan_sampler_logprobs():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    trainer = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    sampler = trainer - 0.3  # the sampler gave each token 0.3 nats less
    weights = ppo_math.importance_weights(trainer, sampler, mask, "token_truncate", clip_max=3.0)
    assert weights[0, :3].tolist() == pytest.approx([math.exp(0.3)] * 3) and weights[0, 3] == 0
    assert ppo_math.importance_weights(trainer, trainer - 2.0, mask, "token_truncate", 3.0)[0, :3].tolist() == [3.0] * 3
    assert ppo_math.importance_weights(trainer, trainer - 2.0, mask, "token_mask", 3.0)[0, :3].tolist() == [0.0] * 3
    sampler[0, 1] = float("nan")  # vLLM could not score this token: no correction there, and no gap
    weights = ppo_math.importance_weights(trainer, sampler, mask, "token_truncate", clip_max=3.0)
    assert weights[0, 1] == pytest.approx(1.0)
    gap_mean, gap_max = ppo_math.logprob_gap(trainer, sampler, mask)
    assert float(gap_mean) == pytest.approx(0.3) and float(gap_max) == pytest.approx(0.3)


def test_importance_weights_scale_each_tokens_policy_loss():
    lengths, mask, t, _ = ragged_batch(3)
    old, new, advantages = t["a"], t["a"] + 0.05 * t["b"], t["c"]
    plain, _ = ppo_math.clipped_policy_loss(new, old, advantages, mask, 0.2)
    ones = ppo_math.clipped_policy_loss(new, old, advantages, mask, 0.2, weights=torch.ones_like(mask))[0]
    assert float(ones) == pytest.approx(float(plain))
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0))
    weighted, _ = ppo_math.clipped_policy_loss(new, old, advantages, mask, 0.2, weights=weights)
    ratio = torch.exp(new - old)
    per_token = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.2))
    expected = sum(float(per_token[r, k] * weights[r, k]) for r, n in enumerate(lengths) for k in range(n))
    assert float(weighted) == pytest.approx(expected / sum(lengths), rel=1e-5)
