"""Unit tests for medo1.training.checkpoint: completion markers, ordering, rotation and resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medo1.atomic import atomic_write_text
from medo1.training.checkpoint import (
    COMPLETE_MARKER,
    ResumeError,
    is_complete,
    latest_complete,
    list_checkpoints,
    mark_complete,
    resolve_resume,
    rotate,
    set_aside_incomplete,
)


def make_ckpt(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        mark_complete(path, step=step)
    return path


def steps(entries) -> list[int]:
    return [n for n, _ in entries]


# --------------------------------------------------------------------------- markers


def test_mark_complete_writes_json_marker(tmp_path):
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    assert not is_complete(ckpt)
    mark_complete(ckpt, step=3, loss=1.5)
    assert is_complete(ckpt)
    payload = json.loads((ckpt / COMPLETE_MARKER).read_text())
    assert payload["step"] == 3
    assert payload["loss"] == 1.5
    assert payload["completed_at"].endswith("Z")
    # atomic write: no temp file left beside the marker
    assert sorted(p.name for p in ckpt.iterdir()) == [COMPLETE_MARKER]


def test_mark_complete_overwrites(tmp_path):
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    mark_complete(ckpt, step=1)
    mark_complete(ckpt, step=2)
    assert json.loads((ckpt / COMPLETE_MARKER).read_text())["step"] == 2
    assert [p.name for p in ckpt.iterdir()] == [COMPLETE_MARKER]


def test_atomic_write_text_replaces_content(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_is_complete_requires_marker_file(tmp_path):
    ckpt = tmp_path / "checkpoint-1"
    (ckpt / COMPLETE_MARKER).mkdir(parents=True)  # a directory, not a file
    assert not is_complete(ckpt)
    assert not is_complete(tmp_path / "does-not-exist")


# --------------------------------------------------------------------------- listing


def test_list_checkpoints_numeric_order(tmp_path):
    for n in (10, 9, 2, 100):
        make_ckpt(tmp_path, n, complete=n != 9)
    (tmp_path / "checkpoint-50").write_text("a file, not a directory")
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-7.incomplete-123").mkdir()
    (tmp_path / "export").mkdir()
    entries = list_checkpoints(tmp_path)
    assert steps(entries) == [2, 9, 10, 100]  # checkpoint-10 after checkpoint-9
    assert [p for _, p in entries] == [tmp_path / f"checkpoint-{n}" for n in (2, 9, 10, 100)]


def test_list_checkpoints_missing_dir(tmp_path):
    assert list_checkpoints(tmp_path / "nope") == []
    assert latest_complete(tmp_path / "nope") is None


def test_latest_complete_skips_newer_incomplete(tmp_path):
    make_ckpt(tmp_path, 9)
    make_ckpt(tmp_path, 10)
    make_ckpt(tmp_path, 11, complete=False)
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-10"


def test_latest_complete_none_when_all_incomplete(tmp_path):
    make_ckpt(tmp_path, 1, complete=False)
    assert latest_complete(tmp_path) is None


# --------------------------------------------------------------------------- set aside


def test_set_aside_incomplete_renames_only_unmarked(tmp_path):
    make_ckpt(tmp_path, 5)
    make_ckpt(tmp_path, 10, complete=False)
    make_ckpt(tmp_path, 20, complete=False)
    moved = set_aside_incomplete(tmp_path)
    assert len(moved) == 2
    assert all(p.exists() and p.parent == tmp_path for p in moved)
    assert sorted(p.name.split(".incomplete-")[0] for p in moved) == ["checkpoint-10", "checkpoint-20"]
    assert not (tmp_path / "checkpoint-10").exists()
    assert not (tmp_path / "checkpoint-20").exists()
    # moved contents are kept, and list_checkpoints no longer sees them
    assert all((p / "model.safetensors").read_bytes() == b"weights" for p in moved)
    assert list_checkpoints(tmp_path) == [(5, tmp_path / "checkpoint-5")]
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-5"
    # a second call has nothing to move
    assert set_aside_incomplete(tmp_path) == []


def test_set_aside_incomplete_lets_step_be_saved_again(tmp_path):
    make_ckpt(tmp_path, 10, complete=False)
    set_aside_incomplete(tmp_path)
    redone = make_ckpt(tmp_path, 10)  # the same step can be written afresh
    assert latest_complete(tmp_path) == redone


def test_set_aside_incomplete_twice_for_same_step_does_not_collide(tmp_path):
    # Earlier set-asides of checkpoint-10 whose timestamps cover the next few seconds
    # (what two crashes of the same step within one second leave behind).
    now = int(time.time())
    for t in range(now - 1, now + 30):
        earlier = tmp_path / f"checkpoint-10.incomplete-{t}"
        earlier.mkdir()
        (earlier / "kept.bin").write_bytes(b"old")
    make_ckpt(tmp_path, 10, complete=False)
    moved = set_aside_incomplete(tmp_path)
    assert len(moved) == 1
    assert (moved[0] / "model.safetensors").read_bytes() == b"weights"
    assert len(list(tmp_path.glob("checkpoint-10.incomplete-*"))) == 32


# --------------------------------------------------------------------------- rotate


def test_rotate_keeps_newest_complete(tmp_path):
    for n in (1, 2, 3, 5, 10):
        make_ckpt(tmp_path, n)
    make_ckpt(tmp_path, 4, complete=False)
    make_ckpt(tmp_path, 11, complete=False)
    deleted = rotate(tmp_path, keep=2)
    assert deleted == [tmp_path / f"checkpoint-{n}" for n in (1, 2, 3)]
    assert all(not p.exists() for p in deleted)
    assert steps(list_checkpoints(tmp_path)) == [4, 5, 10, 11]  # incomplete ones never deleted
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-10"


def test_rotate_with_few_checkpoints_or_keep_zero(tmp_path):
    make_ckpt(tmp_path, 1)
    make_ckpt(tmp_path, 2)
    assert rotate(tmp_path, keep=5) == []
    assert rotate(tmp_path, keep=0) == []
    assert steps(list_checkpoints(tmp_path)) == [1, 2]
    assert rotate(tmp_path, keep=1) == [tmp_path / "checkpoint-1"]
    assert steps(list_checkpoints(tmp_path)) == [2]


def test_rotate_only_incomplete(tmp_path):
    make_ckpt(tmp_path, 1, complete=False)
    make_ckpt(tmp_path, 2, complete=False)
    assert rotate(tmp_path, keep=1) == []
    assert steps(list_checkpoints(tmp_path)) == [1, 2]


# --------------------------------------------------------------------------- resume


def test_resume_auto_without_checkpoints(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None
    assert resolve_resume(tmp_path / "never-created", "auto") is None
    make_ckpt(tmp_path, 3, complete=False)
    assert resolve_resume(tmp_path, "auto") is None


def test_resume_auto_picks_latest_complete(tmp_path):
    make_ckpt(tmp_path, 9)
    make_ckpt(tmp_path, 10)
    make_ckpt(tmp_path, 12, complete=False)
    assert resolve_resume(tmp_path, "auto") == tmp_path / "checkpoint-10"


def test_resume_none_fresh_start(tmp_path):
    assert resolve_resume(tmp_path, "none") is None
    make_ckpt(tmp_path, 1, complete=False)
    assert resolve_resume(tmp_path, "none") is None


def test_resume_none_with_complete_checkpoint_raises(tmp_path):
    make_ckpt(tmp_path, 7)
    with pytest.raises(ResumeError) as err:
        resolve_resume(tmp_path, "none")
    msg = str(err.value)
    assert "--resume auto" in msg
    assert "checkpoint-7" in msg
    assert str(tmp_path) in msg


def test_resume_explicit_path(tmp_path):
    good = make_ckpt(tmp_path, 4)
    bad = make_ckpt(tmp_path, 8, complete=False)
    assert resolve_resume(tmp_path, str(good)) == good
    with pytest.raises(ResumeError) as err:
        resolve_resume(tmp_path, str(bad))
    assert str(bad) in str(err.value)
    assert COMPLETE_MARKER in str(err.value)
    with pytest.raises(ResumeError):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-99"))


def test_resume_error_is_value_error():
    assert issubclass(ResumeError, ValueError)


# --------------------------------------------------------------------------- metrics.jsonl after a resume


def test_train_begin_keeps_only_the_metrics_up_to_the_resumed_step(tmp_path):
    from transformers import TrainerState

    from medo1.training.callbacks import JsonlMetrics
    from medo1.training.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    entries = [{"step": s, "loss": 10.0 - s} for s in range(1, 7)]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"step": 7, "lo')  # cut short by a kill
    JsonlMetrics(path).on_train_begin(None, TrainerState(global_step=4), None)
    assert read_metrics(path) == entries[:4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # rewritten in place, no temp file left
    JsonlMetrics(tmp_path / "absent.jsonl").on_train_begin(None, TrainerState(global_step=0), None)
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.mark.multiprocess
def test_a_killed_and_resumed_sft_run_logs_each_step_once(tiny_model, demo_rows, tmp_path):
    from medo1.training.metrics import read_metrics
    from tests.conftest import TINY_RECIPE, kill_after_checkpoint, run_medo1, sft_overrides, write_short_rows

    data = write_short_rows(demo_rows, tmp_path / "rows.json", 16)
    out = tmp_path / "run"
    extra = {"train.max_steps": 6, "output.save_steps": 2, "output.export": False}
    overrides = sft_overrides(tiny_model, data, out, **extra)
    args = ["sft", "--config", TINY_RECIPE, "--resume", "auto"] + [a for o in overrides for a in ("--set", o)]
    kill_after_checkpoint(args, out / "checkpoint-4")
    # The crash came while checkpoint-4 was being saved: the run resumes from checkpoint-2, and steps
    # 3 and 4 the killed run logged are logged again.
    (out / "checkpoint-4" / COMPLETE_MARKER).unlink()
    assert {3, 4} <= {m["step"] for m in read_metrics(out / "metrics.jsonl")}
    resumed = run_medo1(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4, 5, 6]
