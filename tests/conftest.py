"""Shared fixtures: a tiny real Qwen2 model (random weights, real Qwen tokenizer), real data and the toy RL task's
policy and problems (plain helpers: tests/helpers.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "examples" / "data" / "medical_o1_demo.json"
# The vLLM release the GPU image locks: the `gpu` extra's pin, which the start-up error tells users to install.
GPU_VLLM_PIN = next(
    r
    for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    if r.startswith("vllm==")
)
TINY_RECIPE = REPO / "recipes" / "sft-tiny-cpu.yaml"


# Test tiers (pyproject.toml's markers): what a test needs. A test with none of them is a unit test.
TIERS = ("multiprocess", "e2e", "real_model", "image", "bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def demo_rows() -> list[dict]:
    return json.loads(DEMO_DATA.read_text())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from medo1.models import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


# The toy RL task (tests/test_rl.py's docstring): every problem's reference answer is "yes".
QUESTION = "Case {i}: is the finding benign? Reply yes or no."


@pytest.fixture(scope="session")
def toy_policy(tiny_model, tmp_path_factory):
    from medo1.config import load_config
    from medo1.sft.trainer import SFTConfig, run_sft

    tmp = tmp_path_factory.mktemp("toy-sft")
    rows = [
        {"Question": QUESTION.format(i=i), "Complex_CoT": "I check the case.", "Response": "yes" if i % 2 else "no"}
        for i in range(32)
    ]
    (tmp / "sft.json").write_text(json.dumps(rows))
    overrides = {
        "model.name_or_path": tiny_model,
        "data.path": tmp / "sft.json",
        "data.max_length": 128,
        "data.limit": None,
        "output.dir": tmp / "run",
        "train.max_steps": 40,
        "train.learning_rate": 1e-2,
        "train.lr_scheduler": "constant",
        "train.warmup_ratio": 0.0,
        "train.per_device_batch_size": 8,
        "train.gradient_accumulation_steps": 1,
        "output.save_steps": 1000,
    }
    config = load_config(SFTConfig, TINY_RECIPE, [f"{k}={'null' if v is None else v}" for k, v in overrides.items()])
    return run_sft(config).export_dir


@pytest.fixture(scope="session")
def toy_problems(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy-rl") / "problems.json"
    rows = [{"Open-ended Verifiable Question": QUESTION.format(i=i), "Ground-True Answer": "yes"} for i in range(32)]
    path.write_text(json.dumps(rows))
    return path


def write_short_rows(demo_rows: list[dict], path: Path, n: int, offset: int = 0) -> Path:
    """Real demo rows cut short (~100 tokens each) so CPU training steps take well under a second."""
    rows = [
        {
            "Question": row["Question"][:160],
            "Complex_CoT": row["Complex_CoT"][:240],
            "Response": row["Response"][:120],
        }
        for row in demo_rows[offset : offset + n]
    ]
    path.write_text(json.dumps(rows))
    return path


def sft_overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    """Overrides that turn the tiny CPU recipe into a fast test run."""
    values = {
        "model.name_or_path": model,
        "data.path": data,
        "data.max_length": 256,
        "output.dir": out,
        "output.logging_steps": 1,
        "train.per_device_batch_size": 2,
        "train.gradient_accumulation_steps": 1,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Runs the CLI in a fresh interpreter (as run_medo1's launcher) and prints whether torch got imported on the way.
NO_TORCH_LAUNCHER = [
    sys.executable,
    "-c",
    "import sys; from medo1.cli import main; rc = main(sys.argv[1:]); "
    "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(rc)",
]


def run_medo1(args: list[str], env: dict | None = None, timeout: int = 600, launcher: list[str] | None = None):
    cmd = (launcher or [sys.executable, "-m", "medo1"]) + [str(a) for a in args]
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def kill_after_checkpoint(args: list, checkpoint_dir: Path, timeout: float = 300) -> None:
    """Start `medo1 ARGS`, SIGKILL it as soon as `checkpoint_dir` is complete (a crash mid-run)."""
    from medo1.training.checkpoint import is_complete

    cmd = [sys.executable, "-m", "medo1"] + [str(a) for a in args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not is_complete(checkpoint_dir):
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline, f"no {checkpoint_dir} after {timeout} s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def signal_when(
    cmd: list, ready, signum: int, env: dict | None = None, timeout: float = 300
) -> tuple[int, object, str]:
    """Start CMD in a session of its own, send `signum` to that process only (as the kubelet sends SIGTERM to a
    container's first process) once `ready()` returns a value, and wait for it to exit.
    Returns the exit code, what `ready()` returned and the end of stderr."""
    proc = subprocess.Popen(
        [str(a) for a in cmd],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    try:
        while (seen := ready()) is None:
            assert proc.poll() is None, f"run ended before the signal: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, f"not ready after {timeout} s"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, seen, stderr[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def last_logged_step(path: Path, at_least: int, key: str | None = None) -> int | None:
    """The highest step in a metrics JSONL file once it reaches `at_least` (of entries with `key`, if given)."""
    if not path.exists():
        return None
    steps = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if key is None or key in entry:
            steps.append(entry["step"])
    return max(steps) if steps and max(steps) >= at_least else None
