"""The `medo1` command line as a user runs it (subprocesses, real files)."""

from __future__ import annotations

import json

from tests.conftest import (
    DEMO_DATA,
    TINY_RECIPE,
    run_medo1,
    sft_overrides,
    write_short_rows,
)


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_validate_demo_json_report(tiny_model):
    done = run_medo1(
        ["data", "validate", DEMO_DATA, "--format", "medical_o1", "--tokenizer", tiny_model, "--max-length", "1024", "--json"]
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


def test_sft_fails_on_bad_rows_naming_file_row_field(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    rows = json.loads(data.read_text())
    rows[2]["Response"] = 42
    data.write_text(json.dumps(rows))
    out = tmp_path / "run"
    done = run_medo1(["sft", "--config", TINY_RECIPE] + set_args(sft_overrides(tiny_model, data, out)))
    assert done.returncode == 2
    assert f"medo1: error: 1 invalid row(s):\n  {data} row 2: field 'Response': expected a string, got int" in done.stderr
    assert "data.on_invalid=skip" in done.stderr
    assert not list(out.glob("checkpoint-*"))


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
            ["translate", DEMO_DATA, "--output", out, "--format", "verifiable", "--target-language", "Japanese",
             "--base-url", server.base_url, "--limit", "3", "--concurrency", "2"],
            env={"OPENAI_API_KEY": "cli-key"},
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["records"], summary["translated"], summary["rejected"]) == (3, 3, 0)
    assert len(out.read_text().splitlines()) == 3
    assert "cli-key" not in done.stdout + done.stderr


def test_eval_cli_on_the_tiny_model(tiny_model, tmp_path):
    done = run_medo1(
        ["eval", "--model", tiny_model, "--benchmark", f"demo={DEMO_DATA}", "--limit", "4",
         "--set", "max_new_tokens=8", "--output-dir", tmp_path / "eval"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["demo"]["n"] == 4
    assert (tmp_path / "eval" / "report.md").read_text().count("| demo |") == 1


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
