"""Translation throughput: concurrent requests against sequential ones, same records, same server.

The server is the local OpenAI-compatible stand-in from the tests with a fixed per-request latency,
standing in for a paid API whose latency, not its compute, bounds a translation run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from medo1.translate import TranslateConfig, run_translate

from pipelines.openai_standin import StandIn

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "data" / "medical_o1_demo.json"


def measure(records: int = 48, latency_s: float = 0.25, levels: tuple[int, ...] = (1, 4, 16)) -> dict:
    os.environ["OPENAI_API_KEY"] = "bench-key"
    rows = []
    for concurrency in levels:
        server = StandIn(api_key="bench-key", latency_s=latency_s, max_lifetime_s=600).start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                config = TranslateConfig(
                    input=str(DEMO), output=str(Path(tmp) / "out.jsonl"), format="verifiable",
                    target_language="Japanese", base_url=server.base_url, concurrency=concurrency, limit=records,
                )
                start = time.perf_counter()
                summary = run_translate(config, progress=False)
                elapsed = time.perf_counter() - start
        finally:
            server.stop()
        rows.append({"concurrency": concurrency, "records": summary["records"], "translated": summary["translated"],
                     "seconds": round(elapsed, 3), "records_per_second": round(summary["records"] / elapsed, 2)})
    base = rows[0]["records_per_second"]
    for row in rows:
        row["speedup_vs_sequential"] = round(row["records_per_second"] / base, 2)
    return {"benchmark": "translate_concurrency", "latency_s": latency_s, "records": records, "results": rows}
