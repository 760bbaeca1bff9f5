"""The cluster backend: the stage's job created through the Kubeflow training SDK's TrainingClient (a
PyTorchJob; a batch Job through the same client's Kubernetes API), its Master pod's log followed, its
status waited on. Safe to retry: a job of the same name is followed while it runs, reported when it
already succeeded, and replaced when it failed. A failed training job is created again up to
`restarts` times (whole-job restart: every pod starts together and resumes from the last complete
checkpoint)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medo1 import k8s
from medo1.launch.logs import POD_RECHECK_S, MasterLogFollower
from medo1.launch.pods import DEFAULT_STUCK_AFTER_S, JobStuck, pod_reader, stuck_checker
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


def _api_message(exc: BaseException) -> str:
    from kubernetes.client.rest import ApiException

    cause = exc if isinstance(exc, ApiException) else exc.__cause__
    if not isinstance(cause, ApiException):
        return str(exc)
    try:
        message = json.loads(cause.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = cause.reason
    return f"{cause.status} {message}"


class ClusterJobs:
    """One job of the stage on the API server: read, create, delete, its Master pods and their log."""

    kind = ""
    container = ""

    def __init__(self, client: TrainingClient, name: str, namespace: str):
        self.client, self.name, self.namespace = client, name, namespace
        self.where = f"{self.kind} {namespace}/{name}"

    def get(self) -> dict[str, Any] | None:
        """The job as the API returns it (camelCase), or None when there is none."""
        from kubernetes.client.rest import ApiException

        try:
            job = self._read()
        except (RuntimeError, TimeoutError, ApiException) as exc:
            if _api_status(exc) == 404:
                return None
            raise LaunchError(f"could not read {self.where}: {_api_message(exc)}") from None
        return self._serializer.sanitize_for_serialization(job)

    def create(self, job: dict[str, Any]) -> bool:
        """False when a job of that name exists already."""
        from kubernetes.client.rest import ApiException

        try:
            self._create(job)
        except (RuntimeError, TimeoutError, ApiException) as exc:
            if _api_status(exc) == 409:
                return False
            raise LaunchError(f"could not create {self.where}: {_api_message(exc)}") from None
        return True

    def delete(self, propagation: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self._delete(propagation)
        except (RuntimeError, TimeoutError, ApiException) as exc:
            if _api_status(exc) != 404:
                raise LaunchError(f"could not delete {self.where}: {_api_message(exc)}") from None
        log.info("deleted %s (propagation %s)", self.where, propagation)

    def open_log(self, pod: str, since_seconds: int | None) -> Any:
        # Not the SDK's get_job_logs(follow=True): it returns only when the container exits, skips pods
        # not yet started, does not follow a restarted container, and its reader threads are not
        # daemons (a cancelled launcher would hang on them).
        extra = {"since_seconds": since_seconds} if since_seconds else {}
        return self.client.core_api.read_namespaced_pod_log(
            pod, self.namespace, container=self.container, follow=True, timestamps=True, _preload_content=False,
            **extra
        )

    @property
    def _serializer(self) -> Any:
        return self.client.api_client

    def master_pods(self) -> list[Any]:
        raise NotImplementedError

    def _read(self) -> Any:
        raise NotImplementedError

    def _create(self, job: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delete(self, propagation: str) -> None:
        raise NotImplementedError


class PyTorchJobs(ClusterJobs):
    """A PyTorchJob through the Kubeflow training SDK."""

    kind = "PyTorchJob"
    container = k8s.MAIN_CONTAINER["PyTorchJob"]

    def _read(self) -> Any:
        return self.client.get_job(self.name, self.namespace)

    def _create(self, job: dict[str, Any]) -> None:
        from kubeflow.training import models
        from kubeflow.training.utils.utils import FakeResponse

        # create_job takes only the SDK's model class. The spec stays the chart's dict inside it (the
        # serializer passes dicts through), so the body sent is exactly the chart's rendering: the
        # models would change it, e.g. the GPU limit 8 into "8".
        metadata = self.client.api_client.deserialize(FakeResponse(job["metadata"]), "V1ObjectMeta")
        model = models.KubeflowOrgV1PyTorchJob(api_version=job["apiVersion"], kind=job["kind"], metadata=metadata,
                                               spec=job["spec"])
        self.client.create_job(model, namespace=self.namespace)

    def _delete(self, propagation: str) -> None:
        from kubeflow.training import models

        self.client.delete_job(self.name, self.namespace,
                               delete_options=models.V1DeleteOptions(propagation_policy=propagation))

    def master_pods(self) -> list[Any]:
        return self.client.get_job_pods(self.name, self.namespace, is_master=True)


class BatchJobs(ClusterJobs):
    """A batch/v1 Job (translate, eval, upload) through the same client's Kubernetes API."""

    kind = "Job"
    container = k8s.MAIN_CONTAINER["Job"]

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

        self._batch.delete_namespaced_job(self.name, self.namespace, body=V1DeleteOptions(propagation_policy=propagation))

    def master_pods(self) -> list[Any]:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            # The Job controller labels its pods with the Job's name (Kubernetes 1.27+).
            return self.client.core_api.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={self.name}").items
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


def _wait_gone(jobs: ClusterJobs, deadline: float, poll_s: float) -> None:
    while jobs.get() is not None:
        if time.monotonic() >= deadline:
            raise JobTimedOut(f"{jobs.where} was still being deleted at the timeout")
        time.sleep(poll_s)


def _replace(jobs: ClusterJobs, job: dict[str, Any], deadline: float, poll_s: float) -> bool:
    """Delete the failed job and create it again. Foreground: the old job stays until its pods are gone,
    so the new job's pods (same names) never meet them."""
    jobs.delete("Foreground")
    _wait_gone(jobs, deadline, poll_s)
    return jobs.create(job)


def _submit(jobs: ClusterJobs, job: dict[str, Any], deadline: float, poll_s: float) -> tuple[str, JobState | None]:
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
            if not _replace(jobs, job, deadline, poll_s):
                log.info("%s was created meanwhile by someone else; following it", jobs.where)
                return "attached", None
            log.info("created %s", jobs.where)
            return "recreated", None
        else:
            log.info("%s is already %s; following it", jobs.where, state.phase)
            return "attached", None
    if not jobs.create(job):
        log.info("%s was created meanwhile by someone else; following it", jobs.where)
        return "attached", None
    log.info("created %s", jobs.where)
    return action, None


def _wait_and_follow(jobs: ClusterJobs, deadline: float, poll_s: float, keep_on_timeout: bool,
                     followers: list[MasterLogFollower], stuck_after_s: float | None) -> JobState:
    follower = MasterLogFollower(jobs, min(poll_s, POD_RECHECK_S)).start()
    followers.append(follower)
    check_pods = None
    if stuck_after_s is not None:
        check_pods = stuck_checker(pod_reader(jobs.client.core_api, jobs.kind, jobs.name, jobs.namespace), stuck_after_s)
    try:
        state = wait_for_job(_status_reader(jobs), max(0.0, deadline - time.monotonic()), poll_s,
                             check_pods=check_pods)
    except JobStuck as exc:
        # Not restarted: a missing Secret or image, or no room for the pods, does not heal on a retry.
        follower.stop(0)
        jobs.delete("Background")
        raise JobStuck(f"{jobs.where}: {exc}\ndeleted it") from None
    except JobFailed as exc:
        follower.stop(LOG_DRAIN_S)
        raise JobFailed(f"{jobs.where}: {exc}{tail_text(follower.tail, 'the Master pod log')}", exc.state) from None
    except JobTimedOut as exc:
        follower.stop(0)
        if keep_on_timeout:
            raise JobTimedOut(f"{jobs.where}: {exc}; left it running") from None
        jobs.delete("Background")
        raise JobTimedOut(f"{jobs.where}: {exc}; deleted it") from None
    follower.stop(LOG_DRAIN_S)
    return state


def cancelled(jobs: Any, followers: list[MasterLogFollower], exc: LaunchCancelled) -> LaunchCancelled:
    """Stop following `jobs`' logs and delete it; the LaunchCancelled to raise, saying whether it was deleted.
    Background deletion returns at once and the garbage collector removes the pods: the step's pod has only its
    termination grace period left."""
    for follower in followers:
        follower.stop(0)
    try:
        jobs.delete("Background")
    except LaunchError as delete_error:
        return LaunchCancelled(exc.signum, f"{exc}; {delete_error}")
    return LaunchCancelled(exc.signum, f"{exc}; deleted {jobs.where}")


def run_on_cluster(stage: str, job: dict[str, Any], client: TrainingClient, timeout_s: float, poll_s: float,
                   keep_on_timeout: bool, restarts: int = 0,
                   stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S) -> LaunchResult:
    """`stuck_after_s`: fail (and delete the job) once a pod has been stuck that long (see
    `medo1.launch.pods`); None: wait on such pods until the timeout."""
    jobs_class = PyTorchJobs if job["kind"] == "PyTorchJob" else BatchJobs
    jobs = jobs_class(client, job["metadata"]["name"], job["metadata"]["namespace"])
    deadline = time.monotonic() + timeout_s
    followers: list[MasterLogFollower] = []
    restarted = 0
    with cancel_on_signals():
        try:
            action, state = _submit(jobs, job, deadline, poll_s)
            while state is None:
                try:
                    state = _wait_and_follow(jobs, deadline, poll_s, keep_on_timeout, followers, stuck_after_s)
                except JobFailed as exc:
                    if restarted >= restarts:
                        raise
                    restarted += 1
                    log.warning("%s\nrestarting the whole job (%d of %d); it resumes from its last complete checkpoint",
                                exc, restarted, restarts)
                    if not _replace(jobs, job, deadline, poll_s):
                        log.info("%s was created meanwhile by someone else; following it", jobs.where)
        except LaunchCancelled as exc:
            raise cancelled(jobs, followers, exc) from None
    return LaunchResult(stage, "pytorchjob", jobs.name, jobs.namespace, state, action, restarted)
