"""Typed configs shared by every stage: YAML recipes plus dotted command-line overrides.

A recipe is a YAML file whose keys mirror a stage's config model; `--set a.b=value` overrides
one field (the value is parsed as YAML, so `--set train.epochs=1` gives an int).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medo1.errors import Medo1Error


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, so a typo never passes silently.

    Each field's meaning is the docstring line under it; `medo1 config show` prints them.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(Medo1Error, ValueError):
    """A recipe, override or config value that cannot be used; raised when the config is read."""


class StageError(Medo1Error, RuntimeError):
    """A stage stopped for a reason the user can act on; the CLI prints it without a traceback."""


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def _field_annotation(model: type[BaseModel] | None, path: list[str]) -> Any:
    """The annotation of the field at `path` under `model` (None where the path leaves the typed sections)."""
    annotation: Any = model
    for part in path:
        sections = [annotation] if _section_class(annotation) else _section_variants(annotation)
        field = next((s.model_fields[part] for s in sections if part in s.model_fields), None)
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def _merge(base: dict[str, Any], value: dict[str, Any], annotation: Any) -> dict[str, Any]:
    """`value` merged into the section `base`, key by key, sub-sections merged in turn; a section chosen by its
    `kind` (the rewards) is replaced when `value` names another kind."""
    if _section_variants(annotation) and value.get("kind", base.get("kind")) != base.get("kind"):
        return dict(value)
    merged = dict(base)
    for key, item in value.items():
        inner = _field_annotation(annotation, [key])
        is_section = _section_class(inner) or _section_variants(inner)
        if is_section and isinstance(item, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], item, inner)
        else:
            merged[key] = item
    return merged


def apply_overrides(data: dict[str, Any], overrides: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a recipe's mapping. With the config `model`, a mapping given for a
    section (`--set 'train={epochs: 2}'`) merges into the recipe's section, keys it leaves out keeping the recipe's
    values; a mapping for a plain mapping field (`benchmarks`) replaces it."""
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
        annotation = _field_annotation(model, path) if model is not None else None
        existing = node.get(path[-1])
        if (
            (_section_class(annotation) or _section_variants(annotation))
            and isinstance(value, dict)
            and isinstance(existing, dict)
        ):
            value = _merge(existing, value, annotation)
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


def load_config(model: type[ConfigT], recipe: str | Path | None = None, overrides: list[str] | None = None) -> ConfigT:
    data: dict[str, Any] = {}
    source = "defaults"
    if recipe is not None:
        source = str(recipe)
        data = read_yaml_mapping(recipe, "recipe")
    data = apply_overrides(data, overrides or [], model)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid config from {source}: {problems}") from None


# Each stage's top config class, imported only when asked for (the SFT and config modules load without torch).
STAGE_CONFIGS = {
    "sft": ("medo1.sft.config", "SFTConfig"),
    "rl": ("medo1.rl.config", "RLConfig"),
    "translate": ("medo1.data.translate", "TranslateConfig"),
    "eval": ("medo1.eval.config", "EvalConfig"),
    "upload": ("medo1.hub.config", "UploadConfig"),
}


def stage_config_class(stage: str) -> type[BaseModel]:
    import importlib

    if stage not in STAGE_CONFIGS:
        raise ConfigError(f"no stage {stage!r}; stages: {', '.join(STAGE_CONFIGS)}")
    module, name = STAGE_CONFIGS[stage]
    return getattr(importlib.import_module(module), name)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _section_class(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _section_variants(annotation: Any) -> list[type[BaseModel]]:
    """The sections of a union of sections told apart by their `kind` (the reward kinds), else []."""
    import typing

    members = [member for member in typing.get_args(annotation) if member is not type(None)]
    if len(members) > 1 and all(_section_class(m) and "kind" in m.model_fields for m in members):
        return members
    return []


_UNSET = object()


def describe_options(model: type[BaseModel], recipe: Any = _UNSET, prefix: str = "") -> list[dict[str, Any]]:
    """One row per option (sections walked, keys dotted as `--set` takes them): key, type, default, the recipe's
    value (under "recipe", only where the recipe sets it) and the field's docstring."""
    rows = []
    for name, field in model.model_fields.items():
        value = recipe.get(name, _UNSET) if isinstance(recipe, dict) else _UNSET
        section = _section_class(field.annotation)
        if section is not None:
            rows.extend(describe_options(section, value, f"{prefix}{name}."))
            continue
        variants = _section_variants(field.annotation)
        for variant in variants:
            kind = variant.model_fields["kind"].default
            chosen = value if isinstance(value, dict) and value.get("kind") == kind else _UNSET
            for row in describe_options(variant, chosen, f"{prefix}{name}."):
                rows.append(row | {"when": f"{prefix}{name}.kind={kind}"})
        if variants:
            continue
        default = "(required)" if field.is_required() else json_default(field.get_default(call_default_factory=True))
        row = {
            "key": prefix + name,
            "type": _type_name(field.annotation),
            "default": default,
            "description": " ".join((field.description or "").split()),
        }
        if value is not _UNSET:
            row["recipe"] = json_default(value)
        rows.append(row)
    return rows


def json_default(value: Any) -> str:
    """A value as its one-line YAML (flow style), as a recipe or `--set` would write it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def dump_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


class ModelConfig(Section):
    """The model a stage starts from (a local directory or a Hugging Face Hub id)."""

    name_or_path: str = Field(min_length=1)
    """A local model directory, or a Hub id `owner/name`; a path that does not exist is refused before anything loads."""
    tokenizer: str | None = None
    """Tokenizer directory or Hub id; default: the model's own."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights' dtype when loaded; auto: the checkpoint's own."""
    attn_implementation: str | None = None
    """transformers' attention kernel: eager, sdpa, flex_attention, flash_attention_4 (flash-attn-4, in the GPU image:
    padding-free varlen on Hopper and newer), flash_attention_2 (flash-attn, if built); default: transformers' (sdpa)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""


class OutputConfig(Section):
    """Where a training stage writes checkpoints, metrics and its export."""

    dir: str = Field("runs/medo1", min_length=1)
    """Output directory (created if missing; must not be a file, must be writable)."""
    save_steps: int = Field(100, ge=1)
    """Save a checkpoint every this many optimizer steps (and at the end)."""
    keep: int = Field(2, ge=0)
    """Complete checkpoints kept (the newest ones); 0 keeps every one."""
    export: bool = True
    """Write the trained model to DIR/export (safetensors, tokenizer, chat template) at the end."""
    logging_steps: int = Field(10, ge=1)
    """Log loss and learning rate to metrics.jsonl every this many steps."""
    report_to: list[Literal["wandb", "tensorboard"]] = []
    """Also report metrics to these trackers."""
    batch_trace: bool = False
    """Write a fingerprint of each training batch to DIR/batch_trace.jsonl (to check resumed data order)."""


class ResumeConfig(Section):
    """What a resumed training run may differ in from the checkpoint it continues (`medo1.training.resume`)."""

    allow_changes: list[str] = []
    """Recipe keys (or sections: `data`, `train`) allowed to differ from the checkpoint's or the finished run's recipe
    fingerprint; any other difference refuses the resume, naming the keys. `--allow-changed KEY` adds to it."""


class TrainingOptions(Section):
    """Optimizer, schedule, precision and placement options every training stage (SFT, PPO, GRPO, RLOO) shares."""

    learning_rate: float = Field(5e-6, gt=0.0)
    """Peak learning rate (AdamW)."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(0.1, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradients are clipped to this global norm."""
    per_device_batch_size: int = Field(2, ge=1)
    """Sequences per GPU (or CPU process) per micro-batch."""
    gradient_accumulation_steps: int = Field(8, ge=1)
    """Micro-batches per optimizer step."""
    seed: int = 42
    """Seed for the model's initialisation, data order and sampling."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    distributed: Literal["ddp", "deepspeed_zero3", "fsdp"] = "ddp"
    """ddp: a full copy of every model on each rank; deepspeed_zero3 / fsdp: models sharded across ranks."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON config for deepspeed_zero3; default: medo1's ZeRO-3 config ("auto" entries filled in)."""


# A Hub repo id: `name` or `owner/name`, letters, digits, `-`, `_`, `.` (huggingface_hub's rule, without the length cap).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_reference(name: str, field: str) -> None:
    """Refuse, before anything loads, a model reference that can only be a local path and is missing.

    A Hub id (`owner/name`) stays allowed, unless its first part is a local directory: `runs/tiny-modle` is a typo
    for a path, not a repo, and would otherwise cost a minute of Hub retries.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{field}: {name} is a file, not a model directory")
        return
    if not _HUB_ID.match(name):
        raise ConfigError(f"{field}: {name} does not exist (and is not a Hub id owner/name)")
    first = name.split("/", 1)[0]
    if "/" in name and Path(first).is_dir():
        raise ConfigError(f"{field}: {name} does not exist ({first}/ is a local directory, so this is not a Hub id)")


def check_output_file(path: str, field: str) -> None:
    """Refuse an output file path that is a directory, or whose folder cannot be created or written."""
    if Path(path).expanduser().is_dir():
        raise ConfigError(f"{field}: {path} is a directory, not a file")
    check_output_dir(str(Path(path).expanduser().parent), field)


def check_output_dir(directory: str, field: str = "output.dir") -> None:
    """Refuse an output directory that is a file or that cannot be created or written, before anything loads."""
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}: {directory} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field}: {directory} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {directory} is not writable ({existing} is read-only)")


def _where(path: str | Path) -> tuple[Path, tuple[int, int] | None]:
    """(resolved path, (device, inode) when it exists): one file under two names (a symlink, `..`, a hard link)
    compares equal."""
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return resolved, None
    return resolved, (stat.st_dev, stat.st_ino)


def check_outputs_apart(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Refuse, before anything is read or written, an output path (file or folder) that resolves to one of the
    stage's inputs or to a folder holding one, and two outputs that resolve to the same path. Keys name the
    option (`--rejects`, `output.dir`); an input that is not on this machine (None, a Hub id, `hf://`) is skipped."""
    local_inputs = {
        field: _where(path)
        for field, path in inputs.items()
        if path and not str(path).startswith("hf://") and os.path.lexists(Path(path).expanduser())
    }
    seen: dict[Path, str] = {}
    for field, path in outputs.items():
        if not path:
            continue
        out, out_id = _where(path)
        for input_field, (source, source_id) in local_inputs.items():
            if out == source or (out_id is not None and out_id == source_id):
                raise ConfigError(
                    f"{field}: {path} is {input_field} itself ({inputs[input_field]}); "
                    "writing there would replace the input: give another path"
                )
            if source.is_relative_to(out):
                raise ConfigError(
                    f"{field}: {path} holds {input_field} ({inputs[input_field]}); outputs go "
                    "to a path that holds no input: give another one"
                )
        if out in seen:
            raise ConfigError(f"{field}: {path} is also {seen[out]}; give each output its own path")
        seen[out] = field
