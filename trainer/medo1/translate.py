"""Translation stage: translate a dataset's text fields with an OpenAI-compatible chat API.

One request per record (`POST {base_url}/chat/completions`, JSON-object response format), run
concurrently under a semaphore, with exponential backoff on 429 / 5xx / timeouts / connection
errors. Every translation is validated before it is kept: same keys, no empty field, the
`## Thinking` / `## Final Response` markers kept as often as in the source, MCQ option letters
kept, every number of the source present in the translation. A record that fails is asked again
(`validation_retries`), then written to the rejects file with the reason.

Finished translations are appended to a cache (JSONL, fsynced, keyed by a hash of the source
fields + target language + model) before they count, so a killed run resumes without asking
for them again; the output is written at the end, in input order, atomically, from the cache.

The API key is read from the environment variable `api_key_env` only and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from medo1.config import Section, StageError
from medo1.data import (
    FINAL_RESPONSE_HEADER,
    PARSERS,
    THINKING_HEADER,
    DataError,
    FieldProblem,
    Problem,
    iter_records,
    resolve_fields,
    write_rejects,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MARKERS = (THINKING_HEADER, FINAL_RESPONSE_HEADER)
# Logical fields translated per format (mcq options are translated value by value).
TRANSLATED_FIELDS: dict[str, tuple[str, ...]] = {
    "medical_o1": ("question", "cot", "response"),
    "verifiable": ("question", "answer"),
    "mcq": ("question", "options", "answer"),
}
VERIFIER_WARNING = (
    "format 'verifiable': the reference answers are now in {lang}, but the published verifier "
    "(HuatuoGPT-o1 medical verifier) was trained on English/Chinese only; check reward quality "
    "on a sample (or keep English reference answers) before RL on this data."
)
# 197,000 / 6,500 (thousands separators) before plain integers and decimals (6, 0.4, 37.8).
NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


class TranslateError(StageError):
    """The run cannot go on (bad key, unknown model, unreadable input); the message says why."""


class TranslateConfig(Section):
    input: str
    output: str
    """Translated records, JSONL, in input order."""
    format: Literal["medical_o1", "verifiable", "mcq"] = "medical_o1"
    preset: str | None = None
    fields: dict[str, str] = {}
    target_language: str
    base_url: str | None = None
    """Default: env OPENAI_BASE_URL, else https://api.openai.com/v1."""
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself never goes in a config)."""
    concurrency: int = 16
    max_retries: int = 5
    """Retries of one request on 429 / 5xx / timeout / connection error."""
    backoff_s: float = 1.0
    """First backoff delay; doubled per retry (capped at 60 s), with jitter. Retry-After wins."""
    timeout_s: float = 120
    validation_retries: int = 2
    """Extra attempts for a record whose answer is not JSON or fails validation."""
    limit: int | None = None
    cache_dir: str | None = None
    """Default: OUTPUT.cache/ (holds translations.jsonl)."""
    rejects: str | None = None
    """Default: OUTPUT with suffix .rejects.jsonl."""
    temperature: float | None = 0.0


# ---------------------------------------------------------------------------------- validation


def normalise_number(text: str) -> str:
    return text.replace(",", "")


def numbers_in(text: str) -> list[str]:
    """Numbers of a text, thousands separators dropped; full-width digits count (NFKC)."""
    return [normalise_number(m) for m in NUMBER_RE.findall(unicodedata.normalize("NFKC", text))]


def _strings(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [(f"{path}.{k}", v) for k, v in value.items()]
    return [(path, value)]


def validate_translation(source: dict[str, Any], translated: Any) -> list[str]:
    """Problems of a translation of `source` (a payload of column -> text, or options dict)."""
    if not isinstance(translated, dict):
        return [f"expected a JSON object, got {type(translated).__name__}"]
    problems: list[str] = []
    missing = [k for k in source if k not in translated]
    extra = [k for k in translated if k not in source]
    if missing:
        problems.append(f"missing key(s) {missing}")
    if extra:
        problems.append(f"unexpected key(s) {extra}")
    for key, src_value in source.items():
        if key not in translated:
            continue
        out_value = translated[key]
        if isinstance(src_value, dict):
            if not isinstance(out_value, dict):
                problems.append(f"field '{key}': expected an object, got {type(out_value).__name__}")
                continue
            if list(out_value) != list(src_value):
                problems.append(f"field '{key}': option keys {list(out_value)} differ from {list(src_value)}")
                continue
        for (path, src), (_, out) in zip(_strings(src_value, key), _strings(out_value, key)):
            if not isinstance(out, str):
                problems.append(f"field '{path}': expected a string, got {type(out).__name__}")
                continue
            if not out.strip():
                problems.append(f"field '{path}': empty")
                continue
            for marker in MARKERS:
                want, got = src.count(marker), out.count(marker)
                if want != got:
                    problems.append(f"field '{path}': marker '{marker}' appears {got}x, source has it {want}x")
            have = set(numbers_in(out))
            lost = [n for n in dict.fromkeys(numbers_in(src)) if n not in have]
            if lost:
                problems.append(f"field '{path}': number(s) {', '.join(lost)} missing from the translation")
    return problems


# ---------------------------------------------------------------------------------- records


@dataclass
class Item:
    """One input row: the record, what gets translated, and where the result goes."""

    row: int
    line: int | None
    record: dict[str, Any]
    payload: dict[str, Any]
    key: str
    derived_answer: tuple[str, str] | None = None
    """mcq: (answer column, option letter) when the answer is its option's text: it follows that option."""


def build_payload(
    record: dict[str, Any], format: str, mapping: dict[str, str]
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    payload: dict[str, Any] = {}
    derived = None
    for logical in TRANSLATED_FIELDS[format]:
        column = mapping[logical]
        value = record.get(column)
        if format == "mcq" and logical == "answer":
            if not isinstance(value, str) or not value.strip():
                continue  # optional in the data layer
            letter = record[mapping["answer_idx"]].strip()
            if value == record[mapping["options"]].get(letter):
                derived = (column, letter)  # translate the option once; the answer follows it
                continue
        if isinstance(value, dict):
            value = dict(value)
        payload[column] = value
    return payload, derived


def content_key(payload: dict[str, Any], target_language: str, model: str) -> str:
    blob = json.dumps(
        {"fields": payload, "target_language": target_language, "model": model}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_items(config: TranslateConfig) -> tuple[list[Item], list[Problem], dict[int, Any], int]:
    mapping = resolve_fields(config.format, config.preset, config.fields)
    parse = PARSERS[config.format]
    items: list[Item] = []
    problems: list[Problem] = []
    raw: dict[int, Any] = {}
    rows = 0
    for row, line, record, parse_error in iter_records(config.input):
        if config.limit is not None and row >= config.limit:
            break
        rows += 1
        if parse_error is not None:
            raw[row] = record
            problems.append(Problem(config.input, row, None, parse_error, line))
            continue
        if not isinstance(record, dict):
            raw[row] = record
            problems.append(
                Problem(config.input, row, None, f"expected a JSON object, got {type(record).__name__}", line)
            )
            continue
        try:
            parse(record, mapping, None)
        except FieldProblem as exc:
            raw[row] = record
            problems.append(Problem(config.input, row, exc.field, f"source: {exc.message}", line))
            continue
        payload, derived = build_payload(record, config.format, mapping)
        key = content_key(payload, config.target_language, config.model)
        items.append(Item(row, line, record, payload, key, derived))
    return items, problems, raw, rows


def merge(item: Item, translation: dict[str, Any], options_column: str | None) -> dict[str, Any]:
    out = dict(item.record)
    out.update(translation)
    if item.derived_answer and options_column:
        column, letter = item.derived_answer
        out[column] = translation[options_column][letter]
    return out


# ---------------------------------------------------------------------------------- cache


class Cache:
    """Append-only JSONL of finished translations: {"key": ..., "translation": {...}}."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "translations.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()
        self._handle = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):  # a line torn by a kill mid-write: drop it, so appends stay valid
            with self.path.open("r+b") as handle:
                handle.truncate(end)
            data = data[:end]
        for line in data.decode("utf-8").splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["translation"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def add(self, key: str, translation: dict[str, Any]) -> None:
        self._handle.write(json.dumps({"key": key, "translation": translation}, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[key] = translation

    def close(self) -> None:
        self._handle.close()


# ---------------------------------------------------------------------------------- API client


SYSTEM_PROMPT = (
    "You are a professional medical translator. Translate every string value of the JSON object "
    "the user sends into {lang}. Reply with a JSON object only, with exactly the same keys (and the "
    "same nested keys) as the input, each value being the translation of the input value. Rules: "
    "keep every number exactly as written in Arabic digits (do not spell numbers out or convert units); "
    "keep the lines '## Thinking' and '## Final Response' verbatim wherever they appear; keep drug "
    "names, lab abbreviations and units accurate; translate faithfully, do not add, omit or answer anything."
)


class RequestFailed(Exception):
    """One record could not be translated (non-retryable status or retries exhausted)."""


@dataclass
class Stats:
    requests: int = 0
    retries: int = 0
    validation_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    translated: int = 0
    rejected: int = 0


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Translator:
    def __init__(self, config: TranslateConfig, client: httpx.AsyncClient, api_key: str | None, stats: Stats):
        self.config = config
        self.client = client
        self.api_key = api_key
        self.stats = stats
        self.url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url += "/chat/completions"
        self.system = SYSTEM_PROMPT.format(lang=config.target_language)

    def _scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 300.0)
        base = min(self.config.backoff_s * (2**attempt), 60.0)
        return base * random.uniform(0.5, 1.5)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.requests += 1
            retry_after = None
            try:
                response = await self.client.post(self.url, json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {self._scrub(str(exc)) or 'no detail'}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()
                    except ValueError:
                        last = "HTTP 200 with a body that is not JSON"
                elif status in (401, 403):
                    raise TranslateError(
                        f"{self.url} answered HTTP {status}: the API key in ${self.config.api_key_env} "
                        "was refused (or is missing)"
                    )
                elif status == 404:
                    raise TranslateError(
                        f"{self.url} answered HTTP 404 (wrong base_url, or unknown model {self.config.model!r}): "
                        f"{self._scrub(response.text[:300])}"
                    )
                elif status == 429 or status >= 500:
                    last = f"HTTP {status}: {self._scrub(response.text[:200])}"
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                else:
                    raise RequestFailed(f"HTTP {status}: {self._scrub(response.text[:300])}")
            if attempt < self.config.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise RequestFailed(f"gave up after {self.config.max_retries} retries; last error: {last}")

    async def translate(self, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(translation, "") or (None, reason) after all validation attempts."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": json.dumps(payload, ensure_ascii=False)},
            ],
            "response_format": {"type": "json_object"},
        }
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        reason = ""
        for attempt in range(self.config.validation_retries + 1):
            if attempt:
                self.stats.validation_retries += 1
            try:
                answer = await self._post(body)
            except RequestFailed as exc:
                return None, str(exc)
            usage = answer.get("usage") or {}
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
            try:
                choice = answer["choices"][0]
                content = choice["message"]["content"]
            except (KeyError, IndexError, TypeError):
                reason = "response has no choices[0].message.content"
                continue
            if not isinstance(content, str):
                reason = "message content is not a string"
                continue
            try:
                translated = json.loads(content)
            except json.JSONDecodeError as exc:
                cut = " (finish_reason=length: output cut off)" if choice.get("finish_reason") == "length" else ""
                reason = f"answer is not valid JSON: {exc.msg} at char {exc.pos}{cut}"
                continue
            problems = validate_translation(payload, translated)
            if not problems:
                return translated, ""
            reason = "; ".join(problems)
        return None, f"after {self.config.validation_retries + 1} attempt(s): {reason}"


# ---------------------------------------------------------------------------------- run


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self._last = 0.0

    def update(self, ok: bool, force: bool = False) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.show(force)

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._last >= 2.0 or self.done == self.total):
            self._last = now
            print(f"translate: {self.done}/{self.total} records, {self.failed} failed", file=sys.stderr, flush=True)


def default_paths(config: TranslateConfig) -> tuple[Path, Path]:
    output = Path(config.output)
    cache = Path(config.cache_dir) if config.cache_dir else output.with_name(output.name + ".cache")
    rejects = Path(config.rejects) if config.rejects else output.with_suffix(".rejects.jsonl")
    return cache, rejects


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


async def translate_async(config: TranslateConfig, *, progress: bool = True) -> dict[str, Any]:
    started = time.monotonic()
    api_key = os.environ.get(config.api_key_env) or None
    base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if api_key is None and base_url.rstrip("/") == DEFAULT_BASE_URL:
        raise TranslateError(f"set ${config.api_key_env} to the API key for {base_url}")
    if config.concurrency < 1:
        raise TranslateError("concurrency must be >= 1")
    try:
        items, problems, raw, rows = load_items(config)
    except DataError as exc:
        raise TranslateError(str(exc)) from None
    cache_dir, rejects_path = default_paths(config)
    cache = Cache(cache_dir)
    stats = Stats()
    mapping = resolve_fields(config.format, config.preset, config.fields)
    options_column = mapping.get("options") if config.format == "mcq" else None

    # Identical sources share one request; cached ones need none.
    by_key: dict[str, list[Item]] = {}
    for item in items:
        by_key.setdefault(item.key, []).append(item)
    from_cache = sum(len(group) for key, group in by_key.items() if key in cache.entries)
    todo = [key for key in by_key if key not in cache.entries]
    failures: dict[str, str] = {}
    bar = Progress(len(items), progress)
    bar.done = from_cache
    bar.show(force=True)

    semaphore = asyncio.Semaphore(config.concurrency)
    timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 30.0))
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    try:
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            translator = Translator(config, client, api_key, stats)

            async def one(key: str) -> None:
                async with semaphore:
                    translation, reason = await translator.translate(by_key[key][0].payload)
                if translation is not None:
                    cache.add(key, translation)  # durable before it counts
                else:
                    failures[key] = reason
                for _ in by_key[key]:
                    bar.update(translation is not None)

            tasks = [asyncio.create_task(one(key)) for key in todo]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
    finally:
        cache.close()

    # Output from the cache, in input order; rejects with their reasons.
    lines: list[str] = []
    for item in items:
        translation = cache.entries.get(item.key)
        if translation is None:
            raw[item.row] = item.record
            problems.append(
                Problem(config.input, item.row, None, f"translation failed: {failures[item.key]}", item.line)
            )
            continue
        lines.append(json.dumps(merge(item, translation, options_column), ensure_ascii=False))
    output = Path(config.output)
    _write_atomic(output, lines)
    problems.sort(key=lambda p: p.row)
    if problems:
        write_rejects(rejects_path, problems, raw)
    elif rejects_path.exists():
        rejects_path.unlink()  # stale from an earlier run

    warnings: list[str] = []
    if config.format == "verifiable":
        warnings.append(VERIFIER_WARNING.format(lang=config.target_language))
    summary = {
        "records": rows,
        "translated": len(lines),
        "from_cache": from_cache,
        "rejected": len(problems),
        "requests": stats.requests,
        "retries": stats.retries,
        "validation_retries": stats.validation_retries,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "elapsed_s": round(time.monotonic() - started, 3),
        "model": config.model,
        "target_language": config.target_language,
        "output": str(output),
        "rejects": str(rejects_path) if problems else None,
        "cache": str(cache.path),
        "warnings": warnings,
    }
    if progress:
        print("translate summary: " + json.dumps(summary, ensure_ascii=False), file=sys.stderr, flush=True)
        for warning in warnings:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return summary


def run_translate(config: TranslateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Translate `config.input` into `config.output`; returns the summary (also printed to stderr)."""
    return asyncio.run(translate_async(config, progress=progress))
