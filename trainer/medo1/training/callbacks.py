"""Metrics to the console and to `metrics.jsonl` from a transformers Trainer, whatever else (W&B, TensorBoard)
is switched on."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from medo1.training.metrics import append_jsonl, keep_metrics_through


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
