"""GRPO and RLOO through TRL's GRPOTrainer and RLOOTrainer, with medo1's rewards, data, checkpoints, metrics
and export.

TRL does the group sampling, the advantages (group-normalised for GRPO, leave-one-out baselines for
RLOO), KL to the reference, sharding (through accelerate, as for SFT) and, with `sampling.engine: vllm`,
colocated vLLM rollouts; we supply the problems, the reward functions and checkpoint completeness.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from medo1.config import dump_config
from medo1.models import export_from_trainer, load_tokenizer
from medo1.rl.config import RLConfig
from medo1.rl.engines import SamplerGapError, require_vllm
from medo1.rl.ppo import RLResult, finished_result
from medo1.rl.rewards.factory import build_reward, trl_reward_funcs
from medo1.rl.rollout import load_problems, pad_right_for_export
from medo1.rl.sharding import require_backend
from medo1.training.arguments import trainer_arguments
from medo1.training.callbacks import JsonlMetrics
from medo1.training.checkpoint import MarkedCheckpoints, SaveAtEnd
from medo1.training.preemption import StopOnSigterm, sigterm_stops_training
from medo1.training.process import is_main_process, world_size
from medo1.training.resume import RunStart, open_run

log = logging.getLogger(__name__)


class Medo1GRPOTrainer(MarkedCheckpoints, GRPOTrainer):
    pass


class Medo1RLOOTrainer(MarkedCheckpoints, RLOOTrainer):
    pass


def _held_out_arguments(config: RLConfig, num_generations: int) -> dict:
    """Scoring of the held-out problems (`train.eval_fraction`) before the first update and every `train.eval_steps`
    updates: TRL samples `num_generations` completions per problem at the rollout temperature and logs the mean
    reward as `eval_reward`. An eval batch holds as many whole groups as a training micro-batch has completions
    (at least one), which keeps TRL's divisibility rule for any number of processes."""
    train = config.train
    if not (train.eval_fraction and train.eval_steps):
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": train.eval_steps,
        "eval_on_start": True,
        "per_device_eval_batch_size": num_generations * max(1, train.per_device_batch_size // num_generations),
    }


def _shared_arguments(config: RLConfig, output_dir: Path, world_size: int, num_generations: int) -> dict:
    """The arguments GRPOConfig and RLOOConfig share."""
    train, out, sampling = config.train, config.output, config.sampling
    completions_per_step = train.per_device_batch_size * train.gradient_accumulation_steps * world_size
    return dict(
        **_held_out_arguments(config, num_generations),
        **trainer_arguments(train, out, output_dir, config.model.gradient_checkpointing),
        # total_episodes counts sampled completions, as for PPO.
        max_steps=max(1, math.ceil(train.total_episodes / completions_per_step)),
        max_completion_length=sampling.response_length,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        disable_dropout=True,  # as in medo1's PPO: log-probs of training and rollout passes agree
        use_vllm=sampling.engine == "vllm",
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=sampling.vllm.gpu_memory_utilization,
        vllm_tensor_parallel_size=sampling.vllm.tensor_parallel_size,
        vllm_enable_sleep_mode=sampling.vllm.sleep,
        vllm_max_model_length=sampling.vllm.max_model_len,
        ds3_gather_for_generation=sampling.gather_weights_for_generation,
        reward_weights=[1.0, 0.0, 0.0, 0.0],  # the others only log the format-ok, verifier-true and failure rates
    )


def grpo_arguments(config: RLConfig, output_dir: Path, world_size: int) -> GRPOConfig:
    grpo, vllm = config.grpo, config.sampling.vllm
    return GRPOConfig(
        **_shared_arguments(config, output_dir, world_size, grpo.num_generations),
        num_generations=grpo.num_generations,
        beta=grpo.beta,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        vllm_importance_sampling_correction=vllm.importance_sampling != "off",
        vllm_importance_sampling_mode="token_truncate"
        if vllm.importance_sampling == "off"
        else vllm.importance_sampling,
        vllm_importance_sampling_clip_max=vllm.importance_sampling_max,
        vllm_importance_sampling_clip_min=vllm.importance_sampling_min,
    )


# What TRL's GRPOTrainer logs as the mean |log pi_trainer - log pi_vllm| of the sampled tokens (grpo_trainer.py).
SAMPLER_GAP_KEY = "sampling/sampling_logp_difference/mean"


class SamplerGapCheck(TrainerCallback):
    """Stops the run when vLLM's log-probs are far from the trainer's (`sampling.vllm.max_logprob_gap`)."""

    def __init__(self, limit: float):
        self.limit = limit

    def on_log(self, args, state, control, logs=None, **kwargs):
        gap = (logs or {}).get(SAMPLER_GAP_KEY)
        if gap is not None and gap > self.limit:
            raise SamplerGapError(gap, self.limit, state.global_step)


def rloo_arguments(config: RLConfig, output_dir: Path, world_size: int) -> RLOOConfig:
    rloo = config.rloo
    return RLOOConfig(
        **_shared_arguments(config, output_dir, world_size, rloo.num_generations),
        num_generations=rloo.num_generations,
        beta=rloo.beta,
    )


def run_grpo(config: RLConfig, resume: str = "none") -> RLResult:
    if config.sampling.engine == "vllm":
        require_vllm()
    require_backend(config.train)
    with open_run(config, resume, "rl") as run:
        if run.finished is not None:
            return finished_result(run)
        return _train(config, run)


def _train(config: RLConfig, run: RunStart) -> RLResult:
    output_dir, resume_from = run.output_dir, run.resume_from
    main = is_main_process()
    reward = build_reward(config.reward, device="cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
    problems, _ = load_problems(config, output_dir, main)
    if main:
        dump_config(config, output_dir / "config.yaml")
    dataset, held_out = (
        Dataset.from_dict(
            {"prompt": [problems.prompts[i] for i in rows], "reference": [problems.references[i] for i in rows]}
        )
        for rows in (problems.train, problems.eval)
    )
    trainer_class, arguments = (
        (Medo1RLOOTrainer, rloo_arguments) if config.algo == "rloo" else (Medo1GRPOTrainer, grpo_arguments)
    )
    args = arguments(config, output_dir, world_size())
    if main:
        generations = config.rloo.num_generations if config.algo == "rloo" else config.grpo.num_generations
        completions = (
            args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size()
        )
        log.info(
            "%s: %d steps, %d completions (episodes) = %d prompts x %d generations each",
            config.algo,
            args.max_steps,
            completions,
            completions // generations,
            generations,
        )
    stopper = StopOnSigterm()
    trainer = trainer_class(
        model=config.model.name_or_path,
        reward_funcs=trl_reward_funcs(reward),
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        callbacks=[
            JsonlMetrics(output_dir / "metrics.jsonl"),
            SaveAtEnd(),
            stopper,
            SamplerGapCheck(config.sampling.vllm.max_logprob_gap),
        ],
        keep_checkpoints=config.output.keep,
        marker_info=run.marker_info,
    )
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    with sigterm_stops_training():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    stopper.raise_if_stopped_early(trainer)
    pad_right_for_export(tokenizer)  # TRL pads prompts on the left
    export_dir = export_from_trainer(trainer, tokenizer, output_dir) if config.output.export else None
    run.finish(trainer.state.global_step, export_dir)
    return RLResult(output_dir, trainer.state.global_step, export_dir)
