"""RL stage end to end on CPU: PPO and GRPO on a toy verifiable task, resume, torchrun, export.

The toy task: every problem's reference answer is "yes". The policy is the tiny Qwen2 model after a
short SFT on the same questions answered "yes" or "no" half of the time, so it writes the
`## Thinking` / `## Final Response` format and answers right about half the time. With the
answer-match reward (1.0 right, 0.1 wrong, 0.0 bad format) the mean reward starts near 0.55; RL
must raise it. Seen when written (seed 42, lr 1e-3, 8 episodes per update): PPO 0.44, 0.18 in the
first two updates, 1.0 in each of the last four of 16; GRPO (G=8) 0.33, 0.21 first, 0.82 mean over
the last four of 16 steps.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from medo1.config import load_config
from medo1.rl import ppo as ppo_module
from medo1.rl import run_rl
from medo1.rl.config import RLConfig
from medo1.rl.engines import HFEngine, SamplerGapError, Samples, response_mask
from medo1.rl.rewards.base import RewardOutput
from medo1.training import checkpoint, preemption
from medo1.training.metrics import read_metrics
from medo1.training.run_report import build_figures
from tests.conftest import (
    QUESTION,
    free_port,
    last_logged_step,
    run_medo1,
    signal_when,
)
from tests.helpers import as_cli, rl_overrides

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ppo_run(toy_policy, toy_problems, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, out))
    return run_rl(config)


def test_ppo_raises_mean_reward_on_the_toy_task(ppo_run):
    metrics = read_metrics(ppo_run.output_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 17))
    rewards = [m["reward_mean"] for m in metrics]
    early, late = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert early < 0.75, rewards  # the warm start answers right only part of the time
    assert late >= 0.85 and late >= early + 0.2, rewards


def test_ppo_logs_the_rl_metrics(ppo_run):
    last = read_metrics(ppo_run.output_dir / "metrics.jsonl")[-1]
    for key in (
        "reward_mean",
        "format_ok_rate",
        "verifier_true_rate",
        "reward_failure_rate",
        "kl",
        "entropy",
        "clip_fraction",
        "approx_kl",
        "policy_loss",
        "value_loss",
        "response_length",
        "learning_rate",
        "grad_norm",
        "time_generation",
        "time_scoring",
        "time_training",
        "generated_tokens_per_second",
    ):
        assert key in last, key
    assert 0.0 <= last["format_ok_rate"] <= 1.0
    assert last["response_length"] < 24  # stopped at end of turn, not sampled to the length limit
    assert last["generated_tokens_per_second"] > 0


def test_ppo_export_loads_and_generates(ppo_run):
    tokenizer = AutoTokenizer.from_pretrained(ppo_run.export_dir)
    model = AutoModelForCausalLM.from_pretrained(ppo_run.export_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION.format(i=3)}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "## Final Response" in text
    assert [s for s, _ in checkpoint.list_checkpoints(ppo_run.output_dir)] == [16]


def test_ppo_kill_and_resume_matches_an_uninterrupted_run(toy_policy, toy_problems, tmp_path):
    extra = {"train.total_episodes": 48, "output.save_steps": 2, "output.keep": 2}
    reference = run_medo1(as_cli(rl_overrides(toy_policy, toy_problems, tmp_path / "reference", **extra)))
    assert reference.returncode == 0, reference.stderr[-3000:]

    crashed = tmp_path / "crashed"
    # Killed once update 3 is logged: past checkpoint-2, so the resumed run logs step 3 again.
    medo1 = [sys.executable, "-m", "medo1"]
    signal_when(
        medo1 + as_cli(rl_overrides(toy_policy, toy_problems, crashed, **extra)),
        lambda: last_logged_step(crashed / "metrics.jsonl", 3),
        signal.SIGKILL,
    )
    assert checkpoint.latest_complete(crashed) == crashed / "checkpoint-2"
    half = crashed / "checkpoint-5"  # a save cut short: no completion marker
    (half / "policy").mkdir(parents=True)
    resumed = run_medo1(as_cli(rl_overrides(toy_policy, toy_problems, crashed, **extra)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["final_step"] == 6
    steps = [m["step"] for m in read_metrics(crashed / "metrics.jsonl")]
    assert steps == list(range(1, 7))  # the killed run's entries through its checkpoint kept, none twice
    ref_metrics = {m["step"]: m["reward_mean"] for m in read_metrics(tmp_path / "reference" / "metrics.jsonl")}
    last = {m["step"]: m["reward_mean"] for m in read_metrics(crashed / "metrics.jsonl")}
    assert last == pytest.approx(ref_metrics, abs=1e-6)  # same rollouts: data order and RNG restored
    final = load_file(crashed / "export" / "model.safetensors")
    ref = load_file(tmp_path / "reference" / "export" / "model.safetensors")
    assert all(torch.allclose(final[k], ref[k], atol=1e-5) for k in ref)


def test_ppo_under_torchrun_two_processes(toy_policy, toy_problems, tmp_path):
    port = str(free_port())
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "PET_MASTER_PORT": port,
        "WORLD_SIZE": "2",
        "RANK": "0",
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
    }
    out = tmp_path / "dist"
    extra = {"train.total_episodes": 32}  # 2 ranks x 8 per update: 2 updates
    torchrun = [sys.executable, "-m", "torch.distributed.run", "-m", "medo1"]
    done = run_medo1(as_cli(rl_overrides(toy_policy, toy_problems, out, **extra)), env=env, launcher=torchrun)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoints = checkpoint.list_checkpoints(out)
    assert [s for s, _ in checkpoints] == [2]
    assert json.loads((checkpoints[0][1] / checkpoint.COMPLETE_MARKER).read_text())["world_size"] == 2
    assert (checkpoints[0][1] / "rng-rank1.pt").is_file()
    assert AutoModelForCausalLM.from_pretrained(out / "export") is not None
    assert [m["episodes"] for m in read_metrics(out / "metrics.jsonl")] == [16, 32]


def test_missing_verifier_fails_at_startup_with_a_clear_message(toy_policy, toy_problems, tmp_path):
    overrides = rl_overrides(toy_policy, toy_problems, tmp_path / "run", **{"reward.kind": "verifier"})
    overrides.append(f"reward.model={tmp_path / 'no-such-verifier'}")
    done = run_medo1(as_cli(overrides))
    assert done.returncode == 2
    assert "no-such-verifier" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_ppo_with_a_judge_reward_raises_mean_reward(toy_policy, toy_problems, tmp_path, monkeypatch):
    """The judge is the local OpenAI stand-in (a test double for a judge endpoint) answering True for "yes"."""
    from tests.judge_standin import JudgeStandIn

    monkeypatch.setenv("MEDO1_TEST_JUDGE_KEY", "judge-secret")
    with JudgeStandIn(
        api_key="judge-secret",
        faults=["429-seconds", "malformed-json"],
        retry_after_s=0.01,
        judge_latency_s=0.01,
        max_lifetime_s=1800,
    ) as standin:
        extra = {
            "reward.kind": "judge",
            "reward.base_url": standin.base_url,
            "reward.api_key_env": "MEDO1_TEST_JUDGE_KEY",
            "reward.on_failure": "score_wrong",
            "train.total_episodes": 96,
        }
        config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "judge", **extra))
        result = run_rl(config)
    metrics = read_metrics(result.output_dir / "metrics.jsonl")
    rewards = [m["reward_mean"] for m in metrics]
    assert len(rewards) == 12 and standin.prompts
    early, late = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert late >= 0.8 and late >= early + 0.2, rewards
    assert all(m["reward_failure_rate"] == 0.0 for m in metrics)


def test_grpo_through_trl_raises_mean_reward(toy_policy, toy_problems, tmp_path):
    """GRPO on the toy task: the reward rises on the training rollouts and on 4 held-out problems, scored before
    the first update and every 8 (the RL report's held-out points)."""
    # 8 completions per step = one problem x G=8; 128 episodes = 16 steps. TRL's default loss (dapo).
    extra = {
        "grpo.num_generations": 8,
        "grpo.loss_type": "dapo",
        "train.eval_fraction": 0.125,
        "train.eval_steps": 8,
    }
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "grpo", "grpo", **extra))
    result = run_rl(config)
    logged = read_metrics(result.output_dir / "metrics.jsonl")
    metrics = [m for m in logged if "reward" in m]
    rewards = [m["reward"] for m in metrics]
    assert len(rewards) == 16
    early, late = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    # Seen: 0.33, 0.21 first; 0.82 over the last four (group sampling of one problem is noisier).
    assert late >= 0.7 and late >= early + 0.3, rewards
    held_out = {m["step"]: m["eval_reward"] for m in logged if "eval_reward" in m}
    assert sorted(held_out) == [0, 8, 16], held_out
    assert held_out[16] >= held_out[0] + 0.3, held_out
    figures = dict((spec.name, figure) for spec, figure in build_figures(logged))
    lines = {line.get_gid(): list(line.get_xdata()) for line in figures["reward"].axes[0].get_lines()}
    assert lines["eval_reward"] == [0, 8, 16] and len(lines["reward"]) == 16
    last = metrics[-1]
    assert "rewards/format_ok/mean" in last and "rewards/verifier_true/mean" in last
    assert [s for s, _ in checkpoint.list_checkpoints(result.output_dir)] == [16]
    assert AutoModelForCausalLM.from_pretrained(result.export_dir) is not None
    assert AutoTokenizer.from_pretrained(result.export_dir).padding_side == "right"  # TRL's rollouts pad left


def test_rloo_through_trl_raises_mean_reward(toy_policy, toy_problems, tmp_path):
    """RLOO through TRL's RLOOTrainer on the toy task: the reward rises (the one such test for RLOO; GRPO's is
    test_grpo_through_trl_raises_mean_reward, PPO's test_ppo_raises_mean_reward_on_the_toy_task)."""
    overrides = {"rloo.num_generations": 8, "train.total_episodes": 96}  # 12 steps of one problem x 8
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "rloo", "rloo", **overrides))
    result = run_rl(config)
    args = torch.load(result.output_dir / "checkpoint-12" / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "RLOOConfig" and args.disable_dropout and args.num_generations == 8
    rewards = [m["reward"] for m in read_metrics(result.output_dir / "metrics.jsonl") if "reward" in m]
    assert len(rewards) == 12
    early, late = sum(rewards[:2]) / 2, sum(rewards[-4:]) / 4
    assert late >= 0.6 and late >= early + 0.2, rewards


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "bnpo"])
def test_each_grpo_loss_aggregation_reaches_trl_and_trains_two_steps(toy_policy, toy_problems, tmp_path, loss_type):
    """Every GRPO loss aggregation TRL offers besides its default (dapo, whose reward rise
    test_grpo_through_trl_raises_mean_reward shows) reaches GRPOTrainer and trains: two steps with a finite loss,
    checkpointed with the arguments TRL ran with."""
    overrides = {"grpo.num_generations": 8, "train.total_episodes": 16, "grpo.loss_type": loss_type}
    config = load_config(
        RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / loss_type, "grpo", **overrides)
    )
    result = run_rl(config)
    args = torch.load(result.output_dir / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "GRPOConfig" and args.loss_type == loss_type and args.num_generations == 8
    losses = [m["loss"] for m in read_metrics(result.output_dir / "metrics.jsonl") if "loss" in m]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses


def test_compact_response_logprobs_match_the_fused_head_with_ragged_responses(tiny_model):
    """The CPU path (head on the response positions only) against TRL's fused head: same log-probs,
    entropies and gradients, with left-padded prompts and responses that stop at different lengths."""
    from medo1.rl.ppo import load_policy
    from medo1.rl.rollout import encode_prompts, full_sequence, response_logprobs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    policy = load_policy(tiny_model, temperature=0.7, trainable=True)
    prompts = [
        [{"role": "user", "content": "Is fever a symptom of flu?"}],
        [{"role": "user", "content": "A longer case: 54-year-old, chest pain for two hours, sweating. Next step?"}],
    ]
    prompt = encode_prompts(tokenizer, prompts, "cpu")
    torch.manual_seed(0)
    responses = torch.randint(0, 5000, (2, 12))
    mask = torch.ones_like(responses)
    mask[0, 5:] = 0  # the first response stopped after 5 tokens
    sequence = full_sequence(prompt, responses.masked_fill(mask == 0, tokenizer.pad_token_id), mask)
    prompt_len = prompt["input_ids"].shape[1]
    results = {}
    for compact in (True, False):
        policy.zero_grad()
        logprobs, entropy = response_logprobs(policy, sequence, prompt_len, mask, 0.7, compact=compact)
        (logprobs * mask).sum().backward()
        results[compact] = (
            logprobs.detach(),
            entropy.detach(),
            {k: p.grad.clone() for k, p in policy.named_parameters()},
        )
    assert results[True][0].shape == mask.shape and results[True][0][0, 5:].abs().sum() == 0
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-5)
    for key, grad in results[False][2].items():
        torch.testing.assert_close(
            results[True][2][key], grad, rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}"
        )


# ------------------------------------------------------------------------------------------------------------------
# Samples from another engine than the trained policy (vLLM): stand-ins on the CPU


class OffsetSampler(HFEngine):
    """Stands in for vLLM: samples with HF generate on the policy and reports the sampler's log-probs of the drawn
    tokens minus a known offset per rollout (as a sampler with other kernels, or other weights, would)."""

    def __init__(self, *args, offsets: list[float]):
        super().__init__(*args)
        self.offsets, self.rollouts = offsets, 0

    def generate(self, prompt):
        out = self.sample(prompt, output_scores=True, return_dict_in_generate=True)
        responses = out.sequences[:, prompt["input_ids"].shape[1] :]
        mask = response_mask(responses, self.stop_ids)
        scores = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.scores], dim=1)
        logprobs = scores.gather(-1, responses[..., None]).squeeze(-1) * mask
        offset = self.offsets[min(self.rollouts, len(self.offsets) - 1)]
        self.rollouts += 1
        return Samples(
            responses.masked_fill(mask == 0, self.tokenizer.pad_token_id),
            mask,
            (logprobs - offset) * mask,
            weights_pushed=True,
        )


class OtherWeightsSampler(HFEngine):
    """Stands in for vLLM whose weight push failed: it samples from other weights than the policy's (here the
    model before SFT) and reports their log-probs."""

    def __init__(self, *args, weights):
        super().__init__(*args)
        self.other = ppo_module.load_policy(str(weights), self.sampling.temperature, trainable=False)

    @torch.no_grad()
    def generate(self, prompt):
        out = self.other.generate(
            **prompt, generation_config=self.generation_config(), output_scores=True, return_dict_in_generate=True
        )
        responses = out.sequences[:, prompt["input_ids"].shape[1] :]
        mask = response_mask(responses, self.stop_ids)
        scores = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.scores], dim=1)
        logprobs = scores.gather(-1, responses[..., None]).squeeze(-1) * mask
        return Samples(responses.masked_fill(mask == 0, self.tokenizer.pad_token_id), mask, logprobs, True)


def with_sampler(monkeypatch, make):
    def build_engine(config, policy, tokenizer, placement, ranks, policy_path, max_batch):
        return make(policy, tokenizer, config.sampling, placement, ranks)

    monkeypatch.setattr(ppo_module, "build_engine", build_engine)


def test_ppo_measures_corrects_and_stops_on_the_sampler_logprob_gap(toy_policy, toy_problems, tmp_path, monkeypatch):
    # Rollout 1: 0.3 nats per token below the trainer's (importance weight e^0.3); rollout 2: 1.5 below (e^1.5 = 4.5,
    # truncated to the cap 3); rollout 3: 2.5 below, over the 2.0 limit: the run stops before training on it.
    with_sampler(monkeypatch, lambda *args: OffsetSampler(*args, offsets=[0.3, 1.5, 2.5]))
    extra = {"train.total_episodes": 32, "sampling.vllm.max_logprob_gap": 2.0}
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "run", **extra))
    with pytest.raises(
        SamplerGapError,
        match=r"by 2\.5\d* nats .* at update 3 right after a weight push.*"
        r"max_logprob_gap=2",
    ):
        run_rl(config)
    first, second = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert first["sampler_logprob_gap_mean"] == pytest.approx(0.3, abs=1e-3)
    assert first["sampler_logprob_gap_max"] == pytest.approx(0.3, abs=1e-3)
    assert first["importance_weight_mean"] == pytest.approx(math.exp(0.3), rel=1e-3)
    assert first["importance_weight_clipped_fraction"] == 0.0
    assert second["sampler_logprob_gap_mean"] == pytest.approx(1.5, abs=1e-3)
    assert second["importance_weight_mean"] == pytest.approx(3.0, rel=1e-6)  # e^1.5 truncated at the cap
    assert second["importance_weight_clipped_fraction"] == 1.0


def test_ppo_stops_when_the_sampler_samples_from_other_weights(
    toy_policy, toy_problems, tiny_model, tmp_path, monkeypatch
):
    with_sampler(monkeypatch, lambda *args: OtherWeightsSampler(*args, weights=tiny_model))
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "run"))
    with pytest.raises(SamplerGapError, match=r"at update 1 right after a weight push.*failed or stale weight push"):
        run_rl(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained on those samples


def test_critic_warmup_trains_the_value_model_alone_and_the_logged_lr_is_the_steps_own(
    toy_policy, toy_problems, tmp_path
):
    # 4 updates of 2 optimizer steps (2 PPO epochs); the first 2 train the value model only. The policy's linear
    # schedule spans its 4 steps: lr, 3/4 lr, 1/2 lr, 1/4 lr; each update logs the mean rate of its own steps.
    lr = 1e-3
    extra = {
        "train.total_episodes": 32,
        "ppo.critic_warmup_updates": 2,
        "ppo.value_head_init": "zero",
        "train.lr_scheduler": "linear",
        "train.learning_rate": lr,
    }
    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "run", **extra))
    result = run_rl(config)
    metrics = read_metrics(result.output_dir / "metrics.jsonl")
    assert [m["learning_rate"] for m in metrics] == pytest.approx([0.0, 0.0, lr * 7 / 8, lr * 3 / 8])
    # The policy is still the reference when updates 2 and 3 sample (KL 0); it moved in update 3.
    assert [m["kl"] == 0.0 for m in metrics] == [True, True, True, False]
    assert all(m["grad_norm"] == 0.0 for m in metrics[:2]) and all(m["grad_norm"] > 0 for m in metrics[2:])
    assert AutoTokenizer.from_pretrained(result.export_dir).padding_side == "right"


def test_zero_value_head_option(toy_policy, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(toy_policy)
    fresh = ppo_module.load_value_model(str(toy_policy), tokenizer.pad_token_id, zero_new_head=True)
    assert all(float(p.abs().sum()) == 0.0 for p in fresh.classifier.score.parameters())
    default = ppo_module.load_value_model(str(toy_policy), tokenizer.pad_token_id)
    assert float(default.classifier.score.weight.abs().sum()) > 0
    # A checkpoint that has a trained head keeps it.
    default.classifier.save_pretrained(tmp_path / "value")
    tokenizer.save_pretrained(tmp_path / "value")
    kept = ppo_module.load_value_model(str(tmp_path / "value"), tokenizer.pad_token_id, zero_new_head=True)
    assert torch.equal(kept.classifier.score.weight, default.classifier.score.weight)


def test_a_response_without_reward_takes_no_part_in_the_update(toy_policy, toy_problems, tmp_path):
    from medo1.training.resume import open_run

    config = load_config(RLConfig, None, rl_overrides(toy_policy, toy_problems, tmp_path / "run"))
    with open_run(config, "none", "rl") as run:
        trainer = ppo_module.PPOTrainer(config, run)

    def half_skipped(texts, references):
        rewards = [None if k % 2 == 0 else 1.0 for k in range(len(texts))]
        return RewardOutput(rewards=rewards, format_ok=[True] * len(texts), correct=[r == 1.0 for r in rewards])

    trainer.reward = half_skipped
    batch = trainer.rollout(list(range(8)))
    skipped = torch.arange(8) % 2 == 0
    assert float(batch["mask"][skipped].abs().sum()) == 0.0 and float(batch["mask"][~skipped].sum()) > 0
    assert float((batch["advantages"][skipped]).abs().sum()) == 0.0
    assert float(batch["stats"]["reward_mean"]) == 1.0  # over the rewarded responses only


class HangingJudge:
    """The judge stand-in answering until the run has logged its first update, then never again (an endpoint that
    accepts connections and hangs)."""

    def __init__(self, standin_class, metrics, **kwargs):
        judge = self

        class Standin(standin_class):
            def _answer_mcq(self, request):
                if metrics.exists():
                    with self.lock:
                        judge.hanging += 1
                    while not self._stopped:
                        time.sleep(0.1)
                    return 503, {}, {"error": {"message": "shutting down"}}
                return super()._answer_mcq(request)

        self.hanging = 0
        self.standin = Standin(**kwargs)


def test_sigterm_while_the_judge_never_answers_checkpoints_and_exits_at_once(toy_policy, toy_problems, tmp_path):
    """Issue 28: a judge that never answers kept the run stepping for ~10 minutes after SIGTERM (6 attempts x 120 s).
    With the judge's own defaults (120 s per attempt, 5 retries) the run now exits within seconds, with the
    checkpoint of its last finished update."""
    from tests.judge_standin import JudgeStandIn

    out = tmp_path / "run"
    judge = HangingJudge(JudgeStandIn, out / "metrics.jsonl", api_key="judge-secret", max_lifetime_s=900)
    signalled = {}

    def hanging():
        if judge.hanging:
            signalled["at"] = time.monotonic()
            return judge.hanging
        return None

    with judge.standin as standin:
        extra = {
            "reward.kind": "judge",
            "reward.base_url": standin.base_url,
            "reward.model": "judge",
            "reward.api_key_env": "MEDO1_TEST_JUDGE_KEY",
            "train.total_episodes": 32,
        }
        code, _, stderr = signal_when(
            [sys.executable, "-m", "medo1", *as_cli(rl_overrides(toy_policy, toy_problems, out, **extra))],
            hanging,
            signal.SIGTERM,
            env={"MEDO1_TEST_JUDGE_KEY": "judge-secret"},
            timeout=600,
        )
        exited_after = time.monotonic() - signalled["at"]
    assert code == preemption.PREEMPTED_EXIT_CODE, stderr
    assert exited_after < 60, exited_after  # not one 120 s attempt waited out, let alone 6
    assert "SIGTERM while the reward was being scored" in stderr
    assert checkpoint.latest_complete(out) == out / "checkpoint-1"
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1]
