"""Publish an exported model directory to the Hugging Face Hub.

The upload is deliberately conservative:

- only an allowlist of file kinds leaves the machine (weights as safetensors, JSON configs,
  tokenizer files, chat template, LICENSE); pickles such as `training_args.bin` or
  `optimizer.pt` are skipped and reported;
- every entry must resolve inside the directory: a symlink out of it, a hard link with a name outside it, a
  FIFO, socket or device (refused at once, never opened) refuses the upload;
- anything that looks like a credential refuses the whole upload: by file name; in the content of every uploaded
  file, whatever its size, as a reader would decode it (the encodings a JSON reader accepts: UTF-8 with or without
  a BOM, UTF-16, UTF-32; JSON escapes such as `\u005f` undone); in a weight file's safetensors header
  (`__metadata__` included) and byte tensors; in the sentencepiece `tokenizer.model`; in uploaded file names and
  the commit message (see `find_secrets`). A weight shard that is empty, unreadable, or holds bytes no tensor
  describes refuses it too. A refusal names file, line and key, never the value;
- the directory must load with transformers (config, tokenizer with chat template, model);
- a model card (README.md) is generated in memory from `hub/templates/model_card.md` and sent with
  the files in one commit;
- the token is read from `HF_TOKEN` only, and is never printed, logged or returned.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medo1.atomic import DIR_MARKER
from medo1.hub.config import UploadConfig, UploadError, UploadRefused
from medo1.hub.model_card import build_card, load_eval_report
from medo1.hub.secret_scan import find_secrets, scan_credentials

logger = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
CARD_NAME = "README.md"

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

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


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


SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _all_files(model_dir: Path) -> list[str]:
    """Every file under `model_dir` (relative, sorted); refuses any entry, a symlinked directory included, whose
    resolved path leaves the directory, any broken symlink, any hard-linked file with a name outside the directory
    (more links than names inside it), and any FIFO, socket or device (refused by its type, never opened: reading
    a FIFO would wait forever)."""
    root = model_dir.resolve()
    files, refused = [], []
    names_inside: Counter[tuple[int, int]] = Counter()
    linked: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for folder, dirs, names in os.walk(model_dir):  # does not follow symlinked directories
        for name in sorted(dirs) + sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(model_dir).as_posix()
            if not path.resolve().is_relative_to(root):
                refused.append(f"{rel}: resolves to a path outside {model_dir} (a symlink)")
                continue
            try:
                info = path.stat()
            except OSError:
                refused.append(f"{rel}: a broken symlink")
                continue
            kind = next((what for test, what in SPECIAL_FILES if test(info.st_mode)), None)
            if kind:
                refused.append(f"{rel}: {kind}, not a file (refused unread)")
                continue
            if stat.S_ISREG(info.st_mode):
                if not path.is_symlink():
                    names_inside[(info.st_dev, info.st_ino)] += 1
                if info.st_nlink > 1:
                    linked.setdefault((info.st_dev, info.st_ino), []).append((rel, info.st_nlink))
                if name in names:
                    files.append(rel)
    for key, entries in linked.items():
        links = entries[0][1]
        if links > names_inside[key]:
            refused += [
                f"{rel}: a hard link to a file with {links - names_inside[key]} other name(s) outside "
                f"{model_dir} (copy it in instead)"
                for rel, _ in entries
            ]
    if refused:
        raise UploadRefused("refusing to upload: entries leave the model directory:\n  " + "\n  ".join(sorted(refused)))
    return sorted(files)


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


# --- plan and upload ------------------------------------------------------------------------


def plan_upload(config: UploadConfig) -> UploadPlan:
    """Select files, refuse credentials, check the directory loads, and build the model card."""
    model_dir = Path(config.model_dir)
    if not model_dir.is_dir():
        raise UploadError(f"model directory {model_dir} does not exist")
    found = find_secrets(config.commit_message)
    if found:
        raise UploadRefused(
            f"refusing to upload: the commit message contains {', '.join(dict.fromkeys(k for _, k in found))}"
        )
    rel_files = _all_files(model_dir)

    files: list[PlannedFile] = []
    skipped: list[SkippedFile] = []
    for rel in rel_files:
        if rel == DIR_MARKER:  # medo1's own bookkeeping (medo1.atomic): neither sent nor worth listing
            continue
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
        kinds = ", ".join(dict.fromkeys(kind for _, kind in found))
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
        "create_repo",
        config.retries,
        lambda: api.create_repo(config.repo_id, private=config.private, exist_ok=True),
    )
    logger.info(
        "committing %d files (%d bytes) to %s@%s", len(plan.files), plan.total_bytes, config.repo_id, config.revision
    )
    info = _with_retries(
        "commit",
        config.retries,
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
