"""`medo1 plan`: the memory model against DeepSpeed's estimator and the published runs, and every shipped recipe and profile.

The CPU measurements that check the memory model against real training steps are in tests/test_gpu_check.py
(they run `bench.gpu_check --dry-run`, which compares the plan's predictions with the measured peaks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medo1.cli import main
from medo1.config import ConfigError
from medo1.plan import memory as mem
from medo1.plan import plan_pipeline, plan_recipe
from medo1.plan.shapes import KNOWN_ARCHITECTURES, resolve_shape
from medo1.plan.stages import model_states_by_strategy

REPO = Path(__file__).resolve().parent.parent
SFT_7B = REPO / "recipes" / "sft-qwen2.5-7b-8xh100.yaml"
PPO_7B = REPO / "recipes" / "rl-ppo-qwen2.5-7b-8xh100.yaml"
GRPO_7B = REPO / "recipes" / "rl-grpo-qwen2.5-7b-8xh100.yaml"
H100_NODE = {"nodes": 1, "gpus_per_node": 8, "gpu": "h100-80gb"}


def test_known_architectures_have_their_published_parameter_counts():
    # Model cards: Qwen2.5-0.5B 0.49B, 1.5B 1.54B, 3B 3.09B, 7B 7.61B, 72B 72.7B; Llama 3.1 8.03B, 70.55B; SmolLM2 135M.
    published = {
        "SmolLM2-135M": 0.13,
        "Qwen2.5-0.5B": 0.49,
        "Qwen2.5-1.5B": 1.54,
        "Qwen2.5-3B": 3.09,
        "Qwen2.5-7B": 7.61,
        "Qwen2.5-72B": 72.7,
        "Llama-3.1-8B": 8.03,
        "Llama-3.1-70B": 70.55,
    }
    for name, billions in published.items():
        assert KNOWN_ARCHITECTURES[name].parameters / 1e9 == pytest.approx(billions, abs=0.01), name
    assert resolve_shape("Qwen/Qwen2.5-7B-Instruct").name == "Qwen2.5-7B"
    assert resolve_shape("/models/medical_o1_verifier_3B").name == "Qwen2.5-3B"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="'org/mystery-13b'.*pass --architecture"):
        resolve_shape("org/mystery-13b")


def test_config_json_of_a_local_model_is_read(tiny_model):
    shape = resolve_shape(str(tiny_model))
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert shape.parameters == sum(p.numel() for p in model.parameters())  # tied embeddings counted once


@pytest.mark.parametrize("name", ["Qwen2.5-7B", "Llama-3.1-70B"])
@pytest.mark.parametrize("gpus", [8, 16])
def test_model_states_equal_deepspeeds_estimator(name, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = KNOWN_ARCHITECTURES[name]
    n, largest = shape.parameters, shape.largest_layer_parameters
    nodes, per_node = gpus // 8, 8

    def ours(strategy, **offload):
        return sum(
            mem.model_states(n, n, gpus, strategy, bf16=True, weight_bytes=2, largest_layer=largest, **offload).values()
        )

    _, zero3, _ = estimate_zero3_model_states_mem_needs(n, largest, per_node, nodes, cpu_offload=False)
    assert ours("zero3") == pytest.approx(zero3, abs=2)
    _, zero3_offload, _ = estimate_zero3_model_states_mem_needs(
        n, largest, per_node, nodes, cpu_offload=True, cpu_offload_params=False
    )
    assert ours("zero3", offload_optimizer=True) == pytest.approx(zero3_offload, abs=2)
    _, zero2 = estimate_zero2_model_states_mem_needs(n, per_node, nodes, cpu_offload=False)
    assert ours("zero2") == pytest.approx(zero2, abs=2)
    _, zero2_offload = estimate_zero2_model_states_mem_needs(n, per_node, nodes, cpu_offload=True)
    assert ours("zero2", offload_optimizer=True) == pytest.approx(zero2_offload, abs=2)
    # The plan's comparison table uses the same numbers.
    assert model_states_by_strategy(shape, gpus, bf16=True)["zero3"] == pytest.approx(zero3, abs=2)


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"])
def test_published_huatuogpt_o1_sft_fits(model):
    # HuatuoGPT-o1 7B / 8B SFT: 2 x 8192 tokens per GPU, ZeRO-3, bf16, 8x 80 GB (/work/shared/RECIPE.md).
    plan = plan_recipe(str(SFT_7B), overrides=[f"model.name_or_path={model}"], **H100_NODE)
    assert plan.micro_batch == 2 and "2 x 8192" in plan.breakdown.notes[0]
    assert plan.fits is True and plan.largest_micro_batch >= 2
    assert {"weights", "gradients", "optimizer", "gathered_layer"} <= plan.breakdown.resident.keys()
    assert {"activations", "lm_head"} <= plan.breakdown.phases["training"].keys()
    # Without activation checkpointing the same micro-batch does not fit: the plan says what to turn on.
    unchecked = plan_recipe(
        str(SFT_7B), overrides=[f"model.name_or_path={model}", "model.gradient_checkpointing=false"], **H100_NODE
    )
    assert unchecked.fits is False
    changes = [s["set"] for s in unchecked.suggestions]
    assert ["model.gradient_checkpointing=true"] in changes


def test_published_ppo_fits_with_its_four_models():
    # As published: policy, value and reference ZeRO-3 partitioned over 8 H100s, the 3B verifier whole on each,
    # per-device batch 1 x grad-accum 16, response length 1300, HF generation with the policy gathered.
    plan = plan_recipe(str(PPO_7B), architecture="Qwen2.5-7B", overrides=["sampling.engine=hf"], **H100_NODE)
    resident = plan.breakdown.resident
    assert {"policy optimizer", "value optimizer", "reference weights", "verifier weights (whole)"} <= resident.keys()
    assert resident["verifier weights (whole)"] == pytest.approx(2 * KNOWN_ARCHITECTURES["Qwen2.5-3B"].parameters)
    assert plan.breakdown.peak_phase == "rollout"
    assert plan.breakdown.phases["rollout"]["policy gathered for generation"] == pytest.approx(
        2 * plan.model.parameters
    )
    assert plan.fits is True
    assert plan.time["episodes"] == 20000 and plan.time["hours"] > 0
    # vLLM colocated takes its share of the GPU during rollouts instead of the gathered policy and KV cache.
    vllm = plan_recipe(
        str(PPO_7B),
        architecture="Qwen2.5-7B",
        overrides=["sampling.engine=vllm", "sampling.vllm.gpu_memory_utilization=0.3"],
        **H100_NODE,
    )
    rollout = vllm.breakdown.phases["rollout"]
    assert rollout["vLLM (gpu_memory_utilization)"] == pytest.approx(0.3 * 79.6 * mem.GIB)
    assert "KV cache" not in rollout and "policy gathered for generation" not in rollout
    assert vllm.fits is True
    awake = plan_recipe(
        str(PPO_7B),
        architecture="Qwen2.5-7B",
        overrides=["sampling.engine=vllm", "sampling.vllm.sleep=false", "sampling.vllm.gpu_memory_utilization=0.3"],
        **H100_NODE,
    )
    assert awake.total > vllm.total


def test_70b_full_fine_tune_on_one_node_does_not_fit_and_says_what_would():
    plan = plan_recipe(str(SFT_7B), overrides=["model.name_or_path=meta-llama/Llama-3.1-70B-Instruct"], **H100_NODE)
    assert plan.fits is False and plan.largest_micro_batch == 0
    changes = {suggestion["change"]: suggestion for suggestion in plan.suggestions}
    lora = next(s for change, s in changes.items() if change.startswith("LoRA"))
    assert "lora.enabled=true" in lora["set"] and lora["total"] <= plan.usable
    offload = next(s for change, s in changes.items() if "offloaded" in change)
    assert offload["host_memory_fits"] is False  # 16 bytes x 1.5 per parameter on the host: more than the node's 1000Gi
    nodes = next(s for s in plan.suggestions if "nodes" in s)
    assert nodes["nodes"] > 1
    # Each suggestion, applied, fits.
    assert (
        plan_recipe(
            str(SFT_7B), overrides=["model.name_or_path=meta-llama/Llama-3.1-70B-Instruct", *lora["set"]], **H100_NODE
        ).fits
        is True
    )
    assert (
        plan_recipe(
            str(SFT_7B),
            overrides=["model.name_or_path=meta-llama/Llama-3.1-70B-Instruct"],
            nodes=nodes["nodes"],
            gpus_per_node=8,
            gpu="h100-80gb",
        ).fits
        is True
    )


def test_every_shipped_training_recipe_plans(tiny_model):
    plans = {
        "sft-qwen2.5-7b-8xh100.yaml": plan_recipe(str(SFT_7B), **H100_NODE),
        "rl-ppo-qwen2.5-7b-8xh100.yaml": plan_recipe(str(PPO_7B), architecture="Qwen2.5-7B", **H100_NODE),
        "rl-grpo-qwen2.5-7b-8xh100.yaml": plan_recipe(str(GRPO_7B), architecture="Qwen2.5-7B", **H100_NODE),
        "eval-mcq.yaml": plan_recipe(
            str(REPO / "recipes" / "eval-mcq.yaml"), architecture="Qwen2.5-7B", nodes=1, gpus_per_node=1
        ),
        "sft-tiny-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "sft-tiny-cpu.yaml"),
            profile="cpu-smoke",
            overrides=[f"model.name_or_path={tiny_model}"],
        ),
        "rl-ppo-tiny-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"),
            profile="cpu-smoke",
            overrides=[f"model.name_or_path={tiny_model}"],
        ),
        # The imported model may not be under runs/ yet (`make demo` imports it): its shape is a known one.
        "sft-smollm2-demo-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"), profile="cpu-smoke", architecture="SmolLM2-135M"
        ),
        "eval-demo-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "eval-demo-cpu.yaml"), profile="cpu-smoke", overrides=[f"model={tiny_model}"]
        ),
        # The demo's RL and eval start from the SFT export, not made yet: sized here on the tiny model.
        "rl-ppo-smollm2-demo-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "rl-ppo-smollm2-demo-cpu.yaml"),
            profile="cpu-smoke",
            overrides=[f"model.name_or_path={tiny_model}"],
        ),
        "rl-grpo-smollm2-demo-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "rl-grpo-smollm2-demo-cpu.yaml"),
            profile="cpu-smoke",
            overrides=[f"model.name_or_path={tiny_model}"],
        ),
        "eval-smollm2-demo-cpu.yaml": plan_recipe(
            str(REPO / "recipes" / "eval-smollm2-demo-cpu.yaml"), profile="cpu-smoke", overrides=[f"model={tiny_model}"]
        ),
    }
    for name, plan in plans.items():
        json.dumps(plan.as_dict())
        assert plan.fits is True, name
    # SmolLM2's 4 x 320-token micro-batches fit a cpu-smoke process's 8 GiB; 16 of them would not.
    smollm2 = plan_recipe(
        str(REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"),
        profile="cpu-smoke",
        architecture="SmolLM2-135M",
        overrides=["train.per_device_batch_size=16"],
    )
    assert smollm2.fits is False and 2 <= smollm2.largest_micro_batch < 16
    assert all("deepspeed" not in " ".join(s["set"]) for s in smollm2.suggestions)  # none that cannot run on the CPU
    assert plans["rl-grpo-qwen2.5-7b-8xh100.yaml"].breakdown.resident.keys().isdisjoint({"value optimizer"})
    # The tiny SFT recipe's data is here: its tokens are counted with the real tokenizer.
    assert "tokenized" in plans["sft-tiny-cpu.yaml"].time["data"]["source"]
    assert plans["sft-tiny-cpu.yaml"].cluster.gpu is None
    shipped = {path.name for path in (REPO / "recipes").glob("*.yaml")}
    for name in shipped - plans.keys():  # translate, upload: no model of ours to size
        with pytest.raises(ConfigError, match="nothing to size"):
            plan_recipe(str(REPO / "recipes" / name), **H100_NODE)


def test_every_profile_plans_its_pipeline(tiny_model):
    from medo1 import chart
    from medo1.plan.pipeline import profile_values

    for profile in chart.profiles():
        extra = (
            {"sft": [f"model.name_or_path={tiny_model}"], "rl": [f"model.name_or_path={tiny_model}"]}
            if profile == "cpu-smoke"
            else {}
        )
        plans = plan_pipeline(profile, extra_overrides=extra)
        values = profile_values(profile)
        enabled = [name for name in ("sft", "rl") if values["stages"][name].get("enabled")]
        if values["cluster"].get("gpusPerNode") and values["jobs"]["eval"].get("enabled"):
            enabled.append("eval")
        assert [plan.stage for plan in plans] == enabled, profile
        assert all(plan.fits is not False for plan in plans), profile
    two_nodes = plan_pipeline("h100-2nodes")
    assert two_nodes[0].cluster.world == 16
    # The 2-node profile shards over 16 GPUs: less per GPU than on one node.
    one_node = plan_pipeline("h100-1node")
    assert two_nodes[0].breakdown.resident["optimizer"] < one_node[0].breakdown.resident["optimizer"]


def test_cli_table_and_json(capsys):
    assert main(["plan", "--profile", "h100-1node", "--price-per-gpu-hour", "2.5"]) == 0
    out = capsys.readouterr().out
    for expected in ("sft:", "rl:", "eval:", "fits", "GPU-hours", "checkpoint volume", "pipeline:"):
        assert expected in out
    assert main(["plan", "--profile", "h100-1node", "--price-per-gpu-hour", "2.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [stage["stage"] for stage in result["stages"]] == ["sft", "rl", "eval"]
    pipeline = result["pipeline"]
    assert pipeline["cost"] == pytest.approx(pipeline["gpu_hours"] * 2.5, rel=0.01)
    assert pipeline["gpu_hours"] == pytest.approx(
        sum(stage["time"]["gpu_hours"] for stage in result["stages"]), abs=0.2
    )
    # --strict refuses a plan that does not fit.
    args = [
        "plan",
        "--config",
        str(SFT_7B),
        "--gpus-per-node",
        "8",
        "--set",
        "model.name_or_path=meta-llama/Llama-3.1-70B",
    ]
    assert main(args) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert main([*args, "--strict"]) == 3
    capsys.readouterr()
    assert main(["plan", "--config", str(REPO / "recipes" / "upload.yaml")]) == 2
    assert "nothing to size" in capsys.readouterr().err
    assert main(["plan", "--profile", "infrastructure"]) == 0
    assert "enables no stage" in capsys.readouterr().out


def test_measured_utilisation_replaces_the_assumption(tmp_path, monkeypatch):
    from medo1.plan import stages
    from medo1.plan.shapes import GPUS

    monkeypatch.setattr(stages, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(stages, "REPO", tmp_path)
    (tmp_path / "results").mkdir()
    assumed = plan_recipe(str(SFT_7B), **H100_NODE)
    assert assumed.time["utilisation"] == stages.ASSUMED_UTILISATION
    # What `make gpu-check` writes on an H100 (its sft_benchmark step, MFU of medo1's padding-free SFT).
    record = {
        "steps": {
            "sft_benchmark": {
                "device_name": "NVIDIA H100 80GB HBM3",
                "contenders": {"medo1_padding_free": {"mfu": 0.42}},
            }
        }
    }
    (tmp_path / "results" / "gpu_check-20261201T000000Z.json").write_text(json.dumps(record))
    measured = plan_recipe(str(SFT_7B), **H100_NODE)
    assert measured.time["utilisation"] == 0.42 and "measured" in measured.time["utilisation_source"]
    assert measured.time["hours"] == pytest.approx(assumed.time["hours"] * stages.ASSUMED_UTILISATION / 0.42, rel=0.05)
    assert stages.measured_utilisation(GPUS["a100-80gb"])[0] == stages.ASSUMED_UTILISATION  # another GPU kind


# ---- the launcher's check (medo1.plan.check) -----------------------------------------------------


def test_the_launchers_memory_only_plan_is_the_plans_memory():
    for recipe, architecture in ((SFT_7B, None), (PPO_7B, "Qwen2.5-7B"), (GRPO_7B, "Qwen2.5-7B")):
        full = plan_recipe(str(recipe), architecture=architecture, **H100_NODE)
        quick = plan_recipe(str(recipe), architecture=architecture, memory_only=True, **H100_NODE)
        assert quick.time == {} and full.time["hours"] > 0
        assert (quick.total, quick.fits, quick.largest_micro_batch, quick.suggestions) == (
            full.total,
            full.fits,
            full.largest_micro_batch,
            full.suggestions,
        )


def test_a_later_stage_is_planned_with_the_architecture_its_earlier_stage_exports(tiny_model, tmp_path):
    from medo1.plan.check import fit_check

    values = {
        "cluster": {"nodes": 1, "gpusPerNode": 1},
        "stages": {
            "sft": {
                "recipe": str(REPO / "recipes" / "sft-tiny-cpu.yaml"),
                "set": [f"model.name_or_path={tiny_model}", f"output.dir={tmp_path / 'sft'}"],
            },
            "rl": {
                "recipe": str(REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"),
                "set": [f"model.name_or_path={tmp_path / 'sft' / 'export'}", f"output.dir={tmp_path / 'rl'}"],
            },
        },
        "jobs": {
            "eval": {
                "recipe": str(REPO / "recipes" / "eval-demo-cpu.yaml"),
                "gpus": 1,
                "set": [f"model={tmp_path / 'rl' / 'export'}"],
            }
        },
    }
    for stage in ("rl", "eval"):  # neither export exists: the tiny model's config.json gives both their shape
        check = fit_check(stage, values)
        assert check.plan.model == resolve_shape(str(tiny_model)) and check.fits, check.describe()
    values["stages"]["sft"]["set"] = [f"output.dir={tmp_path / 'elsewhere'}"]
    unknown = fit_check("rl", values)
    assert unknown.plan is None and "no config.json there" in unknown.problem
    assert unknown.describe().startswith("stage rl: whether it fits its GPUs (1 node(s) x 1 h100-80gb) is not known")
    assert (
        fit_check("translate", values) is None and fit_check("sft", {**values, "cluster": {"gpusPerNode": 0}}) is None
    )


def test_the_charts_gpu_kinds_are_the_plans():
    from medo1 import chart
    from medo1.plan.shapes import GPUS

    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    assert schema["properties"]["plan"]["properties"]["gpu"]["enum"] == ["", *GPUS]
    from medo1.launch.rendering import stage_values
    from medo1.plan.check import fit_check

    # The kind a node selector names; one the plan does not know is planned as an H100 80GB, and said so.
    selector = "cluster.nodeSelector={nvidia.com/gpu.product: %s}"
    known = fit_check("sft", stage_values("sft", profile="h100-1node", value_overrides=[selector % "NVIDIA-H200"]))
    assert known.plan.cluster.gpu is GPUS["h200-141gb"] and not known.gpu_note
    unknown = fit_check("sft", stage_values("sft", profile="h100-1node", value_overrides=[selector % "NVIDIA-B200"]))
    assert unknown.plan.cluster.gpu is GPUS["h100-80gb"]
    assert "(nvidia.com/gpu.product NVIDIA-B200 is no GPU kind the plan knows: set plan.gpu)" in unknown.describe()
    chosen = fit_check(
        "sft",
        stage_values("sft", profile="h100-1node", value_overrides=[selector % "NVIDIA-B200", "plan.gpu=h200-141gb"]),
    )
    assert chosen.plan.cluster.gpu is GPUS["h200-141gb"] and not chosen.gpu_note


def test_the_launchers_check_imports_no_torch_and_downloads_nothing():
    import subprocess
    import sys

    code = (
        "import sys; from medo1.launch.rendering import stage_values; from medo1.plan.check import fit_check; "
        "c = fit_check('rl', stage_values('rl', profile='h100-1node')); assert c.fits, c.describe(); "
        "heavy = {'torch', 'transformers', 'huggingface_hub', 'deepspeed'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
