"""Publish an exported model directory to the Hugging Face Hub.

The upload is deliberately conservative:

- only an allowlist of file kinds leaves the machine (weights as safetensors, JSON configs,
  tokenizer files, chat template, LICENSE); pickles such as `training_args.bin` or
  `optimizer.pt` are skipped and reported;
- anything that looks like a credential (by file name or by content) refuses the whole upload;
- the directory must load with transformers (config, tokenizer with chat template, model);
- a model card (README.md) is generated in memory and sent with the files in one commit;
- the token is read from `HF_TOKEN` only, and is never printed, logged or returned.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
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

SECRET_PATTERNS = (
    ("Hugging Face token", re.compile(r"hf_[A-Za-z0-9]{30,}")),
    ("OpenAI key", re.compile(r"sk-[A-Za-z0-9_-]{20,}")),
    ("AWS access key", re.compile(r"AKIA[0-9A-Z]{16}")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
TEXT_SUFFIXES = (".json", ".txt", ".jinja", ".md")
SCAN_LIMIT_BYTES = 5 * 1024 * 1024

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class UploadError(StageError):
    """The upload cannot go ahead (configuration or environment problem)."""


class UploadRefused(UploadError):
    """The directory must not be uploaded: credentials found, or it does not load."""


class UploadConfig(Section):
    model_dir: str
    repo_id: str
    private: bool = True
    revision: str = "main"
    commit_message: str = "Upload medo1 model"
    endpoint: str | None = None
    base_model: str | None = None
    datasets: list[str] = Field(default_factory=list)
    language: list[str] = Field(default_factory=list)
    license: str = "apache-2.0"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    eval_report: str | None = None
    dry_run: bool = False
    retries: int = 3


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
    return sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())


# --- credential checks ----------------------------------------------------------------------


def _credential_name(name: str) -> bool:
    lower = name.lower()
    if lower.startswith("tokenizer") or lower in TOKENIZER_FILE_NAMES:
        return False
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in CREDENTIAL_NAME_PATTERNS)


def find_secrets(text: str) -> list[str]:
    """Kinds of secret found in `text` (never the secret itself)."""
    found = [kind for kind, pattern in SECRET_PATTERNS if pattern.search(text)]
    token = os.environ.get(TOKEN_ENV)
    if token and token.strip() and token.strip() in text:
        found.append("the HF_TOKEN value")
    return found


def scan_credentials(model_dir: Path, rel_files: list[str], upload_files: list[str]) -> list[str]:
    """Problems as 'file: why'. Names are checked everywhere; contents of uploadable text files."""
    problems = []
    for rel in rel_files:
        if any(_credential_name(part) for part in rel.split("/")):
            problems.append(f"{rel}: file name looks like a credential")
    for rel in upload_files:
        path = model_dir / rel
        if not rel.lower().endswith(TEXT_SUFFIXES) or path.stat().st_size >= SCAN_LIMIT_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        kinds = find_secrets(text)
        if kinds:
            problems.append(f"{rel}: contains what looks like {', '.join(kinds)}")
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


def build_card(config: UploadConfig, report: dict[str, Any] | None) -> str:
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
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)

    name = config.repo_id.split("/")[-1]
    if base_on_hub:
        base = f"[{config.base_model}](https://huggingface.co/{config.base_model})"
    else:
        base = f"`{config.base_model}`" if config.base_model else "an unspecified base model"
    datasets = "\n".join(f"- [{d}](https://huggingface.co/datasets/{d})" for d in config.datasets) or "- not specified"
    if config.hyperparameters:
        hp_rows = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in config.hyperparameters.items())
        hyper = f"| hyperparameter | value |\n|---|---|\n{hp_rows}\n"
    else:
        hyper = "Not recorded.\n"

    return f"""---
{front}---

# {name}

## Model

`{config.repo_id}` is a medical reasoning model fine-tuned from {base} with medo1, following the
HuatuoGPT-o1 recipe (supervised fine-tuning on complex chains of thought, optionally followed by
reinforcement learning with a verifier reward). It thinks step by step before answering.

## Intended use

Research on medical question answering and reasoning, education, and evaluation of language models
on medical benchmarks.

## Medical disclaimer

**This model is not a medical device and its output is not medical advice.** It can be wrong,
incomplete or out of date while sounding confident. Do not use it for diagnosis, treatment or any
clinical decision without review by a qualified healthcare professional. In an emergency, contact
local emergency services.

## Training data

{datasets}

## Hyperparameters

{hyper}
## Evaluation

{eval_section(report)}
## How to use

Prompt the model through its chat template. It answers in two parts: `## Thinking` (its
reasoning) followed by `## Final Response` (the answer).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{config.repo_id}")
model = AutoModelForCausalLM.from_pretrained("{config.repo_id}", dtype="auto", device_map="auto")
messages = [{{"role": "user", "content": "A 45-year-old presents with ... What is the most likely diagnosis?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(model.device)
output = model.generate(**inputs, max_new_tokens=1024)
text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
answer = text.split("## Final Response", 1)[-1].strip()
```

The expected output format:

```
## Thinking

...step-by-step reasoning...

## Final Response

...the answer...
```

## License

{config.license}
"""


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
            "refusing to upload: the directory contains possible credentials (remove them first):\n  "
            + "\n  ".join(problems)
        )
    if not any(f.path.endswith(".safetensors") for f in files):
        raise UploadRefused(f"{model_dir} has no *.safetensors weights to upload")

    check_loads(model_dir)

    report = load_eval_report(config.eval_report) if config.eval_report else None
    card = build_card(config, report)
    kinds = find_secrets(card)
    if kinds:
        raise UploadRefused(f"refusing to upload: the generated model card contains what looks like {', '.join(kinds)}")
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
