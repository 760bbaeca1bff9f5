"""`make bench`: run the benchmarks this machine can run, print a table, write one JSON per benchmark.

    python -m bench.run                  # everything this machine can run
    python -m bench.run --only sft,rl    # a subset (names: see BENCHMARKS)
    python -m bench.run --quick          # tiny step counts: checks the wiring, not the speed
    python -m bench.run --gpu            # the GPU SFT benchmark alone (Qwen2.5-0.5B shape, bf16)

Figures, never pass/fail: each benchmark writes bench/results/NAME-STAMP.json with the machine,
the versions, its configuration and its figures. The SFT contenders run interleaved, 3 times each
(`bench.common.interleaved`): figures are medians with their spread, and a claimed ratio whose spread
is wider than the difference it claims is printed with a warning (`bench.common.claim_check`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import cli_help, data, eval_sampling, rl, sft, translate_concurrency
from bench.common import cpu_model, measuring

RESULTS = Path(__file__).resolve().parent / "results"


def translate_summary(result: dict) -> list[str]:
    lines = [
        f"translate: {result['records']} records, stand-in latency {result['latency_s']} s per request",
        f"{'concurrency':>12} {'seconds':>9} {'records/s':>10} {'speedup':>8}",
    ]
    for row in result["results"]:
        lines.append(
            f"{row['concurrency']:>12} {row['seconds']:>9} {row['records_per_second']:>10} "
            f"{row['speedup_vs_sequential']:>7}x"
        )
    return lines


def translate_measure(quick: bool) -> dict:
    return translate_concurrency.measure(records=16, levels=(1, 4)) if quick else translate_concurrency.measure()


# name -> (measure(quick) -> dict, summary(result) -> lines, needs a GPU)
BENCHMARKS = {
    "translate_concurrency": (translate_measure, translate_summary, False),
    "data": (data.measure, data.summary, False),
    "sft": (sft.measure, sft.summary, False),
    "sft_gpu": (lambda quick: sft.measure(quick, gpu=True), sft.summary, True),
    "rl": (rl.measure, rl.summary, False),
    "eval_sampling": (eval_sampling.measure, eval_sampling.summary, False),
    "cli_help": (cli_help.measure, cli_help.summary, False),
}


def environment() -> dict:
    import transformers
    import trl

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help=f"run only these benchmarks: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny step counts (checks the wiring, not the speed)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU SFT benchmark alone; fails without CUDA")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON files go")
    args = parser.parse_args(argv)
    args.only = [name for item in args.only for name in item.split(",") if name]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA device, and torch sees none here")
        args.only = ["sft_gpu"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    env = environment()
    args.results.mkdir(parents=True, exist_ok=True)
    for name, (measure, summary, needs_gpu) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        if needs_gpu and not torch.cuda.is_available():
            print(f"{name}: skipped, no CUDA device here (on a GPU machine: .venv/bin/python -m bench.run --gpu)")
            print("  GPU targets (SFT >= 2x the padded loop's tokens/s, MFU >= 40% on H100): not measured\n")
            continue
        with measuring(name):
            result = measure(args.quick)
        record = {"benchmark": name, "date": stamp, "quick": args.quick, "environment": env, **result}
        path = args.results / f"{name}-{stamp}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print("\n".join(summary(result)))
        print(f"wrote {os.path.relpath(path)}\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
