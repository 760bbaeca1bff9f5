"""The Kubeflow pipeline: the checked-in compiled YAML is current and carries the cluster settings
(PVC mounts, secrets by reference, GPU), its components run for real with the KFP local runner, and
the whole pipeline runs end to end on this machine (tiny models, local launcher, a local
OpenAI-compatible stand-in for the translation API)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp import local
from medo1 import k8s

from pipelines import medo1_pipeline as pipeline
from pipelines.submit import ParameterError, declared_parameters, parse_parameters
from tests.conftest import DEMO_DATA


def _compiled(path: Path = pipeline.COMPILED) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compiled_pipeline_is_up_to_date(tmp_path):
    fresh = pipeline.compile_pipeline(tmp_path / "medo1_pipeline.yaml")
    assert fresh.read_text() == pipeline.COMPILED.read_text(), "pipelines/medo1_pipeline.yaml is stale: run `make pipeline`"


def test_every_step_runs_the_chart_image_on_the_shared_volumes():
    spec, executors = _compiled()
    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    chart_image = k8s.chart_defaults()["image"]
    assert {c["image"] for c in containers.values()} == {f"{chart_image['repository']}:{chart_image['tag']}"}
    assert set(executors) == set(containers)
    for name, executor in executors.items():
        mounts = {m["mountPath"]: m["pvcNameParameter"]["componentInputParameter"] for m in executor["pvcMount"]}
        assert set(mounts) == {"/data", "/checkpoints", "/hf-cache"}, name
        assert executor["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, name
        assert [mounts["/data"], mounts["/checkpoints"]] in (
            ["data_pvc", "checkpoints_pvc"], ["pipelinechannel--data_pvc", "pipelinechannel--checkpoints_pvc"]
        ), name
    # The claims are the chart's (release medo1), so the PyTorchJobs mount the same volumes.
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["data_pvc"]["defaultValue"] == "medo1-data"
    assert defaults["checkpoints_pvc"]["defaultValue"] == "medo1-checkpoints"


def test_secrets_are_referenced_never_inlined():
    spec, executors = _compiled()
    assert executors["exec-translate"]["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "OPENAI_API_KEY", "secretKey": "OPENAI_API_KEY"}]
    assert executors["exec-upload"]["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "HF_TOKEN"}]
    profile_secrets = k8s.load_profile("h100-1node")["secrets"]
    assert executors["exec-translate"]["secretAsEnv"][0]["secretName"] == profile_secrets["translationApiKey"]["name"]
    assert executors["exec-upload"]["secretAsEnv"][0]["secretName"] == profile_secrets["hfToken"]["name"]
    for executor in spec["deploymentSpec"]["executors"].values():
        names = {e["name"] for e in executor["container"].get("env", [])}
        assert not names & {"OPENAI_API_KEY", "HF_TOKEN", "WANDB_API_KEY"}


def test_gpu_settings_reach_eval_and_the_training_jobs():
    spec, _ = _compiled()
    resources = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu" and resources["accelerator"]["resourceCount"] == "1"
    tasks = spec["root"]["dag"]["tasks"]
    for task in ("train", "train-2"):
        inputs = tasks[task]["inputs"]["parameters"]
        assert inputs["gpus_per_node"]["componentInputParameter"] == "gpus_per_node"
        assert inputs["nodes"]["componentInputParameter"] == "nodes"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["gpus_per_node"]["defaultValue"] == 8 and defaults["profile"]["defaultValue"] == "h100-1node"
    assert k8s.load_profile("h100-1node")["cluster"]["gpusPerNode"] == 8


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


def test_submit_types_parameters_from_the_compiled_pipeline():
    declared = declared_parameters()
    arguments = parse_parameters(
        ["target_language=Japanese", "nodes=2", "min_eval_accuracy=0.55", "upload_model=true", 'sft_overrides=["train.epochs=1"]'],
        declared,
    )
    assert arguments == {"target_language": "Japanese", "nodes": 2, "min_eval_accuracy": 0.55, "upload_model": True,
                         "sft_overrides": ["train.epochs=1"]}
    for bad, message in [("nodez=2", "no such parameter"), ("nodes=two", "NUMBER_INTEGER"), ("upload_model=yes", "true or false"),
                         ("sft_overrides=train.epochs=1", "LIST"), ("nodes", "NAME=VALUE")]:
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


@pytest.mark.slow
def test_whole_pipeline_runs_locally(tmp_path):
    from pipelines.run_local import run_local

    summary = run_local(tmp_path, run_name="e2e", quick=True)
    run_dir = Path(summary["run_dir"])
    artifacts = summary["artifacts"]

    translated = [json.loads(line) for line in (run_dir / "data" / "medical_o1.japanese.jsonl").read_text().splitlines()]
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
    markdown = [p.read_text() for p in Path(summary["kfp_outputs"]).rglob("report") if p.is_file()]
    assert len(markdown) == 1 and "| sft |" in markdown[0] and "| base |" in markdown[0]


# ---- issue 12, finding 8 -----------------------------------------------------------------------


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
    for component in ("comp-check-data", "comp-translate", "comp-upload", "comp-train", "comp-train-2", "comp-evaluate"):
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
    assert platform["exec-evaluate"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]


def test_pipeline_users_get_volumes_and_rbac_without_jobs():
    objects = k8s.render_chart(k8s.load_profile("infrastructure"))
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"]
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    spec, _ = _compiled()
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert {defaults[p]["defaultValue"] for p in ("data_pvc", "checkpoints_pvc", "hf_cache_pvc")} == claims
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert "default-editor" in [s["name"] for s in binding["subjects"]]
