"""What a launch runs: the chart's rendering of one stage (a PyTorchJob for a training stage, a batch Job
for translate / eval / upload) from a profile, values files and overrides. One source for the pod spec:
the Helm chart."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medo1 import chart
from medo1.config import ConfigError, apply_overrides, read_yaml_mapping
from medo1.launch.waiting import LaunchError

BACKENDS = ("pytorchjob", "local")
# What the operator's admission webhook requires of a PyTorchJob name.
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63


def stage_section(stage: str) -> str:
    """`stages` (training, a PyTorchJob) or `jobs` (one pod, a batch Job): where the chart keeps the stage."""
    defaults = chart.chart_defaults()
    for section in ("stages", "jobs"):
        if stage in defaults[section]:
            return section
    known = [*defaults["stages"], *defaults["jobs"]]
    raise LaunchError(f"unknown stage {stage!r}; known stages: {', '.join(known)}")


def _render_one(stage: str, values: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    """The chart's object for `stage` alone: every other stage switched off, no chain."""
    section = stage_section(stage)
    values = copy.deepcopy(values)
    chart_values = chart.chart_defaults()
    for other_section in ("stages", "jobs"):
        for name in chart_values[other_section]:
            values.setdefault(other_section, {}).setdefault(name, {}).update(enabled=name == stage)
    values["backend"] = "pytorchjob"
    values["chain"] = {**values.get("chain", {}), "enabled": False}
    kind = "PyTorchJob" if section == "stages" else "Job"
    found = [o for o in chart.render_chart(values, release, namespace) if o["kind"] == kind]
    if len(found) != 1:
        raise LaunchError(f"stage {stage!r} rendered {len(found)} {kind}s")
    job = found[0]
    job["metadata"]["namespace"] = namespace
    return job


def build_pytorchjob(
    stage: str, values: dict[str, Any] | None = None, release: str = chart.RELEASE, namespace: str = chart.NAMESPACE
) -> dict[str, Any]:
    """The chart's PyTorchJob for one training stage (`sft` or `rl`)."""
    if stage_section(stage) != "stages":
        raise LaunchError(
            f"stage {stage!r} is not a training stage; known stages: {', '.join(chart.chart_defaults()['stages'])}"
        )
    return _render_one(stage, values or {}, release, namespace)


def build_job(
    stage: str, values: dict[str, Any] | None = None, release: str = chart.RELEASE, namespace: str = chart.NAMESPACE
) -> dict[str, Any]:
    """The chart's batch Job for one single-pod stage (`translate`, `eval` or `upload`)."""
    if stage_section(stage) != "jobs":
        raise LaunchError(
            f"stage {stage!r} is not a single-pod stage; those are {', '.join(chart.chart_defaults()['jobs'])}"
        )
    return _render_one(stage, values or {}, release, namespace)


def read_values(path: str | Path) -> dict[str, Any]:
    try:
        return read_yaml_mapping(path, "values file")
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None


def release_values(
    *, profile: str | None = None, values_files: Iterable[str | Path] = (), value_overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Chart values: the profile (helm/profiles/NAME.yaml), then each values file, then `key.path=value`
    overrides (the value parsed as YAML)."""
    values: dict[str, Any] = {}
    if profile:
        try:
            values = chart.load_profile(profile)
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
    for path in values_files:
        values = chart.merge_values(values, read_values(path))
    try:
        return apply_overrides(values, list(value_overrides))
    except ConfigError as exc:
        raise LaunchError(f"chart value {exc}") from None


def stage_values(
    stage: str,
    *,
    profile: str | None = None,
    values_files: Iterable[str | Path] = (),
    value_overrides: Iterable[str] = (),
    recipe: str | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Chart values for one stage: `release_values(...)`, then `recipe` replaces the stage's recipe and
    `overrides` (recipe `key=value` overrides) are appended to the stage's `set` list, so they win.
    With a recipe of your own the stage's `set` starts empty: the profile's overrides are for the
    profile's recipe (its paths would replace your recipe's)."""
    section = stage_section(stage)
    values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    stage_config = values.setdefault(section, {}).setdefault(stage, {})
    if recipe:
        stage_config["recipe"] = str(recipe)
        stage_config["set"] = []
    overrides = list(overrides)
    if overrides:
        inherited = stage_config.get("set", chart.chart_defaults()[section][stage].get("set", []))
        stage_config["set"] = [*inherited, *overrides]
    return values


def check_job_name(job: dict[str, Any]) -> None:
    """The operator's webhook wants a DNS-1035 label, and the operator names a Service per replica
    `<name>-<role>-<index>`, which must fit in 63 characters too."""
    name = job["metadata"]["name"]
    if not DNS1035_LABEL.match(name):
        raise LaunchError(
            f"job name {name!r}: use lower-case letters, digits and '-', starting with a letter "
            "and ending with a letter or digit"
        )
    if job["kind"] != "PyTorchJob":
        return
    services = [
        f"{name}-{role.lower()}-{int(spec.get('replicas', 1)) - 1}"
        for role, spec in job["spec"]["pytorchReplicaSpecs"].items()
    ]
    longest = max(services, key=len)
    if len(longest) > MAX_NAME:
        raise LaunchError(
            f"job name {name!r} is too long: the operator would name a Service {longest!r}, over {MAX_NAME} characters"
        )


def job_values(
    stage: str,
    *,
    backend: str = "pytorchjob",
    profile: str | None = None,
    values_files: Iterable[str | Path] = (),
    value_overrides: Iterable[str] = (),
    recipe: str | None = None,
    overrides: Iterable[str] = (),
    nproc: int | None = None,
) -> dict[str, Any]:
    """The chart values `stage_job` renders: `stage_values(...)`; for the `local` backend a training stage is
    one node, and `nproc` makes it that many CPU processes (cluster.gpusPerNode=0, cluster.cpuProcsPerNode=nproc)."""
    if backend not in BACKENDS:
        raise LaunchError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    values = stage_values(
        stage,
        profile=profile,
        values_files=values_files,
        value_overrides=value_overrides,
        recipe=recipe,
        overrides=overrides,
    )
    training = stage_section(stage) == "stages"
    if nproc is not None and (backend != "local" or not training):
        raise LaunchError("nproc is for the local backend; pods take their shape from the cluster.* values")
    if backend == "local" and training:
        values = chart.merge_values(values, {"cluster": {"nodes": 1}})
        if nproc is not None:
            if nproc < 1:
                raise LaunchError(f"nproc must be at least 1, not {nproc}")
            values = chart.merge_values(values, {"cluster": {"gpusPerNode": 0, "cpuProcsPerNode": nproc}})
    return values


def render_stage_job(
    stage: str, values: dict[str, Any], *, job_name: str | None = None, namespace: str = chart.NAMESPACE
) -> dict[str, Any]:
    """The chart's job for `stage` from `job_values(...)`, named `job_name` (default: the chart's `<release>-<stage>`)."""
    training = stage_section(stage) == "stages"
    job = (build_pytorchjob if training else build_job)(stage, values, namespace=namespace)
    if job_name:
        job["metadata"]["name"] = job_name
    check_job_name(job)
    return job


def stage_job(
    stage: str,
    *,
    backend: str = "pytorchjob",
    profile: str | None = None,
    values_files: Iterable[str | Path] = (),
    value_overrides: Iterable[str] = (),
    recipe: str | None = None,
    overrides: Iterable[str] = (),
    job_name: str | None = None,
    namespace: str = chart.NAMESPACE,
    nproc: int | None = None,
) -> dict[str, Any]:
    """The job `launch_stage` runs: the chart's rendering for `job_values(...)` (a PyTorchJob for
    `sft` / `rl`, a batch Job for `translate` / `eval` / `upload`), named `job_name` (default: the
    chart's `<release>-<stage>`)."""
    values = job_values(
        stage,
        backend=backend,
        profile=profile,
        values_files=values_files,
        value_overrides=value_overrides,
        recipe=recipe,
        overrides=overrides,
        nproc=nproc,
    )
    return render_stage_job(stage, values, job_name=job_name, namespace=namespace)


def bound_lifetime(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The job's activeDeadlineSeconds at most the launcher's timeout: if the launcher itself dies (a
    pipeline step pod evicted, its retries used up), the operator still stops the job and frees its GPUs
    then. A retried launcher attaches to the job and keeps the same bound."""
    policy = job["spec"].setdefault("runPolicy", {}) if job["kind"] == "PyTorchJob" else job["spec"]
    bound = max(1, math.ceil(timeout_s))
    policy["activeDeadlineSeconds"] = min(bound, policy.get("activeDeadlineSeconds") or bound)
    return job


def job_restarts(values: dict[str, Any]) -> int:
    """How many times a failed training job is created again (runPolicy.jobRestarts)."""
    return int(chart.with_chart_defaults(values)["runPolicy"]["jobRestarts"])
