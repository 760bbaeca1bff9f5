"""PPO with a value model and a verifier reward, as in the HuatuoGPT-o1 recipe.

TRL no longer ships PPO, so the loop is ours; it leans on accelerate for device placement and DDP,
on HF `generate` for rollouts (stopping at end of turn), and on TRL's fused LM head for log-probs.
One update: sample a rollout batch per rank, score it (reward, reference and value passes), compute
KL-penalised rewards, GAE and whitened advantages, then `ppo_epochs` passes of clipped policy and
value losses over `num_mini_batches` mini-batches of `per_device_batch_size` micro-batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    get_scheduler,
)
from trl.trainer.utils import add_fused_lm_head

from medo1 import checkpoint
from medo1.config import dump_config
from medo1.metrics import append_jsonl
from medo1.models import clear_dir, load_tokenizer, write_export_extras
from medo1.rl import ppo_math
from medo1.rl.config import RLConfig
from medo1.rl.rewards import build_reward
from medo1.rl.rollout import (
    TokenValueModel,
    encode_prompts,
    episode_indices,
    full_sequence,
    generate,
    load_problems,
    response_logprobs,
    response_values,
)

log = logging.getLogger("medo1.ppo")


@dataclass
class RLResult:
    output_dir: Path
    final_step: int
    export_dir: Path | None


def load_policy(path: str, temperature: float, trainable: bool):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def load_value_model(path: str, pad_token_id: int) -> TokenValueModel:
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    classifier.config.pad_token_id = pad_token_id
    return TokenValueModel(classifier)


def micro_batches(indices: torch.Tensor, size: int):
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class PPOTrainer:
    def __init__(self, config: RLConfig, resume: str = "none"):
        self.config = config
        self.output_dir = Path(config.output.dir)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        self.resume_from = checkpoint.resolve_resume(self.output_dir, resume)
        if self.is_main and resume != "none":
            for moved in checkpoint.set_aside_incomplete(self.output_dir):
                log.warning("set aside incomplete checkpoint %s", moved)
        set_seed(config.train.seed + self.accelerator.process_index)
        device = self.accelerator.device
        # The reward loads first: a verifier that cannot load fails here, before any model is built.
        self.reward = build_reward(config.reward, device=device)
        self.tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
        self.problems, self.data_report = load_problems(config, self.output_dir, self.is_main)
        if self.is_main:
            dump_config(config, self.output_dir / "config.yaml")

        train = config.train
        self.per_rank_batch = train.per_device_batch_size * train.gradient_accumulation_steps
        world = self.accelerator.num_processes
        self.total_updates = max(1, train.total_episodes // (self.per_rank_batch * world))
        optimizer_steps = self.total_updates * config.ppo.ppo_epochs * config.ppo.num_mini_batches

        policy_path = str(self.resume_from / "policy") if self.resume_from else config.model.name_or_path
        value_path = (
            str(self.resume_from / "value") if self.resume_from else (config.ppo.value_model or config.model.name_or_path)
        )
        temperature = config.sampling.temperature
        policy = load_policy(policy_path, temperature, trainable=True)
        self.ref = load_policy(config.model.name_or_path, temperature, trainable=False).to(device)
        value = load_value_model(value_path, self.tokenizer.pad_token_id)
        if config.model.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        opts = [
            torch.optim.AdamW(m.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
            for m in (policy, value)
        ]
        warmup = math.ceil(train.warmup_ratio * optimizer_steps)
        scheds = [get_scheduler(train.lr_scheduler, o, warmup, optimizer_steps) for o in opts]
        self.policy, self.value, self.policy_opt, self.value_opt = self.accelerator.prepare(policy, value, *opts)
        self.policy_sched, self.value_sched = scheds
        self.start_update = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)

    # ---- checkpoints -------------------------------------------------------------------------
    def _state_path(self, directory: Path) -> Path:
        return directory / "trainer_state.pt"

    def save_checkpoint(self, update: int) -> None:
        directory = self.output_dir / f"checkpoint-{update}"
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            self.accelerator.unwrap_model(self.policy).save_pretrained(directory / "policy")
            self.accelerator.unwrap_model(self.value).save_pretrained(directory / "value")
            torch.save(
                {
                    "update": update,
                    "policy_opt": self.policy_opt.state_dict(),
                    "value_opt": self.value_opt.state_dict(),
                    "policy_sched": self.policy_sched.state_dict(),
                    "value_sched": self.value_sched.state_dict(),
                },
                self._state_path(directory),
            )
        self.accelerator.wait_for_everyone()
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        torch.save(rng, directory / f"rng-rank{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            checkpoint.mark_complete(directory, step=update, world_size=self.accelerator.num_processes)
            checkpoint.rotate(self.output_dir, self.config.output.keep)
        self.accelerator.wait_for_everyone()

    def _load_state(self, directory: Path) -> None:
        state = torch.load(self._state_path(directory), weights_only=False)
        self.policy_opt.load_state_dict(state["policy_opt"])
        self.value_opt.load_state_dict(state["value_opt"])
        self.policy_sched.load_state_dict(state["policy_sched"])
        self.value_sched.load_state_dict(state["value_sched"])
        self.start_update = state["update"]
        rng_file = directory / f"rng-rank{self.accelerator.process_index}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        log.info("resuming from %s (update %d)", directory, self.start_update)

    # ---- one update --------------------------------------------------------------------------
    def _rank_batch(self, update: int) -> list[int]:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        start = (update * world + rank) * self.per_rank_batch
        return episode_indices(self.problems.train, self.config.train.seed, start, self.per_rank_batch)

    @torch.no_grad()
    def rollout(self, indices: list[int]) -> dict:
        device = self.accelerator.device
        t0 = time.perf_counter()
        prompt = encode_prompts(self.tokenizer, [self.problems.prompts[i] for i in indices], device)
        policy = self.accelerator.unwrap_model(self.policy)
        policy.eval()
        responses, mask = generate(policy, self.tokenizer, prompt, self.config.sampling)
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        scored = self.reward(texts, [self.problems.references[i] for i in indices])
        prompt_len = prompt["input_ids"].shape[1]
        sequence = full_sequence(prompt, responses, mask)
        logprobs, entropy = response_logprobs(policy, sequence, prompt_len, mask)
        ref_logprobs, _ = response_logprobs(self.ref, sequence, prompt_len, mask)
        values = response_values(self.value, sequence, prompt_len)
        t2 = time.perf_counter()
        fmask = mask.float()
        scores = torch.tensor(scored.rewards, device=device, dtype=torch.float32)
        rewards, kl = ppo_math.kl_penalized_rewards(scores, logprobs, ref_logprobs, fmask, self.config.ppo.kl_coef)
        if self.config.ppo.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, fmask, shift_mean=False)
        advantages, returns = ppo_math.generalized_advantages(
            rewards, values, fmask, self.config.ppo.gamma, self.config.ppo.lam
        )
        advantages = ppo_math.masked_whiten(advantages, fmask)
        return {
            "sequence": sequence,
            "prompt_len": prompt_len,
            "mask": fmask,
            "logprobs": logprobs,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "stats": {
                "reward_mean": scores.mean(),
                "format_ok_rate": torch.tensor(scored.format_ok, dtype=torch.float32, device=device).mean(),
                "verifier_true_rate": torch.tensor(scored.correct, dtype=torch.float32, device=device).mean(),
                "kl": kl.sum(dim=1).mean(),
                "entropy": ppo_math.masked_mean(entropy, fmask),
                "response_length": fmask.sum(dim=1).mean(),
                "generated_tokens": fmask.sum(),
            },
            "time_generation": t1 - t0,
            "time_scoring": t2 - t1,
        }

    def train_on(self, batch: dict) -> dict[str, torch.Tensor]:
        ppo, micro = self.config.ppo, self.config.train.per_device_batch_size
        self.policy.train()
        self.value.train()
        size = batch["mask"].size(0)
        generator = torch.Generator().manual_seed(self.config.train.seed)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(size, generator=generator)
            for mini in torch.chunk(order, ppo.num_mini_batches):
                parts = micro_batches(mini, micro)
                for i, idx in enumerate(parts):
                    sync = i == len(parts) - 1
                    sequence = {k: v[idx] for k, v in batch["sequence"].items()}
                    mask = batch["mask"][idx]
                    no_sync = contextlib.ExitStack()
                    if not sync:
                        no_sync.enter_context(self.accelerator.no_sync(self.policy))
                        no_sync.enter_context(self.accelerator.no_sync(self.value))
                    with no_sync:
                        logprobs, _ = response_logprobs(self.policy, sequence, batch["prompt_len"], mask)
                        values = response_values(self.value, sequence, batch["prompt_len"])
                        pg_loss, pg_stats = ppo_math.clipped_policy_loss(
                            logprobs, batch["logprobs"][idx], batch["advantages"][idx], mask, ppo.cliprange
                        )
                        vf_loss, vf_stats = ppo_math.clipped_value_loss(
                            values, batch["values"][idx], batch["returns"][idx], mask, ppo.cliprange_value
                        )
                        loss = (pg_loss + ppo.vf_coef * vf_loss) / len(parts)
                        self.accelerator.backward(loss)
                    for key, value in {"policy_loss": pg_loss, "value_loss": vf_loss, **pg_stats, **vf_stats}.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach())
                    count += 1
                max_norm = self.config.train.max_grad_norm
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(
                    self.accelerator.clip_grad_norm_(self.policy.parameters(), max_norm)
                )
                self.accelerator.clip_grad_norm_(self.value.parameters(), max_norm)
                for opt, sched in ((self.policy_opt, self.policy_sched), (self.value_opt, self.value_sched)):
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
        optimizer_steps = ppo.ppo_epochs * ppo.num_mini_batches
        stats = {k: torch.tensor(v / (optimizer_steps if k == "grad_norm" else count)) for k, v in sums.items()}
        stats["learning_rate"] = torch.tensor(self.policy_sched.get_last_lr()[0])
        return stats

    def _reduce(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        keys = sorted(stats)
        stacked = torch.stack([stats[k].float().to(self.accelerator.device) for k in keys])
        mean = self.accelerator.reduce(stacked, reduction="mean")
        return {k: float(v) for k, v in zip(keys, mean)}

    def evaluate(self) -> float | None:
        eval_set = self.problems.eval
        if not eval_set:
            return None
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = eval_set[rank::world] or eval_set[:1]
        total = []
        for start in range(0, len(mine), self.per_rank_batch):
            total.extend(self.rollout(mine[start : start + self.per_rank_batch])["stats"]["reward_mean"].reshape(1).tolist())
        return self._reduce({"eval_reward_mean": torch.tensor(sum(total) / len(total))})["eval_reward_mean"]

    def train(self) -> RLResult:
        metrics_path = self.output_dir / "metrics.jsonl"
        out = self.config.output
        for update in range(self.start_update, self.total_updates):
            batch = self.rollout(self._rank_batch(update))
            t0 = time.perf_counter()
            train_stats = self.train_on(batch)
            t_train = time.perf_counter() - t0
            generated = batch["stats"].pop("generated_tokens")
            record = self._reduce({**batch["stats"], **train_stats})
            record.update(
                step=update + 1,
                episodes=(update + 1) * self.per_rank_batch * self.accelerator.num_processes,
                time_generation=round(batch["time_generation"], 3),
                time_scoring=round(batch["time_scoring"], 3),
                time_training=round(t_train, 3),
                generated_tokens_per_second=round(float(generated) / max(batch["time_generation"], 1e-9), 1),
            )
            if self.config.train.eval_steps and (update + 1) % self.config.train.eval_steps == 0:
                record["eval_reward_mean"] = self.evaluate()
            if self.is_main:
                append_jsonl(metrics_path, record)
                if (update + 1) % out.logging_steps == 0 or update == 0:
                    log.info(
                        "update %d/%d reward %.3f format_ok %.2f kl %.4f policy_loss %.4f value_loss %.4f",
                        update + 1, self.total_updates, record["reward_mean"], record["format_ok_rate"],
                        record["kl"], record["policy_loss"], record["value_loss"],
                    )
            if (update + 1) % out.save_steps == 0 or update + 1 == self.total_updates:
                self.save_checkpoint(update + 1)
        export_dir = self.export() if out.export else None
        return RLResult(self.output_dir, self.total_updates, export_dir)

    def export(self) -> Path:
        final, staging = self.output_dir / "export", self.output_dir / "export.partial"
        if self.is_main:
            clear_dir(staging)
            self.accelerator.unwrap_model(self.policy).save_pretrained(staging, safe_serialization=True)
            write_export_extras(staging, self.tokenizer)
            clear_dir(final)
            staging.rename(final)
        self.accelerator.wait_for_everyone()
        return final


def run_ppo(config: RLConfig, resume: str = "none") -> RLResult:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return PPOTrainer(config, resume).train()
