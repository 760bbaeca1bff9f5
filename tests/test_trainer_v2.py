"""Kubeflow Trainer v2: the chart's ClusterTrainingRuntimes (medo1-sft, medo1-ppo, medo1-grpo, medo1-eval)
validate and are what Trainer and its SDK look for; the trainjob backend creates its TrainJob through the
Kubeflow SDK's TrainerClient against the local API stand-in (no cluster here), with Trainer v2.3 statuses
recorded; and a runtime's own container command runs here under torchrun with the env Trainer injects."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from medo1 import checkpoint, k8s
from medo1.launch import JobFailed, LaunchError, LaunchResult, job_state, launch_stage
from medo1.launch.rendering import stage_values
from medo1.launch.trainjob import build_trainjob

from tests.conftest import DEMO_DATA, REPO, free_port
from tests.kube_standin import ContainerRun, KubeStandIn, Step, sigterm_while_following

CRDS = REPO / "tests" / "fixtures" / "crds"
RUNTIMES = ["medo1-eval", "medo1-grpo", "medo1-ppo", "medo1-sft"]
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"


@functools.cache
def crd_schema(kind):
    return k8s.crd_schemas(CRDS)[("trainer.kubeflow.org/v1alpha1", kind)]


def runtimes(values=None):
    objects = k8s.render_chart(values if values is not None else k8s.load_profile("trainer-v2-runtimes"))
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterTrainingRuntime"}


def replicated_job(runtime, name):
    return next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == name)


def node_container(runtime):
    pod = replicated_job(runtime, "node")["template"]["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "node")


def unknown_fields(obj, schema, path=""):
    """Fields the CRD's structural schema does not declare: the API server would drop them silently."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


# ---- the runtimes -------------------------------------------------------------------------------


def test_runtimes_are_off_by_default_and_the_platform_profile_renders_only_them():
    assert not [o for o in k8s.render_chart({}) if o["kind"] == "ClusterTrainingRuntime"]
    objects = k8s.render_chart(k8s.load_profile("trainer-v2-runtimes"))
    assert sorted(o["metadata"]["name"] for o in objects) == RUNTIMES
    assert {o["kind"] for o in objects} == {"ClusterTrainingRuntime"}
    assert all("namespace" not in o["metadata"] for o in objects)  # cluster-scoped


def test_every_runtime_validates_strictly_against_the_trainer_crds():
    objects = []
    for initializers in (False, True):
        values = {**k8s.load_profile("trainer-v2-runtimes"),
                  "runtimes": {"enabled": True, "initializers": {"enabled": initializers}}}
        objects += runtimes(values).values()
    existing = ["medo1-data", "medo1-checkpoints", "medo1-hf-cache"]
    assert k8s.schema_errors(objects, CRDS) == []
    assert k8s.policy_violations(objects, existing) == []
    schema = crd_schema("ClusterTrainingRuntime")
    assert [unknown_fields(o, schema) for o in objects] == [[]] * len(objects)
    # Planted: a misspelt field passes the CRD's schema (no additionalProperties) but not this check.
    objects[0]["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = 8
    assert unknown_fields(objects[0], schema) == [".spec.mlPolicy.torch.numProcPerNode"]


def test_each_runtime_is_what_trainer_and_the_sdk_look_for():
    """kubeflow/trainer pkg/constants/constants.go: the trainer step's replicated job carries the label
    trainjob-ancestor-step=trainer and its container is `node`; kubeflow/sdk backend.py lists only
    runtimes labelled trainer.kubeflow.org/framework and reads the `node` container's image."""
    from kubeflow.trainer.backends.kubernetes import utils
    from kubeflow_trainer_api import models

    for name, runtime in runtimes().items():
        assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
        node = replicated_job(runtime, "node")
        assert node["template"]["metadata"]["labels"] == {ANCESTOR: "trainer"}
        parsed = models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(runtime)
        trainer = utils.get_runtime_trainer("torch", parsed.spec.template.spec.replicated_jobs, parsed.spec.ml_policy)
        assert trainer.image == "ghcr.io/medo1/trainer:0.1.0" and trainer.num_nodes == 1
        assert runtime["spec"]["mlPolicy"]["torch"] == {}
        assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 3}
        pod = node["template"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} == {
            "medo1-data", "medo1-checkpoints", "medo1-hf-cache"}
        container = node_container(runtime)
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/checkpoints", "/hf-cache", "/dev/shm"}
        assert "$(MEDO1_RECIPE)" in container["args"]
    recipes = {name: node_container(r)["env"][0] for name, r in runtimes().items()}
    assert recipes["medo1-grpo"] == {"name": "MEDO1_RECIPE", "value": "/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml"}
    assert node_container(runtimes()["medo1-sft"])["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert node_container(runtimes()["medo1-eval"])["command"] == ["medo1"]


def test_initializers_are_trainers_own_writing_into_the_data_volume():
    values = {**k8s.load_profile("trainer-v2-runtimes"), "runtimes": {"enabled": True, "initializers": {"enabled": True}}}
    found = runtimes(values)
    for name in ("medo1-sft", "medo1-ppo", "medo1-grpo"):
        node = replicated_job(found[name], "node")
        assert node["dependsOn"] == [{"name": "dataset-initializer", "status": "Complete"},
                                     {"name": "model-initializer", "status": "Complete"}]
        for step in ("dataset", "model"):
            job = replicated_job(found[name], f"{step}-initializer")
            assert job["template"]["metadata"]["labels"] == {ANCESTOR: f"{step}-initializer"}
            (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
            assert container["name"] == f"{step}-initializer"
            assert container["image"] == f"ghcr.io/kubeflow/trainer/{step}-initializer:v2.3.0"
            assert {"name": "data", "mountPath": "/workspace"} in container["volumeMounts"]
            env = {e["name"]: e for e in container["env"]}
            assert env["STORAGE_URI"]["value"].startswith("hf://")
            assert env["ACCESS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN", "optional": False}
    assert [j["name"] for j in found["medo1-eval"]["spec"]["template"]["spec"]["replicatedJobs"]] == ["node"]


def test_values_schema_refuses_a_latest_initializer_image_and_a_bad_stage():
    from medo1.config import ConfigError

    for bad in ({"initializers": {"enabled": True, "dataset": {"image": "ghcr.io/kubeflow/trainer/dataset-initializer:latest",
                                                               "storageUri": "hf://a/b"}}},
                {"training": {"dpo": {"stage": "dpo", "recipe": "/x.yaml"}}}):
        with pytest.raises(ConfigError, match="^chart values refused by medo1: "):
            k8s.render_chart({"runtimes": {"enabled": True, **bad}})


# ---- the TrainJob the launcher asks for ---------------------------------------------------------


def test_launcher_trainjobs_validate_and_name_their_runtime():
    cases = [("sft", None, "h100-1node", "medo1-sft"), ("rl", "medo1-grpo", "h100-2nodes", "medo1-grpo"),
             ("rl", None, "h100-1node", "medo1-ppo"), ("eval", None, None, "medo1-eval"),
             ("sft", "medo1-sft", "cpu-smoke", "medo1-sft")]
    jobs = [build_trainjob(stage, stage_values(stage, profile=profile), runtime=runtime, timeout_s=3600)
            for stage, runtime, profile, _ in cases]
    assert k8s.schema_errors(jobs, CRDS) == []
    assert [unknown_fields(job, crd_schema("TrainJob")) for job in jobs] == [[]] * len(jobs)
    assert [job["spec"]["runtimeRef"] for job in jobs] == [{"name": name, "kind": "ClusterTrainingRuntime"}
                                                           for *_, name in cases]
    assert {job["spec"]["activeDeadlineSeconds"] for job in jobs} == {3600}


def test_launcher_trainjob_picks_the_recipe_and_the_shape():
    grpo = build_trainjob("rl", stage_values("rl", profile="h100-2nodes"), runtime="medo1-grpo")
    assert grpo["spec"]["trainer"]["env"] == [{"name": "MEDO1_RECIPE", "value": "/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml"}]
    assert grpo["spec"]["trainer"]["numNodes"] == 2
    assert grpo["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100"
    mine = build_trainjob("sft", stage_values("sft", recipe="/data/my.yaml", overrides=["train.max_steps=5"]))
    assert mine["spec"]["trainer"]["env"][0]["value"] == "/data/my.yaml"
    assert mine["spec"]["trainer"]["args"][-2:] == ["--set", "train.max_steps=5"]
    cpu = build_trainjob("sft", stage_values("sft", profile="cpu-smoke"))
    assert cpu["spec"]["trainer"]["args"][0] == "--nproc-per-node=2"
    with pytest.raises(LaunchError, match="runtime 'medo1-eval' runs the 'eval' stage, not 'sft'"):
        build_trainjob("sft", {}, runtime="medo1-eval")
    with pytest.raises(LaunchError, match="no runtime 'medo1-dpo'"):
        build_trainjob("sft", {}, runtime="medo1-dpo")
    with pytest.raises(LaunchError, match="stage 'upload' has no Trainer v2 runtime"):
        build_trainjob("upload", {})
    with pytest.raises(LaunchError, match="too long: JobSet would name its first pod's host"):
        build_trainjob("sft", {}, job_name="a" * 56)


# ---- the SDK path against the stand-in API server -----------------------------------------------
# No cluster exists here. The Kubeflow SDK's TrainerClient and the kubernetes client talk HTTP to
# tests/kube_standin.py, which serves the chart's ClusterTrainingRuntimes and plays TrainJob statuses as
# Trainer v2.3 writes them (pkg/runtime/framework/plugins/jobset/jobset.go copies JobSet's Completed /
# Failed conditions as Complete / Failed; reasons and messages from kubernetes-sigs/jobset
# pkg/constants/constants.go) and JobSet's node-0 pod with its log.

NAME, NS = "medo1-sft-run7", "team-b"


def condition(kind, reason, message, at, status="True"):
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def jobs_status(active=0, succeeded=0, failed=0):
    return [{"name": "node", "active": active, "ready": active, "succeeded": succeeded, "failed": failed, "suspended": 0}]


CREATED = {}
RUNNING = {"jobsStatus": jobs_status(active=1)}
SUCCEEDED = {"conditions": [condition("Complete", "AllJobsCompleted", "jobset completed successfully", "2026-11-23T11:00:00Z")],
             "jobsStatus": jobs_status(succeeded=1)}
FAILED = {"conditions": [condition("Failed", "ReachedMaxRestarts",
                                   f"jobset failed due to reaching max number of restarts (first failed job: {NAME}-node-0)",
                                   "2026-11-23T10:30:00Z")],
          "jobsStatus": jobs_status(failed=1)}


@pytest.fixture
def kube():
    standin = KubeStandIn().start()
    for runtime in runtimes().values():
        standin.record(runtime)
    standin.record({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "kubeflow-trainer-public", "namespace": "kubeflow-system"},
                    "data": {"kubeflow_trainer_version": "v2.3.0"}})
    yield standin
    standin.stop()


def trainer_client(kube, namespace=NS):
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubernetes.client import Configuration

    return TrainerClient(KubernetesBackendConfig(namespace=namespace, client_configuration=Configuration(host=kube.url)))


def launch(kube, **options):
    settings = {"profile": "h100-1node", "job_name": NAME, "namespace": NS, "timeout_s": 30, "poll_s": 0.05} | options
    return launch_stage("sft", backend="trainjob", client=trainer_client(kube), **settings)


def expected_trainjob(timeout_s=30):
    job = build_trainjob("sft", stage_values("sft", profile="h100-1node"), job_name=NAME, namespace=NS, timeout_s=timeout_s)
    del job["metadata"]["namespace"]  # in the path, not the body
    return job


def test_trainjob_is_created_through_the_sdk_followed_and_succeeds(kube, capsys):
    run = ContainerRun("9f3e-uid", 0, ["loading /checkpoints/sft", "step 1 loss 2.31", "exported /checkpoints/sft/export"],
                       drop_first_connection_after=1)
    kube.script(NAME, [Step(CREATED), Step(RUNNING, run), Step(SUCCEEDED, run, exit_code=0)])

    result = launch(kube)

    assert result == LaunchResult("sft", "trainjob", NAME, NS, job_state({"status": SUCCEEDED}), "created")
    (post,) = kube.calls("POST", "trainjobs")
    assert post.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
    assert post.body == expected_trainjob()  # the SDK sent exactly what the launcher asked for
    assert k8s.schema_errors([post.body], CRDS) == []
    # The SDK looked the runtime up: namespaced first, then cluster-scoped.
    looked_up = [r.path for r in kube.requests if "trainingruntimes/medo1-sft" in r.path]
    assert looked_up[:2] == [f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainingruntimes/medo1-sft",
                             "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/medo1-sft"]
    assert capsys.readouterr().out.splitlines() == run.lines  # across the dropped connection, once each
    assert kube.calls("GET", "pods")[0].query["labelSelector"] == [
        f"jobset.sigs.k8s.io/jobset-name={NAME},jobset.sigs.k8s.io/replicatedjob-name=node,"
        "batch.kubernetes.io/job-completion-index=0"]
    assert kube.calls("DELETE", "trainjobs") == []
    # What the SDK itself reports for the job agrees (its own get_job: status from the conditions).
    assert trainer_client(kube).get_job(NAME).status == "Complete"


def test_trainjob_failure_surfaces_reason_message_and_log_tail(kube, capsys):
    run = ContainerRun("4b1d-uid", 0, ["step 1 loss 2.31", "torch.OutOfMemoryError: CUDA out of memory"])
    kube.script(NAME, [Step(CREATED), Step(RUNNING, run), Step(FAILED, run, exit_code=1)])
    with pytest.raises(JobFailed) as failure:
        launch(kube)
    message = str(failure.value)
    assert message.startswith(f"TrainJob {NS}/{NAME}: job failed: ReachedMaxRestarts: jobset failed due to reaching "
                              f"max number of restarts (first failed job: {NAME}-node-0)")
    assert message.endswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failure.value.state.reason == "ReachedMaxRestarts"
    assert len(kube.calls("POST", "trainjobs")) == 1  # JobSet restarts it, not the launcher


def test_a_failed_trainjob_from_an_earlier_attempt_is_replaced(kube, capsys):
    earlier = {**expected_trainjob(), "metadata": {**expected_trainjob()["metadata"], "namespace": NS}}
    kube.add_job(earlier, [Step(FAILED)])
    run = ContainerRun("77aa-uid", 0, ["resuming from checkpoint-40", "exported"])
    kube.script(NAME, [Step(RUNNING, run), Step(SUCCEEDED, run, exit_code=0)])
    result = launch(kube)
    assert result.action == "recreated"
    (delete,) = kube.calls("DELETE", "trainjobs")
    assert delete.body["propagationPolicy"] == "Foreground"
    assert len(kube.calls("POST", "trainjobs")) == 1
    assert capsys.readouterr().out.splitlines() == run.lines


@pytest.mark.parametrize("status,action", [(RUNNING, "attached"), (SUCCEEDED, "already-succeeded")])
def test_a_retried_launch_attaches_to_its_trainjob(kube, capsys, status, action):
    run = ContainerRun("31cc-uid", 0, ["step 7 loss 1.5"])
    earlier = {**expected_trainjob(), "metadata": {**expected_trainjob()["metadata"], "namespace": NS}}
    steps = [Step(RUNNING, run), Step(SUCCEEDED, run, exit_code=0)] if action == "attached" else [Step(SUCCEEDED)]
    kube.add_job(earlier, steps)
    result = launch(kube)
    assert result.action == action and result.state.phase == "Succeeded"
    assert kube.calls("POST", "trainjobs") == [] and kube.calls("DELETE", "trainjobs") == []
    assert capsys.readouterr().out.splitlines() == (run.lines if action == "attached" else [])


def test_a_runtime_that_is_not_installed_is_named_with_the_fix(kube):
    kube.recorded.pop("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes")
    with pytest.raises(LaunchError, match="no runtime 'medo1-sft' on the cluster: the platform team installs"):
        launch(kube)
    assert kube.calls("POST", "trainjobs") == []


@pytest.mark.slow
def test_sigterm_to_the_cli_deletes_the_trainjob_through_the_sdk(kube, tmp_path):
    name = "medo1-sft-cancelled"
    run = ContainerRun("0c0c-uid", 0, ["step 1 loss 2.31"])
    kube.script(name, [Step(CREATED), Step(RUNNING, run)])
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    args = ["launch", "sft", "--backend", "trainjob", "--runtime", "medo1-sft", "--profile", "h100-1node",
            "--job-name", name, "--poll", "0.1"]
    returncode, out, err = sigterm_while_following(args, kubeconfig, run, REPO)
    assert returncode == 128 + signal.SIGTERM, err
    assert f"cancelled by SIGTERM; deleted TrainJob {NS}/{name}" in err
    assert out.splitlines() == run.lines
    (delete,) = kube.calls("DELETE", "trainjobs")
    assert delete.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs/{name}"
    assert kube.jobs == {}


# ---- the runtime's container command, run here ---------------------------------------------------


def trainer_v2_env(trainjob_name, num_nodes, nproc, node_rank, master_port):
    """What Trainer v2.3 injects into the `node` container (kubeflow/trainer
    pkg/runtime/framework/plugins/torch/torch.go, EnforceMLPolicy; names in pkg/constants/constants.go):
    PET_NNODES (the trainer pod set's count, numNodes), PET_NPROC_PER_NODE (spec.trainer.numProcPerNode,
    else "auto"), PET_NODE_RANK (from the pod's job-completion-index annotation), PET_MASTER_ADDR
    (`<trainjob>-node-0-0.<trainjob>`, JobSet's headless service; 127.0.0.1 here) and PET_MASTER_PORT
    (ContainerTrainerPort, 29500; a free port here). The TrainJob's spec.trainer.env is upserted into it
    too. Unlike Training Operator v1 it sets no MASTER_ADDR / WORLD_SIZE / RANK: torchrun derives them."""
    assert trainjob_name
    return {"PET_NNODES": str(num_nodes), "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(master_port)}


@pytest.mark.slow
def test_runtime_container_runs_under_torchrun_with_trainers_env(tiny_model, tmp_path):
    """The CPU smoke values' medo1-sft runtime and the launcher's TrainJob on it, merged as Trainer's
    jobset plugin merges them (kubeflow/trainer pkg/runtime/framework/plugins/jobset/builder.go: the
    TrainJob's image, command and args replace the `node` container's; its env is upserted)."""
    values = k8s.load_profile("cpu-smoke")
    runtime = runtimes({**values, "runtimes": {"enabled": True}})["medo1-sft"]
    container = node_container(runtime)
    job = build_trainjob("sft", stage_values("sft", profile="cpu-smoke"), job_name="smoke")
    trainer = job["spec"]["trainer"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({e["name"]: e["value"] for e in trainer["env"]})
    args = trainer["args"]
    assert container["command"] == ["torchrun"] and env["MEDO1_RECIPE"] == "/opt/medo1/recipes/sft-tiny-cpu.yaml"

    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"] if m["mountPath"] != "/dev/shm"}
    for local in mounts.values():
        local.mkdir()

    def local_path(text):
        if text.startswith("/opt/medo1/recipes"):
            return str(REPO / "recipes") + text[len("/opt/medo1/recipes"):]
        for mount, local in mounts.items():
            text = text.replace(f"={mount}/", f"={local}/")
            if text.startswith(mount):
                text = str(local) + text[len(mount):]
        return text

    shutil.copy(DEMO_DATA, mounts["/data"] / "medical_o1_demo.json")
    shutil.copytree(tiny_model, mounts["/checkpoints"] / "tiny-model")
    env = {k: local_path(v) for k, v in env.items()}
    # Kubernetes expands $(VAR) in args from the container's env before the command starts.
    args = [local_path(a.replace("$(MEDO1_RECIPE)", env["MEDO1_RECIPE"])) for a in args]
    env.update(trainer_v2_env("smoke", trainer["numNodes"], "auto", 0, free_port()))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, *args], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    out = mounts["/checkpoints"] / "sft-tiny"
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == 2  # --nproc-per-node=2 from the TrainJob's args over PET_NPROC_PER_NODE=auto
    assert (out / "export" / "model.safetensors").is_file()


# ---- the pipeline's backend parameter ------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_training_step_launches_the_algorithms_runtime(kube, tmp_path, monkeypatch):
    """The compiled pipeline's `train` step with backend=trainjob and rl_algorithm=grpo: a TrainJob on
    medo1-grpo through the SDK (kubeconfig: the stand-in), carrying the pipeline's wiring as overrides."""
    from kfp import dsl

    from pipelines.medo1_pipeline import train

    # The kubernetes client reads $KUBECONFIG once, at import; this process imported it long ago.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
    kube.script("medo1-rl-run9", [Step(SUCCEEDED)])
    export = train.python_func(
        stage="rl", recipe="/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml", model="/checkpoints/runs/run9/sft/export",
        data="/data/medical_o1_verifiable.json", algorithm="grpo", overrides=[], output_dir="/checkpoints/runs/run9/rl",
        backend="trainjob", profile="h100-1node", nodes=1, gpus_per_node=8, data_pvc="medo1-data",
        checkpoints_pvc="medo1-checkpoints", hf_cache_pvc="medo1-hf-cache", job_name="medo1-rl-run9", timeout_hours=1.0,
        report=dsl.HTML(uri=str(tmp_path / "report")), metrics=dsl.Metrics(uri=str(tmp_path / "metrics")))
    assert export == "/checkpoints/runs/run9/rl/export"
    (post,) = kube.calls("POST", "trainjobs")
    assert post.body["spec"]["runtimeRef"] == {"name": "medo1-grpo", "kind": "ClusterTrainingRuntime"}
    assert post.body["spec"]["activeDeadlineSeconds"] == 3600
    args = post.body["spec"]["trainer"]["args"]
    assert args[args.index("algo=grpo") - 1] == "--set" and "output.dir=/checkpoints/runs/run9/rl" in args
    assert k8s.schema_errors([post.body], CRDS) == []


# ---- the README's Trainer v2 examples ------------------------------------------------------------


def readme_block(language):
    import re

    section = (REPO / "README.md").read_text().split("## Kubeflow Trainer v2\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S)[1]


def test_readme_trainjob_yaml_is_valid_on_a_medo1_runtime():
    """Its CEL rules: tests/test_cel_rules.py evaluates them on this TrainJob too."""
    import yaml

    job = yaml.safe_load(readme_block("yaml"))
    assert k8s.schema_errors([job], CRDS) == []
    assert unknown_fields(job, crd_schema("TrainJob")) == []
    assert job["spec"]["runtimeRef"]["name"] in runtimes()
    assert job["spec"]["trainer"]["env"][0]["name"] == "MEDO1_RECIPE"


def test_readme_python_creates_and_waits_for_a_trainjob_through_the_sdk(kube, tmp_path, monkeypatch):
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
    kube.script("*", [Step(CREATED), Step(SUCCEEDED)])
    namespace = {}
    exec(readme_block("python"), namespace)  # noqa: S102 (the README's own example, run as written)
    (post,) = kube.calls("POST", "trainjobs")
    assert post.body["metadata"]["name"] == namespace["job"]
    assert post.body["spec"]["runtimeRef"] == {"name": "medo1-sft", "kind": "ClusterTrainingRuntime"}
    assert post.body["spec"]["trainer"] == {"image": "ghcr.io/medo1/trainer:0.1.0", "numNodes": 2,
                                            "env": [{"name": "MEDO1_RECIPE", "value": "/data/my-sft-recipe.yaml"}]}
    assert k8s.schema_errors([post.body], CRDS) == []
