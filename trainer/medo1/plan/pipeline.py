"""Plans for what a user passes: one recipe on a cluster, or every stage a chart profile enables."""

from __future__ import annotations

from typing import Any

from medo1.config import ConfigError
from medo1.plan.stages import Cluster, StagePlan, cluster_from_values, local_recipe, plan_stage


def profile_values(profile: str | None) -> dict[str, Any]:
    """The chart's defaults with the profile merged in, as Helm merges them."""
    from medo1 import chart

    values = chart.chart_defaults()
    if profile:
        try:
            values = chart.merge_values(values, chart.load_profile(profile))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return values


def cluster_for(profile: str | None, nodes: int | None, gpus_per_node: int | None, gpu: str | None) -> Cluster:
    """The profile's cluster (or the chart's default one), with any of nodes / GPUs per node / GPU kind given replacing it."""
    values = profile_values(profile)
    cluster = values["cluster"]
    if nodes is not None:
        cluster["nodes"] = nodes
    if gpus_per_node is not None:
        cluster["gpusPerNode"] = gpus_per_node
    return cluster_from_values(values, gpu)


def plan_recipe(
    recipe: str,
    *,
    profile: str | None = None,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    gpu: str | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> StagePlan:
    return plan_stage(
        str(local_recipe(recipe)),
        cluster=cluster_for(profile, nodes, gpus_per_node, gpu),
        overrides=overrides,
        **options,
    )


def plan_pipeline(
    profile: str, *, gpu: str | None = None, extra_overrides: dict[str, list[str]] | None = None, **options: Any
) -> list[StagePlan]:
    """Every stage the profile enables, in pipeline order (sft, rl, eval), each on its own resources.

    A stage that starts from an earlier stage's export gets that stage's architecture.
    """
    values = profile_values(profile)
    cluster = cluster_from_values(values, gpu)
    plans: list[StagePlan] = []
    exports: dict[str, str] = {}
    steps = [(name, values["stages"].get(name, {}), cluster) for name in ("sft", "rl")]
    eval_job = values.get("jobs", {}).get("eval", {})
    if eval_job.get("enabled") and cluster.gpu is not None:
        steps.append(("eval", eval_job, Cluster(1, int(eval_job.get("gpus", 1)), cluster.gpu)))
    for name, stage, stage_cluster in steps:
        if not stage.get("enabled"):
            continue
        overrides = list(stage.get("set", [])) + list((extra_overrides or {}).get(name, []))
        plan = plan_stage(
            str(local_recipe(stage["recipe"])),
            cluster=stage_cluster,
            overrides=overrides,
            stage=name,
            exports=exports,
            **options,
        )
        plans.append(plan)
        if plan.export_dir:
            exports[plan.export_dir] = plan.model.name
    return plans
