"""SIGTERM mid-run (node drain, Kueue preemption, `kubectl delete`): the run finishes its step, leaves a complete
checkpoint and exits restartable; `--resume auto` then ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medo1.training import checkpoint
from medo1.training.metrics import read_metrics
from medo1.training.preemption import PREEMPTED_EXIT_CODE
from tests.conftest import (
    TINY_RECIPE,
    free_port,
    last_logged_step,
    run_medo1,
    sft_overrides,
    signal_when,
    write_short_rows,
)
from tests.helpers import as_cli, rl_overrides


def only_checkpoint(out: Path) -> int:
    found = checkpoint.list_checkpoints(out)
    assert len(found) == 1 and checkpoint.is_complete(found[0][1]), found
    return found[0][0]


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(torch.allclose(left[k], right[k], atol=1e-5) for k in right)


def test_first_sigterm_sets_the_flag_and_a_second_ends_the_process():
    script = textwrap.dedent("""
        import os, signal, sys, time
        from medo1.training import preemption
        with preemption.sigterm_stops_training():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print(preemption.stop_agreed(), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("still alive", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True"]
    assert done.returncode == -signal.SIGTERM  # died of the second signal, without a marker for what it wrote


def test_the_handler_is_removed_after_training():
    from medo1.training import preemption

    before = signal.getsignal(signal.SIGTERM)
    with preemption.sigterm_stops_training():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert not preemption.stop_agreed()


MAX_STEPS = 8


@pytest.mark.multiprocess
def test_sft_two_processes_stop_together_on_sigterm_and_resume_to_the_same_weights(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 32)

    def args(out: Path) -> list:
        overrides = sft_overrides(
            tiny_model,
            data,
            out,
            **{"train.max_steps": MAX_STEPS, "output.save_steps": 100, "output.batch_trace": True},
        )
        return ["sft", "--config", TINY_RECIPE, "--resume", "auto"] + [a for o in overrides for a in ("--set", o)]

    def env() -> dict:
        port = str(free_port())
        return {
            "MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "PET_MASTER_PORT": port,
            "PET_NNODES": "1",
            "PET_NPROC_PER_NODE": "2",
            "PET_NODE_RANK": "0",
            "PYTHONUNBUFFERED": "1",
        }

    torchrun = [sys.executable, "-m", "torch.distributed.run", "-m", "medo1"]
    reference = run_medo1(args(tmp_path / "reference"), env=env(), launcher=torchrun)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "preempted"
    trace = out / "batch-trace-rank0.jsonl"
    code, started, stderr = signal_when(torchrun + args(out), lambda: last_logged_step(trace, 3), signal.SIGTERM, env())
    assert code != 0, stderr  # torchrun ends non-zero when it was signalled: the pod is restarted, not Succeeded
    assert "stopped on SIGTERM" in stderr, stderr
    k = only_checkpoint(out)
    # The step under way when the signal came was finished and saved, on both ranks, and nothing after it.
    assert started <= k <= started + 1 and k < MAX_STEPS
    assert json.loads((out / f"checkpoint-{k}" / checkpoint.COMPLETE_MARKER).read_text())["world_size"] == 2
    for rank in (0, 1):
        assert last_logged_step(out / f"batch-trace-rank{rank}.jsonl", 0) == k
    assert not (out / "export").exists()

    resumed = run_medo1(args(out), env=env(), launcher=torchrun)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{k}'}" in resumed.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(out)][-1] == MAX_STEPS
    assert same_weights(out / "export", tmp_path / "reference" / "export")


@pytest.mark.multiprocess
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_sigterm_checkpoint_then_resume_gives_the_same_weights(toy_policy, toy_problems, tmp_path, algo):
    extra = {"train.total_episodes": 48}  # 8 episodes per update or step: 6 of them
    if algo == "grpo":
        extra["grpo.num_generations"] = 8

    def args(out: Path) -> list:
        return as_cli(rl_overrides(toy_policy, toy_problems, out, algo, **extra))

    reference = run_medo1(args(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "preempted"
    # PPO logs each update once it is done; GRPO each optimizer step (entries with "reward").
    key = "reward_mean" if algo == "ppo" else "reward"
    medo1 = [sys.executable, "-m", "medo1"]
    code, done_steps, stderr = signal_when(
        medo1 + args(out), lambda: last_logged_step(out / "metrics.jsonl", 2, key), signal.SIGTERM
    )
    assert code == PREEMPTED_EXIT_CODE, stderr
    k = only_checkpoint(out)
    assert done_steps <= k <= done_steps + 1 and k < 6  # no older than the step under way at the signal
    assert not (out / "export").exists()

    resumed = run_medo1(args(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{k}'}" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["final_step"] == 6
    steps = [m["step"] for m in read_metrics(out / "metrics.jsonl") if key in m]
    assert steps == list(range(1, 7))  # the stopped run's entries kept, none twice
    assert same_weights(out / "export", tmp_path / "reference" / "export")
