"""The pod this launcher runs in, when it runs in one (the chart's run Job, a pipeline step): the owner its jobs
get, and whether a SIGTERM means "cancelled" or "this pod is being evicted".

- Owner: a job the chart's run Job launches names that Job (the run pod's controller) in its ownerReferences,
  so `helm uninstall` (which deletes the run Job) stops training through the garbage collector, whether or not
  the run pod's own cleanup still has the RBAC Helm deletes at the same time. Not the pod: a pod replaced after
  an eviction would take its jobs with it. A pipeline step's pod is owned by its Argo Workflow, not a Job: its
  jobs get no owner (a retried step attaches to them; their activeDeadlineSeconds bounds them).
- Eviction: the API server marks a pod it is about to delete for a disruption with the condition
  DisruptionTarget=True before the kubelet sends SIGTERM (kubernetes staging/src/k8s.io/api/core/v1/types.go:
  reasons EvictionByEvictionAPI for a drain or the autoscaler's consolidation, PreemptionByScheduler,
  DeletionByTaintManager, TerminationByKubelet, DeletionByPodGC). A user's cancel (KFP cancelling the step,
  `kubectl delete`, Helm deleting the run Job) sets none. An evicted launcher leaves its job running; the pod
  that replaces it attaches to the job.

The pod is `$MEDO1_POD_NAME`, else, inside a pod (a service-account namespace file exists), `$HOSTNAME`
(a Job's pod's hostname is its name).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POD_NAME_ENV = "MEDO1_POD_NAME"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DISRUPTION_CONDITION = "DisruptionTarget"
# Reading the pod at SIGTERM must fit in the grace period with room to spare.
SIGTERM_READ_TIMEOUT_S = 5.0


def own_pod_name() -> str | None:
    if os.environ.get(POD_NAME_ENV):
        return os.environ[POD_NAME_ENV]
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return os.environ.get("HOSTNAME") or None
    return None


@dataclass
class LauncherPod:
    core_api: Any
    name: str
    namespace: str
    owner: dict[str, Any] | None
    """The ownerReference the launched jobs get: the pod's controller when it is a batch Job."""

    @classmethod
    def find(cls, core_api: Any, namespace: str) -> LauncherPod | None:
        """This process's pod in `namespace` (the jobs' namespace; the pod's own when it runs in a pod), or None
        when it runs outside a pod or its pod cannot be read (then its jobs get no owner)."""
        name = own_pod_name()
        if not name:
            return None
        if SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or namespace
        pod = _read(core_api, name, namespace)
        if pod is None:
            log.warning(
                "could not read this launcher's pod %s/%s: the jobs it creates get no owner, so `helm "
                "uninstall` leaves them to their activeDeadlineSeconds",
                namespace,
                name,
            )
            return None
        controller = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
        owner = None
        if controller and controller.get("kind") == "Job" and controller.get("apiVersion") == "batch/v1":
            owner = {"apiVersion": "batch/v1", "kind": "Job", "name": controller["name"], "uid": controller["uid"]}
        return cls(core_api, name, namespace, owner)

    def disruption(self) -> str | None:
        """Why this pod is being disrupted (`Reason: message` of its DisruptionTarget condition), or None when it
        is not (a cancel) or cannot be told."""
        pod = _read(self.core_api, self.name, self.namespace, SIGTERM_READ_TIMEOUT_S)
        for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
            if condition.get("type") == DISRUPTION_CONDITION and condition.get("status") == "True":
                reason = condition.get("reason") or "DisruptionTarget"
                return f"{reason}: {condition['message']}" if condition.get("message") else reason
        return None


def _read(core_api: Any, name: str, namespace: str, timeout_s: float | None = None) -> dict[str, Any] | None:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    extra = {"_request_timeout": (min(timeout_s, 5.0), timeout_s)} if timeout_s else {}
    try:
        pod = core_api.read_namespaced_pod(name, namespace, **extra)
    except (ApiException, HTTPError) as exc:
        log.debug("reading pod %s/%s: %s", namespace, name, getattr(exc, "reason", exc))
        return None
    return core_api.api_client.sanitize_for_serialization(pod)
