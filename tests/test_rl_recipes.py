"""The 7B PPO and GRPO recipes sample with colocated vLLM by default, sized for 8x H100 next to ZeRO-3
training, and `engine: hf` is a one-line switch; both settings validate. Without vLLM, `medo1 rl` on the
default recipe stops at start-up with the install command."""

from __future__ import annotations

import importlib.util

import pytest

from medo1.config import load_config
from medo1.rl.config import RLConfig
from tests.conftest import DEMO_DATA, GPU_VLLM_PIN, REPO, run_medo1

SEVEN_B = [REPO / "recipes" / "rl-ppo-qwen2.5-7b-8xh100.yaml", REPO / "recipes" / "rl-grpo-qwen2.5-7b-8xh100.yaml"]
H100_GIB = 79.6
KV_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2  # Qwen2.5-7B: layers x (K, V) x KV heads x head dim x bf16
WEIGHTS_GIB = 7.62e9 * 2 / 2**30
# What stays on each GPU while vLLM samples, as the recipes' comments count it (ZeRO-3 states, verifier,
# context and slack).
HELD_GIB = {"ppo": 46.5, "grpo": 29.5}


@pytest.mark.parametrize("recipe", SEVEN_B, ids=lambda p: p.name)
def test_7b_recipes_default_to_colocated_vllm(recipe):
    cfg = load_config(RLConfig, recipe)
    assert cfg.sampling.engine == "vllm"
    vllm = cfg.sampling.vllm
    assert vllm.sleep and vllm.tensor_parallel_size == 1
    budget_gib = vllm.gpu_memory_utilization * H100_GIB
    # Room for the weights, ~2 GiB of activations and graphs, and twice the KV cache of one rank's whole rollout.
    rollout_tokens = (
        cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps * (cfg.sampling.response_length + 300)
    )
    assert budget_gib - WEIGHTS_GIB - 2 > 2 * rollout_tokens * KV_BYTES_PER_TOKEN / 2**30
    assert HELD_GIB[cfg.algo] + budget_gib <= 0.9 * H100_GIB  # 10% of the GPU left free at the peak
    assert f"gpu_memory_utilization {vllm.gpu_memory_utilization}" in recipe.read_text()


@pytest.mark.parametrize("recipe", SEVEN_B, ids=lambda p: p.name)
def test_engine_hf_is_a_one_line_switch(recipe, tmp_path):
    text = recipe.read_text()
    lines = text.splitlines(keepends=True)
    engine_lines = [i for i, line in enumerate(lines) if line.strip().startswith("engine: vllm")]
    assert len(engine_lines) == 1
    lines[engine_lines[0]] = lines[engine_lines[0]].replace("engine: vllm", "engine: hf")
    switched = tmp_path / recipe.name
    switched.write_text("".join(lines))
    by_file = load_config(RLConfig, switched)
    by_override = load_config(RLConfig, recipe, ["sampling.engine=hf"])
    assert by_file.sampling.engine == by_override.sampling.engine == "hf"
    assert by_file == by_override
    default = load_config(RLConfig, recipe)
    assert by_file.model_copy(update={"sampling": default.sampling}) == default  # nothing else changed


@pytest.mark.multiprocess  # two `medo1 rl` processes
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
@pytest.mark.parametrize("recipe", SEVEN_B, ids=lambda p: p.name)
def test_default_7b_recipe_without_vllm_stops_at_startup_with_the_install_command(recipe, tmp_path):
    # The recipe's pod paths (/checkpoints, /data, /models) do not exist here; stand-ins get past the config's
    # path checks to the engine check, which comes before any model loads.
    models = {name: tmp_path / name for name in ("policy", "verifier")}
    for folder in models.values():
        folder.mkdir()
    stand_ins = [f"model.name_or_path={models['policy']}", f"data.path={DEMO_DATA}"]
    if load_config(RLConfig, recipe).reward.kind == "verifier":
        stand_ins.append(f"reward.model={models['verifier']}")
    done = run_medo1(
        [
            "rl",
            "--config",
            recipe,
            "--output-dir",
            tmp_path / "run",
            *(arg for value in stand_ins for arg in ("--set", value)),
        ]
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "sampling.engine=vllm needs vLLM" in done.stderr and f"pip install '{GPU_VLLM_PIN}'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
