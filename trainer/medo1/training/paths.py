"""A training stage's inputs and outputs, checked before torch loads: a wrong path is a one-line error at start-up,
not a failure after the model has loaded. Builds on `medo1.config` (the path checks) and `medo1.data.sources` (the sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medo1.atomic import check_replaceable
from medo1.config import (
    ConfigError,
    check_model_reference,
    check_output_dir,
    check_outputs_apart,
)
from medo1.data.sources import HUB_PREFIX, DataError, check_hub_prefix_case, parse_hub_source


def check_training_paths(config: Any, models: dict[str, str | None] | None = None) -> None:
    """A training config's local paths, checked before torch loads: the model (and tokenizer, and any other model
    references in `models`, field -> value), the data file, and the output directory."""
    references = {"model.name_or_path": config.model.name_or_path, "model.tokenizer": config.model.tokenizer}
    for field, name in (references | (models or {})).items():
        if name:
            check_model_reference(name, field)
    data_path = config.data.path
    try:
        parse_hub_source(data_path) if data_path.startswith(HUB_PREFIX) else check_hub_prefix_case(data_path)
    except DataError as exc:
        raise ConfigError(f"data.path: {exc}") from None
    if not data_path.startswith(HUB_PREFIX) and not Path(data_path).expanduser().exists():
        raise ConfigError(f"data.path: {data_path} does not exist")
    check_output_dir(config.output.dir)
    inputs = (
        references | (models or {}) | {"data.path": data_path, "train.deepspeed_config": config.train.deepspeed_config}
    )
    check_outputs_apart({"output.dir": config.output.dir}, inputs)
    for name in ("export", "export.partial"):  # replaced at the end of the run: refused now, not after hours
        check_replaceable(Path(config.output.dir).expanduser() / name, f"output.dir: {name}")
