"""Typed configs shared by every stage: YAML recipes plus dotted command-line overrides.

A recipe is a YAML file whose keys mirror a stage's config model; `--set a.b=value` overrides
one field (the value is parsed as YAML, so `--set train.epochs=1` gives an int).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    pass


class StageError(RuntimeError):
    """A stage stopped for a reason the user can act on; the CLI prints it without a traceback."""


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty one); ConfigError names `what` and the path."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return loaded or {}


def load_config(
    model: type[ConfigT], recipe: str | Path | None = None, overrides: list[str] | None = None
) -> ConfigT:
    data: dict[str, Any] = {}
    source = "defaults"
    if recipe is not None:
        source = str(recipe)
        data = read_yaml_mapping(recipe, "recipe")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config from {source}: {problems}") from None


def dump_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


class OutputConfig(Section):
    dir: str = "runs/medo1"
    save_steps: int = 100
    keep: int = 2
    export: bool = True
    logging_steps: int = 10
    report_to: list[Literal["wandb", "tensorboard"]] = []
    batch_trace: bool = False


# medo1's DeepSpeed ZeRO-3 config for `train.distributed=deepspeed_zero3`; "auto" entries are filled in from the
# stage's config (by transformers for SFT and GRPO, by `medo1.rl.sharding.zero3_config` for PPO).
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


def use_bf16(precision: str, on_gpu: bool) -> bool:
    """`train.precision`: auto is bf16 on GPU, fp32 on the CPU."""
    return precision == "bf16" or (precision == "auto" and on_gpu)


def placement_arguments(train: Any, gradient_checkpointing: bool) -> dict[str, Any]:
    """`train.precision`, `train.distributed` and activation checkpointing as TrainingArguments fields."""
    import torch  # here: the launcher and the pipeline import this module without needing torch

    on_gpu = torch.cuda.is_available()
    arguments: dict[str, Any] = {"bf16": use_bf16(train.precision, on_gpu), "use_cpu": not on_gpu}
    if train.distributed == "deepspeed_zero3":
        arguments["deepspeed"] = train.deepspeed_config or ZERO3
    elif train.distributed == "fsdp":
        arguments["fsdp"] = "full_shard auto_wrap"
        # FSDP checkpoints activations itself, per wrapped block.
        arguments["fsdp_config"] = {"state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": gradient_checkpointing}
    arguments["activation_checkpointing"] = gradient_checkpointing and train.distributed != "fsdp"
    return arguments


def trainer_arguments(train: Any, output: OutputConfig, output_dir: Path, gradient_checkpointing: bool) -> dict[str, Any]:
    """transformers TrainingArguments fields every HF-Trainer stage (SFT, GRPO) sets the same way.

    Checkpoint cadence is transformers'; retention is ours (`medo1.checkpoint`), so its own limit is off.
    """
    return {
        **placement_arguments(train, gradient_checkpointing),
        "output_dir": str(output_dir),
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
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
