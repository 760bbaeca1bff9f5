"""Metrics to the console and to `metrics.jsonl`, whatever else (W&B, TensorBoard) is switched on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from medo1.atomic import atomic_write_text


class JsonlMetrics(TrainerCallback):
    """Appends every log event as one JSON line, adding tokens/s from the trainer's token counter."""

    def __init__(self, path: str | Path, token_key: str = "num_tokens"):
        self.path = Path(path)
        self.token_key = token_key
        self._last: tuple[float, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # Called once the trainer state is restored: a resumed run drops what the interrupted one logged after it.
        if state.is_world_process_zero:
            keep_metrics_through(self.path, state.global_step)
        self._last = (time.perf_counter(), 0.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": time.time(), **logs}
        tokens = logs.get(self.token_key)
        if tokens is not None and self._last is not None:
            now = time.perf_counter()
            last_time, last_tokens = self._last
            if tokens >= last_tokens and now > last_time:
                record["tokens_per_second"] = round((tokens - last_tokens) / (now - last_time), 1)
            self._last = (now, tokens)
        append_jsonl(self.path, record)


def append_jsonl(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def keep_metrics_through(path: str | Path, step: int) -> int:
    """Rewrite `path` atomically with only the entries of steps <= `step`; returns how many were dropped.

    For a run resumed from the checkpoint of `step`: entries past it were logged by the interrupted
    run and will be logged again, and a line cut short by a kill is dropped too.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("step", 0) <= step:
            kept.append(line)
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
