"""A local stand-in for the Kubernetes API server, for launcher, Helm and doctor tests: no cluster exists here.

One request path for every request (`serve_api`), in the real server's order: discovery; RBAC for a
service-account token (`service_account_token`): a request the Roles and ClusterRoles bound to the account do
not grant is 403 with the API server's message, the launcher's job create / get / list / patch / delete
included; access reviews (a SubjectAccessReview needs `create subjectaccessreviews`, a SelfSubjectAccessReview is
always answered; a cluster admin's are answered from `permissions`); then the object. Any other token is a
cluster admin's.

Jobs (PyTorchJob kubeflow.org/v1, batch/v1 Job, TrainJob trainer.kubeflow.org/v1alpha1) are what the kubernetes
client and the Kubeflow SDKs (training, and trainer for Kubeflow Trainer v2) create, read, list by label,
patch and delete. Each plays a script: steps of its controller's status (Training Operator v1.9, Trainer v2.3)
plus its first pod's main container at that point (a TrainJob's: the node-0 pod JobSet creates, labelled as
JobSet and the Job controller label it). A job moves one step on per GET of it, but not past a running container
whose log lines no reader has been sent yet (a real job does not finish before its pod has logged). Pods are
listed by label selector (`k=v` and `k in (a, b)` terms), a pod's log read (followed), chunked as the API server
streams it. A Foreground deletion ends after `foreground_reads` GETs, or never (pods stuck Terminating on a dead
node). A job created with no script (Helm's) has no controller acting on it.

What the real server does when no controller acts, modelled: a job whose kind has no running controller
(`controllers`: the kinds that have one) has no status at all and no pods, as a real API server keeps a custom
resource nobody reconciles; with `refuse_pods` (the API server's admission error, e.g. a ResourceQuota's), the
controller creates no pod and records what Training Operator v1 and the Job controller record: a Warning event
`FailedCreatePod` (PyTorchJob) or `FailedCreate` (a batch Job, and a TrainJob's child Jobs) with the message
`Error creating: <the error>` (kubeflow/training-operator pkg/controller.v1/control/pod_control.go; kubernetes
pkg/controller/controller_utils.go); with `refuse_pods_once`, only the first attempt is refused. With Trainer's
controller runs its validating webhook: a TrainJob whose (Cluster)TrainingRuntime does not exist is refused (403).

Every other object: recorded cluster objects (`record`: nodes, CRDs, pods, events, RBAC...) and what clients
create, kept and served with create / server-side apply / merge patch / replace / delete, with discovery
(built-in groups and those of the CustomResourceDefinitions recorded) and the OpenAPI v3 index that tells
kubectl / Helm the server validates fields itself. The refusals a real server makes, for jobs and objects
alike: a batch Job's pod template or selector, a TrainJob's immutable fields or an immutable ConfigMap's data
changed (422 `field is immutable`), a replace of an older resourceVersion (409), a strategic merge patch of a
custom resource (415); a create of a name that exists (409). Every request is recorded (`requests`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

JOBS = re.compile(
    r"^/apis/(?:kubeflow\.org/v1|batch/v1|trainer\.kubeflow\.org/v1alpha1)/namespaces/(?P<ns>[^/]+)/"
    r"(?:pytorchjobs|jobs|trainjobs)(?:/(?P<name>[^/]+))?$"
)
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
IMAGE = "ghcr.io/medo1/trainer:0.1.0"
STARTED = datetime(2026, 11, 23, 10, 1, tzinfo=timezone.utc)
PLURALS = {
    "Node": "nodes",
    "Namespace": "namespaces",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Pod": "pods",
    "Event": "events",
    "CustomResourceDefinition": "customresourcedefinitions",
    "LocalQueue": "localqueues",
    "ConfigMap": "configmaps",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
    "TrainingRuntime": "trainingruntimes",
}
JOB_KINDS = {"pytorchjobs": "PyTorchJob", "jobs": "Job", "trainjobs": "TrainJob"}
SET_TERM = re.compile(r"^\s*(?P<key>[^\s=!]+)\s+in\s+\((?P<values>[^)]*)\)\s*$")


def request_body(raw: bytes) -> dict | None:
    """JSON, or the YAML of a server-side apply (application/apply-patch+yaml)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return yaml.safe_load(raw)


def selector_terms(selector: str) -> list[tuple[str, set[str]]]:
    """A label selector's terms as (key, allowed values): `k=v` and the set-based `k in (a, b)`."""
    terms, rest = [], selector
    while rest:
        head, _, rest = rest.partition(",")
        if "(" in head and ")" not in head:  # a set's values hold commas
            tail, _, rest = rest.partition(")")
            head = f"{head},{tail})"
        if match := SET_TERM.match(head):
            terms.append((match["key"], {v.strip() for v in match["values"].split(",")}))
        elif head.strip():
            key, _, value = head.partition("=")
            terms.append((key.strip(), {value.strip()}))
    return terms


def selected_by(labels: dict | None, selector: str) -> bool:
    return all((labels or {}).get(key) in values for key, values in selector_terms(selector))


def flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool; Python sends "True")."""
    return query.get(name, ["false"])[0] in ("1", "t", "T", "true", "True", "TRUE")


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339nano(moment: datetime, nanoseconds: int) -> str:
    """As kubelet stamps log lines: nanoseconds with trailing zeros (and a bare dot) trimmed."""
    fraction = f"{nanoseconds:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


# ---- the API a real server serves: discovery, OpenAPI, any object, its refusals, RBAC -------------------

# Built-in resource types (group/version -> (plural, kind, namespaced)); CustomResourceDefinitions recorded
# (or created) add theirs, at every version they serve.
BUILT_IN_RESOURCES = {
    "v1": [
        ("namespaces", "Namespace", False),
        ("nodes", "Node", False),
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("events", "Event", True),
        ("services", "Service", True),
    ],
    "batch/v1": [("jobs", "Job", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "storage.k8s.io/v1": [("storageclasses", "StorageClass", False)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    "authorization.k8s.io/v1": [
        ("selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
        ("subjectaccessreviews", "SubjectAccessReview", False),
    ],
    "authentication.k8s.io/v1": [("selfsubjectreviews", "SelfSubjectReview", False)],
}
PLURALS.update({kind: plural for resources in BUILT_IN_RESOURCES.values() for plural, kind, _ in resources})
BUILT_IN_GROUPS = {gv.rpartition("/")[0] for gv in BUILT_IN_RESOURCES}
PLURALS.update(
    {
        "ClusterQueue": "clusterqueues",
        "ResourceFlavor": "resourceflavors",
        "TrainJob": "trainjobs",
        "PyTorchJob": "pytorchjobs",
    }
)
RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?(?:/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?)?$"
)
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
ADMIN = "kubernetes-admin"
# What every authenticated user may do (the system:basic-user ClusterRole): ask what it may do itself.
BASIC_USER_RULES = [
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
]
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True)
class RequestInfo:
    """A resource request's authorization attributes, as the API server's RequestInfo resolver reads a path."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str

    @property
    def prefix(self) -> str:
        return "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo | None:
    match = RESOURCE_PATH.match(path)
    if not match:
        return None
    group = match["group"] or ""
    version = match["version"] or "v1"
    namespace, resource, name = match["ns"] or "", match["resource"] or "", match["name"] or ""
    if namespace and not resource:  # /api/v1/namespaces/NAME: the namespace itself
        resource, name = "namespaces", namespace
    if not resource:
        return None
    verb = {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method)
    if method == "GET":
        verb = "watch" if flag(query, "watch") else ("get" if name else "list")
    return RequestInfo(verb or method.lower(), group, version, resource, match["sub"] or "", namespace, name)


def forbidden_message(user: str, info: RequestInfo) -> str:
    """The API server's 403 message (k8s.io/apiserver pkg/endpoints/handlers/responsewriters/errors.go
    forbiddenMessage, wrapped by apierrors.NewForbidden)."""
    resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
    scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    reason = f'User "{user}" cannot {info.verb} resource "{resource}" in API group "{info.group}" {scope}'
    return (
        f'{info.qualified} "{info.name}" is forbidden: {reason}'
        if info.name
        else f"{info.qualified} is forbidden: {reason}"
    )


def rule_allows(rule: dict, info: RequestInfo) -> bool:
    """One PolicyRule against a request (k8s.io/kubernetes plugin/pkg/auth/authorizer/rbac RuleAllows)."""
    resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
    return (
        any(v in ("*", info.verb) for v in rule.get("verbs", []))
        and any(g in ("*", info.group) for g in rule.get("apiGroups", []))
        and any(r in ("*", resource) for r in rule.get("resources", []))
        and (not rule.get("resourceNames") or info.name in rule["resourceNames"])
    )


def subject_matches(subject: dict, user: str, groups: list[str], binding_namespace: str) -> bool:
    """A binding's subject against the user; a ServiceAccount subject without a namespace is in the binding's
    own (plugin/pkg/auth/authorizer/rbac/rbac.go appliesToUser)."""
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user
    if kind == "Group":
        return subject.get("name") in groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    return False


def service_account_groups(user: str) -> list[str]:
    namespace = user.split(":")[2]
    return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` and Helm's three-way patch send)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_config(live, previous, applied):
    """Server-side apply by one manager: what it applies is merged into the live object, and fields it applied
    before but no longer does are removed; fields only the server or others set stay (lists are atomic)."""
    if not isinstance(applied, dict) or not isinstance(live, dict):
        return copy.deepcopy(applied)
    result = dict(live)
    for key in (previous or {}) if isinstance(previous, dict) else ():
        if key not in applied:
            result.pop(key, None)
    for key, value in applied.items():
        result[key] = apply_config(
            result.get(key), (previous or {}).get(key) if isinstance(previous, dict) else None, value
        )
    return result


def immutable_change(old: dict, new: dict) -> str | None:
    """The message a real server refuses an update with, for the immutable fields modelled here: a batch Job's
    pod template and selector (k8s.io/kubernetes pkg/apis/batch/validation ValidateJobSpecUpdate), a TrainJob's
    trainer, runtimeRef, initializer and managedBy (tests/fixtures/crds), and the data of an immutable
    ConfigMap or Secret (pkg/apis/core/validation ValidateConfigMapUpdate)."""
    kind, name = old.get("kind"), old["metadata"]["name"]
    if kind == "Job":
        for key in ("template", "selector"):
            if old.get("spec", {}).get(key) != new.get("spec", {}).get(key):
                value = json.dumps(new.get("spec", {}).get(key), sort_keys=True, separators=(",", ":"))
                return f'Job.batch "{name}" is invalid: spec.{key}: Invalid value: {value}: field is immutable'
    if kind == "TrainJob":  # the Trainer CRD's CEL rules (x-kubernetes-validations: self == oldSelf)
        for key in ("runtimeRef", "trainer", "initializer", "managedBy"):
            if key in old.get("spec", {}) and old["spec"][key] != new.get("spec", {}).get(key):
                return f'TrainJob.trainer.kubeflow.org "{name}" is invalid: spec.{key}: Invalid value: "object": field is immutable'
    if kind in ("ConfigMap", "Secret") and old.get("immutable"):
        for key in ("data", "binaryData", "immutable"):
            if old.get(key) != new.get(key):
                return f'{kind} "{name}" is invalid: {key}: Forbidden: field is immutable when `immutable` is set'
    return None


@dataclass
class ContainerRun:
    """One run of the Master pod's `pytorch` container: a restart in place has the same pod uid and a
    higher restart count."""

    pod_uid: str
    restart_count: int = 0
    lines: list[str] = field(default_factory=list)
    drop_first_connection_after: int | None = None
    """Cut the first log connection after this many lines, as a dropped connection would."""
    sent: int = 0
    connections: int = 0

    def stamp(self, index: int) -> str:
        start = STARTED + timedelta(minutes=self.restart_count)
        return rfc3339nano(start + timedelta(seconds=index // 1000), (index % 1000) * 1_500_000)


def sigterm_while_following(args: list[str], kubeconfig: Path, run: ContainerRun, cwd: Path) -> tuple[int, str, str]:
    """Run `medo1 ARGS` against the stand-in and send it SIGTERM (a KFP cancel) once it is waiting on the job and
    following its log (the first line of `run` sent): (exit code, stdout, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "medo1", *args],
        cwd=cwd,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while run.sent == 0:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr and process.stderr.read()
            time.sleep(0.05)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, out, err


@dataclass
class Step:
    status: dict
    """The job's `.status` as the operator writes it."""
    run: ContainerRun | None = None
    """The Master container at this step; None: no pod yet."""
    exit_code: int | None = None
    """None: the run is running; else it has terminated with this code."""
    message: str = ""
    """What the terminated container left in its termination message file (state.terminated.message)."""


@dataclass
class StoredJob:
    body: dict
    steps: list[Step]
    position: int = 0
    deleting_reads: int | None = None
    """Foreground deletion: GETs that still see the job (with a deletionTimestamp) before it is gone."""

    @property
    def step(self) -> Step:
        return self.steps[self.position]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None


@dataclass
class KubeStandIn:
    scripts: dict[str, list[list[Step]]] = field(default_factory=dict)
    """Job name -> scripts for the jobs created (POST) under that name, in order; `*`: for any other name
    (the Kubeflow SDK names a TrainJob at random unless told)."""
    jobs: dict[tuple[str, str], StoredJob] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    recorded: dict[str, list[dict]] = field(default_factory=dict)
    """Recorded cluster objects (nodes, secrets, PVCs, CRDs, pods, events, LocalQueues...) by the collection
    path they are listed from: GET of the path lists them (`labelSelector` / `fieldSelector` `key=value`
    terms), GET of path/NAME reads one; recorded pods are listed beside the jobs' own. See `record`."""
    forbidden: set[str] = field(default_factory=set)
    """API paths answered 403, as for a namespaced account reading nodes or CRDs."""
    permissions: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)
    """(verb, API group, resource or resource/subresource) allowed, by user: "" for the caller's own
    SelfSubjectAccessReview, `system:serviceaccount:NS:NAME` for a SubjectAccessReview about one."""
    controllers: set[str] = field(default_factory=lambda: {"PyTorchJob", "Job", "TrainJob"})
    """The job kinds whose controller runs; a job of another kind gets no status and no pods."""
    refuse_pods: str | None = None
    """Admission refuses every pod a controller creates with this error (`pods "NAME" is forbidden: ...`, NAME
    filled in): no pod, and the controller's Warning event on the job."""
    refuse_pods_once: bool = False
    """With `refuse_pods`: only the first attempt is refused (a webhook that timed out once); the controller's
    retry creates the pods, the refusal's event stays."""
    kueue_pending: str | None = None
    """Kueue runs and admits nothing: its webhook suspends each job created with a `kueue.x-k8s.io/queue-name`
    label (a PyTorchJob's runPolicy.suspend, a Job's or TrainJob's spec.suspend), which stays so, and its scheduler
    records this message in a Normal `Pending` event on the job's Workload (kubernetes-sigs/kueue pkg/scheduler/
    scheduler.go; the Workload named as pkg/controller/jobframework/workload_names.go names it)."""
    foreground_reads: int | None = 1
    """GETs that still see a job deleted in the foreground (its pods then carry a deletionTimestamp); None: it is
    never gone."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer token -> service-account user (`service_account_token`), whose requests the RBAC objects kept here
    limit; any other token is a cluster admin's."""
    applied: dict[str, dict] = field(default_factory=dict)
    """Object path -> the configuration last applied to it (server-side apply)."""
    _api_lock: Any = field(default_factory=threading.RLock)

    def script(self, name: str, steps: list[Step]) -> None:
        self.scripts.setdefault(name, []).append(steps)

    def add_job(self, body: dict, steps: list[Step]) -> None:
        """A job that exists before the launcher runs (an earlier attempt of the step)."""
        meta = body["metadata"]
        self.jobs[(meta["namespace"], meta["name"])] = StoredJob(self._stored(body), steps)

    def calls(self, method: str, kind: str = "pytorchjobs") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and f"/{kind}" in r.path]

    def record(self, obj: dict) -> None:
        """Serve `obj` (a Kubernetes object as `kubectl get -o yaml` prints it) at its API path."""
        group_version = obj["apiVersion"] if "/" in obj["apiVersion"] else f"core/{obj['apiVersion']}"
        prefix = "/api/v1" if group_version.startswith("core/") else f"/apis/{group_version}"
        namespace = obj["metadata"].get("namespace")
        collection = f"{prefix}/namespaces/{namespace}" if namespace else prefix
        self.recorded.setdefault(f"{collection}/{PLURALS[obj['kind']]}", []).append(obj)
        if obj["kind"] == "Pod":  # listed across namespaces too
            self.recorded.setdefault("/api/v1/pods", []).append(obj)

    def _selected(self, items: list[dict], query: dict[str, list[str]]) -> list[dict]:
        def value(obj: dict, dotted: str):
            if dotted == "source" and obj.get("kind") == "Event":  # an event's `source` field is its component
                dotted = "source.component"
            for part in dotted.split("."):
                obj = obj.get(part) if isinstance(obj, dict) else None
            return obj

        selector = query.get("labelSelector", [""])[0]
        fields = [t.split("=", 1) for t in query.get("fieldSelector", [""])[0].split(",") if t]
        return [
            o
            for o in items
            if selected_by(o["metadata"].get("labels"), selector) and all(str(value(o, k)) == v for k, v in fields)
        ]

    def write_kubeconfig(self, path: Path, namespace: str, token: str = "standin-token") -> Path:
        """A kubeconfig for the stand-in: a cluster admin's, or a service account's with its `token`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "launcher", "user": {"token": token}}],
            "contexts": [
                {"name": "standin", "context": {"cluster": "standin", "user": "launcher", "namespace": namespace}}
            ],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _stored(self, body: dict) -> dict:
        body = json.loads(json.dumps(body))
        body["metadata"].update(
            uid=str(uuid.uuid4()), generation=1, resourceVersion="1", creationTimestamp=rfc3339(STARTED)
        )
        return body

    def _acted_on(self, stored: StoredJob) -> bool:
        return stored.body["kind"] in self.controllers

    def _job_view(self, stored: StoredJob) -> dict:
        view = json.loads(json.dumps(stored.body))
        if self._acted_on(stored):
            view["status"] = stored.step.status
        return view

    def _refused(self, namespace: str, name: str, stored: StoredJob) -> None:
        """The controller's attempt to create the job's first pod, refused by admission: its Warning event."""
        kind = stored.body["kind"]
        pod = self.pod_name(name, stored)
        involved = {
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": stored.body["metadata"]["uid"],
            "apiVersion": stored.body["apiVersion"],
        }
        reason = "FailedCreatePod" if kind == "PyTorchJob" else "FailedCreate"
        if kind == "TrainJob":  # JobSet's child Job for node 0 fails to create its pod
            involved = {
                "kind": "Job",
                "name": f"{name}-node-0",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "apiVersion": "batch/v1",
            }
        component = {"PyTorchJob": "pytorchjob-controller", "Job": "job-controller", "TrainJob": "job-controller"}[kind]
        message = f'Error creating: pods "{pod}" is forbidden: {self.refuse_pods}'
        self._record_event(namespace, involved, "Warning", reason, message, component)

    def _record_event(
        self, namespace: str, involved: dict, event_type: str, reason: str, message: str, component: str
    ) -> None:
        """An Event about `involved` as a controller's recorder writes it (legacy fields: source, timestamps)."""
        self.record(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "type": event_type,
                "reason": reason,
                "involvedObject": involved,
                "message": message,
                "source": {"component": component},
                "firstTimestamp": rfc3339(STARTED),
                "lastTimestamp": rfc3339(STARTED),
                "count": 1,
            }
        )

    def _advance(self, stored: StoredJob) -> None:
        if not self._acted_on(stored):
            return
        step = stored.step
        waiting_for_reader = step.run is not None and step.exit_code is None and step.run.sent < len(step.run.lines)
        if stored.position < len(stored.steps) - 1 and not waiting_for_reader:
            stored.position += 1

    @staticmethod
    def pod_name(name: str, stored: StoredJob) -> str:
        return {"PyTorchJob": f"{name}-master-0", "TrainJob": f"{name}-node-0-0-5tq8r"}.get(
            stored.body["kind"], f"{name}-7xk2p"
        )

    def _pod(self, namespace: str, name: str, stored: StoredJob) -> dict | None:
        step = stored.step
        if step.run is None or not self._acted_on(stored) or (self.refuse_pods and not self.refuse_pods_once):
            return None
        if stored.body["kind"] == "Job":  # what the Job controller puts on its pods
            template = stored.body["spec"]["template"]
            labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": name, "job-name": name}
            container = template["spec"]["containers"][0]["name"]
        elif stored.body["kind"] == "PyTorchJob":
            labels = {
                **stored.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"].get("labels", {}),
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/job-role": "master",
                "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/replica-index": "0",
                "training.kubeflow.org/replica-type": "master",
            }
            container = "pytorch"
        else:  # a TrainJob's node-0 pod: JobSet's labels and the Job controller's index
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/job-index": "0",
                "batch.kubernetes.io/job-completion-index": "0",
                "batch.kubernetes.io/job-name": f"{name}-node-0",
                "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
            }
            container = "node"
        run = step.run
        running = step.exit_code is None
        state = (
            {"running": {"startedAt": rfc3339(STARTED)}}
            if running
            else {
                "terminated": {
                    "exitCode": step.exit_code,
                    "reason": "Completed" if step.exit_code == 0 else "Error",
                    "startedAt": rfc3339(STARTED),
                    "finishedAt": rfc3339(STARTED + timedelta(hours=1)),
                    **({"message": step.message} if step.message else {}),
                }
            }
        )
        metadata = {
            "name": self.pod_name(name, stored),
            "namespace": namespace,
            "uid": run.pod_uid,
            "labels": labels,
            "creationTimestamp": rfc3339(STARTED),
        }
        if stored.body["metadata"].get("deletionTimestamp"):  # the garbage collector deletes a job's pods first
            metadata["deletionTimestamp"] = stored.body["metadata"]["deletionTimestamp"]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {"containers": [{"name": container, "image": IMAGE}], "nodeName": "gpu-node-1"},
            "status": {
                "phase": "Running" if running or step.exit_code != 0 else "Succeeded",
                "containerStatuses": [
                    {
                        "name": container,
                        "image": IMAGE,
                        "imageID": f"{IMAGE}@sha256:{'0' * 64}",
                        "ready": running,
                        "started": running,
                        "restartCount": run.restart_count,
                        "state": state,
                    }
                ],
            },
        }

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for `system:serviceaccount:NAMESPACE:NAME`, whose requests RBAC limits."""
        token = f"standin-sa-{namespace}-{name}"
        self.tokens[token] = f"system:serviceaccount:{namespace}:{name}"
        return token

    def user_of(self, authorization: str) -> str:
        return self.tokens.get(authorization.removeprefix("Bearer ").strip(), ADMIN)

    def served_resources(self) -> dict[str, list[tuple[str, str, bool]]]:
        """Group/version -> (plural, kind, namespaced): the built-in types and each recorded CRD's served versions."""
        served = {gv: list(resources) for gv, resources in BUILT_IN_RESOURCES.items()}
        for crd in self.recorded.get(CRDS_PATH, []):
            spec = crd["spec"]
            if "group" not in spec or "names" not in spec:  # recorded trimmed to its versions
                continue
            for version in spec.get("versions", []):
                if version.get("served", True):
                    served.setdefault(f"{spec['group']}/{version['name']}", []).append(
                        (
                            spec["names"]["plural"],
                            spec["names"]["kind"],
                            spec.get("scope", "Namespaced") == "Namespaced",
                        )
                    )
        return served

    def rbac_allows(self, user: str, info: RequestInfo) -> bool:
        """Whether the Roles and ClusterRoles bound to `user` (a service account) grant the request."""
        groups = service_account_groups(user) if user.startswith("system:serviceaccount:") else ["system:authenticated"]
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        if any(rule_allows(rule, info) for rule in BASIC_USER_RULES):
            return True
        bindings = [(b, "") for b in self.recorded.get(f"{rbac}/clusterrolebindings", [])]
        if info.namespace:
            bindings += [
                (b, info.namespace) for b in self.recorded.get(f"{rbac}/namespaces/{info.namespace}/rolebindings", [])
            ]
        for binding, namespace in bindings:
            if not any(subject_matches(s, user, groups, namespace) for s in binding.get("subjects") or []):
                continue
            ref = binding["roleRef"]
            roles = (
                self.recorded.get(f"{rbac}/namespaces/{namespace}/roles", [])
                if ref["kind"] == "Role"
                else self.recorded.get(f"{rbac}/clusterroles", [])
            )
            for role in roles:
                if role["metadata"]["name"] == ref["name"] and any(
                    rule_allows(r, info) for r in role.get("rules") or []
                ):
                    return True
        return False

    def _discovery(self, handler: Any, path: str) -> bool:
        served = self.served_resources()
        path = path.rstrip("/") or path  # the python client asks /apis/ and /version/
        if path == "/version":
            handler._reply(200, {"major": "1", "minor": "36", "gitVersion": "v1.36.2", "platform": "linux/amd64"})
        elif path == "/api":
            handler._reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif path == "/apis":
            groups: dict[str, list[str]] = {}
            for gv in served:
                if "/" in gv:
                    group, version = gv.split("/")
                    groups.setdefault(group, []).append(version)
            handler._reply(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": group,
                            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
                        }
                        for group, versions in groups.items()
                    ],
                },
            )
        elif path == "/openapi/v3":
            # Every group/version's document says the server validates fields itself (fieldValidation), so
            # kubectl and Helm send fieldValidation=Strict instead of validating against OpenAPI v2 here.
            handler._reply(
                200,
                {
                    "paths": {
                        ("api/v1" if gv == "v1" else f"apis/{gv}"): {
                            "serverRelativeURL": f"/openapi/v3/{'api/v1' if gv == 'v1' else 'apis/' + gv}?hash={len(resources)}"
                        }
                        for gv, resources in served.items()
                    }
                },
            )
        elif path.startswith("/openapi/v3/"):
            gv = path.removeprefix("/openapi/v3/").removeprefix("apis/").removeprefix("api/")
            if gv not in served:
                return False
            group, _, version = gv.rpartition("/")
            prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            paths = {}
            for plural, kind, namespaced in served[gv]:
                where = (
                    f"{prefix}/namespaces/{{namespace}}/{plural}/{{name}}"
                    if namespaced
                    else f"{prefix}/{plural}/{{name}}"
                )
                paths[where] = {
                    "patch": {
                        "x-kubernetes-group-version-kind": {"group": group, "version": version or gv, "kind": kind},
                        "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "OK"}},
                    }
                }
            handler._reply(
                200,
                {
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": "v1.36.2"},
                    "paths": paths,
                    "components": {"schemas": {}},
                },
            )
        else:
            match = re.match(r"^/(?:api/(v1)|apis/([^/]+/[^/]+))$", path)
            gv = match and (match[1] or match[2])
            if not gv or gv not in served:
                return False
            handler._reply(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": gv,
                    "resources": [
                        {
                            "name": plural,
                            "singularName": kind.lower(),
                            "namespaced": namespaced,
                            "kind": kind,
                            "verbs": [
                                "create",
                                "delete",
                                "deletecollection",
                                "get",
                                "list",
                                "patch",
                                "update",
                                "watch",
                            ],
                        }
                        for plural, kind, namespaced in served[gv]
                    ],
                },
            )
        return True

    def serve_api(self, handler: Any, method: str, path: str, query: dict[str, list[str]]) -> bool:
        """Answer a request as the API server does, in its order: discovery; then, for every resource request,
        RBAC for a service-account caller (403 with the server's message); then access reviews, the jobs
        (`_serve_job`: their scripts play the controllers) and any other object kept here (`_serve_object`).
        False: the handler answers it (a pod list or log, a path in `forbidden`, a cluster admin's access review,
        anything else is not found)."""
        with self._api_lock:
            if method == "GET" and self._discovery(handler, path):
                return True
            info = request_info(method, path, query)
            if info is None:
                return False
            user = getattr(handler, "caller", ADMIN)
            if user != ADMIN and not self.rbac_allows(user, info):
                handler._status(403, "Forbidden", forbidden_message(user, info))
                return True
            if info.resource == "selfsubjectreviews":  # who am I
                groups = service_account_groups(user) if user != ADMIN else ["system:masters", "system:authenticated"]
                handler._reply(
                    201, {**(handler.body or {}), "status": {"userInfo": {"username": user, "groups": groups}}}
                )
                return True
            if info.group == "authorization.k8s.io":
                return user != ADMIN and self._answer_review(handler, user, info)
            if path in self.forbidden or POD_LOG.match(path) or PODS.match(path):
                return False
            if method == "PATCH" and self._unsupported_patch(handler, info):
                return True
            if JOBS.match(path):
                return self._serve_job(handler, method, info, query)
            return self._serve_object(handler, method, info, query)

    def _unsupported_patch(self, handler: Any, info: RequestInfo) -> bool:
        """A patch type the server refuses for this resource (a strategic merge patch of a custom resource: 415, as
        k8s.io/apiserver pkg/endpoints/handlers/patch.go answers it), or one not modelled here (a JSON patch)."""
        content_type = handler.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type == "application/strategic-merge-patch+json" and info.group not in BUILT_IN_GROUPS:
            handler._status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted "
                "media types include: application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml",
            )
            return True
        if content_type == "application/json-patch+json":
            handler._status(500, "InternalError", "the stand-in does not model JSON patches (RFC 6902)")
            return True
        return False

    def _serve_job(self, handler: Any, method: str, info: RequestInfo, query: dict[str, list[str]]) -> bool:
        """A PyTorchJob, batch Job or TrainJob, kept with the script of its controller's status steps (`StoredJob`):
        created (the next script for its name, else the `*` one, else none: no controller acts, its status stays
        empty), read (a GET moves it a step on; a Foreground deletion ends after `foreground_reads` GETs), listed,
        updated like any object (merge patch, server-side apply, replace; the immutable fields refused) and
        deleted. Jobs are kept by namespace and name alone: another kind's job of that name is not found here."""
        kind = JOB_KINDS[info.resource]
        key = (info.namespace, info.name)
        stored = self.jobs.get(key) if info.name else None
        if stored is not None and stored.body["kind"] != kind and method != "POST":
            stored = None
        body = handler.body or {}
        if method == "GET" and not info.name:
            listed = [
                self._job_view(s)
                for (namespace, _), s in self.jobs.items()
                if namespace == info.namespace and s.body["kind"] == kind
            ]
            handler._reply(
                200,
                {
                    "kind": f"{kind}List",
                    "apiVersion": info.prefix.removeprefix("/apis/"),
                    "metadata": {"resourceVersion": "1"},
                    "items": self._selected(listed, query),
                },
            )
            return True
        if method == "POST":
            return not info.name and self._create_job(handler, info, body)
        apply = method == "PATCH" and handler.headers.get("Content-Type", "").startswith(APPLY_PATCH)
        if stored is None:
            if apply:  # server-side apply of a job that does not exist yet: created
                created = self._create_job(handler, info, body)
                self.applied[f"{self._collection(info)}/{info.name}"] = copy.deepcopy(body)
                return created
            handler._status(404, "NotFound", f'{info.qualified} "{info.name}" not found')
            return True
        if method == "GET":
            if stored.body["metadata"].get("deletionTimestamp") and stored.deleting_reads is not None:
                if stored.deleting_reads == 0:  # its dependents are gone: so is it
                    del self.jobs[key]
                    handler._status(404, "NotFound", f'{info.qualified} "{info.name}" not found')
                    return True
                stored.deleting_reads -= 1
            view = self._job_view(stored)
            self._advance(stored)
            handler._reply(200, view)
            return True
        if method == "DELETE":
            propagation = body.get("propagationPolicy") or query.get("propagationPolicy", [""])[0]
            if propagation == "Foreground":  # kept, with the garbage collector's finalizer, until its pods are gone
                stored.body["metadata"].update(
                    deletionTimestamp=rfc3339(datetime.now(timezone.utc)), finalizers=["foregroundDeletion"]
                )
                stored.deleting_reads = self.foreground_reads
                handler._reply(200, self._job_view(stored))
                return True
            del self.jobs[key]
            self.applied.pop(f"{self._collection(info)}/{info.name}", None)
            handler._reply(
                200,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": info.name,
                        "group": info.group,
                        "kind": info.resource,
                        "uid": stored.body["metadata"]["uid"],
                    },
                },
            )
            return True
        updated = self._updated(handler, method, info, stored.body, body)
        if updated is not None:
            updated.pop("status", None)  # the status subresource's: written by the controller (the script) alone
            stored.body = updated
            handler._reply(200, self._job_view(stored))
        return True

    def _create_job(self, handler: Any, info: RequestInfo, body: dict) -> bool:
        name = body["metadata"].get("name", "")
        if (info.namespace, name) in self.jobs:
            handler._status(409, "AlreadyExists", f'{info.qualified} "{name}" already exists')
            return True
        refusal = self._trainer_webhook_refusal(info, body)
        if refusal:
            handler._status(403, "Forbidden", refusal)
            return True
        script = self.scripts.get(name) or self.scripts.get("*")
        created = self._server_filled(self._stored(body), info)
        created.pop("status", None)  # a status subresource: what a create sends is dropped
        stored = StoredJob(created, script.pop(0) if script else [Step(status={})])
        self.jobs[(info.namespace, name)] = stored
        if self.refuse_pods and self._acted_on(stored):
            self._refused(info.namespace, name, stored)
        if self.kueue_pending and "kueue.x-k8s.io/queue-name" in (created["metadata"].get("labels") or {}):
            self._kueue_holds(info.namespace, created)
        handler._reply(201, created)
        return True

    def _trainer_webhook_refusal(self, info: RequestInfo, body: dict) -> str | None:
        """Trainer's validating webhook, running with its controller: a TrainJob whose runtime does not exist is
        refused (kubeflow/trainer pkg/webhooks/trainjob_webhook.go ValidateCreate, through ValidateObjects in
        pkg/runtime/core/clustertrainingruntime.go and trainingruntime.go; controller-runtime's Denied: 403)."""
        if body.get("kind") != "TrainJob" or "TrainJob" not in self.controllers:
            return None
        ref = body.get("spec", {}).get("runtimeRef") or {}
        kind, name = ref.get("kind") or "ClusterTrainingRuntime", ref.get("name", "")
        scope = "" if kind == "ClusterTrainingRuntime" else f"/namespaces/{info.namespace}"
        runtimes = self.recorded.get(f"/apis/trainer.kubeflow.org/v1alpha1{scope}/{PLURALS[kind]}", [])
        if any(runtime["metadata"]["name"] == name for runtime in runtimes):
            return None
        field, which = ("RuntimeRef", "clusterTrainingRuntime") if scope == "" else ("runtimeRef", "trainingRuntime")
        return (
            f'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: spec.{field}: Invalid '
            f'value: {json.dumps(ref, separators=(",", ":"))}: {kind}.trainer.kubeflow.org "{name}" not found: '
            f"specified {which} must be created before the TrainJob is created"
        )

    def _kueue_holds(self, namespace: str, job: dict) -> None:
        kind, name, uid = job["kind"], job["metadata"]["name"], job["metadata"]["uid"]
        spec = job["spec"]["runPolicy"] if kind == "PyTorchJob" else job["spec"]
        spec["suspend"] = True
        group = job["apiVersion"].rpartition("/")[0]
        workload = f"{kind.lower()}-{name}-" + hashlib.sha1(f"{kind}\n{group}\n{name}\n{uid}".encode()).hexdigest()[:5]
        involved = {
            "kind": "Workload",
            "name": workload,
            "namespace": namespace,
            "apiVersion": "kueue.x-k8s.io/v1beta2",
        }
        self._record_event(namespace, involved, "Normal", "Pending", self.kueue_pending, "kueue-admission")

    def _answer_review(self, handler: Any, user: str, info: RequestInfo) -> bool:
        """A service account's access reviews: its own (always allowed to ask) or, with `create subjectaccessreviews`
        (checked above), another user's; answered from the RBAC objects kept here."""
        review = handler.body or {}
        spec = review.get("spec") or {}
        attributes = spec.get("resourceAttributes") or {}
        subject = user if info.resource == "selfsubjectaccessreviews" else spec.get("user", "")
        asked = RequestInfo(
            attributes.get("verb", ""),
            attributes.get("group", ""),
            attributes.get("version", ""),
            attributes.get("resource", ""),
            attributes.get("subresource", ""),
            attributes.get("namespace", ""),
            attributes.get("name", ""),
        )
        handler._reply(201, {**review, "status": {"allowed": self.rbac_allows(subject, asked)}})
        return True

    def _collection(self, info: RequestInfo) -> str:
        scope = f"/namespaces/{info.namespace}" if info.namespace and info.resource != "namespaces" else ""
        return f"{info.prefix}{scope}/{info.resource}"

    def _kind(self, info: RequestInfo) -> tuple[str, bool] | None:
        gv = f"{info.group}/{info.version}" if info.group else "v1"
        served = next(
            (
                (kind, namespaced)
                for plural, kind, namespaced in self.served_resources().get(gv, [])
                if plural == info.resource
            ),
            None,
        )
        recorded = self.recorded.get(self._collection(info))  # objects recorded without their CRD
        return served or (recorded and (recorded[0]["kind"], bool(info.namespace))) or None

    def _evict(self, handler: Any, info: RequestInfo) -> bool:
        """The Eviction API (what `kubectl drain` and the cluster autoscaler call): refused with 429 while a
        PodDisruptionBudget selecting the pod allows no disruption (pkg/registry/core/pod/storage/eviction.go),
        else the pod is deleted. A budget's healthy pods are those Ready; an unhealthy pod may go when the
        budget says unhealthyPodEvictionPolicy: AlwaysAllow."""
        pods = self.recorded.get(f"/api/v1/namespaces/{info.namespace}/pods", [])
        pod = next((p for p in pods if p["metadata"]["name"] == info.name), None)
        if pod is None:
            handler._status(404, "NotFound", f'pods "{info.name}" not found')
            return True

        def ready(candidate: dict) -> bool:
            conditions = (candidate.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        for budget in self.recorded.get(f"/apis/policy/v1/namespaces/{info.namespace}/poddisruptionbudgets", []):
            selector = ",".join(
                f"{k}={v}" for k, v in budget["spec"].get("selector", {}).get("matchLabels", {}).items()
            )
            if not selected_by(pod["metadata"].get("labels"), selector):
                continue
            if not ready(pod) and budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow":
                continue
            healthy = sum(ready(p) for p in pods if selected_by(p["metadata"].get("labels"), selector))
            desired = (
                healthy - int(budget["spec"].get("maxUnavailable", healthy))
                if "maxUnavailable" in budget["spec"]
                else int(budget["spec"].get("minAvailable", 0))
            )
            if healthy - 1 < desired:
                handler._reply(
                    429,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                        "reason": "TooManyRequests",
                        "code": 429,
                        "details": {
                            "causes": [
                                {
                                    "reason": "DisruptionBudget",
                                    "message": f"The disruption budget "
                                    f"{budget['metadata']['name']} needs {desired} healthy pods and has {healthy} currently",
                                }
                            ]
                        },
                    },
                )
                return True
        pods.remove(pod)
        handler._reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
        return True

    def _serve_object(self, handler: Any, method: str, info: RequestInfo, query: dict[str, list[str]]) -> bool:
        """Any other object: kept as it is created, listed (label and field selectors), read, updated (the
        immutable fields refused) and deleted; a pod's eviction subresource (`_evict`)."""
        if (info.resource, info.subresource, method) == ("pods", "eviction", "POST"):
            return self._evict(handler, info)
        if info.subresource:
            return False
        kind = self._kind(info)
        if kind is None:
            handler._status(404, "NotFound", "the server could not find the requested resource")
            return True
        collection = self._collection(info)
        items = self.recorded.setdefault(collection, [])
        current = next((o for o in items if o["metadata"]["name"] == info.name), None) if info.name else None
        body = handler.body
        if method == "GET" and not info.name:
            handler._reply(
                200,
                {
                    "kind": f"{kind[0]}List",
                    "apiVersion": info.prefix.removeprefix("/api/").removeprefix("/apis/"),
                    "metadata": {"resourceVersion": "1"},
                    "items": self._selected(items, query),
                },
            )
            return True
        if method == "POST":
            return not info.name and self._create(handler, info, body, items)
        if current is None:
            if method == "PATCH" and handler.headers.get("Content-Type", "").startswith(APPLY_PATCH):
                created = self._create(handler, info, body, items)  # server-side apply of a new object: created
                self.applied[f"{collection}/{info.name}"] = copy.deepcopy(body)
                return created
            handler._status(404, "NotFound", f'{info.qualified} "{info.name}" not found')
            return True
        if method == "GET":
            handler._reply(200, current)
            return True
        if method == "DELETE":
            items.remove(current)
            self.applied.pop(f"{collection}/{info.name}", None)
            handler._reply(200, current)
            return True
        updated = self._updated(handler, method, info, current, body)
        if updated is not None:
            items[items.index(current)] = updated
            handler._reply(200, updated)
        return True

    def _updated(self, handler: Any, method: str, info: RequestInfo, current: dict, body: dict) -> dict | None:
        """`current` replaced (PUT), server-side applied or merge-patched with `body`; None when refused (answered
        here): a replace of an older resourceVersion (409) or a change to an immutable field (422)."""
        key = f"{self._collection(info)}/{info.name}"
        applying = handler.headers.get("Content-Type", "").startswith(APPLY_PATCH)
        if method == "PUT":
            stale = (body.get("metadata") or {}).get("resourceVersion")
            if stale and stale != current["metadata"].get("resourceVersion"):
                handler._status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {info.qualified} "{info.name}": the '
                    "object has been modified; please apply your changes to the latest version and try again",
                )
                return None
            updated = copy.deepcopy(body)
        elif applying:
            updated = apply_config(current, self.applied.get(key), body)
        else:
            updated = merge_patch(current, body)
        for server_field in ("uid", "creationTimestamp", "namespace", "generation"):
            if server_field in current["metadata"]:
                updated.setdefault("metadata", {})[server_field] = current["metadata"][server_field]
        if "status" in current:
            updated["status"] = current["status"]
        refusal = immutable_change(current, updated)
        if refusal:
            handler._status(422, "Invalid", refusal)
            return None
        if applying:
            self.applied[key] = copy.deepcopy(body)
        updated["metadata"]["resourceVersion"] = str(int(current["metadata"].get("resourceVersion", "1")) + 1)
        return updated

    def _server_filled(self, created: dict, info: RequestInfo) -> dict:
        """What the API server fills in on a create: the namespace of the path and, on a batch Job, the selector
        and its pods' labels (pkg/registry/batch/job/strategy.go)."""
        name = created["metadata"].get("name", "")
        if info.namespace and info.resource != "namespaces":
            created["metadata"]["namespace"] = info.namespace
        if created.get("kind") == "Job":
            uid = created["metadata"]["uid"]
            generated = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
            created["spec"].setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
            template = created["spec"].setdefault("template", {}).setdefault("metadata", {})
            template["labels"] = {**(template.get("labels") or {}), **generated}
        return created

    def _create(self, handler: Any, info: RequestInfo, body: dict, items: list[dict]) -> bool:
        name = body["metadata"].get("name", "")
        if any(o["metadata"]["name"] == name for o in items):
            handler._status(409, "AlreadyExists", f'{info.qualified} "{name}" already exists')
            return True
        created = self._server_filled(self._stored(body), info)
        items.append(created)
        handler._reply(201, created)
        return True

    def start(self) -> KubeStandIn:
        standin = self
        lock = self._api_lock
        closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked log streams, as the API server sends them

            def log_message(self, *args):  # keep test output quiet
                pass

            def _record(self, method: str) -> tuple[str, dict]:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                query = parse_qs(parts.query)
                self.body = request_body(raw)
                standin.requests.append(Recorded(method, parts.path, query, self.body))
                self.caller = standin.user_of(self.headers.get("Authorization", ""))
                return parts.path, query

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._reply(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _not_found(self, what: str) -> None:
                self._status(404, "NotFound", f"{what} not found")

            def _answer(self, method: str) -> tuple[str, dict] | None:
                """The request recorded and answered by `serve_api` (None), else its path and query."""
                path, query = self._record(method)
                if standin.serve_api(self, method, path, query):
                    return None
                if path in standin.forbidden:
                    info = request_info(method, path, query)
                    self._status(
                        403, "Forbidden", forbidden_message(self.caller, info) if info else f"cannot get {path}"
                    )
                    return None
                return path, query

            def do_POST(self):
                if (request := self._answer("POST")) is None:
                    return
                path, _ = request
                if path.startswith("/apis/authorization.k8s.io/v1/") and path.endswith("accessreviews"):
                    return self._review(self.body)
                self._not_found(path)

            def do_PATCH(self):
                if (request := self._answer("PATCH")) is not None:
                    self._not_found(request[0])

            def do_PUT(self):
                if (request := self._answer("PUT")) is not None:
                    self._not_found(request[0])

            def do_DELETE(self):
                if (request := self._answer("DELETE")) is not None:
                    self._not_found(request[0])

            def do_GET(self):
                if (request := self._answer("GET")) is None:
                    return
                path, query = request
                if match := PODS.match(path):
                    return self._list_pods(match["ns"], query.get("labelSelector", [""])[0])
                if match := POD_LOG.match(path):
                    return self._log(match["ns"], match["pod"], query)
                self._not_found(path)

            def _review(self, review: dict) -> None:
                spec = review["spec"]
                attributes = spec.get("resourceAttributes") or {}
                resource = attributes.get("resource", "")
                if attributes.get("subresource"):
                    resource += "/" + attributes["subresource"]
                wanted = (attributes.get("verb"), attributes.get("group", ""), resource)
                allowed = wanted in standin.permissions.get(spec.get("user", ""), set())
                self._reply(201, {**review, "status": {"allowed": allowed}})

            def _list_pods(self, namespace: str, selector: str) -> None:
                with lock:
                    pods = [
                        standin._pod(ns, name, stored) for (ns, name), stored in standin.jobs.items() if ns == namespace
                    ]
                items = [p for p in pods if p and selected_by(p["metadata"]["labels"], selector)]
                recorded = standin.recorded.get(f"/api/v1/namespaces/{namespace}/pods", [])
                items += standin._selected(recorded, {"labelSelector": [selector]})
                self._reply(
                    200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                )

            def _log(self, namespace: str, pod: str, query: dict) -> None:
                with lock:
                    stored = next(
                        (
                            s
                            for (ns, name), s in standin.jobs.items()
                            if ns == namespace and pod == standin.pod_name(name, s) and s.step.run
                        ),
                        None,
                    )
                    if stored is None:
                        return self._not_found(f'pods "{pod}"')
                    run = stored.step.run
                    run.connections += 1
                    drop = run.drop_first_connection_after if run.connections == 1 else None
                timestamps = flag(query, "timestamps")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for index, line in enumerate(run.lines):
                    if drop is not None and index == drop:
                        self.close_connection = True  # no final chunk: the client sees the stream break
                        return
                    text = f"{run.stamp(index)} {line}\n" if timestamps else f"{line}\n"
                    data = text.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    with lock:
                        run.sent = max(run.sent, index + 1)
                while flag(query, "follow") and not closing.is_set():
                    with lock:
                        deleted = all(other is not stored for other in standin.jobs.values())
                        if deleted or stored.step.run is not run or stored.step.exit_code is not None:
                            break
                    time.sleep(0.01)
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

        self._closing = closing
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
