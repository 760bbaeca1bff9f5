"""`make gpu-check` in its --dry-run form: every step on the CPU with tiny shapes, so the GPU script cannot rot.

The dry run also checks `medo1 plan`'s memory model against real runs here: for SFT full fine-tuning and LoRA, PPO
with its models, and PPO's ZeRO-3 over gloo with 2 processes, the predicted peak must be within 15% of the measured
one. Measured: the process's resident-set high-water mark, reset when the run starts (after its modules are imported),
minus the resident set at that moment, with glibc's mmap threshold fixed at 64 KiB so freed tensors leave the resident
set as they would leave torch's allocated figure on a GPU. It counts what the run allocates: weights, gradients,
optimizer state, activations, logits, the tokenizer (the plan counts it on the CPU), and the Python objects of the data
(which the plan does not count: its share of the 15%).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_check
from tests.conftest import REPO


def test_gpu_run_without_cuda_says_to_use_dry_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_check.run_check(dry_run=False)


def test_vllm_is_skipped_with_a_reason_on_the_cpu():
    assert gpu_check.vllm_unavailable(cuda=False) == "dry run on the CPU: vLLM needs a CUDA GPU"


@pytest.mark.e2e
def test_dry_run_runs_every_step_and_the_plan_predicts_measured_memory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--results", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    (path,) = tmp_path.glob("gpu_check-dry_run-*.json")
    record = json.loads(path.read_text())
    failed = {name: step.get("error") for name, step in record["steps"].items() if step["status"] != "ok"}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:])
    steps = record["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    contenders = steps["sft_benchmark"]["contenders"]
    assert contenders["medo1_padding_free"]["same_batches_as_trl_sft_defaults"]
    assert steps["varlen_equals_separate"]["equal"] and steps["varlen_equals_separate"]["attn_implementation"] == "sdpa"
    zero3 = steps["zero3_sft_step"]
    assert zero3["processes"] == 2 and "gloo" in zero3["why"] and len(zero3["peak_memory_mb_per_rank"]) == 2
    rollouts = steps["rollouts"]
    assert rollouts["vllm"] == "dry run on the CPU: vLLM needs a CUDA GPU"
    assert rollouts["generation"]["hf"]["tokens_per_second"] > 0
    assert all(speed > 0 for speed in rollouts["ppo"]["hf"]["generated_tokens_per_second"])
    evaluation = steps["eval_engines"]
    assert evaluation["vllm"] == "dry run on the CPU: vLLM needs a CUDA GPU" and list(evaluation["engines"]) == ["hf"]
    assert evaluation["engines"]["hf"]["generated_tokens"] > 0 and evaluation["engines"]["hf"]["tokens_per_second"] > 0
    memory = {entry["run"]: entry for entry in record["memory"]}
    assert set(memory) == {
        "sft full (1 process)",
        "sft lora (1 process)",
        "zero3 rl (2 processes)",
        "ppo hf (1 process)",
    }
    for run, entry in memory.items():
        assert abs(entry["predicted_mb"] - entry["measured_mb"]) <= 0.15 * entry["measured_mb"], (run, entry)
    assert "predicted MB" in done.stdout and "measured MB" in done.stdout
