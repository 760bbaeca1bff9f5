"""Launching a stage. The job comes from the Helm chart (one source for the pod spec); a backend runs
it. `pytorchjob` (the cluster): a training stage as a PyTorchJob created through the Kubeflow training
SDK, a single-pod stage (translate, eval, upload) as a batch Job; the Master pod's log streamed; the
status conditions waited on. `local`: the same container command on this machine (torchrun).

`launch_stage` is what the Kubeflow pipeline's training steps and the chart's run Job call, and it is
safe to retry: a job of the same name is followed while it runs, reported when it already succeeded,
and replaced when it failed (the pod command's `--resume auto` continues from the last complete
checkpoint). A failed training job is restarted whole up to `runPolicy.jobRestarts` times. SIGTERM (how
Kubeflow Pipelines cancels a step) and SIGINT delete the job, or stop the local run, before exiting.
`launch_chain` runs every enabled stage in order.

Modules, one concern each (after kubeflow/sdk's `kubeflow/trainer/backends/` layout): `rendering`
(values -> the chart's job), `waiting` (states, errors, the wait), `kubernetes` (the cluster backend),
`logs` (following the Master's log), `pods` (failing fast on a stuck pod), `trainjob` (Kubeflow
Trainer v2: a TrainJob on the chart's ClusterTrainingRuntimes through the Kubeflow SDK's TrainerClient),
`localprocess` (the local backend), `chain` (stages in order), `preflight` (the stage's plan before its job
is created: a warning when it does not fit its GPUs, a refusal when strict).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medo1 import k8s
from medo1.launch.chain import RunScope, chain_stages
from medo1.launch.chain import launch_chain as _launch_chain
from medo1.launch.localprocess import local_command, run_local
from medo1.launch.pods import DEFAULT_STUCK_AFTER_S, JobStuck
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

if TYPE_CHECKING:
    from kubeflow.trainer import TrainerClient
    from kubeflow.training import TrainingClient

__all__ = [
    "BACKENDS", "DEFAULT_POLL_S", "DEFAULT_STUCK_AFTER_S", "DEFAULT_TIMEOUT_S", "JobFailed", "JobStuck", "JobState", "JobTimedOut", "LaunchCancelled",
    "LaunchError", "LaunchResult", "PlanDoesNotFit", "build_job", "build_pytorchjob", "job_state", "launch_chain",
    "launch_stage", "local_command", "stage_job", "stage_values", "wait_for_job",
]


def launch_stage(
    stage: str,
    *,
    backend: str = "pytorchjob",
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
) -> LaunchResult:
    """Run a stage to completion as the chart's job (backend `pytorchjob`: a PyTorchJob for `sft` / `rl`,
    a batch Job for `translate` / `eval` / `upload`), as a Kubeflow Trainer v2 TrainJob on the
    ClusterTrainingRuntime `runtime` (backend `trainjob`, `sft` / `rl` / `eval`, `client` a TrainerClient;
    see `medo1.launch.trainjob`) or on this machine (`local`); see `stage_job` for what runs.

    pytorchjob: `client` defaults to a TrainingClient on the in-cluster config inside a pod, else the
    kubeconfig; `namespace` to the pod's service-account namespace, else the kubeconfig context's.
    The Master pod's log goes to stdout while the job runs. The job's activeDeadlineSeconds is bounded
    by `timeout_s`, so it stops even if this launcher dies; at the timeout the launcher deletes it
    unless `keep_on_timeout`. A failed training job is created again up to runPolicy.jobRestarts times.
    Cancelling (SIGTERM or SIGINT, when called in the main thread) deletes the job / stops the local
    run, then raises LaunchCancelled (its `signum` says which).

    Before anything is created, the stage's plan (`medo1 plan`, memory only) on the GPUs the values give it:
    when it does not fit, a warning, or with `strict` (or the chart value plan.strict) PlanDoesNotFit (exit
    code 3); a stage on no GPU is not checked. `plan_check` False: the caller checked it (the chain checks
    every stage before the first starts).

    A pod stuck for `stuck_after_s` (a missing Secret or image, a failed mount, Unschedulable) fails the
    launch with JobStuck (the pod, the reason and the fix) and deletes the job; None waits instead. A
    job Kueue keeps suspended waits for admission without counting against `timeout_s`.

    Raises LaunchError: JobFailed (reason, message and the end of the Master's log; local: exit code
    and the end of the output), JobTimedOut, LaunchCancelled, or bad values / names / API errors.
    """
    from medo1.launch import kubernetes

    if backend == "trainjob":
        from medo1.launch.trainjob import launch_trainjob

        if nproc is not None:
            raise LaunchError("nproc is for the local backend; pods take their shape from the cluster.* values")
        return launch_trainjob(stage, runtime=runtime, profile=profile, values_files=values_files,
                               value_overrides=value_overrides, recipe=recipe, overrides=overrides, job_name=job_name,
                               namespace=namespace, timeout_s=timeout_s, poll_s=poll_s,
                               keep_on_timeout=keep_on_timeout, client=client, strict=strict, plan_check=plan_check)
    if runtime is not None:
        raise LaunchError("a runtime is for the trainjob backend (Kubeflow Trainer v2)")
    # A local run has no namespace; the chart's default keeps its rendering valid.
    namespace = (namespace or kubernetes.default_namespace()) if backend == "pytorchjob" else k8s.NAMESPACE
    values = job_values(stage, backend=backend, profile=profile, values_files=values_files,
                        value_overrides=value_overrides, recipe=recipe, overrides=overrides, nproc=nproc)
    job = render_stage_job(stage, values, job_name=job_name, namespace=namespace)
    if plan_check:
        check_plan(stage, values, strict=strict)
    if backend == "local":
        return run_local(stage, job, timeout_s)
    restarts = job_restarts(values) if stage_section(stage) == "stages" else 0
    return kubernetes.run_on_cluster(stage, bound_lifetime(job, timeout_s), client or kubernetes.training_client(),
                                     timeout_s, poll_s, keep_on_timeout, restarts, stuck_after_s)


def launch_chain(
    *,
    backend: str = "pytorchjob",
    profile: str | None = None,
    values_files: Sequence[str | Path] = (),
    value_overrides: Sequence[str] = (),
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    nproc: int | None = None,
    client: TrainingClient | None = None,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    strict: bool = False,
    release: str | None = None,
    run_id: str | None = None,
) -> list[LaunchResult]:
    """Every enabled stage in order through `launch_stage` (see `medo1.launch.chain`); `timeout_s` is per
    stage, `nproc` applies to the training stages of a local run. Every stage's plan is checked before the
    first one starts, so a strict chain refuses a stage that does not fit before any GPU hour is spent.
    `release` and `run_id` name the jobs `<release>-<stage>-<run id>` and, with a run id, place every stage's
    output under `<release>/<run id>` (`RunScope`)."""
    scope = RunScope.of(release, run_id)

    def stage_nproc(stage: str) -> int | None:
        return nproc if stage_section(stage) == "stages" else None

    # A TrainJob takes its shape from cluster.* as the PyTorchJob does.
    rendered_as = "local" if backend == "local" else "pytorchjob"
    for stage in chain_stages(release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)):
        check_plan(stage, job_values(stage, backend=rendered_as, profile=profile, values_files=values_files,
                                     value_overrides=value_overrides, nproc=stage_nproc(stage)), strict=strict)

    def launch(stage: str, **options) -> LaunchResult:
        return launch_stage(stage, **options, nproc=stage_nproc(stage), plan_check=False)

    settings = dict(backend=backend, namespace=namespace, timeout_s=timeout_s, poll_s=poll_s, client=client,
                    stuck_after_s=stuck_after_s)
    return _launch_chain(profile=profile, values_files=values_files, value_overrides=value_overrides,
                         launch=functools.partial(launch, **settings), scope=scope)
