"""Kubeflow Trainer v2: the chart's ClusterTrainingRuntimes (medo1-sft, medo1-ppo, medo1-grpo, medo1-eval)
validate and are what Trainer and its SDK look for; the trainjob backend creates its TrainJob through the
Kubeflow SDK's TrainerClient against the local API stand-in (no cluster here), with Trainer v2.3 statuses
recorded; and a runtime's own container command runs here under torchrun with the env Trainer injects."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medo1 import chart
from medo1.launch import JobFailed, JobStuck, LaunchError, LaunchResult, job_state, launch_stage
from medo1.launch.rendering import stage_values
from medo1.launch.trainjob import build_trainjob
from medo1.training import checkpoint
from tests import manifest_checks
from tests.conftest import DEMO_DATA, REPO, free_port
from tests.helpers import TRAINJOB_CREATED as CREATED
from tests.helpers import TRAINJOB_SUCCEEDED as SUCCEEDED
from tests.helpers import jobs_status
from tests.helpers import trainjob_condition as condition
from tests.kube_standin import ContainerRun, KubeStandIn, Step, sigterm_while_following

CRDS = REPO / "tests" / "fixtures" / "crds"
RUNTIMES = ["medo1-eval", "medo1-grpo", "medo1-ppo", "medo1-sft"]
ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"


@functools.cache
def crd_schema(kind):
    return manifest_checks.crd_schemas(CRDS)[("trainer.kubeflow.org/v1alpha1", kind)]


def runtimes(values=None):
    objects = chart.render_chart(values if values is not None else chart.load_profile("trainer-v2-runtimes"))
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
    assert not [o for o in chart.render_chart({}) if o["kind"] == "ClusterTrainingRuntime"]
    objects = chart.render_chart(chart.load_profile("trainer-v2-runtimes"))
    runtimes_rendered = [o for o in objects if o["kind"] == "ClusterTrainingRuntime"]
    assert sorted(o["metadata"]["name"] for o in runtimes_rendered) == RUNTIMES
    # Besides them only who may get them (runtimes.readers; tests/test_helm_lifecycle.py launches as a team's account).
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects if o not in runtimes_rendered) == [
        ("ClusterRole", "medo1-cluster-reader"),
        ("ClusterRoleBinding", "medo1-cluster-reader"),
    ]
    assert all("namespace" not in o["metadata"] for o in objects)  # cluster-scoped


def test_every_runtime_validates_strictly_against_the_trainer_crds():
    objects = []
    for initializers in (False, True):
        values = {
            **chart.load_profile("trainer-v2-runtimes"),
            "runtimes": {"enabled": True, "initializers": {"enabled": initializers}},
        }
        objects += runtimes(values).values()
    existing = ["medo1-data", "medo1-checkpoints", "medo1-hf-cache"]
    assert manifest_checks.schema_errors(objects, CRDS) == []
    assert manifest_checks.policy_violations(objects, existing) == []
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
            "medo1-data",
            "medo1-checkpoints",
            "medo1-hf-cache",
        }
        container = node_container(runtime)
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/checkpoints", "/hf-cache", "/dev/shm"}
        assert "$(MEDO1_RECIPE)" in container["args"]
    recipes = {name: node_container(r)["env"][0] for name, r in runtimes().items()}
    assert recipes["medo1-grpo"] == {
        "name": "MEDO1_RECIPE",
        "value": "/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml",
    }
    assert node_container(runtimes()["medo1-sft"])["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert node_container(runtimes()["medo1-eval"])["command"] == ["medo1"]


def test_initializers_are_trainers_own_writing_into_the_data_volume():
    values = {
        **chart.load_profile("trainer-v2-runtimes"),
        "runtimes": {"enabled": True, "initializers": {"enabled": True}},
    }
    found = runtimes(values)
    for name in ("medo1-sft", "medo1-ppo", "medo1-grpo"):
        node = replicated_job(found[name], "node")
        assert node["dependsOn"] == [
            {"name": "dataset-initializer", "status": "Complete"},
            {"name": "model-initializer", "status": "Complete"},
        ]
        for step in ("dataset", "model"):
            job = replicated_job(found[name], f"{step}-initializer")
            assert job["template"]["metadata"]["labels"] == {ANCESTOR: f"{step}-initializer"}
            (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
            assert container["name"] == f"{step}-initializer"
            assert container["image"] == f"ghcr.io/kubeflow/trainer/{step}-initializer:v2.3.0"
            assert {"name": "data", "mountPath": "/workspace"} in container["volumeMounts"]
            env = {e["name"]: e for e in container["env"]}
            assert env["STORAGE_URI"]["value"].startswith("hf://")
            assert env["ACCESS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": "hf-token",
                "key": "HF_TOKEN",
                "optional": False,
            }
    assert [j["name"] for j in found["medo1-eval"]["spec"]["template"]["spec"]["replicatedJobs"]] == ["node"]


def test_values_schema_refuses_a_latest_initializer_image_and_a_bad_stage():
    from medo1.config import ConfigError

    for bad in (
        {
            "initializers": {
                "enabled": True,
                "dataset": {"image": "ghcr.io/kubeflow/trainer/dataset-initializer:latest", "storageUri": "hf://a/b"},
            }
        },
        {"training": {"dpo": {"stage": "dpo", "recipe": "/x.yaml"}}},
    ):
        with pytest.raises(ConfigError, match="^chart values refused by medo1: "):
            chart.render_chart({"runtimes": {"enabled": True, **bad}})


# ---- the TrainJob the launcher asks for ---------------------------------------------------------


def test_launcher_trainjobs_validate_and_name_their_runtime():
    cases = [
        ("sft", None, "h100-1node", "medo1-sft"),
        ("rl", "medo1-grpo", "h100-2nodes", "medo1-grpo"),
        ("rl", None, "h100-1node", "medo1-ppo"),
        ("eval", None, None, "medo1-eval"),
        ("sft", "medo1-sft", "cpu-smoke", "medo1-sft"),
    ]
    jobs = [
        build_trainjob(stage, stage_values(stage, profile=profile), runtime=runtime, timeout_s=3600)
        for stage, runtime, profile, _ in cases
    ]
    assert manifest_checks.schema_errors(jobs, CRDS) == []
    assert [unknown_fields(job, crd_schema("TrainJob")) for job in jobs] == [[]] * len(jobs)
    assert [job["spec"]["runtimeRef"] for job in jobs] == [
        {"name": name, "kind": "ClusterTrainingRuntime"} for *_, name in cases
    ]
    assert {job["spec"]["activeDeadlineSeconds"] for job in jobs} == {3600}


def test_launcher_trainjob_picks_the_recipe_and_the_shape():
    grpo = build_trainjob("rl", stage_values("rl", profile="h100-2nodes"), runtime="medo1-grpo")
    assert grpo["spec"]["trainer"]["env"][0] == {
        "name": "MEDO1_RECIPE",
        "value": "/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml",
    }
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


def test_the_two_node_profile_runs_trainjobs_with_its_node_shape():
    """Issue 26, item 8: Kueue no longer manages PyTorchJobs by default, so the Kueue profile (h100-2nodes) runs
    Trainer v2 TrainJobs. The platform's ClusterTrainingRuntime was installed with its own values (one node, no
    RDMA, no GPU node selector), so the TrainJob carries the profile's shape: each node's GPUs and InfiniBand
    device, NCCL with InfiniBand on, and the H100 node selector and GPU toleration as a runtime patch."""
    values = stage_values("sft", profile="h100-2nodes")
    assert values["backend"] == "trainjob"
    job = build_trainjob("sft", values)
    trainer = job["spec"]["trainer"]
    node = {"cpu": "80", "memory": "1000Gi", "nvidia.com/gpu": "8", "rdma/ib": "1"}
    assert trainer["resourcesPerNode"] == {"limits": node, "requests": node}
    assert {"name": "NCCL_IB_DISABLE", "value": "0"} in trainer["env"]
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "trainer.kubeflow.org/kubeflow-sdk"
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert replicated["name"] == "node"
    assert pod == {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 610,
    }  # tests/test_grace_period.py
    assert manifest_checks.schema_errors([job], CRDS) == [] and unknown_fields(job, crd_schema("TrainJob")) == []
    # A one-node CPU profile sets no placement, only the grace period.
    (cpu,) = build_trainjob("sft", stage_values("sft", profile="cpu-smoke"))["spec"]["runtimePatches"]
    assert cpu["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"
    ] == {"terminationGracePeriodSeconds": 600}


# ---- the SDK path against the stand-in API server -----------------------------------------------
# No cluster exists here. The Kubeflow SDK's TrainerClient and the kubernetes client talk HTTP to
# tests/kube_standin.py, which serves the chart's ClusterTrainingRuntimes and plays TrainJob statuses as
# Trainer v2.3 writes them (pkg/runtime/framework/plugins/jobset/jobset.go copies JobSet's Completed /
# Failed conditions as Complete / Failed; reasons and messages from kubernetes-sigs/jobset
# pkg/constants/constants.go) and JobSet's node-0 pod with its log.

NAME, NS = "medo1-sft-run7", "team-b"


# CREATED and SUCCEEDED: tests/helpers.py.
RUNNING = {"jobsStatus": jobs_status(active=1)}
FAILED = {
    "conditions": [
        condition(
            "Failed",
            "ReachedMaxRestarts",
            f"jobset failed due to reaching max number of restarts (first failed job: {NAME}-node-0)",
            "2026-11-23T10:30:00Z",
        )
    ],
    "jobsStatus": jobs_status(failed=1),
}


@pytest.fixture
def kube():
    standin = KubeStandIn().start()
    for runtime in runtimes().values():
        standin.record(runtime)
    standin.record(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kubeflow-trainer-public", "namespace": "kubeflow-system"},
            "data": {"kubeflow_trainer_version": "v2.3.0"},
        }
    )
    yield standin
    standin.stop()


def trainer_client(kube, namespace=NS):
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubernetes.client import Configuration

    return TrainerClient(
        KubernetesBackendConfig(namespace=namespace, client_configuration=Configuration(host=kube.url))
    )


def launch(kube, **options):
    settings = {"profile": "h100-1node", "job_name": NAME, "namespace": NS, "timeout_s": 30, "poll_s": 0.05} | options
    return launch_stage("sft", backend="trainjob", client=trainer_client(kube), **settings)


def expected_trainjob(timeout_s=30):
    job = build_trainjob(
        "sft", stage_values("sft", profile="h100-1node"), job_name=NAME, namespace=NS, timeout_s=timeout_s
    )
    del job["metadata"]["namespace"]  # in the path, not the body
    # As the launcher creates it (medo1.launch.retries): its name asked for as a label, its attempt counted.
    job["metadata"]["labels"]["medo1.io/job"] = NAME
    job["metadata"]["annotations"] = {"medo1.io/attempt": "1"}
    return job


def test_trainers_webhook_refuses_a_trainjob_whose_runtime_does_not_exist():
    """As Trainer's validating webhook does (the stand-in models it: kubeflow/trainer pkg/webhooks): a TrainJob
    naming a ClusterTrainingRuntime that is not there yet is refused with 403, and goes through once it is."""
    from kubernetes.client import ApiClient, Configuration, CustomObjectsApi
    from kubernetes.client.rest import ApiException

    standin = KubeStandIn().start()
    try:
        api = CustomObjectsApi(ApiClient(Configuration(host=standin.url)))
        trainjob = build_trainjob(
            "sft", stage_values("sft", profile="h100-1node-trainjob"), job_name=NAME, namespace=NS
        )
        create = functools.partial(
            api.create_namespaced_custom_object, "trainer.kubeflow.org", "v1alpha1", NS, "trainjobs"
        )
        with pytest.raises(ApiException) as refused:
            create(trainjob)
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        assert message.startswith('admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: ')
        assert message.endswith(
            'ClusterTrainingRuntime.trainer.kubeflow.org "medo1-sft" not found: specified clusterTrainingRuntime '
            "must be created before the TrainJob is created"
        )
        standin.record(runtimes()["medo1-sft"])
        assert create(trainjob)["metadata"]["name"] == NAME
    finally:
        standin.stop()


def test_a_client_for_the_other_backend_than_the_values_choose_is_a_one_line_error(kube):
    """The backend comes from the values when none is named (issue 26, item 5), and the Kueue profile's is
    trainjob (item 8): a caller's v1 TrainingClient there was an AttributeError deep in the launch; now it is
    refused before anything is sent, naming the client wanted and the backend to pass for this one."""
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    settings = {"profile": "h100-2nodes", "job_name": NAME, "namespace": NS, "timeout_s": 30, "poll_s": 0.05}
    with pytest.raises(LaunchError) as refused:
        launch_stage("sft", client=TrainingClient(client_configuration=Configuration(host=kube.url)), **settings)
    assert str(refused.value) == (
        "backend trainjob (Kubeflow Trainer v2) needs a TrainerClient (kubeflow.trainer), not a "
        "TrainingClient; for a PyTorchJob with this client pass backend 'pytorchjob'"
    )
    with pytest.raises(
        LaunchError,
        match="^backend pytorchjob needs a TrainingClient .kubeflow.training., not a "
        "TrainerClient; for a TrainJob with this client pass backend 'trainjob'$",
    ):
        launch_stage("sft", backend="pytorchjob", client=trainer_client(kube), **settings)
    assert [r for r in kube.requests if r.method != "GET"] == []


def test_trainjob_is_created_through_the_sdk_followed_and_succeeds(kube, capsys):
    run = ContainerRun(
        "9f3e-uid",
        0,
        ["loading /checkpoints/sft", "step 1 loss 2.31", "exported /checkpoints/sft/export"],
        drop_first_connection_after=1,
    )
    kube.script(NAME, [Step(CREATED), Step(RUNNING, run), Step(SUCCEEDED, run, exit_code=0)])

    result = launch(kube)

    assert result == LaunchResult(
        "sft", "trainjob", NAME, NS, job_state({"status": SUCCEEDED}), "created", kind="TrainJob"
    )
    (post,) = kube.calls("POST", "trainjobs")
    assert post.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
    assert post.body == expected_trainjob()  # the SDK sent exactly what the launcher asked for
    assert manifest_checks.schema_errors([post.body], CRDS) == []
    # The SDK looked the runtime up: namespaced first, then cluster-scoped.
    looked_up = [r.path for r in kube.requests if "trainingruntimes/medo1-sft" in r.path]
    assert looked_up[:2] == [
        f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainingruntimes/medo1-sft",
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/medo1-sft",
    ]
    assert capsys.readouterr().out.splitlines() == run.lines  # across the dropped connection, once each
    assert kube.calls("GET", "pods")[0].query["labelSelector"] == [
        f"jobset.sigs.k8s.io/jobset-name={NAME},jobset.sigs.k8s.io/replicatedjob-name=node,"
        "batch.kubernetes.io/job-completion-index=0"
    ]
    assert kube.calls("DELETE", "trainjobs") == []
    # What the SDK itself reports for the job agrees (its own get_job: status from the conditions).
    assert trainer_client(kube).get_job(NAME).status == "Complete"


def test_trainjob_failure_surfaces_reason_message_and_log_tail(kube, capsys):
    run = ContainerRun("4b1d-uid", 0, ["step 1 loss 2.31", "torch.OutOfMemoryError: CUDA out of memory"])
    kube.script(NAME, [Step(CREATED), Step(RUNNING, run), Step(FAILED, run, exit_code=1)])
    with pytest.raises(JobFailed) as failure:
        launch(kube)
    message = str(failure.value)
    assert message.startswith(
        f"TrainJob {NS}/{NAME}: job failed: ReachedMaxRestarts: jobset failed due to reaching "
        f"max number of restarts (first failed job: {NAME}-node-0)"
    )
    assert message.endswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failure.value.state.reason == "ReachedMaxRestarts"
    assert len(kube.calls("POST", "trainjobs")) == 1  # JobSet restarts it, not the launcher


def test_a_failed_trainjob_from_an_earlier_attempt_is_not_created_again(kube, capsys):
    """Issue 26 item 13: JobSet restarted it (failurePolicy.maxRestarts); a retried step (pipeline retry, the run
    Job's next pod) reports the failure instead of starting the whole job again with as many restarts."""
    earlier = {**expected_trainjob(), "metadata": {**expected_trainjob()["metadata"], "namespace": NS}}
    kube.add_job(earlier, [Step(FAILED)])
    with pytest.raises(JobFailed) as failure:
        launch(kube)
    message = str(failure.value)
    assert message.startswith(f"TrainJob {NS}/{NAME}: job failed: ReachedMaxRestarts: ")
    assert (
        "not created again: its JobSet (failurePolicy.maxRestarts) restarts it, not the launcher; to start it "
        f"over, delete it (kubectl delete trainjob -n {NS} {NAME}) and launch again"
    ) in message
    assert kube.calls("POST", "trainjobs") == [] and kube.calls("DELETE", "trainjobs") == []


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


@pytest.mark.multiprocess
def test_sigterm_to_the_cli_deletes_the_trainjob_through_the_sdk(kube, tmp_path):
    name = "medo1-sft-cancelled"
    run = ContainerRun("0c0c-uid", 0, ["step 1 loss 2.31"])
    kube.script(name, [Step(CREATED), Step(RUNNING, run)])
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    args = [
        "launch",
        "sft",
        "--backend",
        "trainjob",
        "--runtime",
        "medo1-sft",
        "--profile",
        "h100-1node",
        "--job-name",
        name,
        "--poll",
        "0.1",
    ]
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
    return {
        "PET_NNODES": str(num_nodes),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(master_port),
    }


@pytest.mark.multiprocess
def test_runtime_container_runs_under_torchrun_with_trainers_env(tiny_model, tmp_path):
    """The CPU smoke values' medo1-sft runtime and the launcher's TrainJob on it, merged as Trainer's
    jobset plugin merges them (kubeflow/trainer pkg/runtime/framework/plugins/jobset/builder.go: the
    TrainJob's image, command and args replace the `node` container's; its env is upserted)."""
    values = chart.load_profile("cpu-smoke")
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
            return str(REPO / "recipes") + text[len("/opt/medo1/recipes") :]
        for mount, local in mounts.items():
            text = text.replace(f"={mount}/", f"={local}/")
            if text.startswith(mount):
                text = str(local) + text[len(mount) :]
        return text

    shutil.copy(DEMO_DATA, mounts["/data"] / "medical_o1_demo.json")
    shutil.copytree(tiny_model, mounts["/checkpoints"] / "tiny-model")
    env = {k: local_path(v) for k, v in env.items()}
    # Kubernetes expands $(VAR) in args from the container's env before the command starts.
    args = [local_path(a.replace("$(MEDO1_RECIPE)", env["MEDO1_RECIPE"])) for a in args]
    env.update(trainer_v2_env("smoke", trainer["numNodes"], "auto", 0, free_port()))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run(
        [torchrun, *args], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]

    out = mounts["/checkpoints"] / "sft-tiny"
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == 2  # --nproc-per-node=2 from the TrainJob's args over PET_NPROC_PER_NODE=auto
    assert (out / "export" / "model.safetensors").is_file()


# ---- the pipeline's backend parameter ------------------------------------------------------------


@pytest.mark.e2e
def test_pipeline_training_step_launches_the_algorithms_runtime(kube, tmp_path, monkeypatch):
    """The compiled pipeline's `train` step with backend=trainjob and rl_algorithm=grpo: a TrainJob on
    medo1-grpo through the SDK (kubeconfig: the stand-in), carrying the pipeline's wiring as overrides."""
    from kfp import dsl

    from pipelines.medo1_pipeline import train

    # The kubernetes client reads $KUBECONFIG once, at import; this process imported it long ago.
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
    )
    kube.script("medo1-rl-run9", [Step(SUCCEEDED)])
    export = train.python_func(
        stage="rl",
        recipe="/opt/medo1/recipes/rl-grpo-qwen2.5-7b-8xh100.yaml",
        model="/checkpoints/runs/run9/sft/export",
        data="/data/medical_o1_verifiable.json",
        algorithm="grpo",
        overrides=[],
        output_dir="/checkpoints/runs/run9/rl",
        backend="trainjob",
        profile="h100-1node",
        nodes=1,
        gpus_per_node=8,
        data_pvc="medo1-data",
        checkpoints_pvc="medo1-checkpoints",
        hf_cache_pvc="medo1-hf-cache",
        job_name="medo1-rl-run9",
        timeout_hours=1.0,
        report=dsl.HTML(uri=str(tmp_path / "report")),
        metrics=dsl.Metrics(uri=str(tmp_path / "metrics")),
    )
    assert export == "/checkpoints/runs/run9/rl/export"
    (post,) = kube.calls("POST", "trainjobs")
    assert post.body["spec"]["runtimeRef"] == {"name": "medo1-grpo", "kind": "ClusterTrainingRuntime"}
    assert post.body["spec"]["activeDeadlineSeconds"] == 3600
    args = post.body["spec"]["trainer"]["args"]
    assert args[args.index("algo=grpo") - 1] == "--set" and "output.dir=/checkpoints/runs/run9/rl" in args
    assert manifest_checks.schema_errors([post.body], CRDS) == []


# ---- the README's Trainer v2 examples ------------------------------------------------------------


def readme_block(language):
    import re

    section = (REPO / "README.md").read_text().split("## Kubeflow Trainer v2\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S)[1]


def test_readme_trainjob_yaml_is_valid_on_a_medo1_runtime():
    """Its CEL rules: tests/test_cel_rules.py evaluates them on this TrainJob too."""
    import yaml

    job = yaml.safe_load(readme_block("yaml"))
    assert manifest_checks.schema_errors([job], CRDS) == []
    assert unknown_fields(job, crd_schema("TrainJob")) == []
    assert job["spec"]["runtimeRef"]["name"] in runtimes()
    assert job["spec"]["trainer"]["env"][0]["name"] == "MEDO1_RECIPE"


def test_readme_python_creates_and_waits_for_a_trainjob_through_the_sdk(kube, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
    )
    kube.script("*", [Step(CREATED), Step(SUCCEEDED)])
    namespace = {}
    exec(readme_block("python"), namespace)  # noqa: S102 (the README's own example, run as written)
    (post,) = kube.calls("POST", "trainjobs")
    assert post.body["metadata"]["name"] == namespace["job"]
    assert post.body["spec"]["runtimeRef"] == {"name": "medo1-sft", "kind": "ClusterTrainingRuntime"}
    assert post.body["spec"]["trainer"] == {
        "image": "ghcr.io/medo1/trainer:0.1.0",
        "numNodes": 2,
        "env": [{"name": "MEDO1_RECIPE", "value": "/data/my-sft-recipe.yaml"}],
    }
    assert manifest_checks.schema_errors([post.body], CRDS) == []


# ---- stuck pods, admission, no controller; the SDK's header dump; who manages the job ---------------------------

QUOTA = (
    "exceeded quota: gpu, requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=0, "
    "limited: requests.nvidia.com/gpu=4"
)


def unschedulable_node_pod(name):
    """JobSet's pod for node 0 of TrainJob `name`, Pending: no node has the GPUs."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-node-0-0-8wzq2",
            "namespace": NS,
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": "0",
            },
        },
        "spec": {"containers": [{"name": "node", "image": "ghcr.io/medo1/trainer:0.1.0"}]},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": "2026-11-23T10:00:01Z",
                }
            ],
        },
    }


def test_a_trainjob_pod_stuck_unschedulable_fails_after_stuck_after(kube):
    kube.script(NAME, [Step(RUNNING)])
    kube.record(unschedulable_node_pod(NAME))
    with pytest.raises(JobStuck) as failure:
        launch(kube, stuck_after_s=0.3)
    message = str(failure.value)
    assert f"TrainJob {NS}/{NAME}: stuck for over 0 s: pod {NAME}-node-0-0-8wzq2: Unschedulable: 0/3 nodes" in message
    assert message.endswith("; deleted it") and "\n" not in message
    (delete,) = kube.calls("DELETE", "trainjobs")
    assert delete.path.endswith(f"/trainjobs/{NAME}")
    assert [f"jobset.sigs.k8s.io/jobset-name={NAME}"] in [
        r.query.get("labelSelector") for r in kube.calls("GET", "pods")
    ]


@pytest.mark.parametrize("refused", [True, False], ids=["admission-refuses-pods", "no-trainer-controller"])
def test_a_trainjob_whose_pods_never_come_fails_with_the_reason(refused):
    standin = KubeStandIn(refuse_pods=QUOTA) if refused else KubeStandIn(controllers={"PyTorchJob", "Job"})
    standin.start()
    for runtime in runtimes().values():
        standin.record(runtime)
    standin.script(NAME, [Step(RUNNING if refused else CREATED)])
    try:
        with pytest.raises(JobStuck) as failure:
            launch(standin, stuck_after_s=0.3)
    finally:
        standin.stop()
    message = str(failure.value)
    assert "\n" not in message
    if refused:  # JobSet's child Job records the Job controller's FailedCreate
        assert f'FailedCreatePod: Error creating: pods "{NAME}-node-0-0-5tq8r" is forbidden: {QUOTA}' in message
    else:
        assert (
            "NoController: no controller is acting on this job (is the Kubeflow Trainer controller (and JobSet's) "
            "running?)"
        ) in message


def test_trainjobs_are_managed_by_medo1_and_owned_by_the_run_job(kube, monkeypatch):
    """Not `app.kubernetes.io/managed-by: Helm`: Helm does not manage them. In the chart's run pod the TrainJob
    is owned by the run Job (issue 26 item 12), set right after the SDK creates it."""
    run_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "medo1-run",
        "uid": "7d3c1e0a-run-job-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    kube.record(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "medo1-run-x8k2f", "namespace": NS, "ownerReferences": [run_job]},
        }
    )
    monkeypatch.setenv("MEDO1_POD_NAME", "medo1-run-x8k2f")
    kube.script(NAME, [Step(SUCCEEDED)])
    launch(kube)
    (post,) = kube.calls("POST", "trainjobs")
    assert post.body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "medo1"
    (patch,) = kube.calls("PATCH", "trainjobs")
    assert patch.body == {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "medo1-run", "uid": "7d3c1e0a-run-job-uid"}
            ]
        }
    }


def test_the_sdks_version_check_does_not_dump_http_headers(kube, tmp_path, monkeypatch, caplog):
    """A namespaced account cannot read kubeflow-system: the SDK logged the whole 403 response, headers included."""
    from medo1.launch.trainjob import trainer_client as launcher_trainer_client

    kube.recorded.pop("/api/v1/namespaces/kubeflow-system/configmaps")
    kube.forbidden.add("/api/v1/namespaces/kubeflow-system/configmaps/kubeflow-trainer-public")
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
    )
    caplog.set_level(logging.DEBUG)
    client = launcher_trainer_client(NS)
    assert client.backend.namespace == NS
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "HTTP response headers" not in caplog.text
    assert any(r.path == "/api/v1/namespaces/kubeflow-system/configmaps/kubeflow-trainer-public" for r in kube.requests)


# ---- the chart's run Job with backend trainjob creates TrainJobs -------------------------------------------------


def test_the_charts_chain_with_backend_trainjob_creates_trainjobs(kube, tmp_path, monkeypatch, capsys):
    """The run Job's own command (`launch chain --values ...`, no --backend) on the chain's ConfigMap values: a TrainJob
    for SFT on medo1-sft, and the upload stage (no Trainer runtime) as the chart's batch Job."""
    from medo1.cli import main

    # The run Job's UID, which Kubernetes gives the run pod as MEDO1_RUN_ID: the chain's jobs and outputs are this run's.
    run_uid = "5e6f7a8b-1c2d-4e3f-9a0b-c1d2e3f4a5b6"
    # The SFT export the chain waits for before the next stage, where this run's SFT writes it (<output>/<release>/<run>).
    (tmp_path / "sft" / "medo1" / "5e6f7a8b" / "export").mkdir(parents=True)
    cache = tmp_path / "hf-cache" / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "a09a3545"
    cache.mkdir(parents=True)  # the base model is in the HF cache (no Hub here)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache" / "hub"))
    values = {
        **chart.load_profile("h100-1node-trainjob"),
        "chain": {"enabled": True},
        # The image's recipe, read from this checkout (the chain reads a training stage's output.dir from it).
        "stages": {
            "sft": {
                "recipe": str(REPO / "recipes" / "sft-qwen2.5-7b-8xh100.yaml"),
                "set": [f"output.dir={tmp_path / 'sft'}"],
            }
        },
        "jobs": {"upload": {"enabled": True, "recipe": str(REPO / "recipes" / "upload.yaml")}},
    }
    objects = chart.render_chart(values)
    run = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-run"))
    # The values snapshot the run pod mounts at /etc/medo1 (an immutable ConfigMap named by its content).
    (snapshot,) = [
        v["configMap"]["name"] for v in run["spec"]["template"]["spec"]["volumes"] if v["name"] == "chain-values"
    ]
    chain_values = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == snapshot)
    (tmp_path / "values.yaml").write_text(chain_values["data"]["values.yaml"])
    container = run["spec"]["template"]["spec"]["containers"][0]
    # Kubernetes expands $(VAR) in args from the container's env: the pod's namespace and the run Job's UID.
    expanded = {
        "$(MEDO1_NAMESPACE)": NS,
        "$(MEDO1_RUN_ID)": run_uid,
        "/etc/medo1/values.yaml": str(tmp_path / "values.yaml"),
    }
    args = [expanded.get(a, a) for a in container["args"]]
    assert container["command"] == ["medo1"] and args[:2] == ["launch", "chain"] and "--backend" not in args
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
    )
    kube.script("*", [Step(SUCCEEDED)])
    kube.script(
        "medo1-upload-5e6f7a8b",
        [
            Step(
                {
                    "succeeded": 1,
                    "conditions": [condition("Complete", "CompletionsReached", "", "2026-11-23T12:00:00Z")],
                }
            )
        ],
    )

    assert main([*args, "--poll", "0.05"]) == 0

    (trainjob,) = kube.calls("POST", "trainjobs")
    assert trainjob.body["spec"]["runtimeRef"] == {"name": "medo1-sft", "kind": "ClusterTrainingRuntime"}
    (upload,) = kube.calls("POST", "jobs")
    assert trainjob.body["metadata"]["name"] == "medo1-sft-5e6f7a8b"
    assert upload.body["kind"] == "Job" and upload.body["metadata"]["name"] == "medo1-upload-5e6f7a8b"
    assert kube.calls("POST", "pytorchjobs") == []
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    # The upload's batch Job comes through the pytorchjob backend's client, and says it was a Job.
    assert [(r["stage"], r["backend"], r["kind"]) for r in results] == [
        ("sft", "trainjob", "TrainJob"),
        ("upload", "pytorchjob", "Job"),
    ]
