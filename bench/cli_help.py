"""`medo1 --help` and each subcommand's `--help`: wall time of a fresh process, as a user types it.

The CLI imports torch, transformers, trl and datasets only inside the commands that need them, so the help
of every command should come back in well under a second (issue 21 asks under 1 s); this records it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = [
    [],
    ["sft"],
    ["rl"],
    ["translate"],
    ["eval"],
    ["upload"],
    ["launch"],
    ["data", "validate"],
    ["config", "show"],
    ["plan"],
    ["doctor"],
    ["report"],
    ["model", "init-tiny"],
]


def seconds(command: list[str], repeats: int) -> float:
    """Median wall time of `python -m medo1 COMMAND --help` over `repeats` fresh processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medo1", *command, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(quick: bool) -> dict:
    repeats = 1 if quick else 3
    rows = [
        {"command": " ".join(["medo1", *command, "--help"]), "seconds": round(seconds(command, repeats), 3)}
        for command in COMMANDS
    ]
    return {"repeats": repeats, "results": rows, "slowest_s": max(row["seconds"] for row in rows)}


def summary(result: dict) -> list[str]:
    lines = [f"cli --help (median of {result['repeats']}, fresh process each): slowest {result['slowest_s']} s"]
    lines += [f"{row['seconds']:>8} s  {row['command']}" for row in result["results"]]
    return lines
