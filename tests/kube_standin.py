"""A local stand-in for the Kubernetes API server, for launcher tests: no cluster exists on this machine.

It implements only what the kubernetes client and the Kubeflow SDKs (training, and trainer for Kubeflow
Trainer v2) call for one PyTorchJob, batch Job or TrainJob: create, get and delete the job (kubeflow.org/v1,
batch/v1, trainer.kubeflow.org/v1alpha1), list pods by label selector (`k=v` and `k in (a, b)` terms), and
read (follow) a pod's log, chunked as the API server streams it. Each job plays a script: steps of its
controller's status (Training Operator v1.9, Trainer v2.3) plus its first pod's main container at that
point (a TrainJob's: the node-0 pod JobSet creates, labelled as JobSet and the Job controller label it). A job moves one step on per GET of it, but
not past a running container whose log lines no reader has been sent yet (a real job does not finish
before its pod has logged). Every request is recorded. Recorded cluster objects (`record`) are served
read-only, for `medo1 doctor` and the launcher's stuck-pod checks, and access reviews are answered from
`permissions`. Jobs are listed by label, patched (merge patch of their metadata) and deleted; a Foreground
deletion ends after `foreground_reads` GETs, or never (pods stuck Terminating on a dead node).

What the real server does when no controller acts, modelled: a job whose kind has no running controller
(`controllers`: the kinds that have one) has no status at all and no pods, as a real API server keeps a custom
resource nobody reconciles; with `refuse_pods` (the API server's admission error, e.g. a ResourceQuota's), the
controller creates no pod and records what Training Operator v1 and the Job controller record: a Warning event
`FailedCreatePod` (PyTorchJob) or `FailedCreate` (a batch Job, and a TrainJob's child Jobs) with the message
`Error creating: <the error>` (kubeflow/training-operator pkg/controller.v1/control/pod_control.go; kubernetes
pkg/controller/controller_utils.go).
"""

from __future__ import annotations

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
from urllib.parse import parse_qs, urlsplit

import yaml

JOBS = re.compile(r"^/apis/(?:kubeflow\.org/v1|batch/v1|trainer\.kubeflow\.org/v1alpha1)/namespaces/(?P<ns>[^/]+)/"
                  r"(?:pytorchjobs|jobs|trainjobs)(?:/(?P<name>[^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
IMAGE = "ghcr.io/medo1/trainer:0.1.0"
STARTED = datetime(2026, 11, 23, 10, 1, tzinfo=timezone.utc)
PLURALS = {"Node": "nodes", "Namespace": "namespaces", "Secret": "secrets", "PersistentVolumeClaim": "persistentvolumeclaims",
           "Pod": "pods", "Event": "events", "CustomResourceDefinition": "customresourcedefinitions",
           "LocalQueue": "localqueues", "ConfigMap": "configmaps", "ClusterTrainingRuntime": "clustertrainingruntimes",
           "TrainingRuntime": "trainingruntimes"}
PLURALS_OF_JOBS = {"PyTorchJob": "/pytorchjobs", "Job": "/jobs", "TrainJob": "/trainjobs"}
SET_TERM = re.compile(r"^\s*(?P<key>[^\s=!]+)\s+in\s+\((?P<values>[^)]*)\)\s*$")


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
        [sys.executable, "-m", "medo1", *args], cwd=cwd, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    foreground_reads: int | None = 1
    """GETs that still see a job deleted in the foreground (its pods then carry a deletionTimestamp); None: it is
    never gone."""

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
        return [o for o in items if selected_by(o["metadata"].get("labels"), selector)
                and all(str(value(o, k)) == v for k, v in fields)]

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "launcher", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "launcher", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _stored(self, body: dict) -> dict:
        body = json.loads(json.dumps(body))
        body["metadata"].update(uid=str(uuid.uuid4()), generation=1, resourceVersion="1",
                                creationTimestamp=rfc3339(STARTED))
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
        involved = {"kind": kind, "name": name, "namespace": namespace, "uid": stored.body["metadata"]["uid"],
                    "apiVersion": stored.body["apiVersion"]}
        reason = "FailedCreatePod" if kind == "PyTorchJob" else "FailedCreate"
        if kind == "TrainJob":  # JobSet's child Job for node 0 fails to create its pod
            involved = {"kind": "Job", "name": f"{name}-node-0", "namespace": namespace, "uid": str(uuid.uuid4()),
                        "apiVersion": "batch/v1"}
        self.record({"apiVersion": "v1", "kind": "Event",
                     "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                     "type": "Warning", "reason": reason, "involvedObject": involved,
                     "message": f'Error creating: pods "{pod}" is forbidden: {self.refuse_pods}',
                     "source": {"component": {"PyTorchJob": "pytorchjob-controller", "Job": "job-controller",
                                              "TrainJob": "job-controller"}[kind]},
                     "firstTimestamp": rfc3339(STARTED), "lastTimestamp": rfc3339(STARTED), "count": 1})

    def _advance(self, stored: StoredJob) -> None:
        if not self._acted_on(stored):
            return
        step = stored.step
        waiting_for_reader = step.run is not None and step.exit_code is None and step.run.sent < len(step.run.lines)
        if stored.position < len(stored.steps) - 1 and not waiting_for_reader:
            stored.position += 1

    @staticmethod
    def pod_name(name: str, stored: StoredJob) -> str:
        return {"PyTorchJob": f"{name}-master-0", "TrainJob": f"{name}-node-0-0-5tq8r"}.get(stored.body["kind"], f"{name}-7xk2p")

    def _pod(self, namespace: str, name: str, stored: StoredJob) -> dict | None:
        step = stored.step
        if step.run is None or not self._acted_on(stored) or self.refuse_pods:
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
        state = ({"running": {"startedAt": rfc3339(STARTED)}} if running else
                 {"terminated": {"exitCode": step.exit_code, "reason": "Completed" if step.exit_code == 0 else "Error",
                                 "startedAt": rfc3339(STARTED), "finishedAt": rfc3339(STARTED + timedelta(hours=1)),
                                 **({"message": step.message} if step.message else {})}})
        metadata = {"name": self.pod_name(name, stored), "namespace": namespace, "uid": run.pod_uid, "labels": labels,
                    "creationTimestamp": rfc3339(STARTED)}
        if stored.body["metadata"].get("deletionTimestamp"):  # the garbage collector deletes a job's pods first
            metadata["deletionTimestamp"] = stored.body["metadata"]["deletionTimestamp"]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": metadata,
            "spec": {"containers": [{"name": container, "image": IMAGE}], "nodeName": "gpu-node-1"},
            "status": {
                "phase": "Running" if running or step.exit_code != 0 else "Succeeded",
                "containerStatuses": [{
                    "name": container, "image": IMAGE, "imageID": f"{IMAGE}@sha256:{'0' * 64}", "ready": running,
                    "started": running, "restartCount": run.restart_count, "state": state,
                }],
            },
        }

    def start(self) -> KubeStandIn:
        standin = self
        lock = threading.Lock()
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
                standin.requests.append(Recorded(method, parts.path, query, json.loads(raw) if raw else None))
                return parts.path, query

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                   "message": message, "reason": reason, "code": code})

            def _not_found(self, what: str) -> None:
                self._status(404, "NotFound", f"{what} not found")

            def do_POST(self):
                path, _ = self._record("POST")
                if path.startswith("/apis/authorization.k8s.io/v1/") and path.endswith("accessreviews"):
                    return self._review(standin.requests[-1].body)
                match = JOBS.match(path)
                if not match or match["name"]:
                    return self._not_found(path)
                body = standin.requests[-1].body
                name = body["metadata"]["name"]
                with lock:
                    if (match["ns"], name) in standin.jobs:
                        return self._status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
                    stored = StoredJob(standin._stored(body), (standin.scripts.get(name) or standin.scripts["*"]).pop(0))
                    stored.body["metadata"].setdefault("namespace", match["ns"])  # as the API server fills it in
                    stored.body.pop("status", None)  # a status subresource: what a create sends is dropped
                    standin.jobs[(match["ns"], name)] = stored
                    if standin.refuse_pods and standin._acted_on(stored):
                        standin._refused(match["ns"], name, stored)
                    return self._reply(201, stored.body)

            def do_PATCH(self):
                path, _ = self._record("PATCH")
                match = JOBS.match(path)
                key = (match["ns"], match["name"]) if match and match["name"] else None
                with lock:
                    if key not in standin.jobs:
                        return self._not_found(f'jobs "{key and key[1]}"')
                    stored = standin.jobs[key]
                    patch = (standin.requests[-1].body or {}).get("metadata") or {}
                    metadata = stored.body["metadata"]
                    for section in ("labels", "annotations"):
                        if section in patch:
                            metadata[section] = {**(metadata.get(section) or {}), **patch[section]}
                    if "ownerReferences" in patch:
                        metadata["ownerReferences"] = patch["ownerReferences"]
                    return self._reply(200, standin._job_view(stored))

            def do_DELETE(self):
                path, _ = self._record("DELETE")
                match = JOBS.match(path)
                key = (match["ns"], match["name"]) if match and match["name"] else None
                with lock:
                    if key not in standin.jobs:
                        return self._not_found(f'pytorchjobs.kubeflow.org "{key and key[1]}"')
                    stored = standin.jobs[key]
                    if (standin.requests[-1].body or {}).get("propagationPolicy") == "Foreground":
                        stored.body["metadata"].update(deletionTimestamp=rfc3339(datetime.now(timezone.utc)),
                                                       finalizers=["foregroundDeletion"])
                        stored.deleting_reads = standin.foreground_reads
                        return self._reply(200, standin._job_view(stored))
                    del standin.jobs[key]
                    return self._reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                             "details": {"name": key[1], "group": "kubeflow.org", "kind": "pytorchjobs"}})

            def do_GET(self):
                path, query = self._record("GET")
                if (match := JOBS.match(path)) and match["name"]:
                    return self._get_job(match["ns"], match["name"])
                if match:
                    return self._list_jobs(match["ns"], path, query.get("labelSelector", [""])[0])
                if match := PODS.match(path):
                    return self._list_pods(match["ns"], query.get("labelSelector", [""])[0])
                if match := POD_LOG.match(path):
                    return self._log(match["ns"], match["pod"], query)
                if path in standin.forbidden:
                    return self._status(403, "Forbidden", f"cannot get {path}")
                if path in standin.recorded or EVENTS.match(path):  # a collection: a list, empty when nothing's there
                    items = standin._selected(standin.recorded.get(path, []), query)
                    return self._reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
                collection, _, name = path.rpartition("/")
                for obj in standin.recorded.get(collection, []):
                    if obj["metadata"]["name"] == name:
                        return self._reply(200, obj)
                return self._not_found(path)

            def _review(self, review: dict) -> None:
                spec = review["spec"]
                attributes = spec.get("resourceAttributes") or {}
                resource = attributes.get("resource", "")
                if attributes.get("subresource"):
                    resource += "/" + attributes["subresource"]
                wanted = (attributes.get("verb"), attributes.get("group", ""), resource)
                allowed = wanted in standin.permissions.get(spec.get("user", ""), set())
                self._reply(201, {**review, "status": {"allowed": allowed}})

            def _get_job(self, namespace: str, name: str) -> None:
                with lock:
                    stored = standin.jobs.get((namespace, name))
                    if stored is not None and stored.body["metadata"].get("deletionTimestamp") \
                            and stored.deleting_reads is not None:
                        if stored.deleting_reads == 0:
                            del standin.jobs[(namespace, name)]
                            stored = None
                        else:
                            stored.deleting_reads -= 1
                    if stored is None:
                        return self._not_found(f'pytorchjobs.kubeflow.org "{name}"')
                    view = standin._job_view(stored)
                    standin._advance(stored)
                return self._reply(200, view)

            def _list_jobs(self, namespace: str, path: str, selector: str) -> None:
                with lock:
                    items = [standin._job_view(stored) for (ns, _), stored in standin.jobs.items()
                             if ns == namespace and path.endswith(PLURALS_OF_JOBS[stored.body["kind"]])
                             and selected_by(stored.body["metadata"].get("labels"), selector)]
                self._reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})

            def _list_pods(self, namespace: str, selector: str) -> None:
                with lock:
                    pods = [standin._pod(ns, name, stored) for (ns, name), stored in standin.jobs.items() if ns == namespace]
                items = [p for p in pods if p and selected_by(p["metadata"]["labels"], selector)]
                recorded = standin.recorded.get(f"/api/v1/namespaces/{namespace}/pods", [])
                items += standin._selected(recorded, {"labelSelector": [selector]})
                self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})

            def _log(self, namespace: str, pod: str, query: dict) -> None:
                with lock:
                    stored = next((s for (ns, name), s in standin.jobs.items()
                                   if ns == namespace and pod == standin.pod_name(name, s) and s.step.run), None)
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
