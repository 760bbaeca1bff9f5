"""Failing fast on a job that cannot start: the operator never marks a PyTorchJob Failed while a pod
sits in CreateContainerConfigError, ImagePullBackOff, a failed volume mount or Unschedulable, so
without this the launcher would wait its whole timeout (days) with GPUs held by the pods that did start.

While the wait polls the job, `StuckPods` reads the job's pods and the namespace's Warning events;
a pod held in one of those states for longer than the grace period (`--stuck-after`, default 300 s)
ends the wait with JobStuck naming the pod, the reason, the API's message and the fix. The grace
lets transient states pass: an image pull that retries once, a pod waiting seconds for a node that
the autoscaler is adding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from medo1.launch.waiting import LaunchError

log = logging.getLogger(__name__)

DEFAULT_STUCK_AFTER_S = 300.0
# The label each job's controller puts on the pods it creates.
POD_SELECTOR = {"PyTorchJob": "training.kubeflow.org/job-name={name}", "Job": "batch.kubernetes.io/job-name={name}"}

FIX = {
    "CreateContainerConfigError": (
        "create the Secret and key the message names (kubectl create secret generic NAME --from-literal=KEY=...), "
        "or point the chart's secrets.<name>.name / key at one that exists; `medo1 doctor` checks them before a run"),
    "ErrImagePull": (
        "check that image.repository:image.tag exists and the nodes can reach the registry; a private registry "
        "needs image.pullSecrets"),
    "InvalidImageName": "fix image.repository / image.tag in the chart values",
    "FailedMount": (
        "the PersistentVolumeClaim must exist, be Bound and allow the access mode the pods need (ReadWriteMany "
        "when several nodes mount it); see `kubectl describe pvc`; `medo1 doctor` checks the claims"),
    "Unschedulable": (
        "no node has the requested resources under the job's nodeSelector / tolerations: wait for GPUs to free up, "
        "ask for fewer (cluster.nodes, cluster.gpusPerNode), fix cluster.nodeSelector / tolerations, or set "
        "kueue.queueName so the job queues for quota instead of holding half its pods"),
}
FIX["ImagePullBackOff"] = FIX["ErrImagePull"]
FIX["FailedAttachVolume"] = FIX["FailedMount"]
WAITING_REASONS = ("CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName")
EVENT_REASONS = ("FailedMount", "FailedAttachVolume")


class JobStuck(LaunchError):
    """A pod of the job stayed in a state it does not leave by itself for longer than the grace period."""


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str

    @property
    def fix(self) -> str:
        return FIX[self.reason]

    def describe(self) -> str:
        return f"pod {self.pod}: {self.reason}: {self.message or 'no message'}\nfix: {self.fix}"


def pod_problems(pod: dict[str, Any], events: Iterable[dict[str, Any]] = ()) -> list[PodProblem]:
    """What keeps a pod (as the API returns it, camelCase) from running: a container waiting for a
    reason in WAITING_REASONS, the scheduler's Unschedulable condition, or a FailedMount Warning event
    about the pod. A pod that has started or finished has none."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return []
    problems = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            problems.append(PodProblem(name, "Unschedulable", condition.get("message", "")))
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            problems.append(PodProblem(name, waiting["reason"], waiting.get("message", "")))
    running = any("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or [])
    if not running:
        for event in events:
            involved = event.get("involvedObject") or {}
            if involved.get("kind") == "Pod" and involved.get("name") == name and event.get("reason") in EVENT_REASONS:
                problems.append(PodProblem(name, event["reason"], event.get("message", "")))
                break
    return problems


class StuckPods:
    """Remembers since when each (pod, reason) has been seen; `check` raises JobStuck once one has lasted
    `grace_s`. A problem that goes away (the pull succeeded, the pod was scheduled) is forgotten."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic):
        self.grace_s = grace_s
        self.clock = clock
        self.since: dict[tuple[str, str], float] = {}

    def check(self, pods: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]]) -> None:
        now = self.clock()
        events = list(events)
        seen: dict[tuple[str, str], PodProblem] = {}
        for pod in pods:
            for problem in pod_problems(pod, events):
                seen[(problem.pod, problem.reason)] = problem
        for key, problem in seen.items():
            if key not in self.since:
                log.warning("%s (failing after %.0f s)", problem.describe(), self.grace_s)
                self.since[key] = now
        self.since = {key: since for key, since in self.since.items() if key in seen}
        overdue = [seen[key] for key, since in self.since.items() if now - since >= self.grace_s]
        if overdue:
            raise JobStuck(f"stuck for over {self.grace_s:.0f} s:\n" + "\n".join(p.describe() for p in overdue))


def pod_reader(core_api: Any, kind: str, name: str, namespace: str) -> Callable[[], tuple[list[dict], list[dict]]]:
    """Reads the job's pods and the namespace's Warning events (as camelCase dicts) through the kubernetes
    client's CoreV1Api."""
    selector = POD_SELECTOR[kind].format(name=name)

    def read() -> tuple[list[dict], list[dict]]:
        serialize = core_api.api_client.sanitize_for_serialization
        pods = core_api.list_namespaced_pod(namespace, label_selector=selector).items
        events = core_api.list_namespaced_event(namespace, field_selector="type=Warning").items
        return [serialize(p) for p in pods], [serialize(e) for e in events]

    return read


def stuck_checker(read: Callable[[], tuple[list[dict], list[dict]]], grace_s: float,
                  clock: Callable[[], float] = time.monotonic) -> Callable[[], None]:
    """The check the wait calls each poll. A failed read is logged and skipped: reading pods is advice,
    and the job's own status still decides."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    stuck = StuckPods(grace_s, clock)

    def check() -> None:
        try:
            pods, events = read()
        except (ApiException, HTTPError) as exc:
            log.warning("could not read the job's pods or events: %s", getattr(exc, "reason", exc))
            return
        stuck.check(pods, events)

    return check
