"""Crash and resume, and the pod command under torchrun with a PyTorchJob's environment (gloo, 2 CPUs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medo1.training import checkpoint
from tests.conftest import (
    TINY_RECIPE,
    free_port,
    kill_after_checkpoint,
    run_medo1,
    sft_overrides,
    write_short_rows,
)

pytestmark = pytest.mark.multiprocess

MAX_STEPS = 14


def read_trace(path: Path) -> list[tuple[int, str]]:
    return [(e["step"], e["fingerprint"]) for e in map(json.loads, path.read_text().splitlines())]


def sft_args(tiny_model, data, out) -> list[str]:
    overrides = sft_overrides(
        tiny_model,
        data,
        out,
        **{"train.max_steps": MAX_STEPS, "output.save_steps": 2, "output.keep": 2, "output.batch_trace": True},
    )
    return ["sft", "--config", TINY_RECIPE, "--resume", "auto"] + [a for o in overrides for a in ("--set", o)]


def test_kill_then_resume_auto_finishes_like_an_uninterrupted_run(tiny_model, demo_rows, tmp_path):
    # 32 rows, 2 per step: 16 steps per epoch, so within MAX_STEPS no batch may legitimately repeat.
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 32)
    reference = tmp_path / "reference"
    done = run_medo1(sft_args(tiny_model, data, reference))
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = tmp_path / "crashed"
    kill_after_checkpoint(sft_args(tiny_model, data, crashed), crashed / "checkpoint-4")
    resumed_from = checkpoint.latest_complete(crashed)
    k = int(resumed_from.name.split("-")[1])
    assert 4 <= k < MAX_STEPS
    seen_before_kill = read_trace(crashed / "batch-trace-rank0.jsonl")

    # A checkpoint half-written at the moment of a crash: newest by number, no completion marker.
    half = crashed / "checkpoint-99"
    half.mkdir()
    (half / "trainer_state.json").write_text('{"global_step": 99}')
    (half / "model.safetensors").write_bytes(b"\x00" * 100)

    (crashed / "batch-trace-rank0.jsonl").rename(crashed / "trace-before-kill.jsonl")
    again = run_medo1(sft_args(tiny_model, data, crashed))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {resumed_from}" in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["final_step"] == MAX_STEPS
    assert not half.exists() and list(crashed.glob("checkpoint-99.incomplete-*"))

    # The batches that count: those of steps up to the checkpoint, then the resumed run's.
    history = [entry for entry in seen_before_kill if entry[0] <= k] + read_trace(crashed / "batch-trace-rank0.jsonl")
    expected = read_trace(reference / "batch-trace-rank0.jsonl")
    assert [step for step, _ in history] == list(range(1, MAX_STEPS + 1))
    assert history == expected
    assert len({fp for _, fp in history}) == MAX_STEPS  # no batch seen twice
    # Same data order and restored RNG/optimizer state: the same final weights.
    final = load_file(crashed / "export" / "model.safetensors")
    ref = load_file(reference / "export" / "model.safetensors")
    assert all(torch.allclose(final[k_], ref[k_], atol=1e-5) for k_ in ref)
    # Retention: only the newest `keep` complete checkpoints remain.
    assert [s for s, _ in checkpoint.list_checkpoints(crashed)] == [MAX_STEPS - 2, MAX_STEPS]


def test_torchrun_with_pytorchjob_environment_writes_one_checkpoint(tiny_model, demo_rows, tmp_path):
    """What the operator injects into a 1-pod PyTorchJob with nprocPerNode 2; torchrun reads PET_*."""
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 16)
    out = tmp_path / "dist"
    port = str(free_port())
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "PET_MASTER_PORT": port,
        "WORLD_SIZE": "2",
        "RANK": "0",
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PYTHONUNBUFFERED": "1",
    }
    overrides = sft_overrides(
        tiny_model, data, out, **{"train.max_steps": 3, "output.save_steps": 100, "output.batch_trace": True}
    )
    args = ["sft", "--config", TINY_RECIPE, "--resume", "auto"] + [a for o in overrides for a in ("--set", o)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "-m", "medo1"]
    done = run_medo1(args, env=env, launcher=torchrun)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoints = checkpoint.list_checkpoints(out)
    assert [step for step, _ in checkpoints] == [3]
    marker = json.loads((checkpoints[0][1] / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == 2
    rank0, rank1 = read_trace(out / "batch-trace-rank0.jsonl"), read_trace(out / "batch-trace-rank1.jsonl")
    assert len(rank0) == len(rank1) == 3
    assert all(a != b for (_, a), (_, b) in zip(rank0, rank1))  # each rank trains on its own shard
    assert (out / "export" / "model.safetensors").is_file()


def sft_losses(out: Path) -> list[tuple[int, float]]:
    return [
        (e["step"], e["loss"]) for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e
    ]


@pytest.mark.parametrize("distributed", ["fsdp", "deepspeed_zero3"])
def test_sharded_sft_on_two_processes_matches_one_process(tiny_model, demo_rows, tmp_path, distributed):
    """The 7B recipes' ZeRO-3 (and FSDP) SFT: 2 gloo processes of 2 rows each train like 1 process of 4 rows.
    ZeRO-3 partitions the model at load time, so DeepSpeed's communicator must be up before the model loads.
    Both step torch's fused AdamW (medo1.training.arguments.TRAINER_OPTIMIZER): DeepSpeed builds no optimizer op
    (the image compiles none) in torch's extension folder. (On the CPU it builds its shared-memory collective,
    deepspeed_shm_comm, where a C++ compiler is found; its CUDA accelerator has none.)"""
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 8)
    extensions = tmp_path / "torch-extensions"

    def run(out: Path, launcher: list[str] | None, **settings) -> list[tuple[int, float]]:
        overrides = sft_overrides(
            tiny_model,
            data,
            out,
            **{"train.max_steps": 2, "output.save_steps": 100, "output.export": "false", **settings},
        )
        done = run_medo1(
            ["sft", "--config", TINY_RECIPE] + [a for o in overrides for a in ("--set", o)],
            env={"PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(extensions)},
            launcher=launcher,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return sft_losses(out)

    single = run(tmp_path / "single", None, **{"train.per_device_batch_size": 4})
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "medo1",
    ]
    sharded = run(
        tmp_path / distributed, torchrun, **{"train.per_device_batch_size": 2, "train.distributed": distributed}
    )
    assert [step for step, _ in sharded] == [step for step, _ in single] == [1, 2]
    assert [loss for _, loss in sharded] == pytest.approx([loss for _, loss in single], rel=1e-5)
    built = [path.name for path in extensions.iterdir()] if extensions.exists() else []
    assert not [name for name in built if "adam" in name], built
