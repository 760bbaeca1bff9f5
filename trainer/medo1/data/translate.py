"""Translation stage: translate a dataset's text fields with an OpenAI-compatible chat API.

One request per record (`POST {base_url}/chat/completions`, JSON-object response format) through
`medo1.chat_client`: `concurrency` in flight, retries with backoff on 429 / 5xx / timeouts /
refused connections, progress lines on long waits. Every translation is validated before it is
kept: same keys, no empty field, the `## Thinking` / `## Final Response` markers kept as often as
in the source, MCQ option letters kept, every number and unit of the source kept by value as the
target language writes it, and each field in the target language (`medo1.data.translation_checks`). A
record that fails is asked again (`validation_retries`), then written to the rejects file with the
reason.

Finished translations are appended to a cache (JSONL, fsynced, keyed by a hash of the source
fields + target language + model) before they count, so a killed run resumes without asking
for them again; the output is written at the end, in input order, atomically, from the cache.

A run fails (TranslateError, the CLI exits non-zero) when more than `max_failure_ratio` of the
records fail (an invalid source row or a rejected translation): at once when the input alone
exceeds it, else as soon as the failures do, without asking for the rest. A run that fails leaves
the previous output and rejects file as they were; what it translated stays in the cache.

The API key is read from the environment variable `api_key_env` only and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medo1.atomic import atomic_write_text
from medo1.chat_client import ChatClient, ChatEndpointError, ChatError, RetryOptions
from medo1.config import StageError, check_outputs_apart
from medo1.data.sources import (
    PARSERS,
    DataError,
    FieldProblem,
    Problem,
    iter_records,
    resolve_fields,
    write_rejects,
)
from medo1.data.translation_checks import TranslationChecks

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Logical fields translated per format (mcq options are translated value by value).
TRANSLATED_FIELDS: dict[str, tuple[str, ...]] = {
    "medical_o1": ("question", "cot", "response"),
    "verifiable": ("question", "answer"),
    "mcq": ("question", "options", "answer"),
}
# The languages of the published verifier's training data, by the names and codes a recipe may give.
VERIFIER_LANGUAGES = {"english", "en", "chinese", "zh", "simplified chinese", "zh-cn", "zh-hans"}
VERIFIER_WARNING = (
    "format 'verifiable': the reference answers are now in {lang}, but the published verifier "
    "(HuatuoGPT-o1 medical verifier) was trained on English/Chinese only; check reward quality "
    "on a sample (or keep English reference answers) before RL on this data."
)
# 197,000 / 6,500 (thousands separators) before plain integers and decimals (6, 0.4, 37.8).


class TranslateError(StageError):
    """The run cannot go on (bad key, unknown model, unreadable input, too many failed records); the message
    says why."""


class FailureBudgetSpent(Exception):
    """More records failed than `max_failure_ratio` allows: the remaining requests are cancelled."""


class TranslateConfig(RetryOptions):
    input: str = Field(min_length=1)
    """Source records: a JSON list or JSONL file."""
    output: str = Field(min_length=1)
    """Translated records, JSONL, in input order."""
    format: Literal["medical_o1", "verifiable", "mcq"] = "medical_o1"
    """The records' shape: medical_o1 (SFT), verifiable (RL problems) or mcq (benchmark questions)."""
    preset: str | None = None
    """Field-name preset of the source (see `medo1 data validate`)."""
    fields: dict[str, str] = {}
    """Field name -> column, overriding the preset's."""
    target_language: str = Field(min_length=1)
    """The language translated into, in words (e.g. Japanese)."""
    base_url: str | None = None
    """Default: env OPENAI_BASE_URL, else https://api.openai.com/v1."""
    model: str = "gpt-4o-mini"
    """The endpoint's model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself never goes in a config)."""
    concurrency: int = Field(16, ge=1)
    """Requests in flight at once."""
    max_failure_ratio: float = Field(0.25, ge=0, lt=1)
    """Share of records that may fail (invalid source row, or no valid translation after the retries) before
    the run fails and the previous output is kept. A strict validator rejects a few good records, so 0 would
    fail nearly every large run. Set above `reject_warning_ratio` so a run warns (10%) before it fails (25%):
    a quarter of the records lost points to a broken endpoint, model, prompt or input."""
    validation_retries: int = Field(2, ge=0)
    """Extra attempts for a record whose answer is not JSON or fails validation."""
    limit: int | None = Field(None, ge=1)
    """Translate only the first N records (smoke runs)."""
    cache_dir: str | None = None
    """Default: OUTPUT.cache/ (holds translations.jsonl)."""
    rejects: str | None = None
    """Default: OUTPUT with suffix .rejects.jsonl."""
    temperature: float | None = Field(0.0, ge=0)
    """Sampling temperature; None leaves it to the endpoint."""
    timeout_s: float = Field(90.0, gt=0)
    """Seconds one request may take (a record's whole translation) before it is abandoned and retried."""
    max_retries: int = Field(3, ge=0)
    """Retries of one record's request after HTTP 408 / 429 / 5xx, a timeout, a broken connection or a malformed
    answer: at most 4 x 90 s per record on an endpoint that does not answer, and the run stops once none has
    answered for `give_up_after_s`."""
    reject_warning_ratio: float = Field(0.10, ge=0, le=1)
    """The summary warns when more than this share of the valid source records got no translation that
    passed the checks (a wrong prompt, model or target_language); invalid source rows do not count."""


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


class Translator:
    def __init__(self, config: TranslateConfig, client: ChatClient):
        self.config = config
        self.client = client
        self.system = SYSTEM_PROMPT.format(lang=config.target_language)
        self.checks = TranslationChecks(config.target_language)
        self.validation_retries = 0
        self.retried: Counter[str] = Counter()
        """Records asked again, per reason of a failed attempt (a translation_checks reason, or "json")."""
        self.rejected: Counter[str] = Counter()
        """Records given up on, per reason of their last attempt (also "request": no answer)."""

    async def translate(self, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(translation, "") or (None, reason) after all validation attempts."""
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": json.dumps(payload, ensure_ascii=False)},
        ]
        params: dict[str, Any] = {"response_format": {"type": "json_object"}}
        if self.config.temperature is not None:
            params["temperature"] = self.config.temperature
        reason = ""
        kinds: set[str] = set()  # the reasons of the last failed attempt
        retried: set[str] = set()
        try:
            for attempt in range(self.config.validation_retries + 1):
                if attempt:
                    self.validation_retries += 1
                    retried |= kinds
                try:
                    answer = await self.client.complete(messages, **params)
                except ChatEndpointError as exc:
                    raise TranslateError(str(exc)) from None
                except ChatError as exc:
                    self.rejected["request"] += 1
                    return None, str(exc)
                try:
                    translated = json.loads(answer.text)
                except json.JSONDecodeError as exc:
                    cut = " (finish_reason=length: output cut off)" if answer.finish_reason == "length" else ""
                    reason = f"answer is not valid JSON: {exc.msg} at char {exc.pos}{cut}"
                    kinds = {"json"}
                    continue
                problems = self.checks.problems(payload, translated)
                if not problems:
                    return translated, ""
                reason = "; ".join(problems)
                kinds = {problem.reason for problem in problems}
        finally:
            self.retried.update(retried)
        self.rejected.update(kinds)
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


def failure_message(
    config: TranslateConfig, problems: list[Problem], rows: int, allowed: int, not_asked: int, cache_dir: Path | None
) -> str:
    """One line: failed records against the allowance, the first failure, and what was kept."""
    text = (
        f"{len(problems)} of {rows} record(s) failed, more than max_failure_ratio={config.max_failure_ratio:g} "
        f"allows ({allowed}); first: {problems[0]}"
    )
    if not_asked:
        text += f"; stopped without asking for the other {not_asked}"
    text += f"; nothing was written to {config.output}"
    if cache_dir is not None:
        text += f" (finished translations are kept in {cache_dir} for the next run)"
    return text


def default_paths(config: TranslateConfig) -> tuple[Path, Path]:
    output = Path(config.output)
    cache = Path(config.cache_dir) if config.cache_dir else output.with_name(output.name + ".cache")
    rejects = Path(config.rejects) if config.rejects else output.with_suffix(".rejects.jsonl")
    return cache, rejects


async def translate_async(config: TranslateConfig, *, progress: bool = True) -> dict[str, Any]:
    started = time.monotonic()
    base_url = config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    try:
        client = ChatClient(config.chat_client_config(base_url, config.model, config.api_key_env, config.concurrency))
    except ChatEndpointError as exc:
        raise TranslateError(str(exc)) from None
    if not client.has_key and base_url.rstrip("/") == DEFAULT_BASE_URL:
        raise TranslateError(f"set ${config.api_key_env} to the API key for {base_url}")
    cache_dir, rejects_path = default_paths(config)
    check_outputs_apart(
        {"output": config.output, "rejects": rejects_path, "cache_dir": cache_dir}, {"input": config.input}
    )
    try:
        items, problems, raw, rows = load_items(config)
    except DataError as exc:
        raise TranslateError(str(exc)) from None
    if rows == 0:
        raise TranslateError(f"{config.input}: no records to translate")
    allowed_failures = int(config.max_failure_ratio * rows)
    if len(problems) > allowed_failures:  # the input alone fails the run: ask for nothing
        raise TranslateError(failure_message(config, problems, rows, allowed_failures, len(items), None))
    cache = Cache(cache_dir)
    mapping = resolve_fields(config.format, config.preset, config.fields)
    options_column = mapping.get("options") if config.format == "mcq" else None

    # Identical sources share one request; cached ones need none.
    by_key: dict[str, list[Item]] = {}
    for item in items:
        by_key.setdefault(item.key, []).append(item)
    from_cache = sum(len(group) for key, group in by_key.items() if key in cache.entries)
    todo = [key for key in by_key if key not in cache.entries]
    failures: dict[str, str] = {}
    failed_records = len(problems)
    bar = Progress(len(items), progress)
    bar.done = from_cache
    bar.show(force=True)

    translator = Translator(config, client)
    try:
        async with client:

            async def one(key: str) -> None:
                nonlocal failed_records
                translation, reason = await translator.translate(by_key[key][0].payload)
                if translation is not None:
                    cache.add(key, translation)  # durable before it counts
                else:
                    failures[key] = reason
                    failed_records += len(by_key[key])
                for _ in by_key[key]:
                    bar.update(translation is not None)
                if failed_records > allowed_failures:
                    raise FailureBudgetSpent

            tasks = [asyncio.create_task(one(key)) for key in todo]
            try:
                await asyncio.gather(*tasks)
            except BaseException as exc:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if not isinstance(exc, FailureBudgetSpent):
                    raise
    finally:
        cache.close()

    # Output from the cache, in input order; rejects with their reasons.
    lines: list[str] = []
    for item in items:
        translation = cache.entries.get(item.key)
        if translation is not None:
            lines.append(json.dumps(merge(item, translation, options_column), ensure_ascii=False))
        elif item.key in failures:
            raw[item.row] = item.record
            problems.append(
                Problem(config.input, item.row, None, f"translation failed: {failures[item.key]}", item.line)
            )
    problems.sort(key=lambda p: p.row)
    if len(problems) > allowed_failures:
        not_asked = rows - len(lines) - len(problems)
        raise TranslateError(failure_message(config, problems, rows, allowed_failures, not_asked, cache_dir))
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(line + "\n" for line in lines))
    if problems:
        write_rejects(rejects_path, problems, raw)
    elif rejects_path.exists():
        rejects_path.unlink()  # stale from an earlier run

    warnings: list[str] = []
    if config.format == "verifiable" and config.target_language.strip().lower() not in VERIFIER_LANGUAGES:
        warnings.append(VERIFIER_WARNING.format(lang=config.target_language))
    rejected_translations = sum(len(by_key[key]) for key in failures)
    if rejected_translations > config.reject_warning_ratio * len(items):
        by_count = sorted(translator.rejected.items(), key=lambda item: (-item[1], item[0]))
        reasons = ", ".join(f"{reason}: {count}" for reason, count in by_count)
        warnings.append(
            f"{rejected_translations} of {len(items)} translation(s) rejected, more than reject_warning_ratio="
            f"{config.reject_warning_ratio:g} ({reasons}): check the prompt, the model and the target_language"
        )
    summary = {
        "records": rows,
        "translated": len(lines),
        "from_cache": from_cache,
        "rejected": len(problems),
        "requests": client.stats.requests,
        "retries": client.stats.retries,
        "validation_retries": translator.validation_retries,
        "retried_by_reason": dict(translator.retried),
        "rejected_by_reason": dict(translator.rejected),
        "prompt_tokens": client.stats.prompt_tokens,
        "completion_tokens": client.stats.completion_tokens,
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
