"""Checkpoint bookkeeping: a checkpoint counts only once its completion marker is written.

Saving writes `checkpoint-N/` (model, optimizer, scheduler, RNG, trainer state) from every rank,
then, after a barrier, rank 0 writes the marker atomically (temp file + fsync + rename). A crash
at any earlier point leaves a directory without a marker, which resume ignores and moves aside.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from medo1.atomic import atomic_write_text
from medo1.errors import Medo1Error

COMPLETE_MARKER = "medo1-complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str | Path, **info) -> None:
    payload = {"completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    atomic_write_text(Path(checkpoint_dir) / COMPLETE_MARKER, json.dumps(payload, indent=2))


def is_complete(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """All `checkpoint-N` directories, oldest first, complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for entry in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_complete(output_dir: str | Path) -> Path | None:
    complete = [path for _, path in list_checkpoints(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


def set_aside_incomplete(output_dir: str | Path) -> list[Path]:
    """Rename checkpoints without a marker so they are neither resumed from nor overwritten in place."""
    moved = []
    for _, path in list_checkpoints(output_dir):
        if not is_complete(path):
            stamp = int(time.time())
            target = path.with_name(f"{path.name}.incomplete-{stamp}")
            suffix = 1
            while target.exists():
                target = path.with_name(f"{path.name}.incomplete-{stamp}-{suffix}")
                suffix += 1
            path.rename(target)
            moved.append(target)
    return moved


def rotate(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep` (incomplete ones are left for resume to handle)."""
    if keep <= 0:
        return []
    complete = [path for _, path in list_checkpoints(output_dir) if is_complete(path)]
    doomed = complete[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


class ResumeError(Medo1Error, ValueError):
    """A `--resume` target that is missing, incomplete or from another run."""


def resolve_resume(output_dir: str | Path, resume: str) -> Path | None:
    """`auto`: latest complete checkpoint, or a fresh start; `none`: fresh start; else a path."""
    if resume == "auto":
        return latest_complete(output_dir)
    if resume == "none":
        existing = latest_complete(output_dir)
        if existing is not None:
            raise ResumeError(
                f"{output_dir} already holds checkpoint {existing.name}; pass --resume auto to continue it, "
                "or use another output directory"
            )
        return None
    path = Path(resume)
    if not is_complete(path):
        raise ResumeError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER})")
    return path


class SaveAtEnd(TrainerCallback):
    """Checkpoint at the last step too, not only every `save_steps`."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True


class MarkedCheckpoints:
    """Mixin for a transformers Trainer: mark each checkpoint complete once every rank has written it (the marker
    holding `marker_info`: the recipe fingerprint, `medo1.training.resume`), then keep the newest `keep_checkpoints` complete
    ones (the Trainer's own rotation is off)."""

    def __init__(self, *args, keep_checkpoints: int, marker_info: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_checkpoints = keep_checkpoints
        self.marker_info = marker_info or {}

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            path = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            mark_complete(
                path, step=self.state.global_step, world_size=self.accelerator.num_processes, **self.marker_info
            )
            rotate(self.args.output_dir, self.keep_checkpoints)
        self.accelerator.wait_for_everyone()
