"""Publish an exported model directory to the Hugging Face Hub.

The upload is deliberately conservative:

- only an allowlist of file kinds leaves the machine (weights as safetensors, JSON configs,
  tokenizer files, chat template, LICENSE); pickles such as `training_args.bin` or
  `optimizer.pt` are skipped and reported;
- every entry must resolve inside the directory (a symlink out of it refuses the upload);
- anything that looks like a credential (by file name, or anywhere in the content of any uploaded
  text file, whatever its size: see `find_secrets`) refuses the whole upload, and so does a weight
  shard that is empty or unreadable; a refusal names file, line and key, never the value;
- the directory must load with transformers (config, tokenizer with chat template, model);
- a model card (README.md) is generated in memory from `templates/model_card.md` and sent with
  the files in one commit;
- the token is read from `HF_TOKEN` only, and is never printed, logged or returned.
"""

from __future__ import annotations

import codecs
import fnmatch
import json
import logging
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import yaml
from pydantic import Field

from medo1.config import Section, StageError

logger = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
CARD_NAME = "README.md"
CARD_TAGS = ["medical", "reasoning", "medo1"]

# File kinds that may be uploaded (top-level files of the model directory only).
ALLOWED_PATTERNS = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "LICENSE",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# File names that look like credentials anywhere under the directory (matched lower-case).
CREDENTIAL_NAME_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    "credentials*",
    ".git-credentials",
    "*token*",
    "*secret*",
)
# Tokenizer files legitimately contain "token" in their names.
TOKENIZER_FILE_NAMES = frozenset({"special_tokens_map.json", "added_tokens.json"})

# Shapes of well-known credentials, wherever they appear. The hf_ and sk- prefixes are matched from
# 8 characters on: a short or truncated token is still a leak.
SECRET_PATTERNS = (
    # The literal first, then the look-behind: re then scans for the literal, several times faster.
    ("a Hugging Face token", re.compile(r"hf_(?<![A-Za-z0-9]hf_)[A-Za-z0-9]{8,}")),
    ("an OpenAI-style key", re.compile(r"sk-(?<![A-Za-z0-9]sk-)[A-Za-z0-9_-]{8,}")),
    ("an AWS access key", re.compile(r"AKIA[0-9A-Z]{16}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
# A value under a secret-like key: JSON `"api_key": "..."`, YAML `token: ...`, env `SECRET=...`. Matched
# against the ASCII-lower-cased text (`_ascii_folded`), several times faster than a case-insensitive pattern.
SECRET_KEY_WORDS = r"api[_-]?key|apikey|access[_-]?key|auth[_-]?key|token|secret|password|passwd|credentials?"
SECRET_ASSIGNMENT = re.compile(
    rf"(?P<word>{SECRET_KEY_WORDS})[\"']?[ \t]*[:=][ \t]*[\"']?(?P<value>[a-z0-9+/=_.~-]{{16,}})(?![a-z0-9+/=_.~-])"
)
KEY_CHARS = re.compile(r"[A-Za-z0-9_.-]*$")
MIN_SECRET_VALUE_LENGTH = 16
MIN_SECRET_ENTROPY_BITS = 3.0
# Environment variables whose live values must never leave the machine, plus any variable whose name
# ends like a credential's. Values shorter than MIN_ENV_SECRET_LENGTH are too common to search for.
SECRET_ENV_NAMES = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY",
    "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "KFP_TOKEN",
)
SECRET_ENV_SUFFIXES = ("_TOKEN", "_API_KEY", "_SECRET", "_SECRET_KEY", "_PASSWORD", "_ACCESS_KEY")
MIN_ENV_SECRET_LENGTH = 8
# Files sent as they are but never scanned as text; every other uploaded file is scanned, whatever its size.
BINARY_NAMES = ("*.safetensors", "tokenizer.model")
SCAN_CHUNK_BYTES = 1 << 20
SCAN_OVERLAP_CHARS = 4096
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class UploadError(StageError):
    """The upload cannot go ahead (configuration or environment problem)."""


class UploadRefused(UploadError):
    """The directory must not be uploaded: credentials found, or it does not load."""


class UploadConfig(Section):
    """`medo1 upload`: push an exported model and its model card to the Hugging Face Hub (token from $HF_TOKEN)."""

    model_dir: str = Field(min_length=1)
    """The exported model directory (a training stage's OUTPUT/export)."""
    repo_id: str = Field(min_length=1)
    """owner/name on the Hub; created if missing."""
    private: bool = True
    """Create the repo private."""
    revision: str = Field("main", min_length=1)
    """Branch committed to."""
    commit_message: str = "Upload medo1 model"
    """The Hub commit's message."""
    endpoint: str | None = None
    """Hub URL (a self-hosted Hub or mirror); default: huggingface_hub's (HF_ENDPOINT, else huggingface.co)."""
    base_model: str | None = None
    """The model fine-tuned from, for the model card."""
    datasets: list[str] = Field(default_factory=list)
    """Datasets the model was trained on, for the model card."""
    language: list[str] = Field(default_factory=list)
    """Languages of the model, for the model card (ISO 639-1 codes)."""
    license: str = "apache-2.0"
    """The model card's license."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Training settings listed in the model card."""
    eval_report: str | None = None
    """A medo1 eval report.json whose accuracies go in the model card."""
    dry_run: bool = False
    """List what would be sent and write the card aside; nothing leaves the machine."""
    retries: int = Field(3, ge=0)
    """Extra attempts for a failed Hub call."""


@dataclass
class PlannedFile:
    path: str
    size: int


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class UploadPlan:
    model_dir: str
    repo_id: str
    files: list[PlannedFile]
    skipped: list[SkippedFile]
    card: str
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_bytes = sum(f.size for f in self.files)

    def file_names(self) -> list[str]:
        return [f.path for f in self.files]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- file selection -------------------------------------------------------------------------


def _is_allowed(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ALLOWED_PATTERNS)


def _skip_reason(rel: str, name: str) -> str | None:
    if "/" in rel:
        return "in a subdirectory (only top-level model files are uploaded)"
    if name == CARD_NAME:
        return "replaced by the generated model card"
    if name.lower().endswith(PICKLE_SUFFIXES):
        return "pickle file (not allowed: can run code when loaded; weights go as safetensors)"
    if not _is_allowed(name):
        return "not on the upload allowlist"
    return None


def _all_files(model_dir: Path) -> list[str]:
    """Every file under `model_dir` (relative, sorted); refuses any entry, a symlinked directory
    included, whose resolved path leaves the directory, and any broken symlink."""
    root = model_dir.resolve()
    files, refused = [], []
    for folder, dirs, names in os.walk(model_dir):  # does not follow symlinked directories
        for name in sorted(dirs) + sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(model_dir).as_posix()
            if not path.resolve().is_relative_to(root):
                refused.append(f"{rel}: resolves to a path outside {model_dir} (a symlink)")
            elif not path.exists():
                refused.append(f"{rel}: a broken symlink")
            elif name in names and not path.is_dir():
                files.append(rel)
    if refused:
        raise UploadRefused("refusing to upload: entries leave the model directory:\n  " + "\n  ".join(refused))
    return sorted(files)


# --- credential checks ----------------------------------------------------------------------


def _credential_name(name: str) -> bool:
    lower = name.lower()
    if lower.startswith("tokenizer") or lower in TOKENIZER_FILE_NAMES:
        return False
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in CREDENTIAL_NAME_PATTERNS)


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s own character distribution."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def live_secrets() -> dict[str, str]:
    """Environment variable name -> value, for the credentials present in this process."""
    return {
        name: value.strip()
        for name, value in os.environ.items()
        if (name in SECRET_ENV_NAMES or name.upper().endswith(SECRET_ENV_SUFFIXES))
        and len(value.strip()) >= MIN_ENV_SECRET_LENGTH
    }


def find_secrets(text: str, live: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(character offset, what) for every secret found in `text`; `what` never holds the secret.

    Refused: the shapes in SECRET_PATTERNS; the live value of any credential variable of this
    process (`live_secrets`); and a value under a secret-like key (SECRET_KEY_WORDS, e.g.
    `api_key`, `hub_token`, `DB_PASSWORD`) in JSON, YAML or env-style text that is at least
    MIN_SECRET_VALUE_LENGTH (16) characters of [A-Za-z0-9+/=_.~-] (the alphabets of hex, base64
    and URL-safe tokens) with a Shannon entropy of at least MIN_SECRET_ENTROPY_BITS (3.0) bits per
    character. Random hex averages about 3.8 bits, random base64 over 4.5; repeated or
    dictionary-like values (`aaaa...`, `changeme`) stay below, and values with other characters,
    such as tokenizer special tokens (`<|endoftext|>`), never match.
    """
    found = [
        (m.start(), f"what looks like {kind}") for kind, pattern in SECRET_PATTERNS for m in pattern.finditer(text)
    ]
    for name, value in (live_secrets() if live is None else live).items():
        at = text.find(value)
        while at != -1:
            found.append((at, f"the live {name} value"))
            at = text.find(value, at + 1)
    for match in SECRET_ASSIGNMENT.finditer(_ascii_folded(text)):
        value = text[match.start("value") : match.end("value")]
        if len(value) >= MIN_SECRET_VALUE_LENGTH and shannon_entropy(value) >= MIN_SECRET_ENTROPY_BITS:
            key = KEY_CHARS.search(text, max(0, match.start() - 64), match.start()).group()
            word = text[match.start("word") : match.end("word")]
            found.append((match.start(), f"a high-entropy value under key '{key + word}'"))
    return sorted(found)


def _ascii_folded(text: str) -> str:
    """`text` lower-cased with every non-ASCII character as '?': the same length, so offsets carry over."""
    return text.encode("ascii", "replace").decode("ascii").lower()


def scan_text_file(path: Path, live: dict[str, str] | None = None) -> list[str]:
    """Secrets in one file as 'line N: what', read in chunks whatever the file's size.

    Each chunk is searched together with the end of the previous one (an overlap longer than any
    live secret), so a secret across a chunk boundary is found; a match seen twice is reported once.
    """
    live = live_secrets() if live is None else live
    overlap = max([SCAN_OVERLAP_CHARS] + [2 * len(v) for v in live.values()])
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    found: dict[tuple[int, str], None] = {}
    tail, tail_line = "", 1  # the kept end of the previous chunk and the line it starts on
    with path.open("rb") as handle:
        while True:
            raw = handle.read(SCAN_CHUNK_BYTES)
            buffer = tail + decoder.decode(raw, final=not raw)
            for offset, what in find_secrets(buffer, live):
                found[(tail_line + buffer.count("\n", 0, offset), what)] = None
            if not raw:
                break
            keep = buffer[-overlap:]
            tail_line += buffer.count("\n", 0, len(buffer) - len(keep))
            tail = keep
    return [f"line {line}: {what}" for line, what in found]


def check_safetensors(path: Path) -> str | None:
    """Why a weight shard cannot be read (empty, truncated, bad header), or None when its header and size agree."""
    size = path.stat().st_size
    if size == 0:
        return "empty weight file (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"not a safetensors file ({size} bytes, no header)"
        header_len = int.from_bytes(head, "little")
        if header_len > min(size - 8, SAFETENSORS_MAX_HEADER):
            return "not a safetensors file (header length beyond the file)"
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "not a safetensors file (header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (header is not an object)"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if not ends:
        return "holds no tensors"
    if 8 + header_len + max(ends) != size:
        return f"truncated or padded: the header describes {8 + header_len + max(ends)} bytes, the file has {size}"
    return None


def scan_credentials(model_dir: Path, rel_files: list[str], upload_files: list[str]) -> list[str]:
    """Problems as 'file: why'. Names are checked everywhere; contents of every uploaded file that is
    not a weight or sentencepiece model; weight shards must be readable safetensors."""
    problems = []
    for rel in rel_files:
        if any(_credential_name(part) for part in rel.split("/")):
            problems.append(f"{rel}: file name looks like a credential")
    live = live_secrets()
    for rel in upload_files:
        path = model_dir / rel
        try:
            if fnmatch.fnmatchcase(rel, "*.safetensors"):
                why = check_safetensors(path)
                problems += [f"{rel}: {why}"] if why else []
            elif not any(fnmatch.fnmatchcase(rel, pattern) for pattern in BINARY_NAMES):
                problems += [f"{rel}: {finding}" for finding in scan_text_file(path, live)]
        except OSError as exc:
            problems.append(f"{rel}: cannot be read ({exc.strerror})")
    return problems


# --- load check -----------------------------------------------------------------------------


def check_loads(model_dir: Path) -> None:
    """Load the directory as a user would (CPU); refuse if it does not."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    step = "config"
    try:
        AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        step = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        step = "model"
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype="auto")
        del model
    except Exception as exc:  # noqa: BLE001 - any load failure refuses the upload
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UploadRefused(
            f"{model_dir} does not load with transformers ({step} failed: {type(exc).__name__}: {message}); "
            "fix the export before uploading"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise UploadRefused(
            f"{model_dir} has no tokenizer chat template; medo1 models are prompted through the chat "
            "template, so the upload is refused"
        )


# --- model card -----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return str(text).replace("|", "\\|").replace("\n", " ")


def load_eval_report(path: str | Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UploadError(f"eval report {path} not found") from None
    except json.JSONDecodeError as exc:
        raise UploadError(f"eval report {path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), dict):
        raise UploadError(f"eval report {path} has no 'benchmarks' mapping")
    return report


def _format_accuracy(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}%" if value <= 1 else f"{value:.1f}%"
    return _cell(value)


def eval_section(report: dict[str, Any] | None) -> str:
    if report is None:
        return "Not evaluated.\n"
    lines = ["| benchmark | n | accuracy | unparseable |", "|---|---|---|---|"]
    for name, row in report["benchmarks"].items():
        row = row or {}
        lines.append(
            f"| {_cell(name)} | {_cell(row.get('n', ''))} | {_format_accuracy(row.get('accuracy', ''))} "
            f"| {_cell(row.get('unparseable', ''))} |"
        )
    text = "\n".join(lines) + "\n"
    if report.get("average_accuracy") is not None:
        text += f"\nAverage accuracy: {_format_accuracy(report['average_accuracy'])}.\n"
    text += (
        "\nMultiple-choice accuracy with the answer taken from the `## Final Response` section; "
        "`unparseable` counts responses from which no option could be extracted.\n"
    )
    return text


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


CARD_TEMPLATE = "templates/model_card.md"


def build_card(config: UploadConfig, report: dict[str, Any] | None) -> str:
    """The model card: `templates/model_card.md` (package data) filled in with `string.Template`."""
    meta: dict[str, Any] = {"license": config.license}
    # A local directory as base model (tiny demo runs) is named in the text, never linked or put in
    # the metadata, where the Hub expects a repo id.
    base_on_hub = bool(config.base_model and HUB_ID.fullmatch(config.base_model))
    if base_on_hub:
        meta["base_model"] = config.base_model
    if config.datasets:
        meta["datasets"] = list(config.datasets)
    if config.language:
        meta["language"] = list(config.language)
    meta["tags"] = list(CARD_TAGS)
    meta["pipeline_tag"] = "text-generation"

    if base_on_hub:
        base = f"[{config.base_model}](https://huggingface.co/{config.base_model})"
    else:
        base = f"`{config.base_model}`" if config.base_model else "an unspecified base model"
    datasets = "\n".join(f"- [{d}](https://huggingface.co/datasets/{d})" for d in config.datasets)
    if config.hyperparameters:
        hp_rows = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in config.hyperparameters.items())
        hyper = f"| hyperparameter | value |\n|---|---|\n{hp_rows}\n"
    else:
        hyper = "Not recorded.\n"
    template = Template(resources.files("medo1").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(
        front=yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
        name=config.repo_id.split("/")[-1],
        repo_id=config.repo_id,
        base=base,
        datasets=datasets or "- not specified",
        hyperparameters=hyper,
        evaluation=eval_section(report),
        license=config.license,
    )


# --- plan and upload ------------------------------------------------------------------------


def plan_upload(config: UploadConfig) -> UploadPlan:
    """Select files, refuse credentials, check the directory loads, and build the model card."""
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise UploadError(f"model directory {model_dir} does not exist")
    rel_files = _all_files(model_dir)

    files: list[PlannedFile] = []
    skipped: list[SkippedFile] = []
    for rel in rel_files:
        reason = _skip_reason(rel, rel.rsplit("/", 1)[-1])
        if reason is None:
            files.append(PlannedFile(rel, (model_dir / rel).stat().st_size))
        else:
            skipped.append(SkippedFile(rel, reason))

    problems = scan_credentials(model_dir, rel_files, [f.path for f in files])
    if problems:
        raise UploadRefused(
            "refusing to upload: possible credentials or unreadable weights in the directory (fix them first):\n  "
            + "\n  ".join(problems)
        )
    if not any(f.path.endswith(".safetensors") for f in files):
        raise UploadRefused(f"{model_dir} has no *.safetensors weights to upload")

    report = load_eval_report(config.eval_report) if config.eval_report else None  # before the model loads
    check_loads(model_dir)

    card = build_card(config, report)
    found = find_secrets(card)
    if found:
        kinds = ", ".join(dict.fromkeys(what for _, what in found))
        raise UploadRefused(f"refusing to upload: the generated model card contains {kinds}")
    files.append(PlannedFile(CARD_NAME, len(card.encode("utf-8"))))
    return UploadPlan(str(model_dir), config.repo_id, files, skipped, card)


def resolve_endpoint(config: UploadConfig) -> str:
    if config.endpoint:
        return config.endpoint.rstrip("/")
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _read_token() -> str:
    token = (os.environ.get(TOKEN_ENV) or "").strip()
    if not token:
        raise UploadError(
            f"{TOKEN_ENV} is not set: export a Hugging Face write token as {TOKEN_ENV} to upload "
            "(or set dry_run to see the plan without uploading)"
        )
    return token


def _transient(exc: BaseException) -> str | None:
    """A short description if `exc` is worth retrying, else None."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"HTTP {status}" if status in TRANSIENT_STATUS else None
    try:
        import httpx2

        network = (httpx2.TransportError,)
    except ImportError:  # pragma: no cover - older huggingface_hub
        network = ()
    if isinstance(exc, network + (ConnectionError, TimeoutError)):
        return type(exc).__name__
    return None


def _with_retries(what: str, retries: int, call):
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            why = _transient(exc)
            if why is None or attempt >= retries:
                raise
            delay = min(RETRY_BASE_SECONDS * 2**attempt, RETRY_MAX_SECONDS)
            attempt += 1
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", what, why, attempt, retries, delay)
            time.sleep(delay)


def upload(config: UploadConfig) -> dict[str, Any]:
    """Upload the planned files and the model card in one commit; on dry_run just return the plan."""
    token = None if config.dry_run else _read_token()
    plan = plan_upload(config)
    if config.dry_run:
        logger.info("dry run: %d files (%d bytes) would go to %s", len(plan.files), plan.total_bytes, config.repo_id)
        return {"dry_run": True, "repo_id": config.repo_id, **plan.to_dict()}

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=resolve_endpoint(config), token=token)
    model_dir = Path(plan.model_dir)

    def operations() -> list:
        # Fresh operations per attempt: huggingface_hub caches upload state on them.
        ops = [
            CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(model_dir / f.path))
            for f in plan.files
            if f.path != CARD_NAME
        ]
        ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=plan.card.encode("utf-8")))
        return ops

    logger.info("creating %s repo %s (if missing)", "private" if config.private else "public", config.repo_id)
    _with_retries(
        "create_repo", config.retries,
        lambda: api.create_repo(config.repo_id, private=config.private, exist_ok=True),
    )
    logger.info("committing %d files (%d bytes) to %s@%s", len(plan.files), plan.total_bytes, config.repo_id, config.revision)
    info = _with_retries(
        "commit", config.retries,
        lambda: api.create_commit(
            repo_id=config.repo_id,
            operations=operations(),
            commit_message=config.commit_message,
            revision=config.revision,
        ),
    )
    return {
        "repo_id": config.repo_id,
        "revision": config.revision,
        "private": config.private,
        "commit_url": info.commit_url,
        "oid": info.oid,
        "files": plan.file_names(),
        "skipped": [asdict(s) for s in plan.skipped],
    }
