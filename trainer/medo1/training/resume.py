"""One resume set-up for every training stage (SFT, GRPO / RLOO, PPO): the run folder's lock, the finished-run
check, the checkpoint to continue from and the recipe fingerprint it must match.

A run folder (`output.dir`) holds one run:
- `medo1.lock` while a process writes to it (`medo1.training.run_lock`; rank 0 of the job holds it);
- `medo1-run.json`, the run record: the stage, the recipe fingerprint, and, once the run has reached its last step
  and its export is in place, `"status": "finished"` with the final step;
- `checkpoint-N/`, each with its completion marker (`medo1.training.checkpoint`), which holds the fingerprint of the recipe
  that wrote it.

`open_run` at the start of a stage, in order:
1. rank 0 takes the lock (a second writer is refused; a dead one's lock is taken over);
2. a finished run whose export is in place and whose fingerprint matches: nothing to do. The stage returns at once
   and nothing in the folder is written, so a pod retry or a chain rerun never changes the model;
3. the checkpoint to continue from (`--resume auto | none | PATH`);
4. its fingerprint (with no checkpoint, the run record's; for a finished run, the record's) against this recipe's:
   any difference refuses the run, naming the keys, unless `resume.allow_changes` (`--allow-changed KEY`) names
   each of them (or a section holding it);
5. rank 0 sets incomplete checkpoints aside and records the run as running.

The fingerprint is what changes the maths (`recipe_fingerprint`): every recipe option except those in
`NOT_COMPARED` (where and how often results are written, how the work is placed, how remote services are reached)
and the settings of an algorithm or adapter the run does not use; the number of processes (it sets the global
batch); and the content of local inputs (`content_identity`: the data file, the model, the tokenizer, the value
model and the verifier), so a file replaced under the same path counts as a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medo1.atomic import atomic_write_text
from medo1.chat_client import RetryOptions
from medo1.config import ConfigError
from medo1.training import checkpoint
from medo1.training.process import is_main_process, world_size
from medo1.training.run_lock import RunFolderLocked, RunLock

log = logging.getLogger(__name__)

RUN_RECORD = "medo1-run.json"

# Options that do not change what is computed; a prefix covers its section.
NOT_COMPARED = (
    "output",  # where results go, how often checkpoints and metrics are written, the export switch
    "resume",
    "model.attn_implementation",  # the same attention, another kernel
    "model.gradient_checkpointing",  # recomputation: memory, not maths
    "train.distributed",  # DDP / ZeRO-3 / FSDP: the same optimizer step placed differently
    "train.deepspeed_config",
    "train.dataloader_workers",
    "sampling.engine",  # HF generate or vLLM: the same sampling distribution
    "sampling.vllm",
    "sampling.gather_weights_for_generation",
    "reward.batch_size",  # the verifier's batching
    "reward.base_url",  # where the judge is served, and how it is reached
    "reward.api_key_env",
    "reward.concurrency",
    *(f"reward.{name}" for name in RetryOptions.model_fields),
)
# Local paths whose content is part of the fingerprint, as `<key>.content`.
CONTENT_KEYS = (
    "model.name_or_path",
    "model.tokenizer",
    "data.path",
    "ppo.value_model",
    "reward.model",
    "reward.tokenizer",
)
# Files up to this size are hashed whole; a larger one by its size and its first and last SAMPLE_BYTES.
WHOLE_FILE_BYTES = 256 * 2**20
SAMPLE_BYTES = 16 * 2**20


class RecipeChanged(checkpoint.ResumeError):
    """A resume under a recipe that differs from the checkpoint's in keys not allowed to change."""


def content_identity(path: str | Path) -> str | None:
    """A digest of a local file's or folder's content (names, sizes and bytes; hidden files skipped), or None for
    what is not a local path (a Hub id). Copies of the same content agree; modification times do not count."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted(
            (str(p.relative_to(path)), p)
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    digest = hashlib.sha256()
    for name, file in files:
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= WHOLE_FILE_BYTES:
                while chunk := handle.read(2**20):
                    digest.update(chunk)
            else:
                digest.update(handle.read(SAMPLE_BYTES))
                handle.seek(size - SAMPLE_BYTES)
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _covered(key: str, prefixes: Any) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _unused_sections(config: BaseModel) -> list[str]:
    """Settings the run does not use: another RL algorithm's, LoRA's when LoRA is off."""
    unused = []
    algo = getattr(config, "algo", None)
    if algo is not None:
        unused += [name for name in ("ppo", "grpo", "rloo") if name != algo and name in type(config).model_fields]
    lora = getattr(config, "lora", None)
    if lora is not None and not lora.enabled:
        unused += [f"lora.{name}" for name in type(lora).model_fields if name != "enabled"]
    return unused


def recipe_fingerprint(config: BaseModel, processes: int | None = None) -> dict[str, Any]:
    """Dotted key -> value for everything that changes what the run computes (see the module docstring)."""
    flat: dict[str, Any] = {}
    _flatten(config.model_dump(mode="json"), "", flat)
    skipped = (*NOT_COMPARED, *_unused_sections(config))
    fingerprint = {key: value for key, value in flat.items() if not _covered(key, skipped)}
    for key in CONTENT_KEYS:
        value = flat.get(key)
        if isinstance(value, str) and value and not _covered(key, skipped):
            identity = None if value.startswith("hf://") else content_identity(value)
            if identity is not None:
                fingerprint[f"{key}.content"] = identity
    fingerprint["world_size"] = world_size() if processes is None else processes
    return dict(sorted(fingerprint.items()))


_UNSET = object()


def _shown(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"content {value[:12]}"
    return json.dumps(value)


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """Key -> "old -> new" for every key whose value differs (or exists on one side only)."""
    changed = {}
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, _UNSET), current.get(key, _UNSET)
        if old != new:
            changed[key] = f"{_shown(old)} -> {_shown(new)}"
    return changed


def check_allowed(allowed: list[str], fingerprint: dict[str, Any]) -> None:
    """Refuse an allowed key that names nothing the fingerprint compares (a typo would allow nothing)."""
    unknown = [key for key in allowed if not any(_covered(name, [key]) for name in fingerprint)]
    if unknown:
        examples = ", ".join(k for k in ("train.learning_rate", "data.path", "train.epochs") if k in fingerprint)
        raise ConfigError(
            f"resume.allow_changes: {', '.join(unknown)} is not a key the resume check compares "
            f"(keys look like {examples}; output.* and other settings that do not change the maths "
            "are never compared)"
        )


def refuse_unless_allowed(changed: dict[str, str], allowed: list[str], what: str) -> None:
    refused = {key: change for key, change in changed.items() if not _covered(key, allowed)}
    if refused:
        listed = "; ".join(f"{key}: {change}" for key, change in refused.items())
        flags = " ".join(f"--allow-changed {key}" for key in refused)
        raise RecipeChanged(
            f"{what} was trained under another recipe: {listed}. To continue it anyway pass {flags} "
            "(recipe: resume.allow_changes); to start a new run, use another output.dir"
        )
    if changed:
        log.warning(
            "%s: continuing under the allowed changes %s",
            what,
            "; ".join(f"{key}: {change}" for key, change in changed.items()),
        )


def read_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise checkpoint.ResumeError(
            f"{path} is not valid JSON; it is medo1's record of the run in that folder: "
            "restore it or use another output.dir"
        ) from None
    return record if isinstance(record, dict) else None


def _marker_fingerprint(checkpoint_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((checkpoint_dir / checkpoint.COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    fingerprint = marker.get("fingerprint") if isinstance(marker, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


@dataclass
class RunStart:
    """What a stage starts from: `finished` (the record) when there is nothing left to do, else `resume_from`
    (None: a fresh start). Pass `marker_info` to each checkpoint's completion marker; call `finish` once the export
    is in place."""

    output_dir: Path
    stage: str
    fingerprint: dict[str, Any]
    resume_from: Path | None = None
    finished: dict[str, Any] | None = None
    lock: RunLock | None = None
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def marker_info(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint}

    def _write_record(self, **fields: Any) -> None:
        record = {"stage": self.stage, "started_at": self.started_at, **fields, "fingerprint": self.fingerprint}
        atomic_write_text(self.output_dir / RUN_RECORD, json.dumps(record, indent=2))

    def finish(self, final_step: int, export_dir: Path | None) -> None:
        """Rank 0: record the run as finished (after its last step, with its export in place)."""
        if not is_main_process():
            return
        if self.lock is not None and self.lock.lost:
            raise RunFolderLocked(
                f"{self.output_dir}: another process took the run folder's lock during the run; "
                "not recording this run as finished"
            )
        export = export_dir.name if export_dir is not None else None
        self._write_record(
            status="finished",
            final_step=final_step,
            export=export,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )


def _start(config: BaseModel, resume: str, stage: str, output_dir: Path) -> RunStart:
    fingerprint = recipe_fingerprint(config)
    allowed = list(config.resume.allow_changes)
    check_allowed(allowed, fingerprint)
    record = read_record(output_dir)
    if record is not None and record.get("stage") not in (None, stage):
        raise checkpoint.ResumeError(
            f"{output_dir} holds a {record['stage']} run, not a {stage} run; use another output.dir"
        )
    if resume != "none" and record is not None and record.get("status") == "finished":
        export = record.get("export")
        if export is None or (output_dir / export).is_dir():
            changed = differences(record.get("fingerprint") or {}, fingerprint)
            if not changed:
                where = f"; export {output_dir / export} kept" if export else ""
                log.info(
                    "%s run in %s already finished at step %s%s: nothing to do",
                    stage,
                    output_dir,
                    record.get("final_step"),
                    where,
                )
                return RunStart(output_dir, stage, fingerprint, finished=record)
            refuse_unless_allowed(changed, allowed, f"the finished run in {output_dir}")
    resume_from = checkpoint.resolve_resume(output_dir, resume)
    if resume_from is not None:
        recorded = _marker_fingerprint(resume_from)
        if recorded is None:
            log.warning("%s predates recipe fingerprints: resuming it without comparing recipes", resume_from)
        else:
            refuse_unless_allowed(differences(recorded, fingerprint), allowed, str(resume_from))
    elif record is not None and record.get("fingerprint"):
        refuse_unless_allowed(differences(record["fingerprint"], fingerprint), allowed, f"the run in {output_dir}")
    start = RunStart(output_dir, stage, fingerprint, resume_from=resume_from)
    if is_main_process():
        if resume != "none":
            for moved in checkpoint.set_aside_incomplete(output_dir):
                log.warning("set aside incomplete checkpoint %s", moved)
        start._write_record(status="running")
    return start


@contextlib.contextmanager
def open_run(config: BaseModel, resume: str, stage: str) -> Iterator[RunStart]:
    """The resume set-up of a training stage (`sft` or `rl`), `config` its typed recipe; see the module docstring.
    Rank 0 holds the run folder's lock until the block ends. Raises RunFolderLocked, RecipeChanged, ResumeError."""
    output_dir = Path(config.output.dir)
    lock = RunLock(output_dir).acquire() if is_main_process() else None
    try:
        start = _start(config, resume, stage, output_dir)
        start.lock = lock
        yield start
    finally:
        if lock is not None:
            lock.release()
