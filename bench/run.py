"""`make bench`: run the benchmarks this machine can run, print a table, write one JSON per run."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import translate_concurrency

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import transformers
    import trl

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def main() -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = translate_concurrency.measure()
    record = {"date": stamp, "environment": environment(), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"translate_concurrency-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"translate: {result['records']} records, stand-in latency {result['latency_s']} s per request")
    print(f"{'concurrency':>12} {'seconds':>9} {'records/s':>10} {'speedup':>8}")
    for row in result["results"]:
        print(f"{row['concurrency']:>12} {row['seconds']:>9} {row['records_per_second']:>10} {row['speedup_vs_sequential']:>7}x")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
