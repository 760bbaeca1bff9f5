"""The Kubeflow pipeline: the checked-in compiled YAML is current and carries the cluster settings
(PVC mounts, secrets by reference, GPU), its components run for real with the KFP local runner, and
the whole pipeline runs end to end on this machine (tiny models, local launcher, a local
OpenAI-compatible stand-in for the translation API)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from kfp import local

from medo1 import chart
from medo1.launch.inputs import InputsMissing
from pipelines import medo1_pipeline as pipeline
from pipelines.submit import ParameterError, declared_parameters, parse_parameters
from tests.conftest import DEMO_DATA, REPO


def _compiled(path: Path = pipeline.COMPILED) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compiled_pipeline_is_up_to_date(tmp_path):
    fresh = pipeline.compile_pipeline(tmp_path / "medo1_pipeline.yaml")
    assert fresh.read_text() == pipeline.COMPILED.read_text(), (
        "pipelines/medo1_pipeline.yaml is stale: run `make pipeline`"
    )


def test_every_step_runs_the_chart_image_on_the_shared_volumes():
    spec, executors = _compiled()
    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    chart_image = chart.chart_defaults()["image"]
    assert {c["image"] for c in containers.values()} == {f"{chart_image['repository']}:{chart_image['tag']}"}
    assert set(executors) == set(containers)
    for name, executor in executors.items():
        mounts = {m["mountPath"]: m["pvcNameParameter"]["componentInputParameter"] for m in executor["pvcMount"]}
        assert set(mounts) == {"/data", "/checkpoints", "/hf-cache"}, name
        assert executor["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, name
        assert [mounts["/data"], mounts["/checkpoints"]] in (
            ["data_pvc", "checkpoints_pvc"],
            ["pipelinechannel--data_pvc", "pipelinechannel--checkpoints_pvc"],
        ), name
    # The claims are the chart's (release medo1), so the PyTorchJobs mount the same volumes.
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["data_pvc"]["defaultValue"] == "medo1-data"
    assert defaults["checkpoints_pvc"]["defaultValue"] == "medo1-checkpoints"


def test_secrets_are_referenced_never_inlined():
    spec, executors = _compiled()
    assert executors["exec-translate"]["secretAsEnv"][0]["keyToEnv"] == [
        {"envVar": "OPENAI_API_KEY", "secretKey": "OPENAI_API_KEY"}
    ]
    assert executors["exec-upload"]["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "HF_TOKEN"}]
    profile_secrets = chart.load_profile("h100-1node")["secrets"]
    assert executors["exec-translate"]["secretAsEnv"][0]["secretName"] == profile_secrets["translationApiKey"]["name"]
    assert executors["exec-upload"]["secretAsEnv"][0]["secretName"] == profile_secrets["hfToken"]["name"]
    for executor in spec["deploymentSpec"]["executors"].values():
        names = {e["name"] for e in executor["container"].get("env", [])}
        assert not names & {"OPENAI_API_KEY", "HF_TOKEN", "WANDB_API_KEY"}


def test_gpu_settings_reach_eval_and_the_training_jobs():
    spec, _ = _compiled()
    resources = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]
    assert (
        resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        and resources["accelerator"]["resourceCount"] == "1"
    )
    tasks = spec["root"]["dag"]["tasks"]
    for task in ("train", "train-2"):
        inputs = tasks[task]["inputs"]["parameters"]
        assert inputs["gpus_per_node"]["componentInputParameter"] == "gpus_per_node"
        assert inputs["nodes"]["componentInputParameter"] == "nodes"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["gpus_per_node"]["defaultValue"] == 8 and defaults["profile"]["defaultValue"] == "h100-1node"
    assert chart.load_profile("h100-1node")["cluster"]["gpusPerNode"] == 8


def _task_conditions(spec: dict) -> dict[str, list[str]]:
    """Each task (by component) -> the trigger conditions of the groups it sits in, outermost first."""
    found: dict[str, list[str]] = {}

    def walk(dag: dict, outer: list[str]) -> None:
        for task in dag["tasks"].values():
            conditions = outer + [task["triggerPolicy"]["condition"]] if "triggerPolicy" in task else outer
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], conditions)
            else:
                found[task["componentRef"]["name"]] = conditions

    walk(spec["root"]["dag"], [])
    return found


def test_translation_and_upload_are_conditional():
    spec, _ = _compiled()
    conditions = _task_conditions(spec)
    language = "inputs.parameter_values['pipelinechannel--target_language'] != ''"
    assert conditions["comp-translate"] == [language]
    assert conditions["comp-check-data"] == [f"!({language})"]
    assert conditions["comp-upload"] == [
        "inputs.parameter_values['pipelinechannel--upload_model'] == true",
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] >= "
        "inputs.parameter_values['pipelinechannel--min_eval_accuracy']",
    ]
    for always in ("comp-run-directory", "comp-train", "comp-train-2", "comp-evaluate"):
        assert conditions[always] == []


# ---- the run form, the graph ----------------------------------------------------------------------------


def _all_task_names(spec: dict) -> list[str]:
    """The display name of every task and group, in every DAG of the compiled pipeline."""
    names = []

    def walk(dag: dict) -> None:
        for task in dag["tasks"].values():
            names.append(task["taskInfo"]["name"])
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])

    walk(spec["root"]["dag"])
    return names


def test_every_parameter_is_described_in_the_compiled_pipeline():
    spec, _ = _compiled()
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert len(parameters) >= 30
    for name, declared in parameters.items():
        description = " ".join(declared.get("description", "").split())
        assert len(description) >= 30, f"{name}: no description (the pipeline docstring's Args: gives it)"
    assert "profile" in spec["pipelineInfo"]["description"]


def test_parameter_groups_cover_the_signature_in_the_docstrings_order():
    import inspect

    import docstring_parser

    grouped = [name for _, names in pipeline.PARAMETER_GROUPS for name in names]
    signature = list(inspect.signature(pipeline.medo1_pipeline.pipeline_func).parameters)
    assert sorted(grouped) == sorted(signature) and len(grouped) == len(set(grouped))
    documented = [p.arg_name for p in docstring_parser.parse(pipeline.medo1_pipeline.pipeline_func.__doc__).params]
    assert documented == grouped
    assert grouped[:7] == [
        "profile",
        "sft_data",
        "rl_data",
        "target_language",
        "base_model",
        "upload_model",
        "hub_repo",
    ]


def test_submit_lists_the_parameters_grouped_commonest_first():
    from pipelines.submit import main

    listing = __import__("io").StringIO()
    with __import__("contextlib").redirect_stdout(listing):
        assert main(["--list"]) == 0
    text = listing.getvalue()
    assert text.startswith('Start here:\n  profile (string, default "h100-1node")\n      Chart profile')
    assert text.index("target_language") < text.index("Training:") < text.index("Cluster:") < text.index("data_pvc")


def test_display_names_are_what_a_person_reads():
    """No placeholder in any display name (a pipeline parameter in one is not resolved at run time), and every
    condition group says what it decides instead of condition-N / condition-branches-N."""
    spec, _ = _compiled()
    names = _all_task_names(spec)
    assert not [n for n in names if "{{" in n]
    assert not [n for n in names if re.fullmatch(r"condition(-branches)?-\d+", n)]
    assert {"doctor", "plan", "run folder", "translate", "check data", "sft", "rl", "eval", "upload"} <= set(names)
    assert "data: translate or keep the source language" in names


# ---- what each step shows in the UI (medo1.pipeline_steps) ---------------------------------------------------


def test_training_metrics_are_the_runs_final_figures(tmp_path):
    from medo1.pipeline_steps import training_metrics

    sft, ppo = tmp_path / "sft", tmp_path / "rl"
    sft.mkdir(), ppo.mkdir()
    rows = [
        {"step": i, "loss": 3.0 - 0.1 * i, "mean_token_accuracy": 0.1 * i, "tokens_per_second": 100.0 * i}
        for i in range(1, 11)
    ]
    rows.append({"step": 10, "train_runtime": 1800.0, "train_loss": 2.5})
    (sft / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = training_metrics(sft, gpus=8, wall_time_s=2000.04)
    # The mean of the last five logged steps (6..10), not one noisy step.
    assert figures["loss"] == pytest.approx(3.0 - 0.8) and figures["token_accuracy"] == pytest.approx(0.8)
    assert figures["tokens_per_second"] == pytest.approx(800.0) and figures["steps"] == 10
    assert figures["train_time_s"] == 1800.0 and figures["gpu_hours"] == pytest.approx(4.0)
    assert figures["wall_time_s"] == 2000.0 and "reward" not in figures
    ppo_rows = [
        {
            "step": i,
            "reward_mean": 0.1 * i,
            "format_ok_rate": 0.5,
            "kl": 0.01,
            "verifier_true_rate": 0.25,
            "generated_tokens_per_second": 50.0,
            "time_generation": 10.0,
            "time_scoring": 5.0,
            "time_training": 15.0,
        }
        for i in range(1, 3)
    ]
    (ppo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ppo_rows))
    figures = training_metrics(ppo, gpus=16)
    assert figures["reward"] == pytest.approx(0.15) and figures["format_ok"] == 0.5 and figures["correct"] == 0.25
    assert figures["train_time_s"] == 60.0 and figures["gpu_hours"] == pytest.approx(16 * 60 / 3600, abs=1e-3)
    assert "loss" not in figures and "wall_time_s" not in figures


def test_translation_metrics_and_summary_count_by_reason():
    from medo1.pipeline_steps import translation_markdown, translation_metrics

    summary = {
        "records": 10,
        "translated": 7,
        "from_cache": 2,
        "rejected": 3,
        "requests": 12,
        "retries": 1,
        "validation_retries": 4,
        "retried_by_reason": {"numbers": 3, "json": 1},
        "rejected_by_reason": {"numbers": 2, "language": 1},
        "prompt_tokens": 5000,
        "completion_tokens": 4000,
        "elapsed_s": 3.2,
        "model": "m",
        "target_language": "Japanese",
        "output": "/o.jsonl",
        "rejects": "/o.rejects.jsonl",
        "warnings": ["w1"],
    }
    metrics = translation_metrics({"sft": summary})
    assert metrics == {
        "sft_records": 10,
        "sft_kept": 7,
        "sft_rejected": 3,
        "sft_from_cache": 2,
        "sft_validation_retries": 4,
        "sft_http_retries": 1,
        "sft_retried_json": 1,
        "sft_retried_numbers": 3,
        "sft_rejected_language": 1,
        "sft_rejected_numbers": 2,
    }
    text = translation_markdown({"sft": summary})
    assert "| sft | 10 | 7 | 3 | 2 | 4 | 1 | 5,000 / 4,000 | 3.2 |" in text
    assert "rejected for `numbers`: 2" in text and "`/o.rejects.jsonl`" in text and "warning: w1" in text


def test_doctor_table_lists_failures_first_with_their_fix():
    from medo1.doctor import Finding
    from medo1.pipeline_steps import doctor_markdown

    text = doctor_markdown(
        [
            Finding("crds", "pass", "PyTorchJob CRD installed"),
            Finding("secrets", "fail", "Secret hf-token has no key HF_TOKEN", "kubectl create secret ...|x"),
        ],
        "team-a",
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0] == "| secrets | **fail** | Secret hf-token has no key HF_TOKEN | kubectl create secret ...\\|x |"
    assert (
        rows[1].startswith("| crds | pass |")
        and "**1 failed, 0 unchecked, 0 warnings, 0 not checkable here, 1 passed**" in text
    )


def test_plan_of_the_pipeline_defaults_matches_medo1_plan():
    """The plan step plans what the training steps launch: the default cluster run's stages, as `medo1 plan
    --profile h100-1node` plans them (16.2 GPU-hours), each fitting its GPUs."""
    from medo1.launch.rendering import job_values
    from medo1.pipeline_steps import (
        chart_values,
        plan_markdown,
        plan_metrics,
        plan_stages,
        plan_verdict,
        stage_overrides,
    )

    values = chart_values(data_pvc="d", checkpoints_pvc="c", hf_cache_pvc="h", nodes=1, gpus_per_node=8)
    run = "/checkpoints/runs/r1"
    launches = [
        (
            "sft",
            job_values(
                "sft",
                profile="h100-1node",
                value_overrides=values,
                recipe="/opt/medo1/recipes/sft-qwen2.5-7b-8xh100.yaml",
                overrides=stage_overrides(
                    [], model="Qwen/Qwen2.5-7B-Instruct", data="/data/medical_o1_sft.json", output_dir=f"{run}/sft"
                ),
            ),
        ),
        (
            "rl",
            job_values(
                "rl",
                profile="h100-1node",
                value_overrides=values,
                recipe="/opt/medo1/recipes/rl-ppo-qwen2.5-7b-8xh100.yaml",
                overrides=stage_overrides(
                    [], model=f"{run}/sft/export", data="/data/v.json", output_dir=f"{run}/rl", algorithm="ppo"
                ),
            ),
        ),
        (
            "eval",
            job_values(
                "eval",
                profile="h100-1node",
                value_overrides=[*values, "jobs.eval.gpus=1"],
                recipe="/opt/medo1/recipes/eval-mcq.yaml",
                overrides=[f"model={run}/rl/export"],
            ),
        ),
    ]
    planned = plan_stages(launches)
    assert [p.plan.model.name for p in planned] == ["Qwen2.5-7B"] * 3  # RL and eval start from the earlier exports
    metrics = plan_metrics(planned)
    assert metrics["gpu_hours"] == pytest.approx(16.2) and metrics["sft_fits"] == metrics["rl_fits"] == 1.0
    assert plan_verdict(planned) == "every stage fits its GPUs"
    assert "| rl | 1 node(s) x 8 h100-80gb | Qwen2.5-7B |" in plan_markdown(planned)
    # A stage that cannot be planned is reported, and the verdict says what is not known.
    unknown = plan_stages(
        [("sft", job_values("sft", value_overrides=values, overrides=["model.name_or_path=/nowhere/model"]))]
    )
    assert unknown[0].plan is None and "/nowhere/model" in unknown[0].problem
    assert plan_verdict(unknown).startswith("no plan for sft")


def test_upload_summary_lists_what_goes_up():
    from medo1.pipeline_steps import upload_markdown

    dry = upload_markdown(
        {
            "dry_run": True,
            "repo_id": "org/m",
            "files": [{"path": "model.safetensors", "size": 2048}],
            "skipped": [{"path": "optimizer.pt", "reason": "not a model file"}],
            "total_bytes": 2048,
        }
    )
    assert "nothing was sent to `org/m`" in dry and "| `model.safetensors` | 2,048 |" in dry and "`optimizer.pt`" in dry
    sent = upload_markdown(
        {"repo_id": "org/m", "commit_url": "https://hub/c/1", "files": ["model.safetensors"], "skipped": []}
    )
    assert "https://hub/c/1" in sent and "| `model.safetensors` |  |" in sent


# ---- the local runner's console -------------------------------------------------------------------------------


def test_step_console_shows_a_few_lines_per_step_and_logs_everything(tmp_path):
    """What the KFP local runner prints, fed to StepConsole: the console gets the start, progress, result and
    artifacts of each step; the step's log and pipeline.log get every line; a failure shows the end of its log."""
    import io

    from pipelines.local_console import StepConsole

    run_dir, console = tmp_path / "run", io.StringIO()
    outputs = run_dir / "kfp" / "medo1-2026" / "translate"
    outputs.mkdir(parents=True)
    metrics = {
        "sft_kept": 12,
        "sft_rejected": 1,
        "sft_validation_retries": 2,
        "rl_kept": 8,
        "rl_rejected": 0,
        "rl_validation_retries": 0,
    }
    (outputs / "executor_output.json").write_text(
        json.dumps(
            {
                "artifacts": {
                    "metrics": {"artifacts": [{"name": "metrics", "metadata": metrics}]},
                    "summary": {"artifacts": [{"name": "summary"}]},
                }
            }
        )
    )
    steps = StepConsole(console, run_dir, run_dir / "kfp", {"translate": "translate", "train": "sft"})
    steps.write("06:10:58.911 - INFO - Executing task \x1b[96m'translate'\x1b[0m\n")
    steps.write('    [KFP Executor 2026 INFO]: Got executor_input:\n    {\n        "inputs": {}\n    }\n')
    steps.write("    translate: 0/12 records, 0 failed\n    translate: 12/12 records, 1 failed\n")
    steps.write("    WARNING: format 'verifiable': check reward quality\n    Loading weights: 100%|####|\r")
    for pause in ("0.8", "0.6"):  # one failure retried: the console shows it once
        steps.write(
            f"    [KFP Executor 2026 WARNING]: http://x/v1: timed out after 120 s; attempt 2 of 6 in {pause} s\n"
        )
    steps.write("\n06:11:01.997 - INFO - Task \x1b[96m'translate'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    steps.write("06:11:02.001 - INFO - Executing task 'train'\n    Traceback (most recent call last):\n")
    steps.write("    medo1: error: data.path: no such file\n")
    # kfp 2.17's local runner logs the failed task, then raises for the pipeline as a whole.
    steps.write("06:11:09.100 - ERROR - Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m\n")
    steps.write("06:11:20.000 - INFO - Executing task 'train'\n    medo1: error: data.path: no such file\n")  # a retry
    steps.write("06:11:29.100 - ERROR - Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m\n")
    failure = steps.failed("Pipeline \x1b[95m'medo1'\x1b[0m finished with status FAILURE. Inner task failed: 'train'.")
    steps.close_logs()
    shown = console.getvalue()
    lines = shown.splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line).split()[:2] for line in lines[:6]] == [
        ["translate", "started"],
        ["translate", "0/12"],
        ["translate", "12/12"],
        ["translate", "warning:"],
        ["translate", "warning:"],
        ["translate", "done"],
    ]
    assert lines[6].split()[1:3] == ["artifacts:", "kfp/medo1-2026/translate/"] and shown.count("timed out") == 1
    assert "SFT set 12 kept, 1 rejected, 2 retried; RL set 8 kept, 0 rejected, 0 retried" in shown
    assert "executor_input" not in shown and "Loading weights" not in shown
    assert shown.count("sft        FAILED after") == 2 and "    medo1: error: data.path: no such file" in shown
    assert "sft        started again (attempt 2: the step's retry policy)" in shown
    assert failure == f"step sft failed; its full log: {run_dir / 'logs' / 'sft.log'}"
    assert "Got executor_input" in (run_dir / "logs" / "translate.log").read_text()
    full = (run_dir / "logs" / "pipeline.log").read_text()
    assert "\x1b" not in full and "Task 'translate' finished with status SUCCESS" in full and "medo1: error" in full


def test_submit_types_parameters_from_the_compiled_pipeline():
    declared = declared_parameters()
    arguments = parse_parameters(
        [
            "target_language=Japanese",
            "nodes=2",
            "min_eval_accuracy=0.55",
            "upload_model=true",
            'sft_overrides=["train.epochs=1"]',
        ],
        declared,
    )
    assert arguments == {
        "target_language": "Japanese",
        "nodes": 2,
        "min_eval_accuracy": 0.55,
        "upload_model": True,
        "sft_overrides": ["train.epochs=1"],
    }
    for bad, message in [
        ("nodez=2", "no such parameter"),
        ("nodes=two", "NUMBER_INTEGER"),
        ("upload_model=yes", "true or false"),
        ("sft_overrides=train.epochs=1", "LIST"),
        ("nodes", "NAME=VALUE"),
    ]:
        with pytest.raises(ParameterError, match=message):
            parse_parameters([bad], declared)


@pytest.fixture
def local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)


def test_check_data_component_runs_locally(local_runner, tmp_path, demo_rows):
    task = pipeline.check_data(sft_data=str(DEMO_DATA), rl_data=str(DEMO_DATA))
    assert task.outputs["sft_data"] == str(DEMO_DATA) and task.outputs["rl_data"] == str(DEMO_DATA)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"Question": "", "Complex_CoT": "", "Response": ""}]))
    with pytest.raises(RuntimeError):
        pipeline.check_data(sft_data=str(empty), rl_data=str(DEMO_DATA))


def test_run_directory_names_are_job_name_safe(local_runner, tmp_path):
    task = pipeline.run_directory(workspace=str(tmp_path / "runs"), run_name="", run_id="0f3c9a12-77aa")
    assert task.outputs["name"] == "0f3c9a12-77aa" and Path(task.outputs["path"]).is_dir()
    with pytest.raises(RuntimeError):
        pipeline.run_directory(workspace=str(tmp_path / "runs"), run_name="My Run", run_id="x")


# ---- the whole pipeline on this machine, as `make demo` runs it (what the UI shows; the console) ---------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Steps (KFP task names) the quick run executes, and the artifacts each gives the UI.
STEP_ARTIFACTS = {
    "doctor": {"report"},
    "plan": {"report", "metrics"},
    "translate": {"summary", "metrics"},
    "train": {"report", "metrics"},
    "train-2": {"report", "metrics"},
    "evaluate": {"report", "metrics"},
    "upload": {"report"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`python -m pipelines.run_local --quick`, as a user runs it: its console output and its summary."""
    import subprocess
    import sys

    workspace = tmp_path_factory.mktemp("pipeline")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.run_local", "--quick", "--workspace", str(workspace), "--run-name", "e2e"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((workspace / "runs" / "e2e" / "summary.json").read_text())
    return done, summary


def _executor_outputs(summary: dict) -> dict[str, dict]:
    (kfp_run,) = Path(summary["kfp_outputs"]).iterdir()
    return {task.name: json.loads((task / "executor_output.json").read_text()) for task in kfp_run.iterdir()}


@pytest.mark.e2e
def test_whole_pipeline_runs_locally(quick_run):
    _, summary = quick_run
    run_dir = Path(summary["run_dir"])
    artifacts = summary["artifacts"]

    translated = [
        json.loads(line) for line in (run_dir / "data" / "medical_o1.japanese.jsonl").read_text().splitlines()
    ]
    assert len(translated) == 12 and all(r["Question"].startswith("[ja] ") for r in translated)
    sft_report = json.loads((run_dir / "sft" / "data_report.json").read_text())
    assert str(run_dir / "data" / "medical_o1.japanese.jsonl") in json.dumps(sft_report)
    for stage in ("sft", "rl"):
        assert (run_dir / stage / "export" / "model.safetensors").is_file()
        assert artifacts[f"{stage.upper()} export"] == str(run_dir / stage / "export")
    rl_config = yaml.safe_load((run_dir / "rl" / "config.yaml").read_text())
    assert rl_config["model"]["name_or_path"] == str(run_dir / "sft" / "export")
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["benchmarks"]["demo_mcq"]["n"] == 4
    assert summary["eval_average_accuracy"] == pytest.approx(report["average_accuracy"])
    assert artifacts["eval report"] == str(run_dir / "eval" / "report.md")
    # The base model, the SFT export and the RL export answered the same questions; the UI gets the table.
    assert list(report["comparison"]) == ["base", "sft", "rl"]
    assert all(scores["demo_mcq"]["n"] == 4 for scores in report["comparison"].values())
    markdown = Path(summary["kfp_outputs"]) / next(Path(summary["kfp_outputs"]).iterdir()).name / "evaluate" / "report"
    assert "| sft |" in markdown.read_text() and "| base |" in markdown.read_text()


@pytest.mark.e2e
def test_local_run_writes_the_artifacts_the_ui_shows(quick_run):
    """Every step with something to show gives the UI its Markdown / HTML (a non-empty file) and Metrics (figures in
    its executor output), and each training step's HTML report carries its plots inside it."""
    _, summary = quick_run
    outputs = _executor_outputs(summary)
    assert set(STEP_ARTIFACTS) <= set(outputs)
    for task, expected in STEP_ARTIFACTS.items():
        given = outputs[task]["artifacts"]
        assert set(given) == expected, task
        for name, entry in given.items():
            (artifact,) = entry["artifacts"]
            if name == "metrics":
                assert artifact["metadata"] and all(
                    isinstance(v, (int, float)) for v in artifact["metadata"].values()
                ), task
            else:
                assert Path(artifact["uri"]).stat().st_size > 100, (task, name)
    for task in ("train", "train-2"):
        html = Path(outputs[task]["artifacts"]["report"]["artifacts"][0]["uri"]).read_text()
        sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
        assert len(sources) >= 4, task
        for src in sources:  # no image is a separate file: the artifact is viewed alone in the UI
            assert src.startswith("data:image/png;base64,"), (task, src[:60])
            assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    sft, rl = (outputs[t]["artifacts"]["metrics"]["artifacts"][0]["metadata"] for t in ("train", "train-2"))
    assert {"loss", "token_accuracy", "tokens_per_second", "gpu_hours", "wall_time_s", "train_time_s"} <= set(sft)
    assert {"reward", "format_ok", "kl", "generated_tokens_per_second", "gpu_hours", "wall_time_s"} <= set(rl)
    assert sft["gpu_hours"] == rl["gpu_hours"] == 0  # a CPU run holds no GPU
    translate = outputs["translate"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert translate["sft_kept"] == translate["rl_kept"] == 12 and translate["sft_rejected"] == 0
    plan = outputs["plan"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"sft_memory_gib", "rl_memory_gib", "eval_memory_gib"} <= set(plan)
    summary_md = Path(outputs["translate"]["artifacts"]["summary"]["artifacts"][0]["uri"]).read_text()
    assert "| sft | 12 | 12 | 0 |" in summary_md and "Japanese" in summary_md


@pytest.mark.e2e
def test_local_run_console_is_short_and_the_full_logs_are_kept(quick_run):
    """`make demo`'s console: a few lines per step, no executor JSON; the full output is in the run folder's logs."""
    done, summary = quick_run
    console = done.stdout + done.stderr
    for noise in ("executor_input", "parameterValues", "KFP Executor", "Loading weights", "{'loss'", "outputFile"):
        assert noise not in console, noise
    lines = console.splitlines()
    assert len(lines) < 90, console
    for label in ("doctor", "run folder", "plan", "translate", "sft", "rl", "eval", "upload"):
        assert any(re.match(rf"\d\d:\d\d:\d\d {label} +started$", line) for line in lines), label
        assert any(re.match(rf"\d\d:\d\d:\d\d {label} +done in \d+ s: ", line) for line in lines), label
    assert re.search(r" sft +done in \d+ s: loss [\d.]+, token accuracy [\d.]+%", console)
    assert re.search(r" translate +done in \d+ s: SFT set 12 kept, 0 rejected", console)
    assert console.count("artifacts: kfp/") >= len(STEP_ARTIFACTS)
    logs = Path(summary["logs"])
    assert f"full logs: {logs}/" in console and f"{logs}" in done.stdout.splitlines()[-2]
    full = (logs / "pipeline.log").read_text()
    assert "Got executor_input" in full and "Task 'train' finished with status SUCCESS" in full
    for label in summary["steps_run"]:
        log = logs / (re.sub(r"[^a-z0-9]+", "-", label) + ".log")
        assert log.stat().st_size > 200, label
    assert "running sft here" in (logs / "sft.log").read_text()


# ---- cluster settings that survive reruns, retries and long waits ---------------------------------------------


def _tasks_by_component(spec: dict) -> dict[str, dict]:
    found = {}

    def walk(dag: dict) -> None:
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                found.setdefault(task["componentRef"]["name"], task)

    walk(spec["root"]["dag"])
    return found


def test_cluster_settings_survive_reruns_retries_and_long_waits():
    spec, platform = _compiled()
    tasks = _tasks_by_component(spec)
    # A rerun after retraining must check, translate and publish again, never reuse a cached result.
    for component in (
        "comp-check-data",
        "comp-translate",
        "comp-upload",
        "comp-train",
        "comp-train-2",
        "comp-evaluate",
    ):
        assert not tasks[component]["cachingOptions"].get("enableCache"), component
    executors = spec["deploymentSpec"]["executors"]
    for component, executor in (("comp-train", "exec-train"), ("comp-train-2", "exec-train-2")):
        # Retried: the launcher attaches to the job a failed attempt left (tests/test_launch.py).
        assert tasks[component]["retryPolicy"]["maxRetryCount"] == pipeline.TRAINING_RETRIES >= 2
        # Requests, so the step pod is not BestEffort and first to be evicted during a 72 h wait.
        resources = executors[executor]["container"]["resources"]
        assert resources["resourceCpuRequest"] == pipeline.LAUNCHER_CPU
        assert resources["resourceMemoryRequest"] == pipeline.LAUNCHER_MEMORY
    evaluate = executors["exec-evaluate"]["container"]["resources"]
    assert evaluate["resourceCpuRequest"] == "16" and evaluate["resourceMemoryRequest"] == "128Gi"
    # The eval step's GPU goes on a tainted GPU node.
    assert platform["exec-evaluate"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]


def test_pipeline_users_get_volumes_and_rbac_without_jobs():
    objects = chart.render_chart(chart.load_profile("infrastructure"))
    kinds = sorted({o["kind"] for o in objects})
    # The cluster-scoped pair is doctor's reader (nodes, StorageClasses, ClusterQueues), for the same accounts.
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    spec, _ = _compiled()
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert {defaults[p]["defaultValue"] for p in ("data_pvc", "checkpoints_pvc", "hf_cache_pvc")} == claims
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        (binding,) = [o for o in objects if o["kind"] == kind]
        assert "default-editor" in [s["name"] for s in binding["subjects"]], kind


# ---- the doctor step against the API stand-in (its table in the UI) ------------------------------------------


def test_doctor_step_gives_the_ui_its_table_and_fails_on_a_missing_crd(tmp_path, monkeypatch):
    """The compiled pipeline's doctor step, run as its pod runs it (kubeconfig: the API stand-in holding a namespace
    recorded ready for h100-2nodes): it passes with every check in its Markdown, and with the PyTorchJob CRD
    missing it fails the run, the failure and its fix first in the table."""

    from tests.helpers import NS, ready_objects, ready_permissions, run_doctor_step, without
    from tests.kube_standin import KubeStandIn

    def run_doctor(objects) -> tuple[str, str | Exception]:
        kube = KubeStandIn().start()
        try:
            for obj in objects:
                kube.record(obj)
            kube.permissions = ready_permissions()
            kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
            return run_doctor_step(kubeconfig, tmp_path / "report", monkeypatch)
        finally:
            kube.stop()

    markdown, outcome = run_doctor(ready_objects())
    assert outcome == "passed" and f"# Doctor: namespace `{NS}`" in markdown and "**0 failed" in markdown
    markdown, outcome = run_doctor(
        without(ready_objects(), "CustomResourceDefinition", "trainjobs.trainer.kubeflow.org")
    )
    assert isinstance(outcome, RuntimeError) and "1 check(s) failed" in str(outcome)
    first_row = next(
        line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line and "check |" not in line
    )
    assert first_row.startswith("| CRD trainjobs.trainer.kubeflow.org | **fail** | not installed | ")


def hf_cache_holding(root: Path, *repo_ids: str) -> Path:
    """An HF hub cache (HF_HUB_CACHE) in which each model has a snapshot, as a filled hf-cache volume has."""
    for repo_id in repo_ids:
        (root / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "0").mkdir(parents=True)
    return root


def plan_step(tmp_path, name: str, **arguments) -> tuple[str, str | Exception]:
    """The pipeline's plan step as KFP runs it: its Markdown report and its return value (or the error it raised)."""
    from kfp import dsl

    report = dsl.Markdown(uri=str(tmp_path / f"{name}.md"))
    step = dict(
        sft_recipe="/opt/medo1/recipes/sft-qwen2.5-7b-8xh100.yaml",
        rl_recipe="/opt/medo1/recipes/rl-ppo-qwen2.5-7b-8xh100.yaml",
        eval_recipe="/opt/medo1/recipes/eval-mcq.yaml",
        sft_overrides=[],
        rl_overrides=[],
        eval_overrides=[],
        base_model="Qwen/Qwen2.5-7B-Instruct",
        sft_data="/data/sft.json",
        rl_data="/data/rl.json",
        rl_algorithm="ppo",
        run_dir="/checkpoints/runs/r1",
        backend="pytorchjob",
        profile="h100-1node",
        nodes=1,
        gpus_per_node=1,
        data_pvc="d",
        checkpoints_pvc="c",
        hf_cache_pvc="h",
        plan_strict=False,
        eval_compare=False,
        report=report,
        metrics=dsl.Metrics(uri=str(tmp_path / f"{name}-metrics")),
    )
    try:
        outcome: str | Exception = pipeline.plan.python_func(**(step | arguments))
    except RuntimeError as exc:
        outcome = exc
    return (Path(report.path).read_text() if Path(report.path).exists() else ""), outcome


def test_plan_step_checks_every_stages_inputs_before_sft(tmp_path, monkeypatch):
    """Issue 25, item 4: the pipeline's first steps checked no stage's inputs, so a missing verifier or data file
    failed the RL stage after hours of SFT. The plan step now checks them as `medo1 launch chain` does: a Hub id
    the hf-cache volume lacks, with the Hub out of reach, and a data file that is not there are one line each,
    naming the stage and the fix, and the run stops before SFT."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache_holding(tmp_path / "hub", "Qwen/Qwen2.5-7B-Instruct")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub cannot be asked: only the cache counts
    monkeypatch.delenv("HF_TOKEN", raising=False)
    present = tmp_path / "sft.json"
    present.write_text("[]")
    local_run = dict(
        backend="local",
        sft_data=str(present),
        rl_data=str(tmp_path / "rl.json"),
        eval_overrides=[f"benchmarks.huatuo={present}"],
        run_dir=str(tmp_path / "run"),
    )
    _, outcome = plan_step(tmp_path, "missing", **local_run)
    assert isinstance(outcome, InputsMissing), outcome
    lines = str(outcome).splitlines()
    assert any(line.startswith(f"stage rl: data.path {tmp_path / 'rl.json'}: does not exist") for line in lines), lines
    assert any(
        line.startswith("stage rl: reward.model FreedomIntelligence/medical_o1_verifier_3B: not in the HF cache")
        and "HF_HUB_OFFLINE is set" in line
        for line in lines
    ), lines
    assert not any("Qwen/Qwen2.5-7B-Instruct" in line or "export" in line for line in lines), lines  # cached; written
    (tmp_path / "rl.json").write_text("[]")
    hf_cache_holding(tmp_path / "hub", "FreedomIntelligence/medical_o1_verifier_3B")
    _, outcome = plan_step(tmp_path, "present", **local_run)
    assert isinstance(outcome, str), outcome


def test_plan_step_checks_the_eval_as_the_eval_step_wires_it(tmp_path, tiny_model):
    """The demo's eval recipe names standalone exports in compare_with (runs/sft-smollm2-demo/export); with
    eval_compare the eval step replaces them with the run's own base model and SFT export, so the plan step's
    inputs check must too (a fresh clone's `make demo` stopped at the plan step when it did not)."""
    data = tmp_path / "rows.json"
    data.write_text("[]")
    _, outcome = plan_step(
        tmp_path,
        "demo",
        backend="local",
        profile="",
        gpus_per_node=0,
        base_model=str(tiny_model),
        sft_data=str(data),
        rl_data=str(data),
        rl_algorithm="grpo",
        sft_recipe=str(REPO / "recipes" / "sft-smollm2-demo-cpu.yaml"),
        rl_recipe=str(REPO / "recipes" / "rl-grpo-smollm2-demo-cpu.yaml"),
        eval_recipe=str(REPO / "recipes" / "eval-smollm2-demo-cpu.yaml"),
        eval_overrides=[f"benchmarks.demo_heldout={DEMO_DATA}"],
        eval_compare=True,
        run_dir=str(tmp_path / "run"),
    )
    assert isinstance(outcome, str), outcome


def test_plan_step_with_plan_strict_stops_a_run_that_does_not_fit(tmp_path, monkeypatch):
    """The 7B recipes on one H100: the plan step's table says which stage does not fit, and with plan_strict the
    run stops there, before SFT; without it the step passes and the training steps warn."""
    monkeypatch.setenv(
        "HF_HUB_CACHE",
        str(
            hf_cache_holding(tmp_path / "hub", "Qwen/Qwen2.5-7B-Instruct", "FreedomIntelligence/medical_o1_verifier_3B")
        ),
    )

    markdown, outcome = plan_step(tmp_path, "lenient")
    assert outcome.startswith("DOES NOT FIT: ") and "rl" in outcome
    assert "| rl | 1 node(s) x 1 h100-80gb | Qwen2.5-7B |" in markdown and "| **no** |" in markdown
    markdown, outcome = plan_step(tmp_path, "strict", plan_strict=True)
    assert isinstance(outcome, RuntimeError) and "not starting the run (plan_strict)" in str(outcome)
    assert "**DOES NOT FIT: " in markdown
