"""Local stand-in for a paid OpenAI-compatible chat API: no real model, no network. The tests, the
translation benchmark and the local pipeline run (`python -m pipelines.run_local`) translate through it.

`StandIn` serves `POST /v1/chat/completions` on 127.0.0.1 (a free port) from a thread. It
"translates" the JSON object in the last user message deterministically (`fake_translate`) into
`language` (a key of PHRASEBOOKS: ja, zh, es, pt, de, fr): every string value, nested ones too,
becomes "[LANG] " and then the source with each English word (in Chinese and Japanese, each two)
replaced by a word of a small fixed word list of that language (picked by a hash of the English),
so that a language detector reads the text as that language. It is word salad, not a
translation: only what the translation checks look at is kept: numbers with the unit written
after them (a word of at most 3 letters, or one like "mmHg" or "mEq/L"), abbreviations (two or
more capitals), single letters, punctuation and the `## Thinking` / `## Final Response`
markers. Numbers stay as written, or with
`locale_numbers=True` are rewritten the way the language writes them, through Babel
(`format_decimal` for the language's locale: 3,5 and 197.000 in Spanish, 197 000 with a narrow
no-break space in French; in Japanese and Chinese, round ones from 10,000 up as 19.7万). Records
are identified by the first string value of that object (the question). Faults to inject:

- `latency_s`: sleep before each answer;
- `fail_first`: the first N requests get HTTP 429 with `Retry-After: 0`;
- `malformed`: {record id: n} -> the next n answers for that record are not JSON;
- `drop_number` / `drop_marker`: record ids whose translation always loses the numbers of its
  first field that has any / its `## ...` markers (so the client must end up rejecting them);
- `api_key`: the `Authorization: Bearer KEY` it requires (401 otherwise);
- `faults`: what the first requests get, one entry each, in arrival order (then normal answers):
  "429-seconds" (HTTP 429, `Retry-After: <retry_after_s>`), "429-date" (HTTP 429, `Retry-After` as an
  HTTP date `retry_after_s` seconds ahead, rounded up), "500" (HTTP 500 whose body echoes the
  Authorization header, as some proxies' debug pages do), "malformed-json" (HTTP 200
  whose body is cut-off JSON), "hang" (no answer for `hang_s` seconds: the client times out).

With `passthrough=True` it answers every translation request with the record unchanged: the local
demo (`python -m pipelines.run_local`) "translates" its English rows to English this way, because a
stand-in cannot translate and the demo's real model must be trained on real text, not word salad.

With `mcq_answers` ({question prefix: letter}) it answers multiple-choice questions instead, as a
model under evaluation would: a `## Thinking` section that names another letter, then
`## Final Response` with the right one.

It counts requests and successful translations per record, and shuts itself down after
`max_lifetime_s` if nobody stops it first (tests stop it in a fixture finaliser). It is also a
context manager.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from babel.numbers import format_decimal

FAULTS = ("429-seconds", "429-date", "500", "malformed-json", "hang")
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def record_id(payload: dict[str, Any]) -> str:
    return next(v for v in payload.values() if isinstance(v, str))


@dataclass(frozen=True)
class Phrasebook:
    locale: str
    """Babel locale whose number conventions `locale_numbers` writes."""
    words: tuple[str, ...]
    ideographic: bool = False
    """One word for every two English words (these languages say more per token; a quick local
    training run keeps its examples under the same length limit), no space after a word of the
    language (one is kept before Latin text and numbers), and the ideographic comma and full stop."""
    myriads: bool = False
    """Round numbers from 10,000 up written in units of 万 (19.7万)."""


PHRASEBOOKS = {
    "ja": Phrasebook(
        "ja",
        tuple(
            "患者 は 症状 について を が 必要 治療 の ため に と 痛み 可能性 があります 血液 から 場合 して います "
            "でした これ また そして ある する なる いる ので よう こと もの です ます しかし".split()
        ),
        ideographic=True,
        myriads=True,
    ),
    "zh": Phrasebook(
        "zh",
        tuple(
            "患者 的 症状 检查 诊断 治疗 出现 发热 疼痛 可能 需要 进行 因为 所以 我们 这个 没有 还是 医生 血液 "
            "这些 认为 应该 就是 已经 了 和 在 是 对".split()
        ),
        ideographic=True,
        myriads=True,
    ),
    "es": Phrasebook(
        "es",
        tuple(
            "el los las del según también señal año pequeño mujer hombre niño después enfermedad evaluación "
            "corazón sangre dolor fiebre paciente presenta tratamiento diagnóstico médico pero como está puede más "
            "usted".split()
        ),
    ),
    "pt": Phrasebook(
        "pt",
        tuple(
            "não então avaliação coração são melhor tenho você também pelo pela muito isso está uma doença exame "
            "informação paciente apresenta dor febre sangue médico mas pode mais homem mulher criança".split()
        ),
    ),
    "de": Phrasebook(
        "de",
        tuple(
            "der die das und nicht mit ist bei eine Patient zeigt Schmerzen Fieber Behandlung Diagnose Blut "
            "Arzt auch wird werden sich nach über können Untersuchung Herz zwischen möglich weil durch".split()
        ),
    ),
    "fr": Phrasebook(
        "fr",
        tuple(
            "le la les des est avec pour une dans pas patient présente douleur fièvre traitement diagnostic "
            "sang médecin aussi peut être chez selon après cœur examen très leur ainsi qui".split()
        ),
    ),
}
MARKER = re.compile(r"(## Thinking|## Final Response)")
TOKEN = re.compile(
    rf"(?P<number>{NUMBER.pattern})(?P<unit> ?[A-Za-zμ]+(?:/[A-Za-zμ]+)*)?|(?P<word>[A-Za-z]+)|(?P<other>.)", re.S
)
# Ideographic languages: a word token may be two English words (the second a plain lower-case one).
TOKEN_PAIRS = re.compile(
    TOKEN.pattern.replace("(?P<word>[A-Za-z]+)", "(?P<word>[A-Za-z]+(?: [a-z]{2,}(?![A-Za-z]))?)"), re.S
)


def _is_unit(word: str) -> bool:
    return len(word) <= 3 or "/" in word or word.endswith("mol") or any(c.isupper() for c in word[1:])


def _word(word: str, book: Phrasebook) -> str:
    return book.words[zlib.crc32(word.lower().encode()) % len(book.words)]


def _number(token: str, book: Phrasebook, locale_numbers: bool) -> str:
    if not locale_numbers:
        return token
    value = Decimal(token.replace(",", ""))
    if book.myriads and value >= 10_000 and value % 100 == 0:
        return format_decimal(value / 10_000, locale=book.locale, decimal_quantization=False) + "万"
    return format_decimal(value, locale=book.locale, decimal_quantization=False)


def _render(text: str, book: Phrasebook, locale_numbers: bool) -> str:
    out: list[str] = []
    for part in MARKER.split(text):
        if MARKER.fullmatch(part):
            out.append(part)
            continue
        for token in (TOKEN_PAIRS if book.ideographic else TOKEN).finditer(part):
            number, unit, word, other = token.group("number", "unit", "word", "other")
            if number:
                unit = unit or ""
                kept = unit if _is_unit(unit.strip()) else _render(unit, book, locale_numbers)
                out.append(_number(number, book, locale_numbers) + kept)
            elif word:
                first, space, second = word.partition(" ")
                if len(first) == 1 or sum(c.isupper() for c in first) >= 2:  # a letter, an abbreviation: kept
                    out.append(first + space + (_word(second, book) if second else ""))
                else:
                    out.append(_word(word, book))
            elif book.ideographic and other in ",.":
                out.append("、" if other == "," else "。")
            elif book.ideographic and other == " " and out and out[-1] in book.words:
                continue  # between two words of the language: no space
            else:
                out.append(other)
    return "".join(out)


def fake_translate(value: Any, language: str = "ja", locale_numbers: bool = False) -> Any:
    """The stand-in's "translation" of a payload value into `language` (see the module docstring)."""
    if isinstance(value, str):
        return f"[{language}] " + _render(value, PHRASEBOOKS[language], locale_numbers)
    if isinstance(value, dict):
        return {k: fake_translate(v, language, locale_numbers) for k, v in value.items()}
    return value


class _Server(ThreadingHTTPServer):
    # A real endpoint takes a burst of connections (translate opens `concurrency`, 16, at once); socketserver's
    # listen backlog of 5 dropped some on a loaded machine, and the client's 10 s connect timeout expired.
    request_queue_size = 128


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
        faults: list[str] | None = None,
        retry_after_s: float = 1.0,
        hang_s: float = 30.0,
        language: str = "ja",
        locale_numbers: bool = False,
        passthrough: bool = False,
        max_lifetime_s: float = 120.0,
    ):
        assert language in PHRASEBOOKS, f"unknown language {language!r}; known: {sorted(PHRASEBOOKS)}"
        self.language = language
        self.locale_numbers = locale_numbers
        self.passthrough = passthrough
        unknown = set(faults or ()) - set(FAULTS)
        assert not unknown, f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}"
        self.faults = list(faults or ())
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.fault_log: list[tuple[float, str]] = []
        """(time, fault) per request that got one of `faults`."""
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
        self.server = _Server(("127.0.0.1", 0), self._handler())
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

    def answer(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], dict[str, Any] | bytes]:
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
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
            if fault:
                self.fault_log.append((time.time(), fault))
        if fault:
            return self._fault(fault, headers)
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
        translated = payload if self.passthrough else fake_translate(payload, self.language, self.locale_numbers)
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

    def _fault(self, fault: str, headers: Any) -> tuple[int, dict[str, str], dict[str, Any] | bytes]:
        if fault == "429-seconds":
            return 429, {"Retry-After": f"{self.retry_after_s:g}"}, {"error": {"message": "rate limited"}}
        if fault == "429-date":
            when = email.utils.formatdate(math.ceil(time.time() + self.retry_after_s), usegmt=True)
            return 429, {"Retry-After": when}, {"error": {"message": "rate limited"}}
        if fault == "500":
            # Like a proxy's debug page, it echoes the request headers: the client must not pass them on.
            echoed = f"internal server error; request had Authorization: {headers.get('Authorization')}"
            return 500, {}, {"error": {"message": echoed}}
        if fault == "malformed-json":
            return 200, {}, b'{"id": "chatcmpl-standin", "choices": [{"index": 0, "message": {"role": "assis'
        time.sleep(self.hang_s)  # "hang"
        return 504, {}, {"error": {"message": "the stand-in hung"}}

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
                data = reply if isinstance(reply, bytes) else json.dumps(reply, ensure_ascii=False).encode("utf-8")
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
