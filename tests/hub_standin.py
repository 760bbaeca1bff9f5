"""A local stand-in for the Hugging Face Hub API (huggingface.co), for upload tests and the launcher's input
checks.

It implements only the endpoints `HfApi.create_repo` and `HfApi.create_commit` call:
repo creation, README metadata validation, preupload (every file answered as a "regular"
upload, so no LFS/Xet transfer is needed) and the NDJSON commit endpoint; and the read-access check
`HfApi.auth_check` makes (GET /api/{models,datasets}/OWNER/NAME/auth-check) for the repos in `repos`, refusing
as the Hub does: a missing repo, or a private one without its token, 401/404 with `X-Error-Code: RepoNotFound`;
a gated one the token has not been granted, 403 `GatedRepo` (huggingface_hub utils/_http.py hf_raise_for_status
reads these). Every request is recorded; the commit endpoint can be told to fail with 503 a number of times first.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AUTH_CHECK = re.compile(r"^/api/(?P<type>models|datasets)/(?P<repo>[^/]+/[^/]+)/auth-check$")
PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/?]+)")
COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/?]+)")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class HubStandIn:
    requests: list[Recorded] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)  # {"repo", "revision", "header", "files": {path: bytes}}
    created: list[dict] = field(default_factory=list)
    fail_commit: int = 0  # answer the next N commit calls with 503
    repos: dict[str, dict] = field(default_factory=dict)
    """`model:OWNER/NAME` or `dataset:OWNER/NAME` -> {"private": bool, "gated": bool, "tokens": tokens that may read it}."""
    url: str = ""

    def start(self) -> HubStandIn:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, record: Recorded, status: int, payload: dict, error_code: str = "") -> None:
                record.status = status
                data = json.dumps(payload).encode()
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                record = Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                hub.requests.append(record)
                path = self.path.split("?", 1)[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    hub.created.append(payload)
                    repo = f"{payload['organization']}/{payload['name']}"
                    return self._reply(record, 200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply(record, 200, {"errors": [], "warnings": []})
                if match := PREUPLOAD.match(path):
                    files = json.loads(body)["files"]
                    answer = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]
                    return self._reply(record, 200, {"files": answer, "commitOid": "0" * 40})
                if match := COMMIT.match(path):
                    if hub.fail_commit > 0:
                        hub.fail_commit -= 1
                        return self._reply(record, 503, {"error": "Service Unavailable"})
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    files = {}
                    for line in lines:
                        if line["key"] == "file":
                            assert line["value"]["encoding"] == "base64"
                            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        elif line["key"] != "header":
                            return self._reply(record, 400, {"error": f"unsupported operation {line['key']}"})
                    header = next(line["value"] for line in lines if line["key"] == "header")
                    hub.commits.append(
                        {"repo": match["repo"], "revision": match["rev"], "header": header, "files": files}
                    )
                    oid = f"{len(hub.commits):040x}"
                    return self._reply(
                        record, 200, {"commitUrl": f"{hub.url}/{match['repo']}/commit/{oid}", "commitOid": oid}
                    )
                return self._reply(record, 404, {"error": f"stand-in does not implement POST {path}"})

            def do_GET(self):
                record = Recorded("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
                hub.requests.append(record)
                if match := AUTH_CHECK.match(self.path.split("?", 1)[0]):
                    return self._auth_check(record, match["type"][:-1], match["repo"])
                return self._reply(record, 404, {"error": f"stand-in does not implement GET {self.path}"})

            def _auth_check(self, record: Recorded, repo_type: str, repo_id: str) -> None:
                repo = hub.repos.get(f"{repo_type}:{repo_id}")
                token = record.headers.get("authorization", "").removeprefix("Bearer ")
                readable = repo is not None and (token in repo.get("tokens", ()) or not repo.get("private"))
                if not readable:
                    status = 404 if token else 401
                    return self._reply(record, status, {"error": "Repository not found"}, "RepoNotFound")
                if repo.get("gated") and token not in repo.get("tokens", ()):
                    return self._reply(record, 403, {"error": f"Access to model {repo_id} is restricted."}, "GatedRepo")
                return self._reply(record, 200, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
