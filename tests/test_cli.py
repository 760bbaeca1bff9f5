"""The `medo1` command line as a user runs it (subprocesses, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    DEMO_DATA,
    NO_TORCH_LAUNCHER,
    TINY_RECIPE,
    run_medo1,
    sft_overrides,
    write_short_rows,
)


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.e2e
def test_validate_demo_json_report(tiny_model):
    done = run_medo1(
        [
            "data",
            "validate",
            DEMO_DATA,
            "--format",
            "medical_o1",
            "--tokenizer",
            tiny_model,
            "--max-length",
            "1024",
            "--json",
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["rows"], report["valid"], report["invalid"]) == (150, 150, 0)
    assert report["tokens"]["over_max_length"] == 4
    assert report["tokens"]["p50"] <= report["tokens"]["p95"] <= report["tokens"]["max"]


def test_validate_reports_bad_rows_and_writes_rejects(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n'
        '{"Question": "q", "Complex_CoT": " ", "Response": "r"}\n'
        '{"Question": "q", "Complex_CoT": "c"\n'
    )
    rejects = tmp_path / "rejects.jsonl"
    done = run_medo1(["data", "validate", bad, "--format", "medical_o1", "--rejects", rejects])
    assert done.returncode == 1
    assert "3 rows, 1 valid, 2 invalid" in done.stdout
    assert f"{bad} row 1 (line 2): field 'Complex_CoT': empty" in done.stdout
    assert f"{bad} row 2 (line 3): invalid JSON" in done.stdout
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in lines] == [(1, "Complex_CoT"), (2, None)]
    assert lines[0]["record"]["Complex_CoT"] == " "


def test_validate_spanish_preset(tmp_path):
    rows = tmp_path / "es.json"
    rows.write_text(json.dumps([{"Pregunta": "¿Qué?", "Razonamiento_Complejo": "Pienso.", "Respuesta": "Esto."}]))
    done = run_medo1(["data", "validate", rows, "--format", "medical_o1", "--preset", "es", "--json"])
    assert done.returncode == 0
    assert json.loads(done.stdout)["valid"] == 1


@pytest.mark.e2e
def test_sft_fails_on_bad_rows_naming_file_row_field(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    rows = json.loads(data.read_text())
    rows[2]["Response"] = 42
    data.write_text(json.dumps(rows))
    out = tmp_path / "run"
    done = run_medo1(["sft", "--config", TINY_RECIPE] + set_args(sft_overrides(tiny_model, data, out)))
    assert done.returncode == 2
    assert (
        f"medo1: error: 1 invalid row(s):\n  {data} row 2: field 'Response': expected a string, got int" in done.stderr
    )
    assert "data.on_invalid=skip" in done.stderr
    assert not list(out.glob("checkpoint-*"))


@pytest.mark.e2e
def test_sft_skip_writes_rejects_and_trains_the_rest(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    rows = json.loads(data.read_text())
    del rows[1]["Complex_CoT"]
    rows[3]["Complex_CoT"] = "x " * 400  # over max_length 256: dropped and reported, not cut
    data.write_text(json.dumps(rows))
    out = tmp_path / "run"
    overrides = sft_overrides(
        tiny_model, data, out, **{"data.on_invalid": "skip", "train.max_steps": 1, "output.export": False}
    )
    done = run_medo1(["sft", "--config", TINY_RECIPE] + set_args(overrides))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "data_report.json").read_text())
    assert (report["rows"], report["valid"], report["invalid"]) == (4, 3, 1)
    assert (report["dropped_overlong"], report["trained_examples"]) == (1, 2)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rejects] == [(1, "Complex_CoT"), (3, None)]
    assert rejects[1]["problem"].startswith("too long:")
    assert rejects[1]["record"] == rows[3]

    again = run_medo1(["sft", "--config", TINY_RECIPE] + set_args(overrides))
    assert again.returncode == 2
    assert "--resume auto" in again.stderr


def test_sft_rejects_unknown_config_key(tmp_path):
    done = run_medo1(["sft", "--config", TINY_RECIPE, "--set", "train.learnin_rate=1"])
    assert done.returncode == 2
    assert "train.learnin_rate" in done.stderr


@pytest.mark.e2e
def test_model_check_loads_and_generates(tiny_model):
    done = run_medo1(["model", "check", tiny_model, "--max-new-tokens", "4"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["generated"]


def test_translate_cli_against_a_local_openai_standin(tmp_path):
    """The stand-in replaces a paid OpenAI-compatible API (pipelines/openai_standin.py)."""
    from pipelines.openai_standin import StandIn

    server = StandIn(api_key="cli-key", max_lifetime_s=60).start()
    try:
        out = tmp_path / "ja.jsonl"
        done = run_medo1(
            [
                "translate",
                DEMO_DATA,
                "--output",
                out,
                "--format",
                "verifiable",
                "--target-language",
                "Japanese",
                "--base-url",
                server.base_url,
                "--limit",
                "3",
                "--concurrency",
                "2",
            ],
            env={"OPENAI_API_KEY": "cli-key"},
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["records"], summary["translated"], summary["rejected"]) == (3, 3, 0)
    assert len(out.read_text().splitlines()) == 3
    assert "cli-key" not in done.stdout + done.stderr


@pytest.mark.e2e
def test_eval_cli_on_the_tiny_model(tiny_model, tmp_path):
    done = run_medo1(
        [
            "eval",
            "--model",
            tiny_model,
            "--benchmark",
            f"demo={DEMO_DATA}",
            "--limit",
            "4",
            "--set",
            "max_new_tokens=8",
            "--output-dir",
            tmp_path / "eval",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["demo"]["n"] == 4
    assert (tmp_path / "eval" / "report.md").read_text().count("| demo |") == 1


@pytest.mark.e2e
def test_upload_cli_dry_run_and_credential_refusal(tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    done = run_medo1(["upload", model, "--repo-id", "me/tiny", "--dry-run"], env={"HF_TOKEN": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    assert "model.safetensors" in [f["path"] for f in plan["files"]]
    (model / ".env").write_text("HF_TOKEN=hf_" + "x" * 34 + "\n")
    refused = run_medo1(["upload", model, "--repo-id", "me/tiny", "--dry-run"])
    assert refused.returncode == 2
    assert "medo1: error:" in refused.stderr and ".env" in refused.stderr


# A bad value or path fails when the config is read: one line, exit code 2, before torch is imported.


def fail_fast_cases(tmp_path: Path) -> list[tuple[dict, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return [
        ({"data.max_length": 0}, "data.max_length: Input should be greater than or equal to 1"),
        ({"train.learning_rate": -1e-5}, "train.learning_rate: Input should be greater than 0"),
        ({"train.learning_rate": 0}, "train.learning_rate: Input should be greater than 0"),
        ({"train.warmup_ratio": 1.0}, "train.warmup_ratio: Input should be less than 1"),
        ({"train.epochs": 0}, "train.epochs: Input should be greater than 0"),
        ({"train.per_device_batch_size": 0}, "train.per_device_batch_size: Input should be greater than or equal to 1"),
        ({"lora.dropout": 1.5}, "lora.dropout: Input should be less than 1"),
        ({"output.save_steps": 0}, "output.save_steps: Input should be greater than or equal to 1"),
        ({"model.name_or_path": "./no-such-model"}, "model.name_or_path: ./no-such-model does not exist"),
        (
            {"model.name_or_path": str(tmp_path / "missing")},
            f"model.name_or_path: {tmp_path / 'missing'} does not exist",
        ),
        ({"model.name_or_path": str(a_file)}, "is a file, not a model directory"),
        ({"data.path": str(tmp_path / "rows.json")}, "data.path: "),
        ({"output.dir": str(a_file)}, f"output.dir: {a_file} is a file, not a directory"),
        ({"output.dir": str(a_file / "run")}, f"cannot be created: {a_file} is a file"),
    ]


@pytest.mark.e2e
def test_sft_refuses_bad_values_and_paths_in_one_line_before_torch_loads(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for case, expected in fail_fast_cases(tmp_path):
        values = {"model.name_or_path": model, "data.path": DEMO_DATA, "output.dir": tmp_path / "run"} | case
        started = time.monotonic()
        done = run_medo1(
            ["sft", "--config", TINY_RECIPE, *set_args([f"{k}={v}" for k, v in values.items()])],
            launcher=NO_TORCH_LAUNCHER,
            timeout=60,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (case, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("medo1: error: ") and expected in lines[0], (case, lines)
        assert "torch not imported" in done.stdout, case
        assert not (tmp_path / "run").exists(), case
        assert time.monotonic() - started < 20, case  # a bound against Hub retries (53 s), not a benchmark


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_sft_refuses_a_read_only_output_dir(tmp_path):
    model, locked = tmp_path / "model", tmp_path / "locked"
    model.mkdir()
    locked.mkdir(mode=0o555)
    values = {"model.name_or_path": model, "data.path": DEMO_DATA, "output.dir": locked / "run"}
    done = run_medo1(["sft", "--config", TINY_RECIPE, *set_args([f"{k}={v}" for k, v in values.items()])])
    assert done.returncode == 2
    assert done.stderr.strip() == f"medo1: error: output.dir: {locked / 'run'} is not writable ({locked} is read-only)"


def test_a_hub_id_stays_allowed_but_a_typo_under_a_local_folder_does_not(tmp_path, monkeypatch):
    from medo1.config import ConfigError, check_model_reference

    monkeypatch.chdir(tmp_path)
    check_model_reference("Qwen/Qwen2.5-7B-Instruct", "model.name_or_path")
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="runs/ is a local directory"):
        check_model_reference("runs/tiny-modle", "model.name_or_path")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            {"ppo.value_model": "NO_VALUE_MODEL"},
            "ppo.value_model: NO_VALUE_MODEL does not exist (and is not a Hub id owner/name)",
        ),
        ({"train.learning_rate": -1}, "train.learning_rate: Input should be greater than 0"),
        ({"reward.kind": "verifier", "reward.model": "./no-verifier"}, "reward.model: ./no-verifier does not exist"),
    ],
)
def test_rl_refuses_bad_values_and_paths_in_one_line_before_torch_loads(tmp_path, case, expected):
    model = tmp_path / "model"
    model.mkdir()
    missing = str(tmp_path / "no-value-model")
    case = {key: str(value).replace("NO_VALUE_MODEL", missing) for key, value in case.items()}
    values = {"model.name_or_path": model, "data.path": DEMO_DATA, "output.dir": tmp_path / "run"} | case
    done = run_medo1(
        ["rl", "--config", "recipes/rl-ppo-tiny-cpu.yaml", *set_args([f"{k}={v}" for k, v in values.items()])],
        launcher=NO_TORCH_LAUNCHER,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medo1: error: "), lines
    assert expected.replace("NO_VALUE_MODEL", missing) in lines[0], lines
    assert "torch not imported" in done.stdout


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.yaml"
    done = run_medo1(["sft", "--config", missing])
    assert (done.returncode, done.stderr) == (2, f"medo1: error: recipe {missing} not found\n")
    debug = run_medo1(["--debug", "sft", "--config", missing])
    assert "Traceback (most recent call last)" in debug.stderr and "ConfigError" in debug.stderr


def test_every_user_error_class_derives_from_the_root():
    from medo1.chat_client import ChatError
    from medo1.config import ConfigError, StageError
    from medo1.data.sources import DataError
    from medo1.data.translate import TranslateError
    from medo1.errors import Medo1Error
    from medo1.eval.config import EvalError
    from medo1.hub.config import UploadError
    from medo1.launch import LaunchError
    from medo1.rl.rewards.verifier import RewardLoadError
    from medo1.training.checkpoint import ResumeError

    for error in (
        ChatError,
        ResumeError,
        ConfigError,
        StageError,
        DataError,
        EvalError,
        LaunchError,
        RewardLoadError,
        TranslateError,
        UploadError,
    ):
        assert issubclass(error, Medo1Error), error


def test_importing_the_cli_loads_neither_torch_nor_transformers():
    probe = (
        "import sys, medo1.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "stage, recipe",
    [
        ("sft", TINY_RECIPE),
        ("rl", "recipes/rl-ppo-tiny-cpu.yaml"),
        ("translate", "recipes/translate-ja.yaml"),
        ("eval", "recipes/eval-mcq.yaml"),
        ("upload", "recipes/upload.yaml"),
    ],
)
def test_config_show_prints_every_option_with_type_default_recipe_value_and_description(stage, recipe):
    from medo1.config import describe_options, stage_config_class

    done = run_medo1(["config", "show", stage, "--recipe", recipe, "--json"])
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["key"] for row in rows] == [row["key"] for row in describe_options(stage_config_class(stage))]
    assert all(row["type"] and row["default"] and row["description"] for row in rows)
    shown = [row["key"] for row in rows if "recipe" in row]
    for key in yaml.safe_load(Path(recipe).read_text()):
        assert any(shown_key == key or shown_key.startswith(f"{key}.") for shown_key in shown), key
    text = run_medo1(["config", "show", stage, "--recipe", recipe])
    assert text.returncode == 0 and f"{rows[0]['key']}  ({rows[0]['type']})  default: " in text.stdout


def test_config_show_shows_the_recipe_value_beside_the_default():
    done = run_medo1(["config", "show", "sft", "--recipe", TINY_RECIPE])
    assert (
        "train.learning_rate  (float)  default: 5.0e-06  recipe: 0.001\n    Peak learning rate (AdamW).\n"
        in done.stdout
    )
