"""The whole chain in order, without Kubeflow Pipelines: the chart's run Job (a small CPU pod) or
`medo1 launch chain` launches every enabled stage (translate, sft, rl, eval, upload) one after another
through `launch_stage`, the path the pipeline's steps take. A stage starts only after the stage before
it succeeded and, after a training stage, its export is complete: the export is renamed into place
when written whole (`medo1.models.export_from_trainer`), so its folder existing is the proof. Nothing
holds a GPU while it waits.

A chain is one run of one release (`RunScope`). Its jobs are named `<release>-<stage>-<run id>`, and with a
run id every stage's output goes to `<its recipe's output>/<release>/<run id>` (translate: the file, in such a
folder), and a later stage's reference to an earlier stage's output (RL's model at the SFT export, eval's and
upload's at the RL export, SFT's data at the translation) follows it there. So two releases in one namespace
never attach to each other's jobs nor write to each other's folders, and a reinstall (a new run id) starts a
new run instead of finding the last run's jobs succeeded or continuing its checkpoints. Rerunning the chain with
the same run id (the run pod retried) skips stages whose job already succeeded and attaches to the one running;
a stage whose job has gone is created again and finds its run finished (`medo1.training.resume`): nothing changes.
Without a run id (`medo1 launch chain` by hand) the recipes' own paths are used as they are."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medo1 import chart
from medo1.config import ConfigError, load_config, stage_config_class
from medo1.launch.rendering import DNS1035_LABEL, MAX_NAME, release_values, stage_section
from medo1.launch.waiting import LaunchError, LaunchResult

log = logging.getLogger(__name__)

CHAIN_ORDER = ("translate", "sft", "rl", "eval", "upload")
# Where each stage writes, in its recipe: the key, and whether it names a folder or a file.
STAGE_OUTPUTS = {
    "translate": ("output", "file"),
    "sft": ("output.dir", "folder"),
    "rl": ("output.dir", "folder"),
    "eval": ("output_dir", "folder"),
}
# A run id names jobs and folders: what the pipeline's run names allow (pipelines/medo1_pipeline.py run_directory).
RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
KUBERNETES_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The longest suffix the operators add to a job's name: PyTorchJob Services `-worker-<i>`, JobSet hosts `-node-0-0`.
NAME_SUFFIX = len("-worker-999")


@dataclass(frozen=True)
class RunScope:
    """One chain run: `release` (the chart passes its full name, `medo1.fullname`) and `run_id` (None: unscoped)."""

    release: str = chart.RELEASE
    run_id: str | None = None

    @classmethod
    def of(cls, release: str | None = None, run_id: str | None = None) -> RunScope:
        """Checked names. A Kubernetes UID as run id (the chart's default: the run Job's UID) is cut to its first 8
        hex digits, which tell one release's runs apart."""
        release = release or chart.RELEASE
        if not DNS1035_LABEL.match(release):
            raise LaunchError(
                f"release {release!r}: use lower-case letters, digits and '-', starting with a letter "
                "(it begins every job name)"
            )
        if run_id:
            run_id = run_id.lower()
            if KUBERNETES_UID.match(run_id):
                run_id = run_id[:8]
            if not RUN_ID.match(run_id):
                raise LaunchError(
                    f"run id {run_id!r}: use 1-40 lower-case letters, digits and '-', starting and "
                    "ending with a letter or digit"
                )
        return cls(release, run_id or None)

    def job_name(self, stage: str) -> str:
        name = f"{self.release}-{stage}" + (f"-{self.run_id}" if self.run_id else "")
        if len(name) + NAME_SUFFIX > MAX_NAME:
            raise LaunchError(
                f"job name {name!r} is too long: the operator names pods and Services after it, which "
                f"must fit in {MAX_NAME} characters; use a shorter release name or run id"
            )
        return name

    def place(self, location: str, kind: str) -> str:
        """Where this run puts an output the recipe places at `location` (a folder, or a file)."""
        path = PurePosixPath(location)
        if kind == "file":
            return str(path.parent / self.release / str(self.run_id) / path.name)
        return str(path / self.release / str(self.run_id))


@dataclass
class StageRun:
    """How the chain launches one stage: its job's name, the recipe overrides that place its outputs (and point it
    at the earlier stages' outputs of this run), and, for a training stage, the export the next stage waits for."""

    stage: str
    job_name: str
    overrides: list[str] = field(default_factory=list)
    export: Path | None = None


def chain_stages(values: dict[str, Any]) -> list[str]:
    """The enabled stages, in the order they run."""
    merged = chart.with_chart_defaults(values)
    return [stage for stage in CHAIN_ORDER if merged[stage_section(stage)][stage]["enabled"]]


def stage_recipe(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """The stage's recipe after its `set`, with every default filled in, flattened to dotted keys."""
    config = chart.with_chart_defaults(values)[stage_section(stage)][stage]
    try:
        typed = load_config(stage_config_class(stage), config["recipe"], list(config.get("set", [])))
    except ConfigError as exc:
        raise LaunchError(f"stage {stage}: {exc}") from None
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = value

    walk(typed.model_dump(mode="json"), "")
    return flat


def _moved(value: str, moved: dict[str, str]) -> str:
    for old, new in sorted(moved.items(), key=lambda item: -len(item[0])):  # the innermost output first
        if value == old or value.startswith(old.rstrip("/") + "/"):
            return new + value[len(old) :]
    return value


def plan_chain(stages: Sequence[str], values: dict[str, Any], scope: RunScope) -> list[StageRun]:
    """Every stage's job name, overrides and export, worked out before the first stage starts (a recipe that does
    not load stops the chain here, not hours later)."""
    runs = []
    moved: dict[str, str] = {}  # an earlier stage's output as its recipe places it -> where this run puts it
    for stage in stages:
        recipe = stage_recipe(stage, values)
        run = StageRun(stage, scope.job_name(stage))
        output_key, kind = STAGE_OUTPUTS.get(stage, (None, None))
        for key, value in recipe.items():
            if key != output_key and isinstance(value, str) and _moved(value, moved) != value:
                run.overrides.append(f"{key}={json.dumps(_moved(value, moved))}")
        output = recipe.get(output_key) if output_key else None
        if output_key and scope.run_id:
            if not output:
                raise LaunchError(
                    f"stage {stage}: its recipe sets no {output_key}, so this run's output cannot be placed"
                )
            moved[output] = scope.place(output, kind)
            output = moved[output]
            run.overrides.append(f"{output_key}={json.dumps(output)}")
        if stage_section(stage) == "stages":
            if not output:
                raise LaunchError(f"stage {stage}: its recipe sets no {output_key}, so its export cannot be found")
            run.export = Path(output) / "export"
        runs.append(run)
    return runs


def launch_chain(
    *,
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    launch: Callable[..., LaunchResult],
    scope: RunScope = RunScope(),
    **options: Any,
) -> list[LaunchResult]:
    """Launch every enabled stage in order with `launch(stage, values_files=..., value_overrides=..., job_name=...,
    overrides=..., **options)`, named and placed by `scope`. Raises LaunchError when a stage fails or a training
    stage succeeded without a complete export (the next stage does not start)."""
    values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    stages = chain_stages(values)
    if not stages:
        raise LaunchError("no stage is enabled: set stages.<name>.enabled or jobs.<name>.enabled")
    plan = plan_chain(stages, values, scope)
    log.info(
        "chain: %s%s", " -> ".join(stages), f" (release {scope.release}, run {scope.run_id})" if scope.run_id else ""
    )
    results = []
    previous: StageRun | None = None
    for run in plan:
        if previous is not None and not previous.export.is_dir():
            raise LaunchError(
                f"not starting {run.stage}: the {previous.stage} export {previous.export} is not "
                "complete (no folder there)"
            )
        log.info("chain: starting %s", run.stage)
        results.append(
            launch(
                run.stage,
                profile=profile,
                values_files=values_files,
                value_overrides=value_overrides,
                job_name=run.job_name,
                overrides=run.overrides,
                **options,
            )
        )
        if run.export is not None:
            previous = run
            if not run.export.is_dir():
                raise LaunchError(
                    f"{run.stage} succeeded but its export {run.export} is not complete; not starting the next stage"
                )
    return results
