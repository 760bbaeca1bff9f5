"""Launching a training stage. The PyTorchJob comes from the Helm chart (one source for the pod spec);
the `pytorchjob` backend creates it through the Kubeflow training SDK, streams the Master pod's log
and waits on the status conditions Training Operator v1 writes (Created, Running, Restarting,
Succeeded, Failed). The `local` backend runs the same container command under torchrun here.

`launch_stage` is what the Kubeflow pipeline's training steps call, and it is safe to retry: a job of
the same name is followed while it runs, reported when it already succeeded, and replaced when it
failed (the pod command's `--resume auto` continues from the last complete checkpoint). SIGTERM (how
Kubeflow Pipelines cancels a step) and SIGINT delete the job, or stop the local run, before exiting.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medo1 import k8s
from medo1.config import ConfigError, StageError, apply_overrides, read_yaml_mapping

if TYPE_CHECKING:
    from kubeflow.training import TrainingClient

log = logging.getLogger("medo1.launch")

TERMINAL = ("Succeeded", "Failed")
BACKENDS = ("pytorchjob", "local")
CONTAINER = k8s.MAIN_CONTAINER["PyTorchJob"]
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_POLL_S = 10.0
TAIL_LINES = 40
LOG_DRAIN_S = 10.0
POD_RECHECK_S = 5.0
STOP_GRACE_S = 30.0
API_ERRORS_TOLERATED = 5
# What the operator's admission webhook requires of a PyTorchJob name.
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63


class LaunchError(StageError):
    pass


class JobFailed(LaunchError):
    def __init__(self, message: str, state: JobState):
        super().__init__(message)
        self.state = state


class JobTimedOut(LaunchError):
    pass


class LaunchCancelled(LaunchError):
    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


def build_pytorchjob(stage: str, values: dict[str, Any] | None = None, release: str = k8s.RELEASE,
                     namespace: str = k8s.NAMESPACE) -> dict[str, Any]:
    """The chart's PyTorchJob for one stage (`sft` or `rl`), every other stage and Job switched off."""
    values = copy.deepcopy(values or {})
    chart_values = k8s.chart_defaults()
    stages = values.setdefault("stages", {})
    for name in chart_values["stages"]:
        stages.setdefault(name, {}).update(enabled=name == stage)
    for name in chart_values.get("jobs", {}):
        values.setdefault("jobs", {}).setdefault(name, {}).update(enabled=False)
    values["backend"] = "pytorchjob"
    jobs = [o for o in k8s.render_chart(values, release, namespace) if o["kind"] == "PyTorchJob"]
    if len(jobs) != 1:
        raise LaunchError(f"stage {stage!r} rendered {len(jobs)} PyTorchJobs; known stages: {sorted(chart_values['stages'])}")
    job = jobs[0]
    job["metadata"]["namespace"] = namespace
    return job


@dataclass(frozen=True)
class JobState:
    phase: str
    """Created, Running, Restarting, Succeeded, Failed, or Pending before any condition."""
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL


def job_state(job: dict[str, Any]) -> JobState:
    """The job's current phase: a terminal condition wins, else the newest condition that is True."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]
    for phase in TERMINAL:
        for condition in conditions:
            if condition.get("type") == phase:
                return JobState(phase, condition.get("reason", ""), condition.get("message", ""))
    if not conditions:
        return JobState("Pending")
    newest = max(conditions, key=lambda c: c.get("lastTransitionTime") or c.get("lastUpdateTime") or "")
    return JobState(newest.get("type", "Pending"), newest.get("reason", ""), newest.get("message", ""))


def wait_for_job(
    read_job: Callable[[], dict[str, Any]],
    timeout_s: float,
    poll_s: float = DEFAULT_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobState:
    """Poll until Succeeded (returned) or Failed (JobFailed with the job's reason) or timeout (JobTimedOut)."""
    deadline = clock() + timeout_s
    last_phase = None
    restarts = 0
    while True:
        state = job_state(read_job())
        if state.phase != last_phase:
            if state.phase == "Restarting":
                restarts += 1
            log.info("job %s%s", state.phase, f" ({state.reason}: {state.message})" if state.reason else "")
            last_phase = state.phase
        if state.phase == "Succeeded":
            return state
        if state.phase == "Failed":
            raise JobFailed(f"job failed: {state.reason or 'no reason given'}: {state.message}".rstrip(": "), state)
        if clock() >= deadline:
            raise JobTimedOut(
                f"job still {state.phase} after {timeout_s:.0f} s (restarted {restarts} time(s)); last: "
                f"{state.reason or '-'} {state.message}".rstrip()
            )
        sleep(poll_s)


# ---- what to launch ------------------------------------------------------------------------------


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merged as Helm merges them: mappings key by key; anything else, lists too, replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_values(path: str | Path) -> dict[str, Any]:
    try:
        return read_yaml_mapping(path, "values file")
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None


def stage_values(
    stage: str,
    *,
    profile: str | None = None,
    values_files: Iterable[str | Path] = (),
    value_overrides: Iterable[str] = (),
    recipe: str | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Chart values for one stage: the profile (helm/profiles/NAME.yaml), then each values file, then
    `key.path=value` overrides (the value parsed as YAML); then `recipe` replaces the stage's recipe and
    `overrides` (recipe `key=value` overrides) are appended to the stage's `set` list, so they win."""
    defaults = k8s.chart_defaults()
    if stage not in defaults["stages"]:
        raise LaunchError(f"unknown stage {stage!r}; training stages: {', '.join(sorted(defaults['stages']))}")
    values: dict[str, Any] = {}
    if profile:
        try:
            values = k8s.load_profile(profile)
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
    for path in values_files:
        values = _merge(values, _read_values(path))
    try:
        values = apply_overrides(values, list(value_overrides))
    except ConfigError as exc:
        raise LaunchError(f"chart value {exc}") from None
    stage_config = values.setdefault("stages", {}).setdefault(stage, {})
    if recipe:
        stage_config["recipe"] = str(recipe)
    overrides = list(overrides)
    if overrides:
        stage_config["set"] = [*stage_config.get("set", defaults["stages"][stage].get("set", [])), *overrides]
    return values


def check_job_name(job: dict[str, Any]) -> None:
    """The operator's webhook wants a DNS-1035 label, and the operator names a Service per replica
    `<name>-<role>-<index>`, which must fit in 63 characters too."""
    name = job["metadata"]["name"]
    if not DNS1035_LABEL.match(name):
        raise LaunchError(f"job name {name!r}: use lower-case letters, digits and '-', starting with a letter "
                          "and ending with a letter or digit")
    services = [f"{name}-{role.lower()}-{int(spec.get('replicas', 1)) - 1}"
                for role, spec in job["spec"]["pytorchReplicaSpecs"].items()]
    longest = max(services, key=len)
    if len(longest) > MAX_NAME:
        raise LaunchError(f"job name {name!r} is too long: the operator would name a Service {longest!r}, "
                          f"over {MAX_NAME} characters")


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
    namespace: str = k8s.NAMESPACE,
    nproc: int | None = None,
) -> dict[str, Any]:
    """The PyTorchJob `launch_stage` runs: the chart's rendering for `stage_values(...)`, named
    `job_name` (default: the chart's `<release>-<stage>`). For the `local` backend it is one node, and
    `nproc` makes it that many CPU processes (cluster.gpusPerNode=0, cluster.cpuProcsPerNode=nproc)."""
    if backend not in BACKENDS:
        raise LaunchError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    values = stage_values(stage, profile=profile, values_files=values_files, value_overrides=value_overrides,
                          recipe=recipe, overrides=overrides)
    if backend == "local":
        values = _merge(values, {"cluster": {"nodes": 1}})
        if nproc is not None:
            if nproc < 1:
                raise LaunchError(f"nproc must be at least 1, not {nproc}")
            values = _merge(values, {"cluster": {"gpusPerNode": 0, "cpuProcsPerNode": nproc}})
    elif nproc is not None:
        raise LaunchError("nproc is for the local backend; pods take their shape from the cluster.* values")
    job = build_pytorchjob(stage, values, namespace=namespace)
    if job_name:
        job["metadata"]["name"] = job_name
    check_job_name(job)
    return job


@dataclass(frozen=True)
class LaunchResult:
    stage: str
    backend: str
    job_name: str
    namespace: str | None
    """None for the local backend."""
    state: JobState
    """The job's final state (Succeeded); for local runs JobState("Succeeded")."""
    action: str
    """pytorchjob: created, attached (it was already running), recreated (it had failed) or
    already-succeeded; local: ran."""


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
    client: TrainingClient | None = None,
) -> LaunchResult:
    """Run a training stage (`sft` or `rl`) to completion as the chart's PyTorchJob (backend
    `pytorchjob`) or under torchrun on this machine (`local`); see `stage_job` for what runs.

    pytorchjob: `client` defaults to a TrainingClient on the in-cluster config inside a pod, else the
    kubeconfig; `namespace` to the pod's service-account namespace, else the kubeconfig context's.
    The Master pod's log goes to stdout while the job runs. Timeout (`timeout_s` from the start) deletes
    the job unless `keep_on_timeout`. Cancelling (SIGTERM or SIGINT, when called in the main thread)
    deletes the job / stops the local run, then raises LaunchCancelled (its `signum` says which).

    Raises LaunchError: JobFailed (reason, message and the end of the Master's log; local: exit code
    and the end of the output), JobTimedOut, LaunchCancelled, or bad values / names / API errors.
    """
    # A local run has no namespace; the chart's default keeps its rendering valid.
    namespace = (namespace or _default_namespace()) if backend == "pytorchjob" else k8s.NAMESPACE
    job = stage_job(stage, backend=backend, profile=profile, values_files=values_files,
                    value_overrides=value_overrides, recipe=recipe, overrides=overrides, job_name=job_name,
                    namespace=namespace, nproc=nproc)
    if backend == "local":
        return _run_local(stage, job, timeout_s)
    return _run_pytorchjob(stage, job, client or _training_client(), timeout_s, poll_s, keep_on_timeout)


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[None]:
    """SIGTERM (Kubeflow Pipelines cancels a step by deleting its pod) and SIGINT raise LaunchCancelled
    in the main thread, so that the caller cleans up; signals after the first are ignored while it does.
    Python delivers signals to the main thread only, so elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def cancel(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise LaunchCancelled(signum)

    previous = {signum: signal.signal(signum, cancel) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _tail_text(lines: Iterable[str], source: str) -> str:
    lines = list(lines)
    if not lines:
        return f"\n(nothing from {source})"
    return f"\nlast {len(lines)} lines of {source}:\n" + "\n".join(lines)


# ---- pytorchjob backend --------------------------------------------------------------------------


def _training_client() -> TrainingClient:
    from kubeflow.training import TrainingClient
    from kubernetes.config import ConfigException

    try:
        return TrainingClient()  # in-cluster config inside a pod, else the kubeconfig
    except ConfigException as exc:
        raise LaunchError(f"no Kubernetes configuration: {exc}") from None


def _default_namespace() -> str:
    from kubeflow.training.utils.utils import get_default_target_namespace

    return get_default_target_namespace().strip()


def _api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (the SDK raises RuntimeError from the kubernetes ApiException)."""
    from kubernetes.client.rest import ApiException

    return exc.__cause__.status if isinstance(exc.__cause__, ApiException) else None


def _api_message(exc: BaseException) -> str:
    import json

    from kubernetes.client.rest import ApiException

    cause = exc.__cause__
    if not isinstance(cause, ApiException):
        return str(exc)
    try:
        message = json.loads(cause.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = cause.reason
    return f"{cause.status} {message}"


class _PyTorchJobs:
    """One PyTorchJob through the Kubeflow training SDK's TrainingClient."""

    def __init__(self, client: TrainingClient, name: str, namespace: str):
        self.client, self.name, self.namespace = client, name, namespace
        self.where = f"PyTorchJob {namespace}/{name}"

    def get(self) -> dict[str, Any] | None:
        """The job as the API returns it (camelCase), or None when there is none."""
        try:
            job = self.client.get_job(self.name, self.namespace)
        except (RuntimeError, TimeoutError) as exc:
            if _api_status(exc) == 404:
                return None
            raise LaunchError(f"could not read {self.where}: {_api_message(exc)}") from None
        return self.client.api_client.sanitize_for_serialization(job)

    def create(self, job: dict[str, Any]) -> bool:
        """False when a job of that name exists already."""
        from kubeflow.training import models
        from kubeflow.training.utils.utils import FakeResponse

        # create_job takes only the SDK's model class. The spec stays the chart's dict inside it (the
        # serializer passes dicts through), so the body sent is exactly the chart's rendering: the
        # models would change it, e.g. the GPU limit 8 into "8".
        metadata = self.client.api_client.deserialize(FakeResponse(job["metadata"]), "V1ObjectMeta")
        model = models.KubeflowOrgV1PyTorchJob(api_version=job["apiVersion"], kind=job["kind"], metadata=metadata,
                                               spec=job["spec"])
        try:
            self.client.create_job(model, namespace=self.namespace)
        except (RuntimeError, TimeoutError) as exc:
            if _api_status(exc) == 409:
                return False
            raise LaunchError(f"could not create {self.where}: {_api_message(exc)}") from None
        return True

    def delete(self, propagation: str) -> None:
        from kubeflow.training import models

        try:
            self.client.delete_job(self.name, self.namespace,
                                   delete_options=models.V1DeleteOptions(propagation_policy=propagation))
        except (RuntimeError, TimeoutError) as exc:
            if _api_status(exc) != 404:
                raise LaunchError(f"could not delete {self.where}: {_api_message(exc)}") from None
        log.info("deleted %s (propagation %s)", self.where, propagation)

    def master_pods(self) -> list[Any]:
        return self.client.get_job_pods(self.name, self.namespace, is_master=True)

    def open_log(self, pod: str, since_seconds: int | None) -> Any:
        # Not the SDK's get_job_logs(follow=True): it returns only when the container exits, skips pods
        # not yet started, does not follow a restarted container, and its reader threads are not
        # daemons (a cancelled launcher would hang on them).
        extra = {"since_seconds": since_seconds} if since_seconds else {}
        return self.client.core_api.read_namespaced_pod_log(
            pod, self.namespace, container=CONTAINER, follow=True, timestamps=True, _preload_content=False, **extra
        )


def _sortable_time(stamp: str) -> str:
    """Kubelet's RFC 3339 log timestamp (UTC; nanoseconds, trailing zeros trimmed) as a string that sorts by time."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction:0<9}"


@dataclass(frozen=True)
class _ContainerRun:
    pod: str
    key: tuple[str, int]
    """(pod uid, restart count): a restart in place or a new pod is a new run."""
    running: bool


class MasterLogFollower:
    """Prints the Master pod's training-container log to stdout as it is written, from a daemon thread,
    and keeps its last lines for error messages. It waits for the pod to start, follows every run of the
    container (a restart in place or a new pod), and after a dropped connection picks the same run up
    again without printing a line twice (the log comes with kubelet's timestamps to tell)."""

    def __init__(self, jobs: _PyTorchJobs, recheck_s: float = POD_RECHECK_S):
        self._jobs = jobs
        self._recheck_s = recheck_s
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stopping = threading.Event()
        self._response: Any = None
        self._last_stamp = ""
        self._last_wall = 0.0
        self._thread = threading.Thread(target=self._run, name="master-log", daemon=True)

    def start(self) -> MasterLogFollower:
        self._thread.start()
        return self

    def stop(self, drain_s: float) -> None:
        """Stop once the log of the run being followed has ended, waiting at most drain_s for that."""
        self._stopping.set()
        self._thread.join(drain_s)
        response = self._response
        if response is not None and self._thread.is_alive():
            # Not close(): closing a stream another thread is blocked reading from waits for that read.
            # Shutting the socket down ends the read; the follower thread then releases the connection.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()
            self._thread.join(max(drain_s, 1.0))

    def _run(self) -> None:
        followed = None
        while True:
            run = self._current_run()
            if run is not None and run.key != followed:
                followed, self._last_stamp = run.key, ""
                self._follow(run, resume=False)
            elif self._stopping.is_set():
                return
            elif run is not None and run.running:
                # Its log ended while it runs: the connection dropped, or the pod status lags its exit.
                if not self._stopping.wait(self._recheck_s):
                    self._follow(run, resume=bool(self._last_stamp))
            else:
                self._stopping.wait(self._recheck_s)

    def _current_run(self) -> _ContainerRun | None:
        try:
            pods = self._jobs.master_pods()
        except (RuntimeError, TimeoutError) as exc:
            log.debug("listing the pods of %s: %s", self._jobs.where, exc)
            return None
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        for pod in sorted(live, key=lambda p: str(p.metadata.creation_timestamp or ""), reverse=True):
            for status in (pod.status and pod.status.container_statuses) or []:
                if status.name == CONTAINER and status.state and (status.state.running or status.state.terminated):
                    return _ContainerRun(pod.metadata.name, (pod.metadata.uid, status.restart_count),
                                         bool(status.state.running))
        return None

    def _follow(self, run: _ContainerRun, resume: bool) -> None:
        from kubernetes.client.rest import ApiException
        from kubernetes.watch.watch import iter_resp_lines
        from urllib3.exceptions import HTTPError

        since_seconds = math.ceil(time.time() - self._last_wall) + 5 if resume else None
        printed_through = self._last_stamp if resume else ""
        try:
            self._response = self._jobs.open_log(run.pod, since_seconds)
            for line in iter_resp_lines(self._response):
                stamp, _, text = line.partition(" ")
                stamp = _sortable_time(stamp)
                if stamp <= printed_through:
                    continue
                self._last_stamp, self._last_wall = stamp, time.time()
                print(text, flush=True)
                self.tail.append(text)
        except (ApiException, HTTPError, OSError) as exc:  # a pod gone, a container not started, a dropped stream: _run looks again
            log.debug("log of %s: %s", run.pod, exc)
        finally:
            response, self._response = self._response, None
            if response is not None:
                response.release_conn()


def _status_reader(jobs: _PyTorchJobs) -> Callable[[], dict[str, Any]]:
    """Reads the job for wait_for_job, riding out a few failed API calls in a row (an hours-long wait
    should not fail on one blip)."""
    last: dict[str, Any] = {}
    failures = 0

    def read() -> dict[str, Any]:
        nonlocal last, failures
        try:
            job = jobs.get()
        except LaunchError as exc:
            failures += 1
            if failures > API_ERRORS_TOLERATED:
                raise
            log.warning("%s (%d of %d failures in a row tolerated)", exc, failures, API_ERRORS_TOLERATED)
            return last
        failures = 0
        if job is None:
            raise LaunchError(f"{jobs.where} was deleted while waiting for it")
        last = job
        return job

    return read


def _wait_gone(jobs: _PyTorchJobs, deadline: float, poll_s: float) -> None:
    while jobs.get() is not None:
        if time.monotonic() >= deadline:
            raise JobTimedOut(f"{jobs.where} was still being deleted at the timeout")
        time.sleep(poll_s)


def _submit(jobs: _PyTorchJobs, job: dict[str, Any], deadline: float, poll_s: float) -> tuple[str, JobState | None]:
    """Create the job, or take over the one an earlier attempt of this step left: (action, the final
    state when there is nothing to wait for)."""
    existing = jobs.get()
    action = "created"
    if existing is not None:
        state = job_state(existing)
        if existing["metadata"].get("deletionTimestamp"):
            log.info("%s is being deleted; creating it again once it is gone", jobs.where)
            _wait_gone(jobs, deadline, poll_s)
        elif state.phase == "Succeeded":
            log.info("%s already succeeded", jobs.where)
            return "already-succeeded", state
        elif state.phase == "Failed":
            log.info("%s failed before (%s: %s); replacing it, to resume from its last complete checkpoint",
                     jobs.where, state.reason, state.message)
            # Foreground: the old job stays until its pods are gone, so the new job's pods (same names)
            # never meet them.
            jobs.delete("Foreground")
            _wait_gone(jobs, deadline, poll_s)
            action = "recreated"
        else:
            log.info("%s is already %s; following it", jobs.where, state.phase)
            return "attached", None
    if not jobs.create(job):
        log.info("%s was created meanwhile by someone else; following it", jobs.where)
        return "attached", None
    log.info("created %s", jobs.where)
    return action, None


def _run_pytorchjob(stage: str, job: dict[str, Any], client: TrainingClient, timeout_s: float, poll_s: float,
                    keep_on_timeout: bool) -> LaunchResult:
    jobs = _PyTorchJobs(client, job["metadata"]["name"], job["metadata"]["namespace"])
    deadline = time.monotonic() + timeout_s
    follower = None
    with _cancel_on_signals():
        try:
            action, state = _submit(jobs, job, deadline, poll_s)
            if state is None:
                follower = MasterLogFollower(jobs, min(poll_s, POD_RECHECK_S)).start()
                try:
                    state = wait_for_job(_status_reader(jobs), max(0.0, deadline - time.monotonic()), poll_s)
                except JobFailed as exc:
                    follower.stop(LOG_DRAIN_S)
                    raise JobFailed(f"{jobs.where}: {exc}{_tail_text(follower.tail, 'the Master pod log')}",
                                    exc.state) from None
                except JobTimedOut as exc:
                    follower.stop(0)
                    if keep_on_timeout:
                        raise JobTimedOut(f"{jobs.where}: {exc}; left it running") from None
                    jobs.delete("Background")
                    raise JobTimedOut(f"{jobs.where}: {exc}; deleted it") from None
                follower.stop(LOG_DRAIN_S)
        except LaunchCancelled as exc:
            if follower is not None:
                follower.stop(0)
            # Background: returns at once and the garbage collector removes the pods; the step's pod has
            # only its termination grace period left.
            try:
                jobs.delete("Background")
            except LaunchError as delete_error:
                raise LaunchCancelled(exc.signum, f"{exc}; {delete_error}") from None
            raise LaunchCancelled(exc.signum, f"{exc}; deleted {jobs.where}") from None
    return LaunchResult(stage, "pytorchjob", jobs.name, jobs.namespace, state, action)


# ---- local backend -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_command(job: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The Master container's command and environment for a run on this machine: the torchrun beside
    this Python; the container's literal env plus what the operator injects (one node, 127.0.0.1, a
    free port). An env value pointing into a volume mount that does not exist here (HF_HOME=/hf-cache)
    is dropped so the user's own setting applies; to use a local folder, set storage.<volume>.mountPath.
    Secret env vars (secretKeyRef) are not in the result: the run inherits them from this environment
    when they are set here."""
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    container = next(c for c in template["spec"]["containers"] if c["name"] == CONTAINER)
    command = [*container.get("command", []), *container.get("args", [])]
    if not command or command[0] != "torchrun":
        raise LaunchError(f"the {CONTAINER} container runs {command[:1]}, not torchrun")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        raise LaunchError(f"no torchrun beside {sys.executable}")
    missing_mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if not Path(m["mountPath"]).exists()]
    env = {}
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            value = str(var["value"])
            mount = next((m for m in missing_mounts if value == m or value.startswith(m.rstrip("/") + "/")), None)
            if mount is not None:
                log.info("not setting %s: it points into the volume mount %s, which does not exist here", name, mount)
                continue
            env[name] = value
        elif "secretKeyRef" in var.get("valueFrom", {}):
            log.info("%s comes from Secret %s in a pod; here from this environment (%s)", name,
                     var["valueFrom"]["secretKeyRef"].get("name"), "set" if name in os.environ else "not set")
        else:
            log.warning("not setting %s: %s has no local equivalent", name, ", ".join(var.get("valueFrom", {})))
    env.update(k8s.operator_env(job, pod_index=0, master_addr="127.0.0.1", master_port=_free_port()))
    return [str(torchrun), *command[1:]], env


def _relay(stream: Iterable[str], tail: deque[str]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        print(line, flush=True)
        tail.append(line)


def _stop_process_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _run_local(stage: str, job: dict[str, Any], timeout_s: float) -> LaunchResult:
    command, env = local_command(job)
    log.info("running %s here: %s", stage, shlex.join(command))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = None
    with _cancel_on_signals():
        try:
            # A process group of its own, so that a signal reaches torchrun and its workers alike.
            process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
            relay = threading.Thread(target=_relay, args=(process.stdout, tail), name="local-output", daemon=True)
            relay.start()
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop_process_group(process, signal.SIGTERM)
                raise JobTimedOut(f"local {stage} run still going after {timeout_s:.0f} s; stopped it"
                                  f"{_tail_text(tail, 'its output')}") from None
            relay.join(LOG_DRAIN_S)
        except LaunchCancelled as exc:
            if process is not None:
                _stop_process_group(process, exc.signum)
            raise LaunchCancelled(exc.signum, f"{exc}; stopped the local {stage} run") from None
    if code != 0:
        raise JobFailed(f"local {stage} run exited with code {code}{_tail_text(tail, 'its output')}",
                        JobState("Failed", "ExitCode", f"exit code {code}"))
    return LaunchResult(stage, "local", job["metadata"]["name"], None, JobState("Succeeded"), action="ran")
