"""What the benchmarks share: the demo rows, child processes, and peak memory of a process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "data" / "medical_o1_demo.json"
SFT_FIELDS = ("Question", "Complex_CoT", "Response")
# --quick cuts rows to these many characters per field (~100 tokens a row), as the tests do.
SHORT_FIELD_CHARS = {"Question": 160, "Complex_CoT": 240, "Response": 120}


def demo_sft_rows(count: int, short: bool = False) -> list[dict]:
    """`count` medical-o1 SFT rows: the demo rows in file order, repeated as often as needed."""
    demo = json.loads(DEMO.read_text())
    if short:
        rows = [{key: row[key][:chars] for key, chars in SHORT_FIELD_CHARS.items()} for row in demo]
    else:
        rows = [{key: row[key] for key in SFT_FIELDS} for row in demo]
    return [rows[i % len(rows)] for i in range(count)]


def write_rows(rows: list[dict], path: Path) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


def progress(text: str) -> None:
    """One progress line on stderr (the figures go to stdout): a run that measures for minutes shows where it is."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


@contextmanager
def measuring(what: str) -> Iterator[None]:
    """Progress lines around one measurement: what starts, then how long it took."""
    progress(f"{what} ...")
    started = time.monotonic()
    yield
    progress(f"{what}: done in {time.monotonic() - started:.1f} s")


def run_child(module: str, spec: dict, work_dir: Path, *, hide_gpu: bool, timeout: int = 1800) -> dict:
    """Run `python -m MODULE SPEC RESULT` in a fresh process; return the JSON result it wrote.

    A fresh process per contender keeps peak memory figures independent and the device choice
    explicit: with `hide_gpu`, CUDA is invisible to the child even on a GPU machine.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work_dir / "spec.json", work_dir / "result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if hide_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", module, str(spec_path), str(result_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{module} {spec_path} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return json.loads(result_path.read_text())


def child_main(run) -> None:
    """Entry point of a child: `run(spec) -> dict` with the spec and result paths from argv."""
    spec_path, result_path = sys.argv[1:3]
    result = run(json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(result))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory of this process from `start()` on.

    GPU: `torch.cuda.max_memory_allocated`. CPU: the resident-set high-water mark, reset at `start()`
    through /proc/self/clear_refs (Linux), minus the resident set at `start()`; where the mark cannot
    be reset, the process's lifetime peak (`ru_maxrss`) is used instead and the method says so.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.method = ""
        self.start_mb = 0.0

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated"
            return
        self.start_mb = _status_kb("VmRSS") / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "peak RSS (high-water mark reset at start) minus RSS at start"
        except OSError:
            self.method = "peak RSS over the process lifetime (ru_maxrss) minus RSS at start"

    def result(self) -> dict:
        if self.cuda:
            import torch

            return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_method": self.method}
        if self.method.startswith("peak RSS (high"):
            peak = _status_kb("VmHWM") / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "peak_memory_mb": round(peak - self.start_mb, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_at_start_mb": round(self.start_mb, 1),
            "memory_method": self.method,
        }


def interleaved(contenders: dict, repetitions: int) -> dict[str, list]:
    """Run each contender `repetitions` times, interleaved (A B C A B C ...), so a load change on the machine
    falls on every contender alike instead of on whichever ran during it. `contenders` maps a name to
    `run(repetition) -> result`; the results come back per name, in repetition order."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    results: dict[str, list] = {name: [] for name in contenders}
    for repetition in range(repetitions):
        for name, run in contenders.items():
            with measuring(f"{name}, run {repetition + 1} of {repetitions}"):
                results[name].append(run(repetition))
    return results


def median_and_spread(values: list[float]) -> dict:
    """Median, the range (max - min) and the range relative to the median of repeated measurements."""
    import statistics

    median = statistics.median(values)
    spread = max(values) - min(values)
    return {
        "median": round(median, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "spread": round(spread, 4),
        "relative_spread": round(spread / median, 4) if median else None,
        "runs": len(values),
    }


def claim_check(claim: str, ratios: list[float]) -> dict:
    """A claimed ratio (e.g. medo1 tokens/s over the padded loop's) from repeated, paired runs: its median, its spread,
    and a warning when the spread is wider than the difference being claimed (|median - 1|): then the
    noise on this machine could have made the difference, and the figure should not be quoted."""
    figures = median_and_spread(ratios)
    difference = abs(figures["median"] - 1.0)
    figures["claim"] = claim
    figures["difference"] = round(difference, 4)
    figures["warning"] = None
    if len(ratios) < 3:
        figures["warning"] = f"{claim}: only {len(ratios)} run(s); at least 3 are needed to judge the spread"
    elif figures["spread"] > difference:
        figures["warning"] = (
            f"{claim}: spread over {len(ratios)} runs ({figures['min']}..{figures['max']}) is wider than "
            f"the difference claimed ({figures['median']} vs 1.0): noise could explain it"
        )
    return figures
