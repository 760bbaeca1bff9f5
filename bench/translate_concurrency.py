"""Translation throughput: concurrent requests against sequential ones, same records, same server;
and how fast the translation checks run.

The server is the local OpenAI-compatible stand-in from the tests with a fixed per-request latency,
standing in for a paid API whose latency, not its compute, bounds a translation run.

`measure_checks`: medo1.data.translation_checks on the demo rows' three medical_o1 fields as the
stand-in answers them in each of its languages with that language's number conventions: records
checked per second (numbers read with Babel, the language identified with lingua), after the
one-time load of the language models, which is timed apart.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from babel import Locale

from bench.common import measuring
from medo1.data.translate import TranslateConfig, run_translate
from medo1.data.translation_checks import TranslationChecks, detector
from pipelines.openai_standin import PHRASEBOOKS, StandIn, fake_translate

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
                    input=str(DEMO),
                    output=str(Path(tmp) / "out.jsonl"),
                    format="verifiable",
                    target_language="Japanese",
                    base_url=server.base_url,
                    concurrency=concurrency,
                    limit=records,
                )
                start = time.perf_counter()
                with measuring(f"{records} records at concurrency {concurrency}"):
                    summary = run_translate(config, progress=False)
                elapsed = time.perf_counter() - start
        finally:
            server.stop()
        rows.append(
            {
                "concurrency": concurrency,
                "records": summary["records"],
                "translated": summary["translated"],
                "seconds": round(elapsed, 3),
                "records_per_second": round(summary["records"] / elapsed, 2),
            }
        )
    base = rows[0]["records_per_second"]
    for row in rows:
        row["speedup_vs_sequential"] = round(row["records_per_second"] / base, 2)
    return {
        "benchmark": "translate_concurrency",
        "latency_s": latency_s,
        "records": records,
        "results": rows,
        "checks": measure_checks(),
    }


def measure_checks(records: int | None = None, languages: tuple[str, ...] = tuple(PHRASEBOOKS)) -> dict:
    """Checks per second on the first `records` demo rows (all by default), per stand-in language."""
    fields = ("Question", "Complex_CoT", "Response")
    payloads = [{f: row[f] for f in fields} for row in json.loads(DEMO.read_text(encoding="utf-8"))[:records]]
    start = time.perf_counter()
    detector().detect_language_of("load the language models")
    load_s = time.perf_counter() - start
    rows = []
    for code in languages:
        checks = TranslationChecks(Locale.parse(code).english_name)
        answers = [fake_translate(payload, code, locale_numbers=True) for payload in payloads]
        start = time.perf_counter()
        rejected = sum(bool(checks.problems(payload, answer)) for payload, answer in zip(payloads, answers))
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "language": checks.name,
                "records": len(payloads),
                "rejected": rejected,
                "seconds": round(elapsed, 3),
                "records_per_second": round(len(payloads) / elapsed, 1),
                "characters_per_second": round(sum(len(json.dumps(a, ensure_ascii=False)) for a in answers) / elapsed),
            }
        )
    return {"fields": list(fields), "language_models_load_s": round(load_s, 3), "results": rows}
