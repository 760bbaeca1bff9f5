"""PPO with a value model and a verifier reward, as in the HuatuoGPT-o1 recipe.

TRL no longer ships PPO, so the loop is ours. The models are placed by `train.distributed`
(`medo1.rl.sharding`: DDP, FSDP2 or DeepSpeed ZeRO-3), responses are sampled by `sampling.engine`
(`medo1.rl.engines`: HF `generate` or colocated vLLM, both stopping at end of turn), and log-probs come
from TRL's fused LM head. One update: sample a rollout batch per rank, score it (reward, reference and
value passes), compute KL-penalised rewards, GAE and whitened advantages, then `ppo_epochs` passes of
clipped policy and value losses over `num_mini_batches` mini-batches of `per_device_batch_size`
micro-batches; policy and value each have their own optimizer and gradient clipping.

Samples from vLLM come with the sampler's log-probs: their gap to the trainer's is logged, weights each token's
policy loss (truncated importance sampling, `sampling.vllm.importance_sampling`) and stops the run when it shows
that vLLM samples from other weights (`sampling.vllm.max_logprob_gap`). A sample without a reward (a judge's
`on_failure: skip`) takes no part in the update. For the first `ppo.critic_warmup_updates` rollout batches only
the value model trains.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    get_scheduler,
    set_seed,
)
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

from medo1.atomic import new_dir, replace_dir
from medo1.config import dump_config
from medo1.models import load_tokenizer, write_export_extras
from medo1.rl import ppo_math
from medo1.rl.config import RLConfig
from medo1.rl.engines import SamplerGapError, build_engine, require_vllm
from medo1.rl.rewards.factory import build_reward
from medo1.rl.rollout import (
    TokenValueModel,
    encode_prompts,
    episode_indices,
    full_sequence,
    load_problems,
    pad_right_for_export,
    response_logprobs,
    response_values,
)
from medo1.rl.sharding import build_placement, init_ranks, require_backend
from medo1.training import checkpoint, preemption
from medo1.training.metrics import append_jsonl, keep_metrics_through
from medo1.training.resume import RunStart, open_run

log = logging.getLogger(__name__)


@dataclass
class RLResult:
    output_dir: Path
    final_step: int
    export_dir: Path | None
    already_finished: bool = False
    """The run had finished before: nothing was trained or written."""


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off, as TRL does for every model it trains against: with dropout the log-probs and values of
    the training passes would be noisy copies of the rollout's, and the PPO ratio would not start at 1."""
    disable_dropout_in_model(model)  # the nn.Dropout modules
    for module in model.modules():
        # transformers attention modules apply `self.attention_dropout` (a float) themselves in training mode.
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def load_policy(path: str, temperature: float, trainable: bool):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    disable_dropout(model)
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def load_value_model(path: str, pad_token_id: int, zero_new_head: bool = False) -> TokenValueModel:
    """The value model; with `zero_new_head`, a score head that the checkpoint lacks starts at zero."""
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=torch.float32, output_loading_info=True
    )
    classifier.config.pad_token_id = pad_token_id
    disable_dropout(classifier)
    if zero_new_head and any(key.startswith("score.") for key in info.get("missing_keys") or []):
        with torch.no_grad():
            for parameter in classifier.score.parameters():
                parameter.zero_()
    return TokenValueModel(classifier)


class RolloutInterrupted(Exception):
    """SIGTERM arrived while a remote reward (a judge) was scoring: the rollout cannot be trained on."""


def micro_batches(indices: torch.Tensor, size: int):
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def epoch_orders(seed: int, update: int, size: int, epochs: int) -> list[torch.Tensor]:
    """The order of a rollout batch in each PPO epoch of one update: a new shuffle every update and epoch, the
    same on every rank and after a resume, as it depends only on `train.seed` and the update number."""
    update_seed = int(np.random.SeedSequence([seed, update]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(update_seed)
    return [torch.randperm(size, generator=generator) for _ in range(epochs)]


class PPOTrainer:
    def __init__(self, config: RLConfig, run: RunStart):
        self.config = config
        self.run = run
        self.output_dir = run.output_dir
        self.ranks = init_ranks()
        self.is_main = self.ranks.is_main
        self.resume_from = run.resume_from
        set_seed(config.train.seed + self.ranks.rank)
        device = self.ranks.device
        # The reward loads first: a verifier that cannot load fails here, before any model is built; and it
        # stays whole on every rank, so it must load before ZeRO-3 starts partitioning models as they load.
        self.reward = build_reward(config.reward, device=device)
        self.tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
        self.problems, self.data_report = load_problems(config, self.output_dir, self.is_main)
        if self.is_main:
            dump_config(config, self.output_dir / "config.yaml")

        train, ppo = config.train, config.ppo
        self.per_rank_batch = train.per_device_batch_size * train.gradient_accumulation_steps
        self.total_updates = max(1, train.total_episodes // (self.per_rank_batch * self.ranks.world))
        steps_per_update = ppo.ppo_epochs * ppo.num_mini_batches
        self.warmup_updates = min(ppo.critic_warmup_updates, self.total_updates)
        self.placement = build_placement(
            train, self.ranks, train.gradient_accumulation_steps // ppo.num_mini_batches, config.model.name_or_path
        )

        policy_path = str(self.resume_from / "policy") if self.resume_from else config.model.name_or_path
        value_path = (
            str(self.resume_from / "value") if self.resume_from else (ppo.value_model or config.model.name_or_path)
        )
        make_optimizer = functools.partial(torch.optim.AdamW, lr=train.learning_rate, weight_decay=train.weight_decay)

        def make_scheduler(optimizer, updates: int):
            steps = max(1, updates * steps_per_update)
            return get_scheduler(
                train.lr_scheduler,
                optimizer,
                num_warmup_steps=math.ceil(train.warmup_ratio * steps),
                num_training_steps=steps,
            )

        temperature = self.temperature = config.sampling.temperature
        # One model at a time, each placed before the next loads: under FSDP a model is whole in host memory
        # only until it is sharded.
        policy = load_policy(policy_path, temperature, trainable=True)
        value = load_value_model(value_path, self.tokenizer.pad_token_id, zero_new_head=ppo.value_head_init == "zero")
        if config.model.gradient_checkpointing:
            for model in (policy, value.classifier):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The policy's schedule spans the updates after the critic warm-up; the value model's, every update.
        policy_updates = self.total_updates - self.warmup_updates
        self.policy = self.placement.trained(
            policy, make_optimizer, functools.partial(make_scheduler, updates=policy_updates)
        )
        self.value = self.placement.trained(
            value, make_optimizer, functools.partial(make_scheduler, updates=self.total_updates)
        )
        self.ref = self.placement.frozen(load_policy(config.model.name_or_path, temperature, trainable=False))
        self.engine = build_engine(
            config, self.policy, self.tokenizer, self.placement, self.ranks, policy_path, self.per_rank_batch
        )
        self.start_update = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state_path(self, directory: Path) -> Path:
        return directory / "trainer_state.pt"

    def _save_weights(self, directory: Path) -> None:
        """Collective: the full policy and value weights, as loadable Hugging Face directories."""
        for name, trained in (("policy", self.policy), ("value", self.value)):
            state = trained.full_state_dict()
            if self.is_main:
                trained.model.save_pretrained(directory / name, state_dict=state, safe_serialization=True)

    def save_checkpoint(self, update: int) -> None:
        directory = self.output_dir / f"checkpoint-{update}"
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        self.ranks.barrier()
        self._save_weights(directory)
        self.policy.save_training_state(directory, "policy")
        self.value.save_training_state(directory, "value")
        if self.is_main:
            torch.save({"update": update}, self._state_path(directory))
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        torch.save(rng, directory / f"rng-rank{self.ranks.rank}.pt")
        self.ranks.barrier()
        if self.is_main:
            checkpoint.mark_complete(directory, step=update, world_size=self.ranks.world, **self.run.marker_info)
            checkpoint.rotate(self.output_dir, self.config.output.keep)
        self.ranks.barrier()

    def _load_state(self, directory: Path) -> None:
        self.policy.load_training_state(directory, "policy")
        self.value.load_training_state(directory, "value")
        self.start_update = torch.load(self._state_path(directory), weights_only=False)["update"]
        rng_file = directory / f"rng-rank{self.ranks.rank}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        log.info("resuming from %s (update %d)", directory, self.start_update)

    # ---- one update --------------------------------------------------------------------------
    def _rank_batch(self, update: int) -> list[int]:
        world, rank = self.ranks.world, self.ranks.rank
        start = (update * world + rank) * self.per_rank_batch
        return episode_indices(self.problems.train, self.config.train.seed, start, self.per_rank_batch)

    @torch.no_grad()
    def rollout(self, indices: list[int]) -> dict:
        device = self.ranks.device
        t0 = time.perf_counter()
        prompt = encode_prompts(self.tokenizer, [self.problems.prompts[i] for i in indices], device)
        self.policy.eval()
        self.value.eval()
        samples = self.engine.generate(prompt)
        responses, mask = samples.responses, samples.mask
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        scored = self.reward(texts, [self.problems.references[i] for i in indices])
        # Collective: a judge cut short by SIGTERM on any rank stops every rank before the next collective pass.
        if self._any_rank(scored.interrupted):
            raise RolloutInterrupted
        prompt_len = prompt["input_ids"].shape[1]
        sequence = full_sequence(prompt, responses, mask)
        with self.placement.autocast():
            logprobs, entropy = response_logprobs(self.policy.module, sequence, prompt_len, mask, self.temperature)
            ref_logprobs, _ = response_logprobs(self.ref, sequence, prompt_len, mask, self.temperature)
            values = response_values(self.value.module, sequence, prompt_len)
        logprobs, ref_logprobs, values = logprobs.float(), ref_logprobs.float(), values.float()
        t2 = time.perf_counter()
        fmask = mask.float()
        # A response without a reward (`on_failure: skip`) is left out of the update: no advantage, no value target.
        has_reward = torch.tensor([r is not None for r in scored.rewards], device=device, dtype=torch.float32)
        train_mask = fmask * has_reward[:, None]
        scores = torch.tensor([0.0 if r is None else r for r in scored.rewards], device=device, dtype=torch.float32)
        rewards, kl = ppo_math.kl_penalized_rewards(scores, logprobs, ref_logprobs, fmask, self.config.ppo.kl_coef)
        if self.config.ppo.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, train_mask, shift_mean=False)
        advantages, returns = ppo_math.generalized_advantages(
            rewards, values, fmask, self.config.ppo.gamma, self.config.ppo.lam
        )
        advantages = ppo_math.masked_whiten(advantages, train_mask)
        sampler_stats, is_weights = self._sampler_correction(samples, logprobs, train_mask)
        return {
            "sequence": sequence,
            "prompt_len": prompt_len,
            "mask": train_mask,
            "logprobs": logprobs,
            "is_weights": is_weights,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "stats": {
                **sampler_stats,
                "reward_mean": (scores * has_reward).sum() / has_reward.sum().clamp(min=1),
                "format_ok_rate": torch.tensor(scored.format_ok, dtype=torch.float32, device=device).mean(),
                "verifier_true_rate": torch.tensor(scored.correct, dtype=torch.float32, device=device).mean(),
                "reward_failure_rate": torch.tensor(
                    scored.failed or [False] * len(scored), dtype=torch.float32, device=device
                ).mean(),
                "kl": kl.sum(dim=1).mean(),
                "entropy": ppo_math.masked_mean(entropy.float(), fmask),
                "response_length": fmask.sum(dim=1).mean(),
                "generated_tokens": fmask.sum(),
            },
            "time_generation": t1 - t0,
            "time_scoring": t2 - t1,
            "weights_pushed": samples.weights_pushed,
        }

    def _any_rank(self, flag: bool) -> bool:
        """Collective: whether `flag` is set on any rank."""
        return bool(self.ranks.max(torch.tensor([float(flag)], device=self.ranks.device))[0] > 0)

    def _sampler_correction(self, samples, logprobs: torch.Tensor, mask: torch.Tensor):
        """The sampler/trainer log-prob gap and the importance weights of the samples (None without sampler
        log-probs: the hf engine samples from the trained policy itself)."""
        if samples.logprobs is None:
            return {}, None
        settings = self.config.sampling.vllm
        sampler = samples.logprobs.float()
        gap_mean, gap_max = ppo_math.logprob_gap(logprobs, sampler, mask)
        stats = {"sampler_logprob_gap_mean": gap_mean, "sampler_logprob_gap_max": gap_max}
        if settings.importance_sampling == "off":
            return stats, None
        weights = ppo_math.importance_weights(
            logprobs,
            sampler,
            mask,
            settings.importance_sampling,
            settings.importance_sampling_max,
            settings.importance_sampling_min,
        )
        raw = torch.exp(torch.nan_to_num(logprobs - sampler, nan=0.0))
        stats["importance_weight_mean"] = ppo_math.masked_mean(weights, mask)
        stats["importance_weight_clipped_fraction"] = ppo_math.masked_mean((weights != raw).float(), mask)
        return stats, weights

    def train_on(self, batch: dict, update: int) -> dict[str, torch.Tensor]:
        ppo, micro = self.config.ppo, self.config.train.per_device_batch_size
        train_policy = update >= self.warmup_updates  # the critic warm-up trains the value model alone
        self.policy.train()
        self.value.train()
        sums: dict[str, float] = {}
        rates: list[float] = []
        count = 0
        for order in epoch_orders(self.config.train.seed, update, batch["mask"].size(0), ppo.ppo_epochs):
            for mini in torch.chunk(order, ppo.num_mini_batches):
                parts = micro_batches(mini, micro)
                for i, idx in enumerate(parts):
                    sync = i == len(parts) - 1
                    sequence = {k: v[idx] for k, v in batch["sequence"].items()}
                    mask = batch["mask"][idx]
                    with self.policy.accumulating(sync), self.value.accumulating(sync):
                        with self.placement.autocast():
                            logprobs, _ = response_logprobs(
                                self.policy.module, sequence, batch["prompt_len"], mask, self.temperature
                            )
                            values = response_values(self.value.module, sequence, batch["prompt_len"])
                        is_weights = batch["is_weights"]
                        pg_loss, pg_stats = ppo_math.clipped_policy_loss(
                            logprobs.float(),
                            batch["logprobs"][idx],
                            batch["advantages"][idx],
                            mask,
                            ppo.cliprange,
                            weights=None if is_weights is None else is_weights[idx],
                        )
                        vf_loss, vf_stats = ppo_math.clipped_value_loss(
                            values.float(), batch["values"][idx], batch["returns"][idx], mask, ppo.cliprange_value
                        )
                        # Separate graphs: each backward reaches only its own model.
                        if train_policy:
                            self.policy.backward(pg_loss)
                        self.value.backward(ppo.vf_coef * vf_loss)
                    for key, value in {"policy_loss": pg_loss, "value_loss": vf_loss, **pg_stats, **vf_stats}.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach())
                    count += 1
                if train_policy:
                    rates.append(self.policy.learning_rate())  # the rate this step uses: the scheduler steps after
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + self.policy.step()
                self.value.step()
        optimizer_steps = ppo.ppo_epochs * ppo.num_mini_batches
        stats = {k: torch.tensor(v / (optimizer_steps if k == "grad_norm" else count)) for k, v in sums.items()}
        # The mean rate of this update's policy steps; 0 while the critic warms up (the policy does not step).
        stats["learning_rate"] = torch.tensor(sum(rates) / len(rates) if rates else 0.0)
        stats.setdefault("grad_norm", torch.tensor(0.0))
        return stats

    def _reduce(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """The mean over ranks; for keys ending in `_max`, the maximum. Every rank passes the same keys."""
        keys = sorted(stats)
        if not keys:
            return {}
        stacked = torch.stack([stats[k].float().to(self.ranks.device) for k in keys])
        means, maxima = self.ranks.mean(stacked), self.ranks.max(stacked)
        return {k: float(top if k.endswith("_max") else mean) for k, mean, top in zip(keys, means, maxima)}

    def evaluate(self) -> float | None:
        eval_set = self.problems.eval
        if not eval_set:
            return None
        world, rank = self.ranks.world, self.ranks.rank
        mine = eval_set[rank::world] or eval_set[:1]
        # Every rank runs the same number of rollouts: under sharding each one is a collective.
        batches = math.ceil(math.ceil(len(eval_set) / world) / self.per_rank_batch)
        total = []
        for b in range(batches):
            chunk = mine[b * self.per_rank_batch : (b + 1) * self.per_rank_batch] or mine[:1]
            total.append(float(self.rollout(chunk)["stats"]["reward_mean"]))
        return self._reduce({"eval_reward_mean": torch.tensor(sum(total) / len(total))})["eval_reward_mean"]

    def train(self) -> RLResult:
        metrics_path = self.output_dir / "metrics.jsonl"
        out = self.config.output
        if self.is_main:
            keep_metrics_through(metrics_path, self.start_update)  # the interrupted run's entries past the checkpoint
        with preemption.sigterm_stops_training():
            try:
                self._updates(metrics_path)
            except RolloutInterrupted:
                self._stop_mid_rollout()
        export_dir = self.export() if out.export else None
        self.run.finish(self.total_updates, export_dir)
        return RLResult(self.output_dir, self.total_updates, export_dir)

    def _stop_mid_rollout(self) -> None:
        """SIGTERM cut a rollout's scoring short: write the checkpoint of the last finished update, then exit as
        a preemption does."""
        done = self.completed_updates
        if done > self.start_update:
            self.save_checkpoint(done)
            where = self.output_dir / f"checkpoint-{done}"
        else:  # nothing trained since the start or the resume point: that is the checkpoint
            where = self.resume_from or "none (no update finished; a rerun starts from the beginning)"
        stopped = preemption.Preempted(where, done)
        log.warning("SIGTERM while the reward was being scored: %s", stopped)
        raise stopped

    def _check_sampler_gap(self, record: dict, update: int, pushed: bool) -> None:
        gap = record.get("sampler_logprob_gap_mean")
        limit = self.config.sampling.vllm.max_logprob_gap
        # Reduced over ranks, so every rank decides alike.
        if gap is not None and gap > limit:
            raise SamplerGapError(gap, limit, update + 1, pushed)

    def _updates(self, metrics_path: Path) -> None:
        out = self.config.output
        self.completed_updates = self.start_update
        for update in range(self.start_update, self.total_updates):
            batch = self.rollout(self._rank_batch(update))
            gap = self._reduce({k: v for k, v in batch["stats"].items() if k.startswith("sampler_logprob_gap")})
            self._check_sampler_gap(gap, update, batch["weights_pushed"])
            t0 = time.perf_counter()
            train_stats = self.train_on(batch, update)
            self.engine.policy_updated()
            t_train = time.perf_counter() - t0
            generated = batch["stats"].pop("generated_tokens")
            record = self._reduce({**batch["stats"], **train_stats})
            record.update(
                step=update + 1,
                episodes=(update + 1) * self.per_rank_batch * self.ranks.world,
                time_generation=round(batch["time_generation"], 3),
                time_scoring=round(batch["time_scoring"], 3),
                time_training=round(t_train, 3),
                generated_tokens_per_second=round(float(generated) / max(batch["time_generation"], 1e-9), 1),
            )
            if self.config.train.eval_steps and (update + 1) % self.config.train.eval_steps == 0:
                record["eval_reward_mean"] = self.evaluate()
            self.completed_updates = update + 1
            if self.is_main:
                append_jsonl(metrics_path, record)
                if (update + 1) % out.logging_steps == 0 or update == 0:
                    log.info(
                        "update %d/%d reward %.3f format_ok %.2f kl %.4f policy_loss %.4f value_loss %.4f%s",
                        update + 1,
                        self.total_updates,
                        record["reward_mean"],
                        record["format_ok_rate"],
                        record["kl"],
                        record["policy_loss"],
                        record["value_loss"],
                        " (critic warm-up: value model only)" if update < self.warmup_updates else "",
                    )
            last = update + 1 == self.total_updates
            # Every rank reaches this check after the same update: one agreed answer, so all save together.
            stopping = not last and preemption.stop_agreed(self.ranks.device)
            if (update + 1) % out.save_steps == 0 or last or stopping:
                self.save_checkpoint(update + 1)
            if stopping:
                stopped = preemption.Preempted(self.output_dir / f"checkpoint-{update + 1}", update + 1)
                log.warning("%s", stopped)
                raise stopped

    def export(self) -> Path:
        final, staging = self.output_dir / "export", self.output_dir / "export.partial"
        state = self.policy.full_state_dict()
        if self.is_main:
            new_dir(staging, "export")
            self.policy.model.save_pretrained(staging, state_dict=state, safe_serialization=True)
            pad_right_for_export(self.tokenizer)
            write_export_extras(staging, self.tokenizer)
            replace_dir(staging, final)
        self.ranks.barrier()
        return final


def finished_result(run: RunStart) -> RLResult:
    """The result of a run that had already finished, read back from its record (nothing is written)."""
    export = run.finished.get("export")
    return RLResult(
        run.output_dir,
        int(run.finished.get("final_step") or 0),
        run.output_dir / export if export else None,
        already_finished=True,
    )


def run_ppo(config: RLConfig, resume: str = "none") -> RLResult:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Missing optional libraries stop the run here, before any model is loaded.
    if config.sampling.engine == "vllm":
        require_vllm()
    require_backend(config.train)
    with open_run(config, resume, "rl") as run:
        if run.finished is not None:
            return finished_result(run)
        return PPOTrainer(config, run).train()
