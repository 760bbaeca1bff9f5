"""`make bench` wiring: every benchmark's measure() in --quick mode on the CPU, and the runner.

Only facts that hold at any speed are checked (fields, the same batches for every matched SFT
contender, token counts, padding shares, positive timings); speed ratios never are.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from bench import data, eval_sampling, rl, run, sft

# Each runs a bench script's contenders on the tiny model (tens of seconds): `make test`, not `make test-fast`.
pytestmark = pytest.mark.bench


def test_sft_contenders_train_the_same_batches():
    result = sft.measure(quick=True)
    json.dumps(result)  # a benchmark result must be writable as JSON
    assert {"device", "device_name", "tokens_per_second_means", "config", "contenders", "targets"} <= result.keys()
    assert result["device"] == "cpu"
    contenders = result["contenders"]
    assert list(contenders) == list(sft.CONTENDERS)
    config = result["config"]
    for name, figures in contenders.items():
        assert figures["measured_steps"] == config["measured_steps"], name
        assert figures["seconds"] > 0 and figures["tokens_per_second"] > 0, name
        assert all(seconds > 0 for seconds in figures["step_seconds"]), name
        assert 0 < figures["real_tokens"] <= figures["batch_tokens"], name
        assert figures["peak_memory_mb"] > 0 and figures["memory_method"], name
    matched = [contenders[name] for name in sft.MATCHED]
    assert all(figures["same_batches_as_trl_sft_defaults"] for figures in matched)
    assert all(
        figures["examples_per_step"] == [config["examples_per_step"]] * config["measured_steps"] for figures in matched
    )
    assert len({figures["real_tokens"] for figures in matched}) == 1
    # Padded batches carry padding; padding-free and packed ones carry none.
    assert contenders["padded_loop"]["real_token_share"] < 1
    assert contenders["trl_sft_defaults"]["real_token_share"] == contenders["padded_loop"]["real_token_share"]
    assert contenders["medo1_padding_free"]["real_token_share"] == 1.0
    assert contenders["medo1_packed"]["real_token_share"] == 1.0
    assert result["targets"] == []  # the CPU target (1.5x the padded loop) is retired: no target line on the CPU
    assert "mfu" not in result
    assert not any(line.startswith("target: ") for line in sft.summary(result))
    # --quick runs each contender once: the figures say so, and warn that one run cannot show the spread.
    assert result["repetitions"] == 1
    assert all(figures["tokens_per_second_runs"]["runs"] == 1 for figures in contenders.values())
    (claim,) = result["claims"]
    assert "at least 3" in claim["warning"] and any(line.startswith("WARNING: ") for line in sft.summary(result))


def test_rl_splits_each_update_into_generation_scoring_training():
    result = rl.measure(quick=True)
    json.dumps(result)
    assert set(result["runs"]) == {"ppo_hf", "grpo_hf"}
    for name, run_result in result["runs"].items():
        assert len(run_result["updates"]) == result["config"]["updates"], name
        for update in run_result["updates"]:
            assert all(update[key] > 0 for key in (*rl.SPLIT, "generated_tokens_per_second")), (name, update)
        assert sum(run_result["share_of_update"].values()) == pytest.approx(1.0, abs=0.01)
    if rl.vllm_status() == "not installed":
        assert result["vllm"] == "not installed"
    assert len(rl.summary(result)) == 2 + len(result["runs"]) + 1


def test_eval_sampling_contenders_give_every_response():
    result = eval_sampling.measure(quick=True)
    json.dumps(result)
    config = result["config"]
    assert set(result["contenders"]) == {"medo1_shared_prefill", "separate_prompts"}
    for name, figures in result["contenders"].items():
        (run_result,) = figures["runs"]
        assert run_result["responses"] == config["questions"] * config["samples"], name
        assert run_result["seconds"] > 0 and run_result["cpu_seconds"] > 0, name
    assert "at least 3" in result["claims"][0]["warning"]
    assert eval_sampling.summary(result)[0].startswith("eval sampling: tiny random Qwen2")


def test_data_stages_cover_every_row():
    result = data.measure(quick=True)
    json.dumps(result)
    rows = result["config"]["rows"]
    assert set(result["stages"]) == {"load_and_validate", "tokenize", "pack"}
    for stage in result["stages"].values():
        assert stage["rows"] == rows
        assert stage["seconds"] > 0 and stage["rows_per_second"] > 0
    assert 0 < result["packed_rows"] < rows
    assert 0 < result["packed_fill"] <= 1


def test_runner_writes_one_json_per_benchmark(tmp_path, capsys):
    run.main(["--only", "data", "--quick", "--results", str(tmp_path)])
    (path,) = tmp_path.glob("data-*.json")
    record = json.loads(path.read_text())
    assert record["benchmark"] == "data" and record["quick"] is True
    assert {"cpu", "cpus", "torch", "transformers", "trl"} <= record["environment"].keys()
    assert "stages" in record
    out = capsys.readouterr()
    assert "rows/s" in out.out
    # A progress line when the measurement starts and one when it is done, on stderr beside the figures.
    progress = [line for line in out.err.splitlines() if line.startswith("bench: ")]
    assert progress[0] == "bench: data ..." and re.fullmatch(r"bench: data: done in \d+\.\d s", progress[-1])


def test_each_interleaved_measurement_shows_progress(capsys):
    from bench.common import interleaved

    interleaved({"a": lambda repetition: repetition, "b": lambda repetition: -repetition}, 2)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in lines if line.endswith(" ...")] == [
        "a, run 1 of 2 ...",
        "b, run 1 of 2 ...",
        "a, run 2 of 2 ...",
        "b, run 2 of 2 ...",
    ]
    assert sum(" done in " in line for line in lines) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks how a CPU-only machine skips the GPU benchmark")
def test_gpu_benchmark_is_skipped_without_cuda(tmp_path, capsys):
    run.main(["--only", "sft_gpu", "--results", str(tmp_path)])
    assert "sft_gpu: skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        run.parse_args(["--gpu"])


def test_contenders_run_interleaved_and_a_claim_inside_its_spread_warns():
    from bench.common import claim_check, interleaved, median_and_spread

    order = []
    results = interleaved(
        {name: (lambda r, name=name: order.append(name) or (name, r)) for name in "ABC"}, repetitions=3
    )
    assert order == list("ABCABCABC")
    assert results["B"] == [("B", 0), ("B", 1), ("B", 2)]
    figures = median_and_spread([1.0, 1.5, 1.2])
    assert (
        figures["median"] == 1.2
        and figures["spread"] == 0.5
        and figures["relative_spread"] == pytest.approx(0.5 / 1.2, abs=1e-4)
    )
    # The machine: 1.06x idle, 0.88x under load: the spread (0.18) is wider than the claimed difference.
    noisy = claim_check("medo1 vs padded", [1.06, 0.88, 1.02])
    assert noisy["median"] == 1.02 and "wider than the difference" in noisy["warning"]
    assert claim_check("medo1 vs padded", [1.9, 2.0, 2.1])["warning"] is None
    assert "at least 3" in claim_check("medo1 vs padded", [1.5])["warning"]
    with pytest.raises(ValueError):
        interleaved({"A": lambda r: r}, repetitions=0)
