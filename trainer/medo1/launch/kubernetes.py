"""The cluster backend: the stage's job created through the Kubeflow training SDK's TrainingClient (a
PyTorchJob; a batch Job through the same client's Kubernetes API), its Master pod's log followed, its
status waited on. Safe to retry: a job of the same name is followed while it runs, reported when it
already succeeded, and replaced when it failed with restarts left (`medo1.launch.retries`: the count is kept
on the job, so a retried launcher never adds attempts, and a failure a restart cannot cure is not
restarted). A failed training job is created again up to `restarts` times (whole-job restart: every pod
starts together and resumes from the last complete checkpoint). A replaced job is deleted in the foreground
(its pods gone before the new ones start); when that has not finished after `delete_wait_s` (pods stuck
Terminating on a dead node), the new job is created beside it under another name (`<name>-r<attempt>`, so
new pod names), which a later launcher finds by its `medo1.io/job` label. Every job it creates is marked
`app.kubernetes.io/managed-by: medo1` and, in the chart's run pod, owned by the run Job
(`medo1.launch.launcherpod`). Every API call is bounded in time (`medo1.launch.apicalls`)."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medo1 import chart
from medo1.launch.apicalls import DEFAULT_REQUEST_TIMEOUT_S, FOLLOW_TIMEOUT, bound_requests, describe_unanswered
from medo1.launch.launcherpod import LauncherPod
from medo1.launch.logs import POD_RECHECK_S, MasterLogFollower
from medo1.launch.pods import (
    DEFAULT_SCALE_UP_WAIT_S,
    DEFAULT_STUCK_AFTER_S,
    POD_SELECTOR,
    JobStuck,
    pod_reader,
    stuck_checker,
)
from medo1.launch.retries import ATTEMPT, BASE_NAME, FINAL, attempt, final_reason, incurable, mark
from medo1.launch.waiting import (
    JobFailed,
    JobState,
    JobTimedOut,
    LaunchCancelled,
    LaunchError,
    LaunchResult,
    cancel_on_signals,
    job_state,
    tail_text,
    wait_for_job,
)

if TYPE_CHECKING:
    from kubeflow.training import TrainingClient

log = logging.getLogger(__name__)

LOG_DRAIN_S = 10.0
API_ERRORS_TOLERATED = 5
DEFAULT_DELETE_WAIT_S = 300.0


def training_client() -> TrainingClient:
    from kubeflow.training import TrainingClient
    from kubernetes.config import ConfigException

    try:
        return TrainingClient()  # in-cluster config inside a pod, else the kubeconfig
    except ConfigException as exc:
        raise LaunchError(f"no Kubernetes configuration: {exc}") from None


def default_namespace() -> str:
    from kubeflow.training.utils.utils import get_default_target_namespace

    return get_default_target_namespace().strip()


def _api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error: the SDK raises RuntimeError from the kubernetes ApiException."""
    from kubernetes.client.rest import ApiException

    cause = exc if isinstance(exc, ApiException) else exc.__cause__
    return cause.status if isinstance(cause, ApiException) else None


def _api_message(exc: BaseException, host: str = "") -> str:
    from kubernetes.client.rest import ApiException

    unanswered = describe_unanswered(exc, host)
    if unanswered:
        return unanswered
    cause = exc if isinstance(exc, ApiException) else exc.__cause__
    if not isinstance(cause, ApiException):
        return str(exc)
    try:
        message = json.loads(cause.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = cause.reason
    return f"{cause.status} {message}"


def _cancel_inside(exc: BaseException) -> None:
    """Re-raise the LaunchCancelled a signal raised inside an SDK call: the Kubeflow SDKs turn any Exception into
    their own RuntimeError (`except Exception`), which would make a cancel look like an API error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, LaunchCancelled):
            raise seen
        seen = seen.__cause__ or seen.__context__


def _deleting(job: dict[str, Any]) -> bool:
    return bool(job["metadata"].get("deletionTimestamp"))


@dataclass
class Policy:
    """How one launch treats its job: `restarts` whole-job restarts after a failure, the Foreground delete of a
    failed job waited on for `delete_wait_s`, `owner` (an ownerReference) put on every job it creates."""

    restarts: int = 0
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S
    owner: dict[str, Any] | None = None
    restarted_by: str = "runPolicy.jobRestarts"
    """Who restarts the job: the launcher (runPolicy.jobRestarts), or for a batch Job or TrainJob its own
    controller (then `restarts` is 0)."""


class ClusterJobs:
    """One job of the stage on the API server: read, create, delete, its Master pods and their log. `base` is
    the name asked for; `name` the job's now (another after a replacement that could not take the old name)."""

    kind = ""
    container = ""

    def __init__(self, client: TrainingClient, name: str, namespace: str):
        self.client, self.namespace, self.base = client, namespace, name
        self.rename(name)
        self.host = self._serializer.configuration.host
        self.touched = False
        """A job of this launch exists or may: created (or its create sent), or found and followed."""

    def rename(self, name: str) -> None:
        self.name = name
        self.where = f"{self.kind} {self.namespace}/{name}"

    def get(self) -> dict[str, Any] | None:
        """The job as the API returns it (camelCase), or None when there is none."""
        from kubernetes.client.rest import ApiException

        try:
            job = self._read()
        except (RuntimeError, TimeoutError, ApiException) as exc:
            _cancel_inside(exc)
            if _api_status(exc) == 404:
                return None
            raise LaunchError(f"could not read {self.where}: {_api_message(exc, self.host)}") from None
        return self._serializer.sanitize_for_serialization(job)

    def create(self, job: dict[str, Any]) -> bool:
        """False when a job of that name exists already."""
        from kubernetes.client.rest import ApiException

        self.touched = True
        try:
            self._create(job)
        except (RuntimeError, TimeoutError, ApiException) as exc:
            _cancel_inside(exc)
            if _api_status(exc) == 409:
                return False
            raise LaunchError(f"could not create {self.where}: {_api_message(exc, self.host)}") from None
        return True

    def delete(self, propagation: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self._delete(propagation)
        except (RuntimeError, TimeoutError, ApiException) as exc:
            _cancel_inside(exc)
            if _api_status(exc) != 404:
                raise LaunchError(f"could not delete {self.where}: {_api_message(exc, self.host)}") from None
        log.info("deleted %s (propagation %s)", self.where, propagation)

    def annotate(self, annotations: dict[str, str]) -> None:
        """Add annotations to the job; a failure is logged, not raised (they are advice to later launchers)."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._patch({"metadata": {"annotations": annotations}})
        except (ApiException, HTTPError) as exc:
            log.warning("could not annotate %s: %s", self.where, _api_message(exc, self.host))

    def named_after_base(self) -> list[dict[str, Any]]:
        """The jobs labelled with this launch's base name (replacements created under another name)."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            found = self._list(f"{BASE_NAME}={self.base}")
        except (ApiException, HTTPError) as exc:
            raise LaunchError(
                f"could not list the {self.kind}s named after {self.base}: {_api_message(exc, self.host)}"
            ) from None
        return [self._serializer.sanitize_for_serialization(job) for job in found]

    def pods(self) -> list[dict[str, Any]]:
        """Every pod of the job (camelCase); [] when they cannot be read."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        selector = POD_SELECTOR[self.kind].format(name=self.name)
        try:
            found = self.client.core_api.list_namespaced_pod(self.namespace, label_selector=selector).items
        except (ApiException, HTTPError) as exc:
            log.warning("could not list the pods of %s: %s", self.where, _api_message(exc, self.host))
            return []
        return [self._serializer.sanitize_for_serialization(pod) for pod in found]

    def open_log(self, pod: str, since_seconds: int | None) -> Any:
        # Not the SDK's get_job_logs(follow=True): it returns only when the container exits, skips pods
        # not yet started, does not follow a restarted container, and its reader threads are not
        # daemons (a cancelled launcher would hang on them).
        extra = {"since_seconds": since_seconds} if since_seconds else {}
        return self.client.core_api.read_namespaced_pod_log(
            pod,
            self.namespace,
            container=self.container,
            follow=True,
            timestamps=True,
            _preload_content=False,
            _request_timeout=FOLLOW_TIMEOUT,
            **extra,
        )

    @property
    def _serializer(self) -> Any:
        return self.client.api_client

    @property
    def _custom(self) -> tuple[str, str, str]:
        """(group, version, plural) of a custom resource kind."""
        raise NotImplementedError

    def master_pods(self) -> list[Any]:
        raise NotImplementedError

    def _read(self) -> Any:
        raise NotImplementedError

    def _create(self, job: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delete(self, propagation: str) -> None:
        raise NotImplementedError

    def _patch(self, body: dict[str, Any]) -> None:
        self.client.custom_api.patch_namespaced_custom_object(
            *self._custom[:2], self.namespace, self._custom[2], self.name, body
        )

    def _list(self, selector: str) -> list[Any]:
        found = self.client.custom_api.list_namespaced_custom_object(
            *self._custom[:2], self.namespace, self._custom[2], label_selector=selector
        )
        return found.get("items", [])


class PyTorchJobs(ClusterJobs):
    """A PyTorchJob through the Kubeflow training SDK."""

    kind = "PyTorchJob"
    container = chart.MAIN_CONTAINER["PyTorchJob"]
    _custom = ("kubeflow.org", "v1", "pytorchjobs")

    @property
    def _serializer(self) -> Any:
        return self.client.core_api.api_client  # the kubernetes client the SDK's calls go through

    def _read(self) -> Any:
        return self.client.get_job(self.name, self.namespace)

    def _create(self, job: dict[str, Any]) -> None:
        from kubeflow.training import models
        from kubeflow.training.utils.utils import FakeResponse

        # create_job takes only the SDK's model class. The spec stays the chart's dict inside it (the
        # serializer passes dicts through), so the body sent is exactly the chart's rendering: the
        # models would change it, e.g. the GPU limit 8 into "8".
        metadata = self.client.api_client.deserialize(FakeResponse(job["metadata"]), "V1ObjectMeta")
        model = models.KubeflowOrgV1PyTorchJob(
            api_version=job["apiVersion"], kind=job["kind"], metadata=metadata, spec=job["spec"]
        )
        self.client.create_job(model, namespace=self.namespace)

    def _delete(self, propagation: str) -> None:
        from kubeflow.training import models

        self.client.delete_job(
            self.name, self.namespace, delete_options=models.V1DeleteOptions(propagation_policy=propagation)
        )

    def master_pods(self) -> list[Any]:
        return self.client.get_job_pods(self.name, self.namespace, is_master=True)


class BatchJobs(ClusterJobs):
    """A batch/v1 Job (translate, eval, upload) through the same client's Kubernetes API."""

    kind = "Job"
    container = chart.MAIN_CONTAINER["Job"]

    @property
    def _serializer(self) -> Any:
        return self.client.core_api.api_client  # the kubernetes client, configured as the SDK's

    @property
    def _batch(self) -> Any:
        from kubernetes.client import BatchV1Api

        return BatchV1Api(self._serializer)

    def _read(self) -> Any:
        return self._batch.read_namespaced_job(self.name, self.namespace)

    def _create(self, job: dict[str, Any]) -> None:
        self._batch.create_namespaced_job(self.namespace, job)

    def _delete(self, propagation: str) -> None:
        from kubernetes.client import V1DeleteOptions

        self._batch.delete_namespaced_job(
            self.name, self.namespace, body=V1DeleteOptions(propagation_policy=propagation)
        )

    def _patch(self, body: dict[str, Any]) -> None:
        self._batch.patch_namespaced_job(self.name, self.namespace, body)

    def _list(self, selector: str) -> list[Any]:
        return self._batch.list_namespaced_job(self.namespace, label_selector=selector).items

    def master_pods(self) -> list[Any]:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            # The Job controller labels its pods with the Job's name (Kubernetes 1.27+).
            return self.client.core_api.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={self.name}"
            ).items
        except (ApiException, HTTPError) as exc:  # as the SDK reports it for a PyTorchJob's pods
            raise RuntimeError(f"listing the pods of {self.where}: {exc}") from exc


def _status_reader(jobs: ClusterJobs) -> Callable[[], dict[str, Any]]:
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


def _wait_gone(jobs: ClusterJobs, until: float, deadline: float, poll_s: float) -> bool:
    """Wait for the job being deleted to be gone: True once it is, False at `until`; JobTimedOut at the
    launch's `deadline`."""
    while jobs.get() is not None:
        now = time.monotonic()
        if now >= deadline:
            raise JobTimedOut(f"{jobs.where} was still being deleted at the timeout")
        if now >= until:
            return False
        time.sleep(poll_s)
    return True


def _create_attempt(jobs: ClusterJobs, job: dict[str, Any], number: int, policy: Policy) -> bool:
    """Create attempt `number` of the job under `jobs.name`, marked (`medo1.launch.retries.mark`)."""
    from medo1.launch.rendering import check_job_name

    body = mark(copy.deepcopy(job), jobs.base, number, policy.owner)
    body["metadata"]["name"] = jobs.name
    check_job_name(body)
    return jobs.create(body)


def _replace(
    jobs: ClusterJobs,
    job: dict[str, Any],
    number: int,
    policy: Policy,
    deadline: float,
    poll_s: float,
    delete: bool = True,
) -> bool:
    """Delete the failed job (unless it is being deleted already) and create attempt `number`. Foreground: the
    old job stays until its pods are gone, so the new job's pods (same names) never meet them. When it is not
    gone after `policy.delete_wait_s` (a pod stuck Terminating on a dead node), the new job gets another name."""
    if delete:
        jobs.delete("Foreground")
    if not _wait_gone(jobs, time.monotonic() + policy.delete_wait_s, deadline, poll_s):
        stuck = [p for p in jobs.pods() if p["metadata"].get("deletionTimestamp")]
        where = (
            ", ".join(f"{p['metadata']['name']} (node {(p.get('spec') or {}).get('nodeName') or '?'})" for p in stuck)
            or "its pods"
        )
        old = jobs.where
        jobs.rename(f"{jobs.base}-r{number}")
        log.warning(
            "%s is still being deleted after %.0f s, waiting on %s stuck Terminating (a dead or unreachable "
            "node?); creating attempt %d as %s, under new pod names",
            old,
            policy.delete_wait_s,
            where,
            number,
            jobs.where,
        )
    return _create_attempt(jobs, job, number, policy)


def _current(jobs: ClusterJobs) -> dict[str, Any] | None:
    """The job this launch is about: the one under its base name, unless that is gone or being deleted and a
    replacement created under another name exists (then `jobs` is renamed to it)."""
    existing = jobs.get()
    if existing is not None and not _deleting(existing):
        return existing
    renamed = [j for j in jobs.named_after_base() if j["metadata"]["name"] != jobs.base and not _deleting(j)]
    if renamed:
        newest = max(renamed, key=attempt)
        jobs.rename(newest["metadata"]["name"])
        return newest
    return existing


def _not_restarted(jobs: ClusterJobs, existing: dict[str, Any], log_tail: list[str], policy: Policy) -> str | None:
    """Why a failed job is not created again (marking it so when a restart cannot cure it), or None."""
    reason = final_reason(existing)
    if reason is None:
        reason = incurable(jobs.pods(), log_tail, jobs.kind, jobs.container)
        if reason is not None:
            jobs.annotate({FINAL: reason})
    if reason is not None:
        return f"not restarted: {reason} (a restart would fail the same way)"
    number = attempt(existing)
    if number > policy.restarts:
        if policy.restarted_by != "runPolicy.jobRestarts":
            return f"not created again: {policy.restarted_by} restarts it, not the launcher"
        return (
            f"not restarted: that was attempt {number} of {policy.restarts + 1} (runPolicy.jobRestarts="
            f"{policy.restarts})"
        )
    return None


def _gave_up(jobs: ClusterJobs, state: JobState, why: str) -> JobFailed:
    return JobFailed(
        f"{jobs.where}: job failed: {state.reason or 'no reason given'}: {state.message}".rstrip(": ")
        + f"\n{why}; to start it over, delete it (kubectl delete {jobs.kind.lower()} -n "
        f"{jobs.namespace} {jobs.name}) and launch again",
        state,
    )


def _submit(
    jobs: ClusterJobs, job: dict[str, Any], deadline: float, poll_s: float, policy: Policy
) -> tuple[str, JobState | None, int]:
    """Create the job, or take over the one an earlier attempt of this step left: (action, the final
    state when there is nothing to wait for, the attempt number of the job followed)."""
    existing = _current(jobs)
    if existing is None:
        if not _create_attempt(jobs, job, 1, policy):
            log.info("%s was created meanwhile by someone else; following it", jobs.where)
            return "attached", None, 1
        log.info("created %s", jobs.where)
        return "created", None, 1
    jobs.touched = True
    state = job_state(existing)
    number = attempt(existing)
    if _deleting(existing):
        log.info("%s is being deleted; creating it again once it is gone", jobs.where)
        number += state.phase == "Failed"
        created = _replace(jobs, job, number, policy, deadline, poll_s, delete=False)
        return ("created" if created else "attached"), None, number
    if state.phase == "Succeeded":
        log.info("%s already succeeded", jobs.where)
        return "already-succeeded", state, number
    if state.phase == "Failed":
        why = _not_restarted(jobs, existing, [], policy)
        if why is not None:
            raise _gave_up(jobs, state, why)
        log.info(
            "%s failed before (%s: %s); replacing it, to resume from its last complete checkpoint",
            jobs.where,
            state.reason,
            state.message,
        )
        if not _replace(jobs, job, number + 1, policy, deadline, poll_s):
            log.info("%s was created meanwhile by someone else; following it", jobs.where)
            return "attached", None, number + 1
        log.info("created %s", jobs.where)
        return "recreated", None, number + 1
    log.info("%s is already %s; following it", jobs.where, state.phase)
    return "attached", None, number


def _wait_and_follow(
    jobs: ClusterJobs,
    deadline: float,
    poll_s: float,
    keep_on_timeout: bool,
    followers: list[MasterLogFollower],
    stuck_after_s: float | None,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
) -> JobState:
    follower = MasterLogFollower(jobs, min(poll_s, POD_RECHECK_S)).start()
    followers.append(follower)
    check_pods = None
    if stuck_after_s is not None:
        check_pods = stuck_checker(
            pod_reader(jobs.client.core_api, jobs.kind, jobs.name, jobs.namespace),
            stuck_after_s,
            kind=jobs.kind,
            scale_up_wait_s=scale_up_wait_s,
        )
    try:
        state = wait_for_job(_status_reader(jobs), max(0.0, deadline - time.monotonic()), poll_s, check_pods=check_pods)
    except JobStuck as exc:
        # Not restarted: a missing Secret or image, or no room for the pods, does not heal on a retry.
        follower.stop(0)
        jobs.delete("Background")
        raise JobStuck(f"{jobs.where}: {exc}; deleted it") from None
    except JobFailed as exc:
        follower.stop(LOG_DRAIN_S)
        failed = JobFailed(f"{jobs.where}: {exc}{tail_text(follower.tail, 'the Master pod log')}", exc.state)
        failed.head, failed.log_tail = f"{jobs.where}: {exc}", list(follower.tail)
        raise failed from None
    except JobTimedOut as exc:
        follower.stop(0)
        if keep_on_timeout:
            raise JobTimedOut(f"{jobs.where}: {exc}; left it running") from None
        jobs.delete("Background")
        raise JobTimedOut(f"{jobs.where}: {exc}; deleted it") from None
    follower.stop(LOG_DRAIN_S)
    return state


def follow_until_done(
    jobs: ClusterJobs,
    job: dict[str, Any],
    policy: Policy,
    deadline: float,
    poll_s: float,
    keep_on_timeout: bool,
    followers: list[MasterLogFollower],
    stuck_after_s: float | None,
    scale_up_wait_s: float,
) -> tuple[str, JobState, int]:
    """Submit the job and wait for it, restarting it whole after a failure while `policy` allows: (action,
    final state, restarts made by this launch)."""
    action, state, number = _submit(jobs, job, deadline, poll_s, policy)
    restarted = 0
    while state is None:
        try:
            state = _wait_and_follow(jobs, deadline, poll_s, keep_on_timeout, followers, stuck_after_s, scale_up_wait_s)
        except JobFailed as exc:
            current = jobs.get() or {"metadata": {"annotations": {ATTEMPT: str(number)}}}
            why = _not_restarted(jobs, current, exc.log_tail, policy)
            if why is not None:
                raise JobFailed(
                    f"{exc.head}\n{why}{tail_text(exc.log_tail, 'the Master pod log')}", exc.state
                ) from None
            restarted += 1
            number += 1
            log.warning(
                "%s\nrestarting the whole job (attempt %d of %d); it resumes from its last complete checkpoint",
                exc,
                number,
                policy.restarts + 1,
            )
            if not _replace(jobs, job, number, policy, deadline, poll_s):
                log.info("%s was created meanwhile by someone else; following it", jobs.where)
    return action, state, restarted


def cancelled(
    jobs: ClusterJobs, followers: list[MasterLogFollower], exc: LaunchCancelled, launcher: LauncherPod | None
) -> LaunchCancelled:
    """Stop following `jobs`' logs and delete it; the LaunchCancelled to raise, saying what became of it.
    Background deletion returns at once and the garbage collector removes the pods: the step's pod has only
    its termination grace period left. Not deleted when nothing was created yet, when this launcher's pod is
    being evicted (the launcher that replaces it attaches to the job), nor when the job has an owner (the chart's
    run Job): a run pod deleted without an eviction (`kubectl delete pod`, a drain with --disable-eviction, a node
    upgrade's forced delete) is replaced by its Job, whose next pod attaches, and deleting the run Job itself
    (`helm uninstall`, `kubectl delete job`) stops the training job through the garbage collector."""
    for follower in followers:
        follower.stop(0)
    if not jobs.touched:
        return LaunchCancelled(exc.signum, f"{exc}; nothing had been created")
    disruption = launcher.disruption() if launcher is not None else None
    if disruption:
        return LaunchCancelled(
            exc.signum,
            f"{exc}: this pod is being evicted ({disruption}); left {jobs.where} "
            "running: the launcher that replaces this pod attaches to it",
        )
    if launcher is not None and launcher.owner is not None:
        owner = launcher.owner["name"]
        return LaunchCancelled(
            exc.signum,
            f"{exc}; left {jobs.where} running: it is owned by Job {owner}, whose next pod attaches to it "
            f"(delete Job {owner} to stop it)",
        )
    try:
        jobs.delete("Background")
    except LaunchError as delete_error:
        return LaunchCancelled(exc.signum, f"{exc}; {delete_error}")
    return LaunchCancelled(exc.signum, f"{exc}; deleted {jobs.where}")


def run_on_cluster(
    stage: str,
    job: dict[str, Any],
    client: TrainingClient,
    timeout_s: float,
    poll_s: float,
    keep_on_timeout: bool,
    restarts: int = 0,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    *,
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> LaunchResult:
    """`stuck_after_s`: fail (and delete the job) once a pod has been stuck that long (see
    `medo1.launch.pods`); None: wait on such pods until the timeout. `delete_wait_s`: how long a failed job's
    Foreground delete is waited on before its replacement is created under another name."""
    jobs_class = PyTorchJobs if job["kind"] == "PyTorchJob" else BatchJobs
    bound_requests(client.core_api.api_client, request_timeout_s)
    jobs = jobs_class(client, job["metadata"]["name"], job["metadata"]["namespace"])
    deadline = time.monotonic() + timeout_s
    followers: list[MasterLogFollower] = []
    launcher = None
    with cancel_on_signals():
        try:
            launcher = LauncherPod.find(client.core_api, jobs.namespace)
            policy = Policy(restarts, delete_wait_s, launcher.owner if launcher else None)
            if jobs.kind == "Job":
                policy.restarted_by = "the Job controller (its backoffLimit)"
            action, state, restarted = follow_until_done(
                jobs, job, policy, deadline, poll_s, keep_on_timeout, followers, stuck_after_s, scale_up_wait_s
            )
        except LaunchCancelled as exc:
            raise cancelled(jobs, followers, exc, launcher) from None
    return LaunchResult(stage, "pytorchjob", jobs.name, jobs.namespace, state, action, restarted, kind=jobs.kind)
