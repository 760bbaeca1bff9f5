"""transformers TrainingArguments from medo1's training options, shared by the HF-Trainer stages (SFT, GRPO, RLOO)
and, for precision and ZeRO-3, by medo1's own PPO loop. Its own module, so reading a config never needs torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medo1.config import OutputConfig, TrainingOptions

# medo1's DeepSpeed ZeRO-3 config for `train.distributed=deepspeed_zero3`; "auto" entries are filled in from the
# stage's config (by transformers for SFT and GRPO, by `medo1.rl.sharding.zero3_config` for PPO). No "optimizer"
# entry: DeepSpeed then steps the optimizer it is given (transformers' integrations/deepspeed.py,
# deepspeed_optim_sched: the Trainer's own, TRAINER_OPTIMIZER below; PPO's torch AdamW), so no DeepSpeed op (FusedAdam,
# CPUAdam) is ever built: the image compiles none, and a pod could not JIT-build one (no C++ compiler in it).
ZERO3 = {
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}


# torch's fused AdamW (one kernel for all parameters, on CUDA and the CPU), which transformers 5.19 picks by default
# with torch >= 2.8 (training_args.py, default_optim); named so that a change of that default changes nothing here.
TRAINER_OPTIMIZER = "adamw_torch_fused"


def use_bf16(precision: str, on_gpu: bool) -> bool:
    """`train.precision`: auto is bf16 on GPU, fp32 on the CPU."""
    return precision == "bf16" or (precision == "auto" and on_gpu)


def checkpointing_field() -> str:
    """TrainingArguments' switch for activation checkpointing: `activation_checkpointing` since transformers 5.23
    (`gradient_checkpointing` its deprecated alias there, with a FutureWarning), `gradient_checkpointing` before
    (5.19, the newest release vLLM 0.32.0 allows); src/transformers/training_args.py in each."""
    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def placement_arguments(train: TrainingOptions, gradient_checkpointing: bool) -> dict[str, Any]:
    """`train.precision`, `train.distributed` and activation checkpointing as TrainingArguments fields."""
    import torch  # here: the planner imports `use_bf16` and `ZERO3` without needing torch

    on_gpu = torch.cuda.is_available()
    arguments: dict[str, Any] = {"bf16": use_bf16(train.precision, on_gpu), "use_cpu": not on_gpu}
    if train.distributed == "deepspeed_zero3":
        arguments["deepspeed"] = train.deepspeed_config or ZERO3
    elif train.distributed == "fsdp":
        arguments["fsdp"] = "full_shard auto_wrap"
        # FSDP checkpoints activations itself, per wrapped block.
        arguments["fsdp_config"] = {
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": gradient_checkpointing,
        }
    arguments[checkpointing_field()] = gradient_checkpointing and train.distributed != "fsdp"
    return arguments


def trainer_arguments(
    train: TrainingOptions, output: OutputConfig, output_dir: Path, gradient_checkpointing: bool
) -> dict[str, Any]:
    """transformers TrainingArguments fields every HF-Trainer stage (SFT, GRPO) sets the same way.

    Checkpoint cadence is transformers'; retention is ours (`medo1.training.checkpoint`), so its own limit is off.
    """
    return {
        **placement_arguments(train, gradient_checkpointing),
        "output_dir": str(output_dir),
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "optim": TRAINER_OPTIMIZER,
        "per_device_train_batch_size": train.per_device_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "seed": train.seed,
        "data_seed": train.seed,
        "save_strategy": "steps",
        "save_steps": output.save_steps,
        "save_total_limit": None,
        "logging_steps": output.logging_steps,
        "report_to": list(output.report_to) or "none",
        "disable_tqdm": True,
        # Every trainable parameter takes part in each forward; DDP's per-step search for unused ones
        # (transformers' default without gradient checkpointing) only costs time.
        "ddp_find_unused_parameters": False,
    }
