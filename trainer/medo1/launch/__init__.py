"""Launching a stage. The job comes from the Helm chart (one source for the pod spec); a backend runs
it. `pytorchjob` (the cluster): a training stage as a PyTorchJob created through the Kubeflow training
SDK, a single-pod stage (translate, eval, upload) as a batch Job; the Master pod's log streamed; the
status conditions waited on. `local`: the same container command on this machine (torchrun).

`launch_stage` is what the Kubeflow pipeline's training steps and the chart's run Job call, and it is
safe to retry: a job of the same name is followed while it runs, reported when it already succeeded,
and replaced when it failed with restarts left (the pod command's `--resume auto` continues from the last
complete checkpoint). A failed training job is restarted whole up to `runPolicy.jobRestarts` times, counted
on the job so that retrying the launcher never adds restarts, and never when a restart cannot cure the
failure (`retries`). SIGTERM (how Kubeflow Pipelines cancels a step) and SIGINT delete the job, or stop the
local run, before exiting; not when the launcher's own pod is being evicted (`launcherpod`): the job keeps
running and the launcher that replaces the pod attaches to it. `launch_chain` runs every enabled stage in
order, after checking every stage's plan and inputs. The backend, unless given, is the chart value `backend`.

Modules, one concern each (after kubeflow/sdk's `kubeflow/trainer/backends/` layout): `rendering`
(values -> the chart's job), `waiting` (states, errors, the wait), `kubernetes` (the cluster backend),
`logs` (following the Master's log), `pods` (failing fast on a stuck pod), `trainjob` (Kubeflow
Trainer v2: a TrainJob on the chart's ClusterTrainingRuntimes through the Kubeflow SDK's TrainerClient),
`localprocess` (the local backend), `chain` (stages in order), `preflight` (the stage's plan before its job
is created: a warning when it does not fit its GPUs, a refusal when strict).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medo1 import chart
from medo1.launch.apicalls import DEFAULT_REQUEST_TIMEOUT_S
from medo1.launch.chain import RunScope, chain_stages
from medo1.launch.chain import launch_chain as _launch_chain
from medo1.launch.grace import apply_grace_period, grace_period_s
from medo1.launch.inputs import InputsMissing, StagePlan, check_inputs
from medo1.launch.kubernetes import DEFAULT_DELETE_WAIT_S
from medo1.launch.localprocess import local_command, run_local
from medo1.launch.pods import DEFAULT_SCALE_UP_WAIT_S, DEFAULT_STUCK_AFTER_S, JobStuck
from medo1.launch.preflight import PlanDoesNotFit, check_plan
from medo1.launch.rendering import (
    BACKENDS,
    bound_lifetime,
    build_job,
    build_pytorchjob,
    job_restarts,
    job_values,
    release_values,
    render_stage_job,
    stage_job,
    stage_section,
    stage_values,
)
from medo1.launch.waiting import (
    DEFAULT_POLL_S,
    DEFAULT_TIMEOUT_S,
    JobFailed,
    JobState,
    JobTimedOut,
    LaunchCancelled,
    LaunchError,
    LaunchResult,
    job_state,
    wait_for_job,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from kubeflow.trainer import TrainerClient
    from kubeflow.training import TrainingClient

__all__ = [
    "BACKENDS",
    "DEFAULT_POLL_S",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_SCALE_UP_WAIT_S",
    "DEFAULT_STUCK_AFTER_S",
    "DEFAULT_TIMEOUT_S",
    "InputsMissing",
    "JobFailed",
    "JobStuck",
    "JobState",
    "JobTimedOut",
    "LaunchCancelled",
    "LaunchError",
    "LaunchResult",
    "PlanDoesNotFit",
    "build_job",
    "build_pytorchjob",
    "check_chain_inputs",
    "job_state",
    "launch_chain",
    "launch_stage",
    "local_command",
    "stage_backend",
    "stage_job",
    "stage_values",
    "wait_for_job",
]


def stage_backend(stage: str, backend: str | None, values: dict) -> str:
    """The backend a stage runs on: `backend` when given, else the chart value `backend`. A stage Trainer v2 has
    no runtime for (translate, upload) runs as the chart's batch Job when the backend comes from the values."""
    if backend is not None:
        return backend
    chosen = chart.with_chart_defaults(values).get("backend") or "pytorchjob"
    if chosen == "trainjob":
        from medo1.launch.trainjob import DEFAULT_RUNTIME

        if stage not in DEFAULT_RUNTIME:
            return "pytorchjob"
    return chosen


def check_client(backend: str, client: object | None) -> None:
    """A client given for the backend the stage runs on: a TrainerClient (kubeflow.trainer, which keeps its
    Kubernetes clients on `.backend`) for trainjob, a TrainingClient (kubeflow.training) for pytorchjob. The
    backend may come from the values (a profile's `backend`), so a caller's client can be the other one."""
    if client is None or backend == "local":
        return
    trainer = getattr(client, "backend", None) is not None
    if backend == "trainjob" and not trainer:
        raise LaunchError(
            f"backend trainjob (Kubeflow Trainer v2) needs a TrainerClient (kubeflow.trainer), not a "
            f"{type(client).__name__}; for a PyTorchJob with this client pass backend 'pytorchjob'"
        )
    if backend == "pytorchjob" and trainer:
        raise LaunchError(
            f"backend pytorchjob needs a TrainingClient (kubeflow.training), not a "
            f"{type(client).__name__}; for a TrainJob with this client pass backend 'trainjob'"
        )


def _stage_plans(stages: Sequence[str], values: dict) -> list[StagePlan]:
    merged = chart.with_chart_defaults(values)
    token_secret = merged["secrets"]["hfToken"]
    plans = []
    for stage in stages:
        config = merged[stage_section(stage)][stage]
        gets_token = "hfToken" in (merged["stageSecrets"].get(stage) or []) and token_secret.get("name")
        plans.append(
            StagePlan(
                stage,
                config["recipe"],
                list(config.get("set", [])),
                os.environ.get(token_secret["key"]) if gets_token else None,
            )
        )
    return plans


def check_chain_inputs(
    *,
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    stages: Sequence[str] | None = None,
    local: bool = False,
) -> None:
    """Every enabled stage's inputs (`medo1.launch.inputs`) for chart values, before anything is created:
    InputsMissing names each missing one. `local`: run here (the volumes' paths are this machine's)."""
    values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    merged = chart.with_chart_defaults(values)
    mounts = [] if local else [merged["storage"][key]["mountPath"] for key in ("data", "checkpoints", "hfCache")]
    check_inputs(_stage_plans(stages or chain_stages(values), values), mounts)


def launch_stage(
    stage: str,
    *,
    backend: str | None = None,
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    job_name: str | None = None,
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    nproc: int | None = None,
    keep_on_timeout: bool = False,
    client: TrainingClient | TrainerClient | None = None,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    runtime: str | None = None,
    strict: bool = False,
    plan_check: bool = True,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> LaunchResult:
    """Run a stage to completion as the chart's job (backend `pytorchjob`: a PyTorchJob for `sft` / `rl`,
    a batch Job for `translate` / `eval` / `upload`), as a Kubeflow Trainer v2 TrainJob on the
    ClusterTrainingRuntime `runtime` (backend `trainjob`, `sft` / `rl` / `eval`, `client` a TrainerClient;
    see `medo1.launch.trainjob`) or on this machine (`local`); see `stage_job` for what runs. `backend` None:
    the chart value `backend` (see `stage_backend`).

    pytorchjob: `client` defaults to a TrainingClient on the in-cluster config inside a pod, else the
    kubeconfig; `namespace` to the pod's service-account namespace, else the kubeconfig context's.
    The Master pod's log goes to stdout while the job runs. The job's activeDeadlineSeconds is bounded
    by `timeout_s`, so it stops even if this launcher dies; at the timeout the launcher deletes it
    unless `keep_on_timeout`. A failed training job is created again up to runPolicy.jobRestarts times
    (`medo1.launch.retries`); a failed job whose Foreground delete has not finished after `delete_wait_s`
    is created again under another name. Every API call waits at most `request_timeout_s` for an answer.
    Cancelling (SIGTERM or SIGINT, when called in the main thread) deletes the job / stops the local
    run, then raises LaunchCancelled (its `signum` says which).

    Before anything is created, the stage's plan (`medo1 plan`, memory only) on the GPUs the values give it:
    when it does not fit, a warning, or with `strict` (or the chart value plan.strict) PlanDoesNotFit (exit
    code 3); a stage on no GPU is not checked. `plan_check` False: the caller checked it (the chain checks
    every stage before the first starts). A local run checks the stage's inputs too (InputsMissing).

    A pod stuck for `stuck_after_s` (a missing Secret or image, a failed mount, Unschedulable, admission
    refusing its pods, no controller acting on the job) fails the launch with JobStuck (the pod, the reason and
    the fix) and deletes the job; None waits instead. An Unschedulable pod waits `scale_up_wait_s` while the
    cluster autoscaler adds a node for it. A job Kueue keeps suspended waits for admission without counting
    against `timeout_s`.

    Raises LaunchError: JobFailed (reason, message and the end of the Master's log; local: exit code
    and the end of the output), JobTimedOut, LaunchCancelled, or bad values / names / API errors.
    """
    from medo1.launch import kubernetes

    backend = stage_backend(
        stage, backend, release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    )
    check_client(backend, client)
    waits = dict(scale_up_wait_s=scale_up_wait_s, delete_wait_s=delete_wait_s, request_timeout_s=request_timeout_s)
    if backend == "trainjob":
        from medo1.launch.trainjob import launch_trainjob

        if nproc is not None:
            raise LaunchError("nproc is for the local backend; pods take their shape from the cluster.* values")
        return launch_trainjob(
            stage,
            runtime=runtime,
            profile=profile,
            values_files=values_files,
            value_overrides=value_overrides,
            recipe=recipe,
            overrides=overrides,
            job_name=job_name,
            namespace=namespace,
            timeout_s=timeout_s,
            poll_s=poll_s,
            keep_on_timeout=keep_on_timeout,
            client=client,
            strict=strict,
            plan_check=plan_check,
            stuck_after_s=stuck_after_s,
            **waits,
        )
    if runtime is not None:
        raise LaunchError("a runtime is for the trainjob backend (Kubeflow Trainer v2)")
    # A local run has no namespace; the chart's default keeps its rendering valid.
    namespace = (namespace or kubernetes.default_namespace()) if backend == "pytorchjob" else chart.NAMESPACE
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
    job = render_stage_job(stage, values, job_name=job_name, namespace=namespace)
    if plan_check:
        check_plan(stage, values, strict=strict)
    if backend == "local":
        if plan_check:  # the chain checked every stage's inputs already
            merged = chart.with_chart_defaults(values)[stage_section(stage)][stage]
            check_inputs([StagePlan(stage, merged["recipe"], list(merged.get("set", [])), os.environ.get("HF_TOKEN"))])
        return run_local(stage, job, timeout_s)
    seconds, how = grace_period_s(stage, values)
    log.info("grace period (SIGTERM to SIGKILL): %s", how)
    apply_grace_period(job, seconds)
    restarts = job_restarts(values) if stage_section(stage) == "stages" else 0
    return kubernetes.run_on_cluster(
        stage,
        bound_lifetime(job, timeout_s),
        client or kubernetes.training_client(),
        timeout_s,
        poll_s,
        keep_on_timeout,
        restarts,
        stuck_after_s,
        **waits,
    )


def launch_chain(
    *,
    backend: str | None = None,
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    nproc: int | None = None,
    client: TrainingClient | None = None,
    trainer: TrainerClient | None = None,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    strict: bool = False,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    release: str | None = None,
    run_id: str | None = None,
) -> list[LaunchResult]:
    """Every enabled stage in order through `launch_stage` (see `medo1.launch.chain`); `timeout_s` is per
    stage, `nproc` applies to the training stages of a local run. `backend` None: the chart value `backend`,
    per stage (`stage_backend`: with `trainjob`, TrainJobs for sft / rl / eval on `trainer`, a TrainerClient,
    and batch Jobs for the others on `client`). Every stage's plan and inputs (`check_chain_inputs`) are
    checked before the first one starts, so a strict chain refuses a stage that does not fit, and any chain a
    stage whose data or model is missing, before any GPU hour is spent. `release` and `run_id` name the jobs
    `<release>-<stage>-<run id>` and, with a run id, place every stage's output under `<release>/<run id>`
    (`RunScope`)."""
    values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
    scope = RunScope.of(release, run_id)

    def stage_nproc(stage: str) -> int | None:
        return nproc if stage_section(stage) == "stages" else None

    stages = chain_stages(values)
    for stage in stages:
        # A TrainJob takes its shape from cluster.* as the PyTorchJob does.
        rendered_as = "local" if stage_backend(stage, backend, values) == "local" else "pytorchjob"
        check_plan(
            stage,
            job_values(
                stage,
                backend=rendered_as,
                profile=profile,
                values_files=values_files,
                value_overrides=value_overrides,
                nproc=stage_nproc(stage),
            ),
            strict=strict,
        )
    check_chain_inputs(
        profile=profile,
        values_files=values_files,
        value_overrides=value_overrides,
        stages=stages,
        local=backend == "local",
    )

    def launch(stage: str, **options) -> LaunchResult:
        chosen = stage_backend(stage, backend, values)
        return launch_stage(
            stage,
            **options,
            backend=chosen,
            client=trainer if chosen == "trainjob" else client,
            nproc=stage_nproc(stage),
            plan_check=False,
        )

    settings = dict(
        namespace=namespace,
        timeout_s=timeout_s,
        poll_s=poll_s,
        stuck_after_s=stuck_after_s,
        scale_up_wait_s=scale_up_wait_s,
        delete_wait_s=delete_wait_s,
        request_timeout_s=request_timeout_s,
    )
    return _launch_chain(
        profile=profile,
        values_files=values_files,
        value_overrides=value_overrides,
        launch=functools.partial(launch, **settings),
        scope=scope,
    )
