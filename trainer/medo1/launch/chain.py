"""The whole chain in order, without Kubeflow Pipelines: the chart's run Job (a small CPU pod) or
`medo1 launch chain` launches every enabled stage (translate, sft, rl, eval, upload) one after another
through `launch_stage`, the path the pipeline's steps take. A stage starts only after the stage before
it succeeded and, after a training stage, its export is complete: the export is renamed into place
when written whole (`medo1.models.export_from_trainer`), so its folder existing is the proof. Nothing
holds a GPU while it waits. Rerunning the chain (the run pod retried) skips stages whose job already
succeeded and attaches to the one running."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medo1 import k8s
from medo1.config import ConfigError, apply_overrides, read_yaml_mapping
from medo1.launch.rendering import merge_values, release_values, stage_section
from medo1.launch.waiting import LaunchError, LaunchResult

log = logging.getLogger(__name__)

CHAIN_ORDER = ("translate", "sft", "rl", "eval", "upload")


def chain_stages(values: dict[str, Any]) -> list[str]:
    """The enabled stages, in the order they run."""
    merged = merge_values(k8s.chart_defaults(), values)
    return [stage for stage in CHAIN_ORDER if merged[stage_section(stage)][stage]["enabled"]]


def export_dir(stage: str, values: dict[str, Any]) -> Path:
    """Where a training stage writes its export: `output.dir` of its recipe after the stage's `set`."""
    config = merge_values(k8s.chart_defaults(), values)["stages"][stage]
    try:
        recipe = apply_overrides(read_yaml_mapping(config["recipe"], "recipe"), list(config.get("set", [])))
    except ConfigError as exc:
        raise LaunchError(f"stage {stage}: {exc}") from None
    output_dir = (recipe.get("output") or {}).get("dir")
    if not output_dir:
        raise LaunchError(f"stage {stage}: {config['recipe']} sets no output.dir, so its export cannot be found")
    return Path(output_dir) / "export"


def launch_chain(
    *,
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    launch: Callable[..., LaunchResult],
    **options: Any,
) -> list[LaunchResult]:
    """Launch every enabled stage in order with `launch(stage, values_files=..., value_overrides=...,
    **options)`. Raises LaunchError when a stage fails or a training stage succeeded without a complete
    export (the next stage does not start)."""
    values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    stages = chain_stages(values)
    if not stages:
        raise LaunchError("no stage is enabled: set stages.<name>.enabled or jobs.<name>.enabled")
    log.info("chain: %s", " -> ".join(stages))
    results = []
    previous_export: tuple[str, Path] | None = None
    for stage in stages:
        if previous_export is not None and not previous_export[1].is_dir():
            raise LaunchError(f"not starting {stage}: the {previous_export[0]} export {previous_export[1]} is not "
                              "complete (no folder there)")
        log.info("chain: starting %s", stage)
        results.append(launch(stage, profile=profile, values_files=values_files, value_overrides=value_overrides,
                              **options))
        if stage_section(stage) == "stages":
            previous_export = (stage, export_dir(stage, values))
            if not previous_export[1].is_dir():
                raise LaunchError(f"{stage} succeeded but its export {previous_export[1]} is not complete; "
                                  "not starting the next stage")
    return results
