"""Local stand-in for a paid OpenAI-compatible chat API: no real model, no network. The tests, the
translation benchmark and the local pipeline run (`python -m pipelines.run_local`) translate through it.

`StandIn` serves `POST /v1/chat/completions` on 127.0.0.1 (a free port) from a thread. It
"translates" the JSON object in the last user message deterministically: every string value
(nested ones too) gets the prefix "[ja] ", so numbers and `## ...` markers survive. Records are
identified by the first string value of that object (the question). Faults to inject:

- `latency_s`: sleep before each answer;
- `fail_first`: the first N requests get HTTP 429 with `Retry-After: 0`;
- `malformed`: {record id: n} -> the next n answers for that record are not JSON;
- `drop_number` / `drop_marker`: record ids whose translation always loses the numbers of its
  first field that has any / its `## ...` markers (so the client must end up rejecting them);
- `api_key`: the `Authorization: Bearer KEY` it requires (401 otherwise).

With `mcq_answers` ({question prefix: letter}) it answers multiple-choice questions instead, as a
model under evaluation would: a `## Thinking` section that names another letter, then
`## Final Response` with the right one.

It counts requests and successful translations per record, and shuts itself down after
`max_lifetime_s` if nobody stops it first (tests stop it in a fixture finaliser). It is also a
context manager.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "[ja] "
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def record_id(payload: dict[str, Any]) -> str:
    return next(v for v in payload.values() if isinstance(v, str))


def fake_translate(value: Any) -> Any:
    if isinstance(value, str):
        return PREFIX + value
    if isinstance(value, dict):
        return {k: fake_translate(v) for k, v in value.items()}
    return value


class StandIn:
    def __init__(
        self,
        *,
        api_key: str = "test-key",
        latency_s: float = 0.0,
        fail_first: int = 0,
        malformed: dict[str, int] | None = None,
        drop_number: set[str] | None = None,
        drop_marker: set[str] | None = None,
        mcq_answers: dict[str, str] | None = None,
        max_lifetime_s: float = 120.0,
    ):
        self.api_key = api_key
        self.mcq_answers = mcq_answers
        self.latency_s = latency_s
        self.fail_first = fail_first
        self.malformed = dict(malformed or {})
        self.drop_number = set(drop_number or ())
        self.drop_marker = set(drop_marker or ())
        self.lock = threading.Lock()
        self.total = 0
        self.requests: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []
        """(time, record id, outcome) per request that reached the translation step."""
        self.unauthorized = 0
        self.bad_requests: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        """Every chat request's JSON body, in arrival order."""
        self.auth: list[str | None] = []
        """Every chat request's Authorization header (None when absent)."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def start(self) -> StandIn:
        self._thread.start()
        self._timer.start()
        return self

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ behaviour

    def answer(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            self.auth.append(headers.get("Authorization"))
            with contextlib.suppress(ValueError):
                self.bodies.append(json.loads(body))
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            with self.lock:
                self.unauthorized += 1
            return 401, {}, {"error": {"message": "invalid api key", "type": "invalid_request_error"}}
        with self.lock:
            self.total += 1
            throttled = self.total <= self.fail_first
        if throttled:
            return 429, {"Retry-After": "0"}, {"error": {"message": "rate limited", "type": "rate_limit"}}
        if self.mcq_answers is not None:
            return self._answer_mcq(json.loads(body))
        try:
            request = json.loads(body)
            assert request["response_format"] == {"type": "json_object"}, "response_format must be json_object"
            payload = json.loads(request["messages"][-1]["content"])
            rid = record_id(payload)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            with self.lock:
                self.bad_requests.append(repr(exc))
            return 400, {}, {"error": {"message": f"bad request: {exc}"}}
        with self.lock:
            self.requests[rid] += 1  # counted on arrival, before the latency
        if self.latency_s:
            time.sleep(self.latency_s)
        with self.lock:
            broken = self.malformed.get(rid, 0) > 0
            if broken:
                self.malformed[rid] -= 1
        translated = fake_translate(payload)
        if broken:
            content = '{"Question": "[ja] unterminated'
            outcome = "malformed"
        else:
            if rid in self.drop_number:
                key = next(k for k, v in translated.items() if isinstance(v, str) and NUMBER.search(v))
                translated[key] = NUMBER.sub("", translated[key])
            if rid in self.drop_marker:
                translated = {k: v.replace("## ", "") if isinstance(v, str) else v for k, v in translated.items()}
            content = json.dumps(translated, ensure_ascii=False)
            outcome = "ok" if rid not in self.drop_number | self.drop_marker else "damaged"
        with self.lock:
            if outcome == "ok":
                self.successes[rid] += 1
            self.log.append((time.time(), rid, outcome))
        return 200, {}, self._completion(request, content)

    def _answer_mcq(self, request: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        question = request["messages"][-1]["content"]
        letter = next(a for q, a in self.mcq_answers.items() if question.startswith(q))
        wrong = "B" if letter == "A" else "A"
        content = f"## Thinking\n\nAt first glance {wrong}, but no.\n\n## Final Response\n\nThe answer is {letter}"
        return 200, {}, self._completion(request, content)

    def _completion(self, request: dict[str, Any], content: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-standin-{self.total}",
            "object": "chat.completion",
            "model": request.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(json.dumps(request)) // 4, "completion_tokens": len(content) // 4},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/chat/completions":
                    status, extra, reply = 404, {}, {"error": {"message": f"no route {self.path}"}}
                else:
                    status, extra, reply = standin.answer(self.headers, body)
                data = json.dumps(reply, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler
