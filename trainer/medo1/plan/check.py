"""Does a stage fit the GPUs it is about to be launched on? The launcher's pre-flight (`medo1 launch`, the
chart's run Job, the Kubeflow pipeline's training steps): the stage's plan for the chart values it renders,
memory only (no data tokenized, no model loaded or downloaded), before any Kubernetes object is created.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from medo1.config import ConfigError
from medo1.plan.cli import gib
from medo1.plan.shapes import KNOWN_ARCHITECTURES, gpu_from_node_selector
from medo1.plan.stages import (
    Cluster,
    NothingToSize,
    StagePlan,
    cluster_from_values,
    gpu_from_values,
    local_recipe,
    plan_stage,
)

# The stages that run our models on GPUs, in the order they run: a later one may start from an earlier one's export.
PLANNED = ("sft", "rl", "eval")


@dataclass(frozen=True)
class FitCheck:
    """One stage's verdict: its plan, or why none could be made (`problem`)."""

    stage: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    cluster: Cluster | None = None
    plan: StagePlan | None = None
    problem: str = ""
    gpu_note: str = ""
    """Set when the GPU kind is a guess: a node selector naming a product the plan does not know."""

    @property
    def fits(self) -> bool:
        return self.plan is not None and self.plan.fits is True

    def plan_command(self) -> str:
        """The `medo1 plan` command that shows this plan's breakdown and every suggested change."""
        plan = self.plan
        args = [
            "medo1",
            "plan",
            "--config",
            self.recipe,
            *(a for o in self.overrides for a in ("--set", o)),
            "--nodes",
            str(plan.cluster.nodes),
            "--gpus-per-node",
            str(plan.cluster.gpus_per_node),
            "--gpu",
            plan.cluster.gpu.name,
        ]
        if plan.model.name in KNOWN_ARCHITECTURES:  # the model may be an earlier stage's export, not here yet
            args += ["--architecture", plan.model.name]
        if plan.headroom != 0.10:
            args += ["--headroom", str(plan.headroom)]
        return shlex.join(args)

    def describe(self) -> str:
        if self.plan is None:
            return (
                f"stage {self.stage}: whether it fits its GPUs ({self.cluster.describe()}{self.gpu_note}) is not known, "
                f"no plan could be made: {self.problem}"
            )
        plan = self.plan
        gpu = plan.cluster.gpu
        usable = (
            f"{gib(plan.usable)} GiB usable ({gpu.name}: {gpu.memory_gib:.2f} GiB less {plan.headroom:.0%} headroom)"
        )
        where = f"on {plan.cluster.describe()}{self.gpu_note}, {plan.model.name}"
        if self.fits:
            return f"stage {self.stage} fits its GPUs: {gib(plan.total)} GiB predicted per GPU of {usable} {where}"
        text = f"stage {self.stage} does not fit its GPUs: {gib(plan.total)} GiB predicted per GPU, {usable}, {where}"
        if plan.breakdown.peak_phase:
            text += f" (peak in {plan.breakdown.peak_phase})"
        if plan.suggestions:
            first = plan.suggestions[0]
            text += f"; suggested: {first['change']} (--set {' --set '.join(first['set'])})"
            if len(plan.suggestions) > 1:
                text += f" or {len(plan.suggestions) - 1} more"
        else:
            text += "; none of the changes the plan tries makes it fit"
        return f"{text}; see {self.plan_command()}"


def stage_cluster(stage: str, values: dict[str, Any]) -> Cluster:
    """The GPUs a stage's pods get: cluster.* for a training stage, one node with jobs.eval.gpus for eval. The GPU
    kind: plan.gpu, else cluster.nodeSelector's nvidia.com/gpu.product, else an H100 80GB."""
    gpu_name = values["plan"].get("gpu") or None
    if stage == "eval":
        gpus = int(values["jobs"]["eval"].get("gpus", 0))
        return Cluster(1, gpus, gpu_from_values(values, gpu_name) if gpus else None)
    return cluster_from_values(values, gpu_name)


def stage_config(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    return values["jobs" if stage == "eval" else "stages"][stage]


def earlier_exports(stage: str, values: dict[str, Any]) -> dict[str, str]:
    """Export directory -> architecture of the training stages that run before `stage`, enabled or not: a
    launch of rl alone starts from the sft stage's export, which need not be on this machine."""
    exports: dict[str, str] = {}
    for earlier in PLANNED[: PLANNED.index(stage)]:
        config = stage_config(earlier, values)
        try:
            plan = plan_stage(
                str(local_recipe(config["recipe"])),
                cluster=stage_cluster(earlier, values),
                overrides=list(config.get("set", [])),
                stage=earlier,
                exports=exports,
                check_fixes=False,
                memory_only=True,
            )
        except ConfigError:
            continue
        if plan.export_dir:
            exports[plan.export_dir] = plan.model.name
    return exports


def fit_check(stage: str, values: dict[str, Any], *, recipe: str | None = None) -> FitCheck | None:
    """The plan of `stage` as chart `values` launch it: its recipe (or `recipe`: a Trainer v2 runtime's own) with
    the stage's `set`, on its GPUs, at plan.headroom. None when the stage runs nothing of ours on a GPU
    (translate, upload, a CPU run, eval of an endpoint)."""
    from medo1 import chart

    values = chart.with_chart_defaults(values)
    if stage not in PLANNED:
        return None
    cluster = stage_cluster(stage, values)
    if cluster.gpu is None:
        return None
    product = (values["cluster"].get("nodeSelector") or {}).get("nvidia.com/gpu.product")
    gpu_note = ""
    if product and not values["plan"].get("gpu") and gpu_from_node_selector(product) is None:
        gpu_note = f" (nvidia.com/gpu.product {product} is no GPU kind the plan knows: set plan.gpu)"
    config = stage_config(stage, values)
    recipe = str(recipe or config["recipe"])
    overrides = [str(o) for o in config.get("set", [])]
    try:
        plan = plan_stage(
            str(local_recipe(recipe)),
            cluster=cluster,
            overrides=overrides,
            stage=stage,
            exports=earlier_exports(stage, values),
            headroom=float(values["plan"]["headroom"]),
            memory_only=True,
        )
    except NothingToSize:
        return None
    except ConfigError as exc:
        return FitCheck(stage, recipe, overrides, cluster, problem=str(exc), gpu_note=gpu_note)
    return FitCheck(stage, recipe, overrides, cluster, plan, gpu_note=gpu_note)
