"""`metrics.jsonl`, one JSON object per logged step: append, read, and trim to a resumed step. No torch or
transformers here, so `medo1 report` and the tests read metrics without loading them."""

from __future__ import annotations

import json
from pathlib import Path

from medo1.atomic import atomic_write_text


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
