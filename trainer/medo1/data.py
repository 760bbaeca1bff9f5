"""Data layer: read JSON / JSONL, map fields of each supported format, validate every row.

Every problem names the file, the row (0-based record index; JSONL also gives the 1-based line)
and the field. Nothing is dropped silently: a load returns the valid examples and the list of
problems; `enforce_policy` fails the run on them unless skipping was asked for, and
`write_rejects` writes each rejected row with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medo1.config import Section

THINKING_HEADER = "## Thinking"
FINAL_RESPONSE_HEADER = "## Final Response"

Format = Literal["medical_o1", "sharegpt", "alpaca", "verifiable", "mcq"]
CHAT_FORMATS = ("medical_o1", "sharegpt", "alpaca")

# Logical field -> column name, per format and preset. The first preset of a format is its default.
PRESETS: dict[str, dict[str, dict[str, str]]] = {
    "medical_o1": {
        "en": {"question": "Question", "cot": "Complex_CoT", "response": "Response"},
        "es": {"question": "Pregunta", "cot": "Razonamiento_Complejo", "response": "Respuesta"},
    },
    "sharegpt": {"default": {"conversations": "conversations"}},
    "alpaca": {
        "default": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"}
    },
    "verifiable": {
        "en": {"question": "Open-ended Verifiable Question", "answer": "Ground-True Answer"},
    },
    "mcq": {
        "en": {"question": "question", "options": "options", "answer_idx": "answer_idx", "answer": "answer"},
    },
}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


class DataError(ValueError):
    """Input that cannot be used; the message names the file, row and field."""


class DataConfig(Section):
    path: str
    format: Format = "medical_o1"
    preset: str | None = None
    fields: dict[str, str] = {}
    system_prompt: str | None = None
    max_length: int = 8192
    overlong: Literal["drop", "truncate"] = "drop"
    on_invalid: Literal["fail", "skip"] = "fail"
    limit: int | None = None
    """Read only the first N rows (smoke runs)."""


@dataclass(frozen=True)
class Problem:
    file: str
    row: int
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file} row {self.row}" + (f" (line {self.line})" if self.line else "")
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "line": self.line, "field": self.field, "problem": self.message}


class FieldProblem(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class ChatExample:
    """Prompt messages and the one assistant completion that carries the loss."""

    messages: list[dict[str, str]]
    completion: str


@dataclass
class VerifiableProblem:
    question: str
    answer: str


@dataclass
class MCQItem:
    question: str
    options: dict[str, str]
    answer_idx: str
    answer: str | None


Example = ChatExample | VerifiableProblem | MCQItem


@dataclass
class LoadResult:
    path: str
    format: str
    rows: int
    examples: list[tuple[int, Example]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    raw: dict[int, Any] = field(default_factory=dict, repr=False)


def reasoning_target(cot: str, response: str) -> str:
    return f"{THINKING_HEADER}\n\n{cot}\n\n{FINAL_RESPONSE_HEADER}\n\n{response}"


def resolve_fields(format: str, preset: str | None, overrides: dict[str, str]) -> dict[str, str]:
    presets = PRESETS[format]
    name = preset or next(iter(presets))
    if name not in presets:
        raise DataError(f"format {format!r} has no preset {name!r}; known: {', '.join(presets)}")
    mapping = dict(presets[name])
    unknown = set(overrides) - set(mapping)
    if unknown:
        raise DataError(
            f"format {format!r} has no field(s) {', '.join(sorted(unknown))}; its fields are {', '.join(mapping)}"
        )
    mapping.update(overrides)
    return mapping


def iter_records(path: str | Path) -> Iterator[tuple[int, int | None, Any, str | None]]:
    """Yield (row, line, record, parse_error) for a JSON list or a JSONL file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        row = 0
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield row, line_no, json.loads(line), None
                except json.JSONDecodeError as exc:
                    yield row, line_no, line.rstrip("\n"), f"invalid JSON: {exc.msg} at column {exc.colno}"
                row += 1
        return
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(loaded, list):
        raise DataError(f"{path}: expected a JSON list of records (or a .jsonl file), got {type(loaded).__name__}")
    for row, record in enumerate(loaded):
        yield row, None, record, None


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise FieldProblem(key, "missing")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise FieldProblem(key, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise FieldProblem(key, "empty")
    return value


def _user_turn(system_prompt: str | None, content: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": content}]


def parse_medical_o1(record: dict, fields: dict[str, str], system_prompt: str | None) -> ChatExample:
    question = _text(record, fields["question"])
    cot = _text(record, fields["cot"])
    response = _text(record, fields["response"])
    return ChatExample(_user_turn(system_prompt, question), reasoning_target(cot, response))


def parse_alpaca(record: dict, fields: dict[str, str], system_prompt: str | None) -> ChatExample:
    instruction = _text(record, fields["instruction"])
    extra = _text(record, fields["input"], required=False)
    output = _text(record, fields["output"])
    system = _text(record, fields["system"], required=False) or system_prompt
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return ChatExample(_user_turn(system, prompt), output)


def parse_sharegpt(record: dict, fields: dict[str, str], system_prompt: str | None) -> ChatExample:
    key = fields["conversations"]
    turns = record.get(key)
    if turns is None:
        raise FieldProblem(key, "missing")
    if not isinstance(turns, list) or not turns:
        raise FieldProblem(key, "expected a non-empty list of turns")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise FieldProblem(where, f"expected an object, got {type(turn).__name__}")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        role = SHAREGPT_ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise FieldProblem(f"{where}.{role_key}", f"unknown role {turn.get(role_key)!r}")
        try:
            content = _text(turn, content_key)
        except FieldProblem as exc:
            raise FieldProblem(f"{where}.{exc.field}", exc.message) from None
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise FieldProblem(key, "last turn must be the assistant's (nothing to learn from otherwise)")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    # Earlier assistant turns are context; the last one carries the loss.
    return ChatExample(messages[:-1], messages[-1]["content"])


def parse_verifiable(record: dict, fields: dict[str, str], system_prompt: str | None) -> VerifiableProblem:
    return VerifiableProblem(_text(record, fields["question"]), _text(record, fields["answer"]))


def parse_mcq(record: dict, fields: dict[str, str], system_prompt: str | None) -> MCQItem:
    question = _text(record, fields["question"])
    options = record.get(fields["options"])
    if options is None:
        raise FieldProblem(fields["options"], "missing")
    if not isinstance(options, dict) or not options:
        raise FieldProblem(fields["options"], "expected a non-empty object of letter -> option text")
    for letter, text in options.items():
        if not isinstance(text, str) or not text.strip():
            raise FieldProblem(f"{fields['options']}.{letter}", "option text must be a non-empty string")
    answer_idx = _text(record, fields["answer_idx"]).strip()
    if answer_idx not in options:
        raise FieldProblem(fields["answer_idx"], f"{answer_idx!r} is not one of the options {sorted(options)}")
    answer = _text(record, fields["answer"], required=False) or None
    return MCQItem(question, {k: v for k, v in options.items()}, answer_idx, answer)


PARSERS = {
    "medical_o1": parse_medical_o1,
    "sharegpt": parse_sharegpt,
    "alpaca": parse_alpaca,
    "verifiable": parse_verifiable,
    "mcq": parse_mcq,
}


def load_examples(
    path: str | Path,
    format: str,
    preset: str | None = None,
    fields: dict[str, str] | None = None,
    system_prompt: str | None = None,
    limit: int | None = None,
) -> LoadResult:
    if format not in PARSERS:
        raise DataError(f"unknown format {format!r}; known: {', '.join(PARSERS)}")
    mapping = resolve_fields(format, preset, fields or {})
    parse = PARSERS[format]
    result = LoadResult(path=str(path), format=format, rows=0)
    for row, line, record, parse_error in iter_records(path):
        if limit is not None and row >= limit:
            break
        result.rows += 1
        result.raw[row] = record
        if parse_error is not None:
            problem = Problem(str(path), row, None, parse_error, line)
        elif not isinstance(record, dict):
            problem = Problem(str(path), row, None, f"expected a JSON object, got {type(record).__name__}", line)
        else:
            try:
                result.examples.append((row, parse(record, mapping, system_prompt)))
                continue
            except FieldProblem as exc:
                problem = Problem(str(path), row, exc.field, exc.message, line)
        result.problems.append(problem)
    return result


def load_from_config(config: DataConfig) -> LoadResult:
    return load_examples(config.path, config.format, config.preset, config.fields, config.system_prompt, config.limit)


def write_rejects(path: str | Path, problems: list[Problem], raw: dict[int, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for problem in problems:
            entry = problem.to_dict() | {"record": raw.get(problem.row)}
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def enforce_policy(problems: list[Problem], on_invalid: str) -> None:
    """With `on_invalid=fail` (the default), invalid rows stop the run with a message naming them."""
    if not problems or on_invalid != "fail":
        return
    shown = "\n  ".join(str(p) for p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise DataError(
        f"{len(problems)} invalid row(s):\n  {shown}{more}\n"
        "Fix the data, or set data.on_invalid=skip to write them to a rejects file and go on."
    )
