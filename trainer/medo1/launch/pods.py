"""Failing fast on a job that cannot start: the operator never marks a job Failed while a pod sits in
CreateContainerConfigError, ImagePullBackOff, a failed volume mount or Unschedulable, while admission
refuses its pods, or while no controller acts on it at all, so without this the launcher would wait its
whole timeout (days) with GPUs held by the pods that did start.

While the wait polls the job, `StuckPods` reads the job's pods and the namespace's Warning events and
cluster-autoscaler events; a problem that lasts longer than its grace period ends the wait with JobStuck
naming the pod (or the job), the reason, the API's message and the fix:
- a pod in one of the states above: `--stuck-after` (default 300 s), which lets transient states pass (an
  image pull that retries once);
- an Unschedulable pod a node is coming for: the cluster autoscaler reports a scale-up (its `TriggeredScaleUp`
  event is newer than any `NotTriggerScaleUp`), Karpenter (EKS Auto Mode, AKS node auto-provisioning) nominated
  a node it launches (`Nominated`), or the pod consumes a ProvisioningRequest: `scale_up_wait_s` (default
  30 minutes: a GPU node takes minutes to boot, install its driver and pull a multi-GB image). A pod the
  autoscaler will not scale up for (`NotTriggerScaleUp`) keeps the `--stuck-after` grace, with the
  autoscaler's reason in the message;
- pods the job's controller could not create (`FailedCreatePod` / `FailedCreate` Warning events on the job:
  a ResourceQuota, Pod Security or a policy engine refused them): once the refusals have gone on for
  `REFUSAL_GRACE_S` (or --stuck-after, if shorter) with no pod created since, with the admission message;
- a job with no status, no conditions and no pods: no controller acts on it (the CRD is installed but the
  operator is missing or crashed): `--stuck-after`;
- a job Kueue keeps suspended: Kueue's reason, read from the `Pending` events on its Workload, is logged when it
  changes; one Kueue can never admit (the ClusterQueue does not cover a resource the pods request): `--stuck-after`.
  Waiting for quota (`insufficient unused quota ...`) is not a problem.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from medo1.launch.waiting import LaunchError, kueue_queue_holding

log = logging.getLogger(__name__)

DEFAULT_STUCK_AFTER_S = 300.0
DEFAULT_SCALE_UP_WAIT_S = 1800.0
# How long admission may go on refusing a job's pods (a FailedCreatePod newer than every pod the job has) before the
# launch fails, or --stuck-after when that is shorter: a webhook that timed out once, or a quota freed a moment later,
# must not cost a run, while a ResourceQuota that will never fit fails within a minute. The controller retries with
# backoff, and each refusal renews the event.
REFUSAL_GRACE_S = 60.0
# The label each job's controller puts on the pods it creates (a TrainJob's: JobSet's, on every replicated job).
POD_SELECTOR = {
    "PyTorchJob": "training.kubeflow.org/job-name={name}",
    "Job": "batch.kubernetes.io/job-name={name}",
    "TrainJob": "jobset.sigs.k8s.io/jobset-name={name}",
}
CONTROLLER = {
    "PyTorchJob": "the Kubeflow training operator",
    "Job": "the Job controller (kube-controller-manager)",
    "TrainJob": "the Kubeflow Trainer controller (and JobSet's)",
}
# The Warning event a controller records on its job when the API server refuses a pod it creates:
# Training Operator v1 "FailedCreatePod" (kubeflow/training-operator pkg/controller.v1/control/pod_control.go,
# FailedCreatePodReason), the Job controller "FailedCreate" (kubernetes pkg/controller/controller_utils.go,
# FailedCreatePodReason); both with the message "Error creating: <the API server's error>".
FAILED_CREATE_REASONS = ("FailedCreatePod", "FailedCreate")
# A TrainJob's pods belong to the Jobs JobSet creates, named <jobset>-<replicatedJob>-<index>
# (kubernetes-sigs/jobset pkg/controllers/jobset_controller.go, placement.GenJobName).
TRAINJOB_CHILD_JOB = "^{name}-(node|dataset-initializer|model-initializer)-[0-9]+$"
# The cluster autoscaler's events on a pending pod (kubernetes/autoscaler cluster-autoscaler/processors/status/
# eventing_scale_up_processor.go, type Normal, source component "cluster-autoscaler").
AUTOSCALER = "cluster-autoscaler"
SCALE_UP, NO_SCALE_UP = "TriggeredScaleUp", "NotTriggerScaleUp"
# Karpenter (and the node autoscalers built on it: EKS Auto Mode's "eks-auto-mode/compute", AKS node
# auto-provisioning) records a Normal event "Nominated" on a pod it launches a node for: "Pod should schedule on:
# nodeclaim/<name>" (kubernetes-sigs/karpenter pkg/controllers/provisioning/scheduling/events.go, NominatePodEvent).
NOMINATED = "Nominated"
# A pod that consumes a ProvisioningRequest waits for the nodes provisioned for it (Kueue pkg/controller/
# admissionchecks/provisioning/constants.go ConsumesAnnotationKey; the older cluster-autoscaler key).
CONSUMES_PROVISIONING = (
    "autoscaling.x-k8s.io/consume-provisioning-request",
    "cluster-autoscaler.kubernetes.io/consume-provisioning-request",
)

# Kueue's scheduler records a Normal event, reason "Pending", on a Workload it could not admit, with the reason
# (kubernetes-sigs/kueue pkg/scheduler/scheduler.go, requeueAndUpdate). Its Workload is named
# `<kind lower-case>-<job name>` (cut to fit) + "-" + 5 hex digits (pkg/controller/jobframework/workload_names.go).
# A resource no flavor of the ClusterQueue covers: "couldn't assign flavors to pod set worker: resource rdma/ib
# unavailable in ClusterQueue" (pkg/scheduler/flavorassigner/flavorassigner.go); that never changes by waiting.
KUEUE_PENDING = "Pending"
KUEUE_NEVER_ADMITS = re.compile(r"resource \S+ unavailable in ClusterQueue")
WORKLOAD_HASH = re.compile(r"-[0-9a-f]{5}$")

FIX = {
    "Inadmissible": (
        "the ClusterQueue behind the job's LocalQueue (kueue.queueName) must cover every resource the pods request "
        "(its resourceGroups' coveredResources and a flavor's quota for each: nvidia.com/gpu, rdma/ib, cpu, memory); "
        "ask the cluster admin to add it, or remove the request from the values; `medo1 doctor` checks this"
    ),
    "CreateContainerConfigError": (
        "create the Secret and key the message names (kubectl create secret generic NAME --from-literal=KEY=...), "
        "or point the chart's secrets.<name>.name / key at one that exists; `medo1 doctor` checks them before a run"
    ),
    "ErrImagePull": (
        "check that image.repository:image.tag exists and the nodes can reach the registry; a private registry "
        "needs image.pullSecrets"
    ),
    "InvalidImageName": "fix image.repository / image.tag in the chart values",
    "FailedMount": (
        "the PersistentVolumeClaim must exist, be Bound and allow the access mode the pods need (ReadWriteMany "
        "when several nodes mount it); see `kubectl describe pvc`; `medo1 doctor` checks the claims"
    ),
    "Unschedulable": (
        "no node has the requested resources under the job's nodeSelector / tolerations: wait for GPUs to free up, "
        "ask for fewer (cluster.nodes, cluster.gpusPerNode), fix cluster.nodeSelector / tolerations, or set "
        "kueue.queueName so the job queues for quota instead of holding half its pods"
    ),
    "FailedCreatePod": (
        "the namespace's admission refused the pods (a ResourceQuota, Pod Security, a policy engine): raise the "
        "quota or ask for less (cluster.*), or change what the policy names; `kubectl get events` shows every refusal"
    ),
    "NoController": (
        "check that the controller is installed and running (kubectl get pods -A | grep -e training-operator -e "
        "trainer -e jobset) and read its log; `medo1 doctor` checks the CRDs"
    ),
}
FIX["ImagePullBackOff"] = FIX["ErrImagePull"]
FIX["FailedAttachVolume"] = FIX["FailedMount"]
WAITING_REASONS = ("CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName")
EVENT_REASONS = ("FailedMount", "FailedAttachVolume")


class JobStuck(LaunchError):
    """A pod of the job stayed in a state it does not leave by itself for longer than the grace period (or the job
    could not start at all). Its own exit code, which the chart's run Job fails on at once (podFailurePolicy) rather
    than start a launcher that creates the job again: a retry holds the GPUs of the pods that did start for another
    `--stuck-after` and fails the same way."""

    exit_code = 4


@dataclass(frozen=True)
class PodProblem:
    pod: str
    """The pod's name, or for a problem of the job itself its namespace/name."""
    reason: str
    message: str
    subject: str = "pod"
    """`pod`, or the job's kind."""
    grace_s: float | None = None
    """How long it may last; None: the launch's --stuck-after."""

    @property
    def fix(self) -> str:
        return FIX[self.reason]

    def describe(self) -> str:
        said = (self.message or "no message").replace("\n", " ")  # an admission webhook's may span lines
        return f"{self.subject} {self.pod}: {self.reason}: {said}; fix: {self.fix}"


def _moment(stamp: Any) -> datetime:
    """An API timestamp as a time: RFC 3339 as the server sends it ("...Z"), or as the kubernetes client
    re-serializes one it parsed ("...+00:00"); the earliest time when there is none."""
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _event_time(event: dict[str, Any]) -> datetime:
    return _moment(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp"))


def _about(event: dict[str, Any], kind: str, name: str) -> bool:
    involved = event.get("involvedObject") or {}
    return involved.get("kind") == kind and involved.get("name") == name


def pod_problems(
    pod: dict[str, Any], events: Iterable[dict[str, Any]] = (), scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S
) -> list[PodProblem]:
    """What keeps a pod (as the API returns it, camelCase) from running: a container waiting for a
    reason in WAITING_REASONS, the scheduler's Unschedulable condition (waited on for `scale_up_wait_s` while
    the cluster autoscaler adds a node for it), or a FailedMount Warning event about the pod. A pod that has
    started or finished has none."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return []
    events = list(events)
    problems = []
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            problems.append(_unschedulable(pod, condition.get("message", ""), events, scale_up_wait_s))
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            problems.append(PodProblem(name, waiting["reason"], waiting.get("message", "")))
    running = any("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or [])
    if not running:
        for event in events:
            if _about(event, "Pod", name) and event.get("reason") in EVENT_REASONS:
                problems.append(PodProblem(name, event["reason"], event.get("message", "")))
                break
    return problems


def _unschedulable(
    pod: dict[str, Any], message: str, events: list[dict[str, Any]], scale_up_wait_s: float
) -> PodProblem:
    name = pod["metadata"]["name"]
    annotations = pod["metadata"].get("annotations") or {}
    request = next((annotations[key] for key in CONSUMES_PROVISIONING if annotations.get(key)), None)
    if request:
        return PodProblem(
            name,
            "Unschedulable",
            f"{message}; waiting for the nodes of ProvisioningRequest {request}",
            grace_s=scale_up_wait_s,
        )
    verdicts = [e for e in events if _about(e, "Pod", name) and e.get("reason") in (SCALE_UP, NO_SCALE_UP, NOMINATED)]
    if not verdicts:
        return PodProblem(name, "Unschedulable", message)
    newest = max(verdicts, key=_event_time)
    source = (newest.get("source") or {}).get("component") or AUTOSCALER
    who = "cluster autoscaler" if source == AUTOSCALER else source
    said = f"{message}; {who}: {newest.get('message', newest['reason'])}"
    if newest["reason"] in (SCALE_UP, NOMINATED):
        return PodProblem(name, "Unschedulable", said, grace_s=scale_up_wait_s)
    return PodProblem(name, "Unschedulable", said)


def job_problems(
    kind: str,
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    events: Iterable[dict[str, Any]],
    refusal_grace_s: float = REFUSAL_GRACE_S,
) -> list[PodProblem]:
    """What keeps the job itself from starting: pods its controller could not create (admission refused them,
    and no pod of the job was created since the newest refusal: a refusal then a pod was a passing one), or no
    controller acting on it (no status at all, no pods)."""
    meta = job["metadata"]
    where = f"{meta.get('namespace')}/{meta['name']}"
    refused = []
    child = re.compile(TRAINJOB_CHILD_JOB.format(name=re.escape(meta["name"])))
    created = _moment(meta.get("creationTimestamp"))
    for event in events:
        if event.get("type") != "Warning" or event.get("reason") not in FAILED_CREATE_REASONS:
            continue
        involved = event.get("involvedObject") or {}
        if involved.get("kind") == kind and involved.get("name") == meta["name"]:
            # The job's own events: this job's, not an earlier one's of the same name.
            if involved.get("uid") and meta.get("uid") and involved["uid"] != meta["uid"]:
                continue
        elif not (
            kind == "TrainJob"
            and involved.get("kind") == "Job"
            and child.match(involved.get("name", ""))
            and _event_time(event) >= created
        ):
            continue
        refused.append(event)
    if refused:
        newest = max(refused, key=_event_time)
        if not any(_moment(pod["metadata"].get("creationTimestamp")) >= _event_time(newest) for pod in pods):
            message = newest.get("message", "")
            return [PodProblem(where, "FailedCreatePod", message, subject=kind, grace_s=refusal_grace_s)]
    if kueue_queue_holding(job):
        said = kueue_says(kind, job, events)
        return [PodProblem(where, "Inadmissible", said, subject=kind)] if KUEUE_NEVER_ADMITS.search(said) else []
    if not pods and not any((job.get("status") or {}).values()):
        return [
            PodProblem(
                where,
                "NoController",
                f"no controller is acting on this job (is {CONTROLLER[kind]} "
                "running?): it has no status, no conditions and no pods",
                subject=kind,
            )
        ]
    return []


def kueue_says(kind: str, job: dict[str, Any], events: Iterable[dict[str, Any]]) -> str:
    """Kueue's newest reason for not admitting `job` (its Workload's `Pending` events since the job was created);
    "" when there is none."""
    meta = job["metadata"]
    full = f"{kind.lower()}-{meta['name']}"
    created = _moment(meta.get("creationTimestamp"))
    said = []
    for event in events:
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != "Workload" or event.get("reason") != KUEUE_PENDING:
            continue
        prefix = WORKLOAD_HASH.sub("", involved.get("name", ""))
        if (prefix == full or (len(prefix) >= 40 and full.startswith(prefix))) and _event_time(event) >= created:
            said.append(event)
    return max(said, key=_event_time).get("message", "") if said else ""


class StuckPods:
    """Remembers since when each (pod, reason) has been seen; `check` raises JobStuck once one has lasted its
    grace (`grace_s`, or the problem's own). A problem that goes away (the pull succeeded, the pod was
    scheduled) is forgotten."""

    def __init__(
        self,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
        scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
    ):
        self.grace_s = grace_s
        self.scale_up_wait_s = scale_up_wait_s
        self.clock = clock
        self.since: dict[tuple[str, str], float] = {}
        self.announced: dict[tuple[str, str], float] = {}

    def check(
        self,
        pods: Iterable[dict[str, Any]],
        events: Iterable[dict[str, Any]],
        job: dict[str, Any] | None = None,
        kind: str | None = None,
    ) -> None:
        now = self.clock()
        pods, events = list(pods), list(events)
        seen: dict[tuple[str, str], PodProblem] = {}
        for pod in pods:
            for problem in pod_problems(pod, events, self.scale_up_wait_s):
                seen[(problem.pod, problem.reason)] = problem
        if job is not None and kind is not None:
            for problem in job_problems(kind, job, pods, events, min(self.grace_s, REFUSAL_GRACE_S)):
                seen[(problem.pod, problem.reason)] = problem
        for key, problem in seen.items():
            grace = self._grace(problem)
            if key not in self.since:
                self.since[key] = now
            if self.announced.get(key) != grace and problem.reason != "NoController" and grace > 0:
                verb = "failing" if key not in self.announced else "now failing"
                log.warning("%s (%s after %.0f s)", problem.describe(), verb, grace)
                self.announced[key] = grace
        self.since = {key: since for key, since in self.since.items() if key in seen}
        self.announced = {key: grace for key, grace in self.announced.items() if key in seen}
        overdue = [seen[key] for key, since in self.since.items() if now - since >= self._grace(seen[key])]
        if overdue:
            longest = max(self._grace(p) for p in overdue)
            what = "refused" if all(p.reason == "FailedCreatePod" for p in overdue) else "stuck"
            head = f"{what} for over {longest:.0f} s" if longest > 0 else what
            raise JobStuck(f"{head}: " + "; ".join(p.describe() for p in overdue))

    def _grace(self, problem: PodProblem) -> float:
        return self.grace_s if problem.grace_s is None else problem.grace_s


def pod_reader(core_api: Any, kind: str, name: str, namespace: str) -> Callable[[], tuple[list[dict], list[dict]]]:
    """Reads the job's pods, and the namespace's Warning events and cluster-autoscaler events (as camelCase
    dicts), through the kubernetes client's CoreV1Api."""
    selector = POD_SELECTOR[kind].format(name=name)

    def read() -> tuple[list[dict], list[dict]]:
        serialize = core_api.api_client.sanitize_for_serialization
        pods = core_api.list_namespaced_pod(namespace, label_selector=selector).items
        events = core_api.list_namespaced_event(namespace, field_selector="type=Warning").items
        # The autoscalers' verdicts and Kueue's reasons are Normal events: read apart, by their source / reason.
        events += core_api.list_namespaced_event(namespace, field_selector=f"source={AUTOSCALER}").items
        events += core_api.list_namespaced_event(namespace, field_selector=f"reason={NOMINATED}").items
        events += core_api.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Workload,reason={KUEUE_PENDING}"
        ).items
        return [serialize(p) for p in pods], [serialize(e) for e in events]

    return read


def stuck_checker(
    read: Callable[[], tuple[list[dict], list[dict]]],
    grace_s: float,
    clock: Callable[[], float] = time.monotonic,
    kind: str | None = None,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
) -> Callable[[dict[str, Any] | None], None]:
    """The check the wait calls each poll with the job as read (for a job of `kind`). A failed read is
    logged and skipped: reading pods is advice, and the job's own status still decides."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    stuck = StuckPods(grace_s, clock, scale_up_wait_s)
    kueue_said = ""

    def check(job: dict[str, Any] | None = None) -> None:
        nonlocal kueue_said
        try:
            pods, events = read()
        except (ApiException, HTTPError) as exc:
            log.warning("could not read the job's pods or events: %s", getattr(exc, "reason", exc))
            return
        if job is not None and kind is not None and kueue_queue_holding(job):
            said = kueue_says(kind, job, events)
            if said and said != kueue_said:
                log.info("Kueue: %s", said)
            kueue_said = said
        stuck.check(pods, events, job, kind)

    return check
