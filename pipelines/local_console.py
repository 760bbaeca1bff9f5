"""What a person sees while `python -m pipelines.run_local` (`make demo`) runs: a few lines per pipeline step (start,
progress, result, where its artifacts are), while everything the KFP local runner prints (each executor's input
and output JSON, the stages' full logs) goes to the run folder's logs/: pipeline.log, and one log per step.

The local runner writes its own lines and each step's output to this process's stdout (kfp/local/
task_dispatcher.py logs "Executing task 'X'" and "Task 'X' finished with status S" through a handler on
sys.stdout, and subprocess_task_handler.py prints the step's lines); `StepConsole` stands in for stdout and
stderr while the pipeline runs and reads those lines. A step's result comes from its executor_output.json
(output parameters, and the Metrics the UI shows); training progress from the stage's metrics.jsonl.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TASK_STARTED = re.compile(r"Executing task '([^']+)'")
TASK_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# Lines of a step worth a person's attention as it runs (the rest stay in the logs).
PROGRESS = (
    re.compile(r"translate: \d+/\d+ records, \d+ failed"),
    re.compile(r"\beval: \w+ \(.*\)$"),
    re.compile(r"dry run: \d+ files .*"),
    re.compile(r"plan: stage .*"),
)
WARNING = re.compile(r"(?:^WARNING: |\bWARNING medo1\.[\w.]+: |\[KFP Executor [^\]]*WARNING\]: )(.*)")
# A progress line of the same step at most this often (the logs keep them all).
PROGRESS_EVERY_S = 10.0
TAIL_LINES = 20
# Steps whose stage writes metrics.jsonl into the run folder's subfolder of the same name.
TRAINING_STEPS = ("sft", "rl")
STEP_LABEL_WIDTH = 10


def display_names(pipeline_spec: dict[str, Any]) -> dict[str, str]:
    """Task name (as the local runner calls it: train, train-2) -> the display name the KFP UI shows (sft, rl)."""
    names: dict[str, str] = {}

    def walk(dag: dict[str, Any]) -> None:
        for task, spec in dag.get("tasks", {}).items():
            component = pipeline_spec["components"][spec["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                names[task] = spec.get("taskInfo", {}).get("name", task)

    walk(pipeline_spec["root"]["dag"])
    return names


def training_progress(row: dict[str, Any]) -> str | None:
    """One metrics.jsonl row as a progress line, or None for the end-of-run summary row."""
    if "step" not in row or "train_runtime" in row:
        return None
    parts = [
        ("loss", "loss {:.3f}", 1),
        ("mean_token_accuracy", "token accuracy {:.1f}%", 100),
        ("reward_mean", "reward {:.3f}", 1),
        ("reward", "reward {:.3f}", 1),
        ("eval_reward_mean", "held-out reward {:.3f}", 1),
        ("eval_reward", "held-out reward {:.3f}", 1),
        ("format_ok_rate", "format ok {:.0f}%", 100),
        ("kl", "kl {:.4f}", 1),
    ]
    shown = [text.format(row[key] * scale) for key, text, scale in parts if isinstance(row.get(key), (int, float))]
    return f"step {row['step']}: " + ", ".join(shown) if shown else None


def _figure(key: str, value: float) -> str:
    if key in ("token_accuracy", "format_ok", "correct"):
        return f"{value:.1%}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def step_result(label: str, output: dict[str, Any]) -> str:
    """A step's result in one line, from its executor_output.json."""
    params = output.get("parameterValues", {})
    metrics: dict[str, float] = {}
    for artifacts in output.get("artifacts", {}).values():
        for artifact in artifacts.get("artifacts", []):
            if artifact.get("name") == "metrics":
                metrics.update(artifact.get("metadata", {}))
    if label in TRAINING_STEPS:
        shown = [
            ("loss", "loss {}"),
            ("token_accuracy", "token accuracy {}"),
            ("reward", "reward {}"),
            ("format_ok", "format ok {}"),
            ("kl", "kl {}"),
            ("tokens_per_second", "{} tokens/s"),
            ("generated_tokens_per_second", "{} generated tokens/s"),
            ("train_time_s", "{} s training"),
        ]
        return ", ".join(text.format(_figure(key, metrics[key])) for key, text in shown if key in metrics)
    if label == "translate":
        return "; ".join(
            f"{name.upper()} set {metrics[f'{name}_kept']:.0f} kept, {metrics[f'{name}_rejected']:.0f} rejected, "
            f"{metrics[f'{name}_validation_retries']:.0f} retried"
            for name in ("sft", "rl")
            if f"{name}_kept" in metrics
        )
    if label == "plan":
        memory = ", ".join(
            f"{key.removesuffix('_memory_gib')} {value:.2f} GiB"
            for key, value in metrics.items()
            if key.endswith("_memory_gib")
        )
        hours = f"; {metrics['gpu_hours']} GPU-hours" if metrics.get("gpu_hours") else ""
        return f"{params.get('Output', '')}{hours}; memory per GPU or process: {memory}"
    if label == "eval" and metrics:
        models = ", ".join(
            f"{key.split('_', 1)[0]} {value:.1%}"
            for key, value in metrics.items()
            if key.endswith("_accuracy") and key != "average_accuracy"
        )
        return f"average accuracy {metrics.get('average_accuracy', 0.0):.1%} ({models})"
    if "path" in params:
        return str(params["path"])
    values = [str(value) for value in params.values()]
    return "; ".join(values) if values else "done"


class StepConsole(io.TextIOBase):
    """Stands in for stdout and stderr while the pipeline runs (see the module's docstring)."""

    def __init__(self, console: TextIO, run_dir: Path, kfp_root: Path, names: dict[str, str]):
        self.console, self.run_dir, self.kfp_root, self.names = console, run_dir, kfp_root, names
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pipeline_log = (self.logs / "pipeline.log").open("a", encoding="utf-8", buffering=1)  # tail -f works
        self.pipeline_log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} python -m pipelines.run_local\n")
        self.lock = threading.RLock()
        """Held while a line is read; the progress thread never takes it, so stopping that thread under it is safe."""
        self.console_lock = threading.Lock()
        self.partial = ""
        self.task: str | None = None
        self.step_log: TextIO | None = None
        self.started = 0.0
        self.last_progress = 0.0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.ran: list[str] = []
        self.warned: set[str] = set()
        self.failure = ""
        self.watcher: threading.Thread | None = None
        self.watching = threading.Event()

    # ---- the file interface the runner writes to -------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.partial += text
            *lines, self.partial = re.split(r"\r\n|\n|\r", self.partial)
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.pipeline_log.flush()
            if self.step_log:
                self.step_log.flush()

    def close_logs(self) -> None:
        with self.lock:
            if self.partial:
                self._line(self.partial)
                self.partial = ""
            self._stop_watching()
            if self.step_log:
                self.step_log.close()
                self.step_log = None
            self.pipeline_log.close()

    # ---- what a person sees ----------------------------------------------------------------------------------

    def say(self, label: str, message: str) -> None:
        with self.console_lock:
            self.console.write(f"{time.strftime('%H:%M:%S')} {label:<{STEP_LABEL_WIDTH}} {message}\n")
            self.console.flush()

    def log_path(self, label: str) -> Path:
        return self.logs / f"{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.log"

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw)
        self.pipeline_log.write(line + "\n")
        if self.step_log:
            self.step_log.write(line + "\n")
        if match := TASK_STARTED.search(line):
            self._start(match[1])
            return
        if match := TASK_FINISHED.search(line):
            self._finish(match[1], match[2])
            return
        if self.task is None or not line.strip():
            return
        text = line.strip()
        self.tail.append(text)
        label = self.label
        if match := WARNING.search(text):
            message = match[1].strip()[:300]
            kind = re.sub(r"\d+(\.\d+)?", "#", message)  # retries of one failure differ only in their numbers
            if kind not in self.warned:
                self.warned.add(kind)
                self.say(label, f"warning: {message}")
            return
        for pattern in PROGRESS:
            if found := pattern.search(text):
                now = time.monotonic()
                final = re.match(r"translate: (\d+)/\1 ", found[0]) is not None
                if final or now - self.last_progress >= PROGRESS_EVERY_S:
                    self.last_progress = now
                    self.say(label, found[0].removeprefix(f"{label}: "))
                return

    @property
    def label(self) -> str:
        return self.names.get(self.task or "", self.task or "")

    def _start(self, task: str) -> None:
        self._stop_watching()
        if self.step_log:
            self.step_log.close()
        self.task, self.started, self.last_progress = task, time.monotonic(), 0.0
        self.tail.clear()
        self.ran.append(task)
        attempt = self.ran.count(task)
        label = self.label
        self.step_log = self.log_path(label).open("a", encoding="utf-8", buffering=1)
        self.step_log.write(
            f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} step {label} (task {task}), attempt {attempt}\n"
        )
        # The runner retries a failed step as its retry policy allows; a training step resumes from its checkpoint.
        self.say(label, "started" if attempt == 1 else f"started again (attempt {attempt}: the step's retry policy)")
        if label in TRAINING_STEPS:
            self._watch(self.run_dir / label / "metrics.jsonl", label)

    def _finish(self, task: str, status: str) -> None:
        self._stop_watching()
        label, seconds = self.names.get(task, task), time.monotonic() - self.started
        if status != "SUCCESS":  # the runner may go on to raise for the pipeline as a whole
            self.failure = self.failed(f"status {status}")
            return
        output_dir = self.outputs_dir(task)
        output = json.loads((output_dir / "executor_output.json").read_text()) if output_dir else {}
        self.say(label, f"done in {seconds:.0f} s: {step_result(label, output)}")
        # An artifact is a file named after it; a Metrics artifact's figures are in executor_output.json.
        artifacts = sorted(output.get("artifacts", {}))
        where = [f"{self._short(output_dir)}/ ({', '.join(artifacts)})"] if artifacts else []
        if label in TRAINING_STEPS and (self.run_dir / label / "report.html").is_file():
            where.append(f"{label}/report.html")
        if where:
            self.say("", "artifacts: " + "; ".join(where))
        self.task = None

    def failed(self, error: str) -> str:
        """The current step failed (the runner raised `error`): the end of its log on the console. Returns one line
        saying which step failed and where its whole log is."""
        error = ANSI.sub("", error)
        with self.lock:
            self._stop_watching()
            if self.task is None:
                return self.failure or f"{error}; logs in {self.logs}"
            label, log = self.label, self.log_path(self.label)
            self.say(label, f"FAILED after {time.monotonic() - self.started:.0f} s; the end of its log:")
            with self.console_lock:
                self.console.write("".join(f"    {line[:300]}\n" for line in self.tail))
            self.task = None
            return f"step {label} failed; its full log: {log}"

    def outputs_dir(self, task: str) -> Path | None:
        """This run's KFP outputs folder of `task` (kfp_root/<pipeline run>/<task>/), the newest if resumed."""
        found = sorted(self.kfp_root.glob(f"*/{task}/executor_output.json"), key=lambda p: p.stat().st_mtime)
        return found[-1].parent if found else None

    def _short(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir)) if path.is_relative_to(self.run_dir) else str(path)

    # ---- training progress from metrics.jsonl ----------------------------------------------------------------

    def _watch(self, metrics: Path, label: str) -> None:
        offset = metrics.stat().st_size if metrics.exists() else 0  # a resumed run's earlier rows are not news
        self.watching.clear()

        def follow() -> None:
            nonlocal offset
            last = 0.0
            while not self.watching.wait(2.0):
                if not metrics.exists() or metrics.stat().st_size < offset:
                    offset = 0 if metrics.exists() else offset  # rewritten (a resume trims it)
                    continue
                with metrics.open(encoding="utf-8") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                complete, _, _ = chunk.rpartition("\n")
                offset += len(complete.encode("utf-8")) + (1 if complete else 0)
                rows = []
                for text in complete.splitlines():
                    try:
                        rows.append(json.loads(text))
                    except json.JSONDecodeError:
                        continue
                lines = [progress for row in rows if isinstance(row, dict) and (progress := training_progress(row))]
                if lines and time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    self.say(label, lines[-1])

        self.watcher = threading.Thread(target=follow, name=f"{label}-progress", daemon=True)
        self.watcher.start()

    def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watching.set()
            self.watcher.join(timeout=5)
            self.watcher = None
