"""A local stand-in for the Kubernetes API server, for launcher tests: no cluster exists on this machine.

It implements only what the kubernetes client and the Kubeflow training SDK call for one PyTorchJob:
create, get and delete the job (kubeflow.org/v1), list pods by label selector, and read (follow) a
pod's log, chunked as the API server streams it. Each job plays a script: steps of Training Operator
v1.9 status plus the Master pod's container at that point. A job moves one step on per GET of it, but
not past a running container whose log lines no reader has been sent yet (a real job does not finish
before its pod has logged). Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/(?P<ns>[^/]+)/pytorchjobs(?:/(?P<name>[^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
IMAGE = "ghcr.io/medo1/trainer:0.1.0"
STARTED = datetime(2026, 11, 23, 10, 1, tzinfo=timezone.utc)


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


@dataclass
class Step:
    status: dict
    """The job's `.status` as the operator writes it."""
    run: ContainerRun | None = None
    """The Master container at this step; None: no pod yet."""
    exit_code: int | None = None
    """None: the run is running; else it has terminated with this code."""


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
    """Job name -> scripts for the jobs created (POST) under that name, in order."""
    jobs: dict[tuple[str, str], StoredJob] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def script(self, name: str, steps: list[Step]) -> None:
        self.scripts.setdefault(name, []).append(steps)

    def add_job(self, body: dict, steps: list[Step]) -> None:
        """A job that exists before the launcher runs (an earlier attempt of the step)."""
        meta = body["metadata"]
        self.jobs[(meta["namespace"], meta["name"])] = StoredJob(self._stored(body), steps)

    def calls(self, method: str, kind: str = "pytorchjobs") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and f"/{kind}" in r.path]

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

    def _job_view(self, stored: StoredJob) -> dict:
        view = json.loads(json.dumps(stored.body))
        view["status"] = stored.step.status
        return view

    def _advance(self, stored: StoredJob) -> None:
        step = stored.step
        waiting_for_reader = step.run is not None and step.exit_code is None and step.run.sent < len(step.run.lines)
        if stored.position < len(stored.steps) - 1 and not waiting_for_reader:
            stored.position += 1

    def _pod(self, namespace: str, name: str, stored: StoredJob) -> dict | None:
        step = stored.step
        if step.run is None:
            return None
        run = step.run
        running = step.exit_code is None
        state = ({"running": {"startedAt": rfc3339(STARTED)}} if running else
                 {"terminated": {"exitCode": step.exit_code, "reason": "Completed" if step.exit_code == 0 else "Error",
                                 "startedAt": rfc3339(STARTED), "finishedAt": rfc3339(STARTED + timedelta(hours=1))}})
        labels = {
            **stored.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"].get("labels", {}),
            "training.kubeflow.org/job-name": name,
            "training.kubeflow.org/job-role": "master",
            "training.kubeflow.org/operator-name": "pytorchjob-controller",
            "training.kubeflow.org/replica-index": "0",
            "training.kubeflow.org/replica-type": "master",
        }
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-master-0", "namespace": namespace, "uid": run.pod_uid, "labels": labels,
                         "creationTimestamp": rfc3339(STARTED)},
            "spec": {"containers": [{"name": "pytorch", "image": IMAGE}]},
            "status": {
                "phase": "Running" if running or step.exit_code != 0 else "Succeeded",
                "containerStatuses": [{
                    "name": "pytorch", "image": IMAGE, "imageID": f"{IMAGE}@sha256:{'0' * 64}", "ready": running,
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
                match = JOBS.match(path)
                if not match or match["name"]:
                    return self._not_found(path)
                body = standin.requests[-1].body
                name = body["metadata"]["name"]
                with lock:
                    if (match["ns"], name) in standin.jobs:
                        return self._status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
                    stored = StoredJob(standin._stored(body), standin.scripts[name].pop(0))
                    standin.jobs[(match["ns"], name)] = stored
                    return self._reply(201, stored.body)

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
                        stored.deleting_reads = 1
                        return self._reply(200, standin._job_view(stored))
                    del standin.jobs[key]
                    return self._reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                             "details": {"name": key[1], "group": "kubeflow.org", "kind": "pytorchjobs"}})

            def do_GET(self):
                path, query = self._record("GET")
                if (match := JOBS.match(path)) and match["name"]:
                    return self._get_job(match["ns"], match["name"])
                if match := PODS.match(path):
                    return self._list_pods(match["ns"], query.get("labelSelector", [""])[0])
                if match := POD_LOG.match(path):
                    return self._log(match["ns"], match["pod"], query)
                return self._not_found(path)

            def _get_job(self, namespace: str, name: str) -> None:
                with lock:
                    stored = standin.jobs.get((namespace, name))
                    if stored is not None and stored.deleting_reads is not None:
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

            def _list_pods(self, namespace: str, selector: str) -> None:
                wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
                with lock:
                    pods = [standin._pod(ns, name, stored) for (ns, name), stored in standin.jobs.items() if ns == namespace]
                items = [p for p in pods if p and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
                self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})

            def _log(self, namespace: str, pod: str, query: dict) -> None:
                with lock:
                    stored = next((s for (ns, name), s in standin.jobs.items()
                                   if ns == namespace and pod == f"{name}-master-0" and s.step.run), None)
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
