"""Data layer: read a data source, map fields of each supported format, validate every row.

Sources (`iter_records`): local JSON lists and JSONL files (medo1's own readers, streamed: a JSON
list is decoded row by row as the file is read in chunks, JSONL line by line, where a bad line is one
invalid row named by its line; records keep their keys exactly as written), local Parquet, CSV and
Arrow files and `save_to_disk` folders (through the `datasets` library, streamed or memory mapped,
never loaded whole), and Hub datasets as `hf://OWNER/NAME?config=C&split=S&revision=R`.

Every problem names the file, the row (0-based record index; JSONL also gives the 1-based line)
and the field. Nothing is dropped silently: a load returns the valid examples and the list of
problems; `enforce_policy` fails the run on them unless skipping was asked for, and
`write_rejects` writes each rejected row with its reason. Rows that repeat an earlier row's
example are counted (and, with `duplicates=reject`, are invalid rows).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field

from medo1.atomic import atomic_write_text
from medo1.config import Section
from medo1.errors import Medo1Error

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
    "alpaca": {"default": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"}},
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


class DataError(Medo1Error, ValueError):
    """Input that cannot be used; the message names the file, row and field."""


class DataConfig(Section):
    """A stage's training data and how it is read, validated and cut to length."""

    path: str = Field(min_length=1)
    """A JSON / JSONL / parquet / CSV / Arrow file, a save_to_disk folder, or a Hub dataset hf://OWNER/NAME[?config=C&split=S&revision=R]."""
    format: Format = "medical_o1"
    """The rows' shape: medical_o1 (question, chain of thought, answer), verifiable (problem and ground truth), mcq."""
    preset: str | None = None
    """Field-name preset for the format (medical_o1: en, es)."""
    fields: dict[str, str] = {}
    """Field name -> column, overriding the preset's."""
    system_prompt: str | None = None
    """A system message put before each prompt."""
    max_length: int = Field(8192, ge=1)
    """Most tokens per example (prompt and completion)."""
    overlong: Literal["drop", "truncate", "fail"] = "drop"
    """An example longer than max_length: drop it (to the rejects file), truncate its completion, or fail the run
    naming the rows. Drops above OVERLONG_WARNING_RATIO (25%) of the valid rows warn on the console and in the run
    report."""
    on_invalid: Literal["fail", "skip"] = "fail"
    """An invalid row: fail the run naming file, row and field, or skip it to the rejects file."""
    limit: int | None = Field(None, ge=1)
    """Read only the first N rows (smoke runs)."""
    duplicates: Literal["keep", "reject"] = "keep"
    """Rows whose example (after field mapping) repeats an earlier row's: `keep` counts them and warns;
    `reject` makes them invalid rows ("duplicate of row N"), so `on_invalid` decides: fail, or skip to rejects."""


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
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    """(row, earlier row with the same example) for every repeated example."""


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


Record = tuple[int, int | None, Any, str | None]
"""(row, line, record, parse_error): see `iter_records`."""


HUB_PREFIX = "hf://"
HUB_QUERY_KEYS = ("config", "split", "revision")
ARROW_FILE_KINDS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
SUPPORTED_SOURCES = (
    ".json (a list of records), .jsonl, .parquet, .csv, .arrow, a save_to_disk folder, "
    "or hf://OWNER/NAME?config=C&split=S&revision=R"
)


@dataclass(frozen=True)
class HubSource:
    """A Hub dataset: `hf://OWNER/NAME?config=C&split=S&revision=R` (config, split and revision optional;
    split defaults to train, revision to the default branch)."""

    repo_id: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None


HUB_FORM = "a Hub dataset is hf://OWNER/NAME[?config=C&split=S&revision=R]"


def parse_hub_source(text: str) -> HubSource:
    parts = urlsplit(text)
    repo_id = f"{parts.netloc}{parts.path}".strip("/")
    if parts.scheme != "hf" or repo_id.count("/") != 1 or parts.fragment:
        raise DataError(f"{text}: {HUB_FORM}")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:  # a field without `=`, an empty field (`&&`)
        pairs = [("", "")]
    if any(not key for key, _ in pairs):
        raise DataError(f"{text}: malformed query {parts.query!r}; {HUB_FORM}")
    query = dict(pairs)
    if len(query) < len(pairs):
        repeated = sorted({key for key, _ in pairs if sum(k == key for k, _ in pairs) > 1})
        raise DataError(f"{text}: parameter(s) {', '.join(repeated)} given more than once")
    unknown = set(query) - set(HUB_QUERY_KEYS)
    if unknown:
        known = ", ".join(HUB_QUERY_KEYS)
        raise DataError(f"{text}: unknown parameter(s) {', '.join(sorted(unknown))}; known: {known}")
    if any(not value for value in query.values()):
        raise DataError(f"{text}: empty parameter value")
    return HubSource(repo_id, query.get("config"), query.get("split", "train"), query.get("revision"))


def check_hub_prefix_case(text: str) -> None:
    """Refuse `HF://owner/name` (read as a local path it would be `HF:/owner/name: file not found`)."""
    if text[: len(HUB_PREFIX)].lower() == HUB_PREFIX:
        raise DataError(f"{text}: the Hub prefix is lower-case: hf://{text[len(HUB_PREFIX) :]}")


def json_error_text(exc: json.JSONDecodeError) -> str:
    """json's message without its dangling ` at` ("Unterminated string starting at"): the position follows it."""
    return re.sub(r"(?: starting)? at$", "", exc.msg)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _decode_error(path: Path, data: bytes, exc: UnicodeDecodeError, offset: int = 0) -> DataError:
    line = data.count(b"\n", 0, exc.start) + 1
    return DataError(
        f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line + offset}); "
        "re-encode it, e.g. iconv -f latin1 -t utf-8"
    )


def _without_nulls(value: Any) -> Any:
    """Drop null struct fields: Arrow gives every row every column and every struct every field,
    filling the ones a row lacks with null (a mixed-shape `options` or turn would not validate)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _iter_jsonl(path: Path) -> Iterator[Record]:
    row = 0
    with path.open("rb") as handle:
        for line_no, data in enumerate(handle, start=1):
            if line_no == 1 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _decode_error(path, data, exc, offset=line_no - 1) from None
            if not line.strip():
                continue
            try:
                yield row, line_no, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield row, line_no, line.rstrip("\n"), f"invalid JSON at column {exc.colno}: {json_error_text(exc)}"
            row += 1


JSON_CHUNK_BYTES = 1 << 20
"""Bytes read at a time from a JSON list; a row longer than what is held is read in doubling steps."""
_CUT_MARGIN = 8
"""A value that ends (or fails) this close to the end of the text read so far may go on in the next chunk:
a number cut at `1.` or `1e+`, a literal cut at `tru`, a `\\uXXXX` escape cut short."""
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_DECODER = json.JSONDecoder()


class _JsonText:
    """A UTF-8 JSON file read chunk by chunk: the text not consumed yet, and where it lies in the file (for errors)."""

    def __init__(self, path: Path, handle: BinaryIO):
        self.path = path
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()  # reads plain UTF-8 too, and drops a BOM
        self.text = ""
        self.pos = 0
        self.eof = False
        self.lines_dropped = 0  # newlines in the text consumed and dropped before `text`
        self.column_dropped = 0  # characters of the current line dropped before `text`
        self.byte_lines = 0  # newlines in the bytes read so far (for a decoding error's line)

    def more(self) -> bool:
        """Drop the consumed text and append the next chunk; False once the file is read."""
        if self.eof:
            return False
        newline = self.text.rfind("\n", 0, self.pos)
        self.lines_dropped += self.text.count("\n", 0, self.pos)
        self.column_dropped = self.pos - newline - 1 if newline >= 0 else self.column_dropped + self.pos
        raw = self.handle.read(max(JSON_CHUNK_BYTES, len(self.text) - self.pos))
        try:
            new = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            raise _decode_error(self.path, exc.object, exc, offset=self.byte_lines) from None
        self.byte_lines += raw.count(b"\n")
        self.text = self.text[self.pos :] + new
        self.pos = 0
        self.eof = not raw
        return True

    def next_char(self) -> str:
        """The next character that is not JSON whitespace ("" at the end of the file); `pos` is left on it."""
        while True:
            self.pos = _JSON_SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def value(self, row: int | None) -> Any:
        """Decode the JSON value at `pos`, reading on while it may be cut at the end of the text held."""
        while True:
            try:
                value, end = _JSON_DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos > len(self.text) - _CUT_MARGIN
                if cut and self.more():
                    continue
                raise self.error(json_error_text(exc), exc.pos, row) from None
            if end > len(self.text) - _CUT_MARGIN and self.more():
                continue
            self.pos = end
            return value

    def error(self, message: str, pos: int, row: int | None = None) -> DataError:
        line = self.lines_dropped + self.text.count("\n", 0, pos) + 1
        newline = self.text.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.column_dropped + pos + 1
        where = f"{self.path} row {row}" if row is not None else str(self.path)
        return DataError(f"{where}: invalid JSON at line {line} column {column}: {message}")


def _array_rows(text: _JsonText) -> Iterator[Record]:
    """The rows of the JSON array whose `[` is at `text.pos`, one at a time; `pos` is left after its `]`."""
    text.pos += 1
    row = 0
    if text.next_char() == "]":
        text.pos += 1
        return
    while True:
        text.next_char()
        yield row, None, text.value(row), None
        after = text.next_char()
        if after == "]":
            text.pos += 1
            return
        if after != ",":
            raise text.error("Expecting ',' delimiter", text.pos, row)
        text.pos += 1
        row += 1


def _object_members(text: _JsonText) -> Iterator[str]:
    """The keys of the JSON object whose `{` is at `text.pos`; after each key is yielded `pos` is on its value,
    which the caller reads (or skips) before asking for the next key. `pos` is left after the `}`."""
    text.pos += 1
    if text.next_char() == "}":
        text.pos += 1
        return
    while True:
        if text.next_char() != '"':
            raise text.error("Expecting property name enclosed in double quotes", text.pos)
        key = text.value(None)
        if text.next_char() != ":":
            raise text.error("Expecting ':' delimiter", text.pos)
        text.pos += 1
        text.next_char()
        yield key
        after = text.next_char()
        if after == "}":
            text.pos += 1
            return
        if after != ",":
            raise text.error("Expecting ',' delimiter", text.pos)
        text.pos += 1


def json_sets(path: str | Path) -> dict[str, int] | None:
    """A JSON file holding named sets, one object {set name: [rows]} (as the published HuatuoGPT-o1 eval file):
    each set's name and row count, in file order; None when the file's top level is not an object of lists."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file() or path.stat().st_size == 0:
        return None
    sets: dict[str, int] = {}
    with path.open("rb") as handle:
        text = _JsonText(path, handle)
        if text.next_char() != "{":
            return None
        for key in _object_members(text):
            if text.next_char() != "[":
                return None
            sets[key] = sum(1 for _ in _array_rows(text))
    return sets or None


def _iter_json_list(path: Path, key: str | None = None) -> Iterator[Record]:
    """The rows of a top-level JSON array (or, with `key`, of the array under that key of a top-level object),
    decoded one at a time as the file is read in chunks (never held whole).

    Broken JSON stops the read with the line and column (and the row it is in), as `json.loads` would name them.
    """
    with path.open("rb") as handle:
        text = _JsonText(path, handle)
        first = text.next_char()
        if not first:
            return
        if key is not None:
            if first != "{":
                raise DataError(f"{path}#{key}: the file's top level is not an object of named sets")
            names = []
            for name in _object_members(text):
                if name == key and text.next_char() == "[":
                    yield from _array_rows(text)
                    return
                names.append(name)
                text.value(None)
            raise DataError(f"{path}: no set {key!r}; its sets: {', '.join(names) or '(none)'}")
        if first != "[":
            loaded = text.value(None)
            if text.next_char():
                raise text.error("Extra data", text.pos)
            if isinstance(loaded, dict) and loaded and all(isinstance(v, list) for v in loaded.values()):
                raise DataError(
                    f"{path}: an object of named sets ({', '.join(loaded)}), not a list of records; "
                    f"name one as {path}#SET"
                )
            raise DataError(f"{path}: expected a JSON list of records (or a .jsonl file), got {type(loaded).__name__}")
        yield from _array_rows(text)
        if text.next_char():
            raise text.error("Extra data", text.pos)


def _iter_dataset(source: str, open_rows: Callable[[], Iterable[dict]]) -> Iterator[Record]:
    """Rows of a `datasets` source; any failure of the library or of pyarrow under it (a corrupt file,
    bad bytes, an unknown config or split) is one DataError naming the source."""
    try:
        for row, record in enumerate(open_rows()):
            yield row, None, _without_nulls(record), None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets / pyarrow / fsspec raise many unrelated types
        if isinstance(exc, UnicodeDecodeError):
            raise DataError(f"{source}: not UTF-8 text; re-encode it, e.g. iconv -f latin1 -t utf-8") from None
        raise DataError(f"{source}: cannot be read ({_one_line(exc)})") from None


def _stream_file(path: Path, kind: str) -> Iterable[dict]:
    from datasets import Features, Value, load_dataset

    options: dict[str, Any] = {}
    if kind == "csv":
        # Every column as text, and an empty cell as "" (not NaN): "NA" is an answer, not a missing value.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), [])
        options = {
            "features": Features({name: Value("string") for name in header}),
            "keep_default_na": False,
            "encoding": "utf-8-sig",  # reads plain UTF-8 too, and drops a leading BOM
        }
    return load_dataset(kind, data_files=str(path), split="train", streaming=True, **options)


def _saved_rows(path: Path) -> Iterable[dict]:
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        example = path / (splits or ["train"])[0]
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(splits)}; give one split's folder, e.g. {example}"
        )
    if not (path / "state.json").is_file():
        raise DataError(f"{path}: a directory, not a dataset written by save_to_disk (no state.json); give a data file")
    from datasets import load_from_disk  # after the checks: importing datasets takes seconds

    return load_from_disk(str(path))  # memory-mapped Arrow


def _hub_rows(source: HubSource) -> Iterable[dict]:
    """Downloaded once into the Hugging Face cache (reused offline with HF_HUB_OFFLINE=1), read memory-mapped."""
    from datasets import load_dataset

    return load_dataset(source.repo_id, source.config, split=source.split, revision=source.revision)


def split_set(source: str) -> tuple[str, str | None]:
    """`FILE#SET` -> (FILE, SET): one named set of a JSON file of sets (`json_sets`); any other source -> (it, None).
    A file whose own name holds `#` is read as that file."""
    path, sep, key = source.rpartition("#")
    if not sep or not key or source.startswith(HUB_PREFIX) or Path(source).exists():
        return source, None
    return path, key


def iter_records(path: str | Path, key: str | None = None) -> Iterator[Record]:
    """Yield (row, line, record, parse_error) for every row of a source (see the module docstring); with `key`,
    of the set of that name in a JSON file of named sets ({set name: [rows]}).

    `line` is the 1-based line of a JSONL row, else None; `parse_error` is set for a JSONL line that
    is not JSON (the record is then the line's text).
    """
    text = str(path)
    if text.startswith(HUB_PREFIX):
        source = parse_hub_source(text)
        yield from _iter_dataset(text, lambda: _hub_rows(source))
        return
    check_hub_prefix_case(text)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        yield from _iter_dataset(str(path), lambda: _saved_rows(path))
        return
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", *ARROW_FILE_KINDS):
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; supported: {SUPPORTED_SOURCES}")
    if key is not None and suffix != ".json":
        raise DataError(f"{path}#{key}: only a .json file holds named sets")
    if path.stat().st_size == 0:
        return
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json_list(path, key)
    else:
        yield from _iter_dataset(str(path), lambda: _stream_file(path, ARROW_FILE_KINDS[suffix]))


MAX_COLUMNS_SHOWN = 12


def _missing(record: dict[str, Any], key: str) -> FieldProblem:
    """`key` missing from `record`, naming the columns it has (a file with the wrong columns, or the wrong preset)."""
    if key in record:
        return FieldProblem(key, "missing (null)")
    names = [str(name) for name in record]
    shown = ", ".join(names[:MAX_COLUMNS_SHOWN]) + (", ..." if len(names) > MAX_COLUMNS_SHOWN else "")
    return FieldProblem(key, f"missing (the row's columns: {shown or 'none'})")


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise _missing(record, key)
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
        raise _missing(record, key)
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
        raise _missing(record, fields["options"])
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
    duplicates: Literal["keep", "reject"] = "keep",
    key: str | None = None,
) -> LoadResult:
    """The valid examples of a source and its problems; `key` names one set of a JSON file of named sets."""
    if format not in PARSERS:
        raise DataError(f"unknown format {format!r}; known: {', '.join(PARSERS)}")
    mapping = resolve_fields(format, preset, fields or {})
    parse = PARSERS[format]
    source = f"{path}#{key}" if key is not None else str(path)
    result = LoadResult(path=source, format=format, rows=0)
    seen: dict[bytes, int] = {}
    for row, line, record, parse_error in iter_records(path, key):
        if limit is not None and row >= limit:
            break
        result.rows += 1
        result.raw[row] = record
        if parse_error is not None:
            problem = Problem(source, row, None, parse_error, line)
        elif not isinstance(record, dict):
            problem = Problem(source, row, None, f"expected a JSON object, got {type(record).__name__}", line)
        else:
            try:
                example = parse(record, mapping, system_prompt)
            except FieldProblem as exc:
                problem = Problem(source, row, exc.field, exc.message, line)
            else:
                first = seen.setdefault(_fingerprint(example), row)
                if first != row:
                    result.duplicates.append((row, first))
                if first == row or duplicates == "keep":
                    result.examples.append((row, example))
                    continue
                problem = Problem(source, row, None, f"duplicate of row {first}", line)
        result.problems.append(problem)
    if result.rows == 0:
        raise DataError(f"{source}: no rows")
    return result


def _fingerprint(example: Example) -> bytes:
    canonical = json.dumps(asdict(example), sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


def load_from_config(config: DataConfig) -> LoadResult:
    return load_examples(
        config.path, config.format, config.preset, config.fields, config.system_prompt, config.limit, config.duplicates
    )


def write_rejects(path: str | Path, problems: list[Problem], raw: dict[int, Any]) -> None:
    """Each rejected row with its problem, one JSON line each; replaces `path` atomically (a failed write keeps
    the previous file)."""
    lines = (
        json.dumps(problem.to_dict() | {"record": raw.get(problem.row)}, ensure_ascii=False) for problem in problems
    )
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    except OSError as exc:
        raise DataError(f"{path}: cannot write the rejects file ({exc.strerror or exc})") from None


OVERLONG_WARNING_RATIO = 0.25
"""Share of the valid rows dropped as over-long above which a run warns: a max_length far below the data's lengths."""


def overlong_warning(dropped: int, valid: int, max_length: int) -> str | None:
    """The warning for `dropped` of `valid` rows dropped as longer than `max_length`, when above the ratio."""
    if not valid or dropped <= OVERLONG_WARNING_RATIO * valid:
        return None
    return (
        f"{dropped} of {valid} valid row(s) ({dropped / valid:.0%}) are longer than data.max_length={max_length} "
        f"tokens and were dropped (more than {OVERLONG_WARNING_RATIO:.0%}): raise data.max_length, set "
        "data.overlong=truncate, or data.overlong=fail to stop instead"
    )


def enforce_overlong(dropped: list[Problem], overlong: str, max_length: int) -> None:
    """With `overlong=fail`, over-long rows stop the run with a message naming them."""
    if not dropped or overlong != "fail":
        return
    shown = "\n  ".join(str(p) for p in dropped[:10])
    more = f"\n  ... and {len(dropped) - 10} more" if len(dropped) > 10 else ""
    raise DataError(
        f"{len(dropped)} row(s) longer than data.max_length={max_length} tokens (data.overlong=fail):\n  {shown}{more}\n"
        "Raise data.max_length, or set data.overlong=drop or truncate."
    )


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
