"""The launcher: its PyTorchJob is the chart's; its wait reads recorded PyTorchJob statuses; the
pytorchjob backend runs against a stand-in API server (no cluster here); the local backend for real,
alone and as the chain of stages the chart's run Job drives."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medo1 import chart
from medo1.cli import main
from medo1.launch import (
    DEFAULT_TIMEOUT_S,
    JobFailed,
    JobState,
    JobTimedOut,
    LaunchError,
    LaunchResult,
    PlanDoesNotFit,
    build_job,
    build_pytorchjob,
    job_state,
    launch_stage,
    local_command,
    stage_job,
    stage_values,
    wait_for_job,
)
from medo1.launch.grace import apply_grace_period, grace_period_s
from medo1.training import checkpoint
from medo1.training.run_lock import RunLock
from tests import manifest_checks
from tests.conftest import DEMO_DATA, REPO, TINY_RECIPE, last_logged_step, run_medo1
from tests.helpers import PYTORCHJOB_CREATED as CREATED
from tests.helpers import PYTORCHJOB_SUCCEEDED as SUCCEEDED
from tests.helpers import pytorchjob_condition as condition
from tests.kube_standin import ContainerRun, KubeStandIn, Step, sigterm_while_following

CRDS = REPO / "tests" / "fixtures" / "crds"


# Status objects shaped as Training Operator v1.9 writes them (CREATED and SUCCEEDED: tests/helpers.py).
RUNNING = {
    "status": {
        "conditions": [
            {**condition("Created", "PyTorchJobCreated"), "status": "True"},
            condition("Running", "PyTorchJobRunning", "PyTorchJob medo1-sft is running.", "2026-11-23T10:01:00Z"),
        ]
    }
}
RESTARTING = {
    "status": {
        "conditions": [
            condition("Created", "PyTorchJobCreated"),
            {**condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
            condition(
                "Restarting",
                "PyTorchJobRestarting",
                "PyTorchJob medo1-sft is restarting because 1 Master replica(s) failed.",
                "2026-11-23T10:05:00Z",
            ),
        ]
    }
}
FAILED = {
    "status": {
        "conditions": [
            condition("Created", "PyTorchJobCreated"),
            {**condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
            condition(
                "Failed",
                "PyTorchJobFailed",
                "PyTorchJob medo1-sft has failed because it has reached the specified backoff limit",
                "2026-11-23T10:30:00Z",
            ),
        ]
    }
}


class Recorded:
    """Replays status objects in order (the last one repeats); a fake clock advances per sleep."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)
        self.reads = 0
        self.now = 0.0

    def read(self):
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return copy.deepcopy(status)

    def sleep(self, seconds):
        self.now += seconds


def wait(recorded, timeout_s=600, poll_s=10):
    return wait_for_job(recorded.read, timeout_s, poll_s, clock=lambda: recorded.now, sleep=recorded.sleep)


@pytest.mark.parametrize(
    "status,phase",
    [
        ({}, "Pending"),
        (CREATED, "Created"),
        (RUNNING, "Running"),
        (RESTARTING, "Restarting"),
        (SUCCEEDED, "Succeeded"),
        (FAILED, "Failed"),
    ],
)
def test_job_state_reads_conditions(status, phase):
    assert job_state(status).phase == phase


def test_wait_returns_on_success_after_a_restart():
    recorded = Recorded(CREATED, RUNNING, RESTARTING, RUNNING, SUCCEEDED)
    state = wait(recorded)
    assert state == JobState("Succeeded", "PyTorchJobSucceeded", "PyTorchJob medo1-sft is successfully completed.")
    assert recorded.reads == 5 and recorded.now == 40


def test_wait_surfaces_the_failure_reason():
    with pytest.raises(LaunchError, match="PyTorchJobFailed: .*backoff limit"):
        wait(Recorded(CREATED, RUNNING, FAILED))


def test_wait_times_out_with_the_last_state():
    recorded = Recorded(CREATED, RUNNING, RESTARTING)
    with pytest.raises(LaunchError, match=r"still Restarting after 60 s \(restarted 1 time\(s\)\)"):
        wait(recorded, timeout_s=60, poll_s=10)
    assert recorded.now == 60


def test_launcher_job_is_the_charts_rendering_and_validates():
    values = {**chart.load_profile("h100-1node"), "chain": {"enabled": False}}  # every job rendered at once
    job = build_pytorchjob("rl", values)
    rendered = [
        o for o in chart.render_chart(values) if o["kind"] == "PyTorchJob" and o["metadata"]["name"] == "medo1-rl"
    ]
    expected = {**rendered[0], "metadata": {**rendered[0]["metadata"], "namespace": chart.NAMESPACE}}
    assert job == expected
    assert manifest_checks.schema_errors([job], CRDS) == []
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][2] == "rl"


def test_launcher_refuses_an_unknown_stage():
    with pytest.raises(LaunchError, match="known stages"):
        build_pytorchjob("sfft")


# ---- launch_stage: values, names, the local command ----------------------------------------------


def test_values_merge_profile_then_files_then_values_and_append_recipe_overrides(tmp_path):
    values_file = tmp_path / "site.yaml"
    values_file.write_text("cluster: {nodes: 4, cpu: '64'}\nkueue: {queueName: site}\n")
    values = stage_values(
        "sft",
        profile="h100-2nodes",
        values_files=[values_file],
        value_overrides=["cluster.nodes=3", "kueue.queueName=h100-low"],
        recipe="/data/recipes/sft.yaml",
        overrides=["train.max_steps=5"],
    )
    assert (
        values["cluster"]["nodes"] == 3 and values["cluster"]["cpu"] == "64" and values["cluster"]["gpusPerNode"] == 8
    )
    assert values["kueue"]["queueName"] == "h100-low"
    defaults = chart.chart_defaults()["stages"]["sft"]
    # A recipe of one's own: the profile's `set` (for the profile's recipe) does not apply.
    assert values["stages"]["sft"] == {"recipe": "/data/recipes/sft.yaml", "set": ["train.max_steps=5"]}
    assert stage_values("sft", profile="cpu-smoke", overrides=["train.max_steps=5"])["stages"]["sft"]["set"] == [
        *chart.load_profile("cpu-smoke")["stages"]["sft"]["set"],
        "train.max_steps=5",
    ]
    assert defaults["set"] == []  # the recipe holds the stage's paths
    job = stage_job(
        "sft",
        profile="h100-2nodes",
        values_files=[values_file],
        value_overrides=["cluster.nodes=3"],
        overrides=["train.max_steps=5"],
        job_name="medo1-sft-0f9c2a",
    )
    assert (
        job["metadata"]["name"] == "medo1-sft-0f9c2a" and job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    )
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--set",
        "train.max_steps=5",
    ]


@pytest.mark.parametrize("name", ["Medo1-sft", "1-sft", "medo1-sft-", "medo1_sft", "m" * 55])
def test_job_names_the_operator_would_refuse_are_refused(name):
    with pytest.raises(LaunchError, match="job name"):
        stage_job("sft", profile="h100-1node", job_name=name)


@pytest.mark.parametrize(
    "options,problem",
    [
        ({"backend": "pytorchjob", "nproc": 2}, "nproc is for the local backend"),
        ({"backend": "slurm"}, "unknown backend"),
        ({"profile": "h100-9nodes"}, "no profile 'h100-9nodes'"),
        ({"value_overrides": ["cluster.nodes"]}, "must look like key.path=value"),
    ],
)
def test_launch_options_that_cannot_work_are_refused(options, problem):
    with pytest.raises(LaunchError, match=problem):
        stage_job("sft", **options)


def test_local_command_is_the_master_container_under_this_torchrun(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", "hf_not_to_be_printed")
    caplog.set_level(logging.INFO, logger="medo1.launch")
    job = stage_job(
        "sft", backend="local", profile="h100-2nodes", nproc=1, value_overrides=["secrets.wandbApiKey.name=wandb"]
    )
    command, env = local_command(job)
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert command == [str(Path(sys.executable).with_name("torchrun")), *container["args"]]
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert {k: env[k] for k in ("PET_NNODES", "PET_NPROC_PER_NODE", "WORLD_SIZE", "PET_MASTER_ADDR")} == {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "1",
        "WORLD_SIZE": "1",
        "PET_MASTER_ADDR": "127.0.0.1",
    }
    assert env["NCCL_DEBUG"] == "WARN"
    assert "HF_TOKEN" not in env and "WANDB_API_KEY" not in env  # inherited from this environment, if set
    assert not Path("/hf-cache").exists() and "HF_HOME" not in env
    assert "not setting HF_HOME: it points into the volume mount /hf-cache" in caplog.text
    assert "HF_TOKEN comes from Secret hf-token in a pod; here from this environment (set)" in caplog.text
    assert "WANDB_API_KEY comes from Secret wandb in a pod; here from this environment (not set)" in caplog.text
    assert "hf_not_to_be_printed" not in caplog.text

    job = stage_job(
        "sft", backend="local", profile="cpu-smoke", value_overrides=[f"storage.hfCache.mountPath={tmp_path}"]
    )
    _, env = local_command(job)
    assert env["HF_HOME"] == str(tmp_path) and env["PET_NPROC_PER_NODE"] == "2"


# ---- pytorchjob backend against a stand-in API server --------------------------------------------
# No Kubernetes cluster exists on this machine. The real kubernetes client and Kubeflow training SDK
# talk HTTP to tests/kube_standin.py, which plays Training Operator statuses and the Master's log.

NAME, NS = "medo1-sft-run42", "team-a"
RUNNING_AGAIN = {
    "status": {
        "conditions": [
            condition("Created", "PyTorchJobCreated"),
            condition("Running", "PyTorchJobRunning", "PyTorchJob medo1-sft is running.", "2026-11-23T10:06:00Z"),
            {**condition("Restarting", "PyTorchJobRestarting", at="2026-11-23T10:05:00Z"), "status": "False"},
        ]
    }
}


@pytest.fixture
def kube():
    standin = KubeStandIn().start()
    yield standin
    standin.stop()


def launched(job, attempt=1, base=None):
    """A job as the launcher creates it: managed by medo1 (not Helm), labelled with the name asked for, its
    attempt counted on it (medo1.launch.retries)."""
    metadata = job["metadata"]
    metadata["labels"] = {
        **metadata["labels"],
        "app.kubernetes.io/managed-by": "medo1",
        "medo1.io/job": base or metadata["name"],
    }
    metadata["annotations"] = {"medo1.io/attempt": str(attempt)}
    return job


def expected_job(name=NAME, namespace=NS, timeout_s=30, attempt=1):
    job = build_pytorchjob("sft", chart.load_profile("h100-1node"), namespace=namespace)
    job["metadata"]["name"] = name
    # The grace period for the stage's checkpoint (tests/test_grace_period.py).
    apply_grace_period(job, grace_period_s("sft", chart.load_profile("h100-1node"))[0])
    # The launcher bounds the job's life by its own timeout, so a dead launcher frees the GPUs then.
    job["spec"]["runPolicy"]["activeDeadlineSeconds"] = int(timeout_s)
    return launched(job, attempt)


def launch(kube, **options):
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    client = TrainingClient(client_configuration=Configuration(host=kube.url))
    settings = {"profile": "h100-1node", "job_name": NAME, "namespace": NS, "timeout_s": 30, "poll_s": 0.05} | options
    return launch_stage("sft", client=client, **settings)


def test_pytorchjob_is_created_followed_through_a_restart_and_succeeds(kube, capsys):
    first = ContainerRun(
        "5d1c-uid",
        0,
        [
            "loading /checkpoints/sft",
            "step 1 loss 2.31",
            "step 2 loss 2.12",
            "saved checkpoint-2",
            "RuntimeError: NCCL watchdog timeout",
        ],
        drop_first_connection_after=2,
    )
    second = ContainerRun(
        "5d1c-uid", 1, ["resuming from checkpoint-2", "", "step 3 loss 1.98", "exported /checkpoints/sft/export"]
    )
    kube.script(
        NAME,
        [
            Step(CREATED["status"]),
            Step(RUNNING["status"], first),
            Step(RESTARTING["status"], first, exit_code=1),
            Step(RUNNING_AGAIN["status"], second),
            Step(SUCCEEDED["status"], second, exit_code=0),
        ],
    )

    result = launch(kube)

    assert result == LaunchResult("sft", "pytorchjob", NAME, NS, job_state(SUCCEEDED), "created", kind="PyTorchJob")
    (post,) = kube.calls("POST")
    assert post.path == f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"
    assert post.body == expected_job()
    assert manifest_checks.schema_errors([post.body], CRDS) == []
    # Every line once, in order: across the dropped connection (reconnected, duplicates skipped by
    # timestamp) and the container's restart (a new run of the same pod).
    assert capsys.readouterr().out.splitlines() == first.lines + second.lines
    assert first.connections == 2 and second.connections == 1
    assert kube.calls("DELETE") == []
    pod_lists = kube.calls("GET", "pods")
    assert pod_lists[0].query["labelSelector"] == [
        f"training.kubeflow.org/job-name={NAME},training.kubeflow.org/job-role=master"
    ]


def test_pytorchjob_failure_surfaces_reason_message_and_log_tail(kube, capsys):
    run = ContainerRun(
        "7a2e-uid",
        0,
        [
            "step 1 loss 2.31",
            "Traceback (most recent call last):",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ],
    )
    kube.script(NAME, [Step(CREATED["status"]), Step(RUNNING["status"], run), Step(FAILED["status"], run, exit_code=1)])

    with pytest.raises(JobFailed) as failed:
        launch(kube, value_overrides=["runPolicy.jobRestarts=0"])

    message = str(failed.value)
    assert message.startswith(f"PyTorchJob {NS}/{NAME}: job failed: PyTorchJobFailed: ")
    assert (
        "reached the specified backoff limit\nnot restarted: that was attempt 1 of 1 (runPolicy.jobRestarts=0)\n"
        "last 3 lines of the Master pod log:\n"
    ) in message
    assert message.endswith("\n".join(run.lines))
    assert failed.value.state == job_state(FAILED)
    assert kube.calls("DELETE") == []  # kept for inspection; a retry of the step replaces it


@pytest.mark.parametrize("keep", [False, True])
def test_pytorchjob_timeout_deletes_the_job_unless_kept(kube, keep):
    kube.script(
        NAME, [Step(CREATED["status"]), Step(RUNNING["status"], ContainerRun("9b3f-uid", 0, ["step 1 loss 2.31"]))]
    )

    with pytest.raises(JobTimedOut, match="still Running after 1 s") as timed_out:
        launch(kube, timeout_s=1.0, keep_on_timeout=keep)

    if keep:
        assert str(timed_out.value).endswith("left it running") and kube.calls("DELETE") == []
        assert (NS, NAME) in kube.jobs
    else:
        assert str(timed_out.value).endswith("deleted it")
        assert [d.body["propagationPolicy"] for d in kube.calls("DELETE")] == ["Background"]
        assert (NS, NAME) not in kube.jobs


def test_a_failed_job_from_an_earlier_attempt_is_replaced(kube, capsys):
    kube.add_job(expected_job(), [Step(FAILED["status"])])
    run = ContainerRun("c4d5-uid", 0, ["resuming from checkpoint-200", "step 201 loss 1.50"])
    kube.script(
        NAME, [Step(CREATED["status"]), Step(RUNNING["status"], run), Step(SUCCEEDED["status"], run, exit_code=0)]
    )

    result = launch(kube)

    assert result.action == "recreated" and result.state.phase == "Succeeded"
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kube.requests if "/pytorchjobs" in r.path]
    # Read (Failed), delete, still there (foreground deletion), gone, create.
    assert calls[:5] == [("GET", NAME), ("DELETE", NAME), ("GET", NAME), ("GET", NAME), ("POST", "pytorchjobs")]
    assert kube.calls("DELETE")[0].body["propagationPolicy"] == "Foreground"
    assert kube.calls("POST")[0].body == expected_job(attempt=2)
    assert capsys.readouterr().out.splitlines() == run.lines


@pytest.mark.parametrize("status,action", [(RUNNING, "attached"), (SUCCEEDED, "already-succeeded")])
def test_a_running_or_succeeded_job_is_taken_over_without_creating_another(kube, capsys, status, action):
    run = ContainerRun("e6f7-uid", 0, ["step 90 loss 1.70", "step 91 loss 1.69"])
    steps = [Step(RUNNING["status"], run), Step(SUCCEEDED["status"], run, exit_code=0)]
    kube.add_job(expected_job(), steps if status is RUNNING else steps[1:])

    result = launch(kube)

    assert result.action == action and result.state == job_state(SUCCEEDED)
    assert kube.calls("POST") == [] and kube.calls("DELETE") == []
    assert capsys.readouterr().out.splitlines() == (run.lines if action == "attached" else [])


@pytest.mark.multiprocess
def test_sigterm_to_the_cli_deletes_the_job_and_exits_nonzero(kube, tmp_path):
    name = "medo1-sft-cancelled"
    run = ContainerRun("1a2b-uid", 0, ["step 1 loss 2.31"])
    kube.script(name, [Step(CREATED["status"]), Step(RUNNING["status"], run)])
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    returncode, out, err = sigterm_while_following(
        ["launch", "sft", "--profile", "h100-1node", "--job-name", name, "--poll", "0.1"], kubeconfig, run, REPO
    )
    assert returncode == 128 + signal.SIGTERM, err
    assert f"cancelled by SIGTERM; deleted PyTorchJob {NS}/{name}" in err
    assert out.splitlines() == run.lines
    assert [d.path for d in kube.calls("DELETE")] == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/{name}"]
    assert kube.calls("POST")[0].body == expected_job(name, timeout_s=DEFAULT_TIMEOUT_S)


# ---- local backend, for real ---------------------------------------------------------------------


def local_launch_args(tiny_model, out, *extra):
    overrides = {
        "model.name_or_path": tiny_model,
        "data.path": DEMO_DATA,
        "output.dir": out,
        "data.limit": 8,
        "train.max_steps": 1,
        "data.max_length": 1024,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    return [
        "launch",
        "sft",
        "--backend",
        "local",
        "--profile",
        "cpu-smoke",
        "--nproc",
        "1",
        "--recipe",
        TINY_RECIPE,
        *sets,
        *extra,
    ]


@pytest.mark.multiprocess
def test_local_backend_runs_the_stage_under_torchrun(tiny_model, tmp_path):
    out = tmp_path / "sft"
    done = run_medo1(local_launch_args(tiny_model, out), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [1]
    assert checkpoint.is_complete(out / "checkpoint-1")
    assert (out / "export" / "model.safetensors").is_file()
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["backend"] == "local" and result["action"] == "ran" and result["state"]["phase"] == "Succeeded"


@pytest.mark.multiprocess
def test_local_backend_failure_exits_2_with_exit_code_and_output_tail(tiny_model, tmp_path):
    # A data file that is there (the launcher's input check passes) but is not what the stage reads: the
    # ranks start and fail.
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    done = run_medo1(local_launch_args(tiny_model, tmp_path / "sft", "--set", f"data.path={broken}"), timeout=300)
    assert done.returncode == 2
    error = done.stderr.splitlines()
    start = error.index(
        next(line for line in error if line.startswith("medo1: error: local sft run exited with code 1"))
    )
    assert error[start + 1].startswith("last ") and error[start + 1].endswith(" lines of its output:")
    assert any(str(broken) in line for line in error[start + 2 :])


# ---- a failed training job is restarted whole ----------------------------------------------------


def test_a_failed_training_job_is_restarted_whole_and_resumes(kube, capsys):
    first = ContainerRun("0a1b-uid", 0, ["step 1 loss 2.31", "saved checkpoint-1", "NCCL error: remote peer lost"])
    second = ContainerRun(
        "2c3d-uid", 0, ["resuming from checkpoint-1", "step 2 loss 2.05", "exported /checkpoints/sft/export"]
    )
    kube.script(
        NAME, [Step(CREATED["status"]), Step(RUNNING["status"], first), Step(FAILED["status"], first, exit_code=1)]
    )
    kube.script(
        NAME, [Step(CREATED["status"]), Step(RUNNING["status"], second), Step(SUCCEEDED["status"], second, exit_code=0)]
    )

    result = launch(kube, value_overrides=["runPolicy.jobRestarts=1"])

    assert result.state.phase == "Succeeded" and result.restarts == 1 and result.action == "created"
    # Deleted in the foreground (every pod gone) before the same job is created again.
    assert [d.body["propagationPolicy"] for d in kube.calls("DELETE")] == ["Foreground"]
    assert [p.body for p in kube.calls("POST")] == [expected_job(), expected_job(attempt=2)]
    assert capsys.readouterr().out.splitlines() == first.lines + second.lines


def test_restarts_are_bounded_by_job_restarts(kube):
    for uid in ("4e5f-uid", "6a7b-uid"):
        run = ContainerRun(uid, 0, ["step 1 loss 2.31"])
        kube.script(
            NAME, [Step(CREATED["status"]), Step(RUNNING["status"], run), Step(FAILED["status"], run, exit_code=1)]
        )

    with pytest.raises(JobFailed, match="backoff limit"):
        launch(kube, value_overrides=["runPolicy.jobRestarts=1"])
    assert len(kube.calls("POST")) == 2


# ---- the chain, stage after stage -------------------------------------------------------------


def test_chain_does_not_start_a_stage_before_the_previous_export_is_complete(tmp_path):
    recipes = {}
    for stage in ("sft", "rl"):
        recipes[stage] = tmp_path / f"{stage}.yaml"
        reward = "reward: {kind: answer_match}\n" if stage == "rl" else ""
        recipes[stage].write_text(
            f"model: {{name_or_path: m}}\ndata: {{path: d}}\n{reward}output:\n  dir: {tmp_path / stage}\n"
        )
    values = {
        "stages": {stage: {"enabled": True, "recipe": str(recipe)} for stage, recipe in recipes.items()},
        "jobs": {"eval": {"enabled": True, "recipe": str(REPO / "recipes" / "eval-demo-cpu.yaml")}},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(json.dumps(values))
    launched = []

    def launch_without_export(stage, **options):  # a stage that "succeeds" without writing its export
        launched.append(stage)
        return LaunchResult(stage, "local", f"medo1-{stage}", None, JobState("Succeeded"), "ran")

    from medo1.launch.chain import launch_chain as chain

    with pytest.raises(
        LaunchError, match=rf"sft succeeded but its export {tmp_path / 'sft' / 'export'} is not complete"
    ):
        chain(values_files=[values_file], launch=launch_without_export)
    assert launched == ["sft"]

    (tmp_path / "sft" / "export").mkdir(parents=True)
    with pytest.raises(LaunchError, match="rl succeeded but its export"):
        chain(values_files=[values_file], launch=launch_without_export)
    assert launched == ["sft", "sft", "rl"]  # eval never started


# ---- jobs and outputs scoped to the release and the run ----------------------------------------------


def chain_of_two_stages(tmp_path, tiny_model) -> tuple[Path, Path]:
    """Values for an SFT -> RL chain whose RL recipe starts from the SFT export as its recipe places it."""
    checkpoints = tmp_path / "checkpoints"
    (tmp_path / "sft.yaml").write_text(
        json.dumps(
            {
                "model": {"name_or_path": str(tiny_model)},
                "data": {"path": str(DEMO_DATA)},
                "output": {"dir": str(checkpoints / "sft")},
            }
        )
    )
    (tmp_path / "rl.yaml").write_text(
        json.dumps(
            {
                "model": {"name_or_path": str(checkpoints / "sft" / "export")},
                "data": {"path": str(DEMO_DATA)},
                "reward": {"kind": "answer_match"},
                "output": {"dir": str(checkpoints / "rl")},
            }
        )
    )
    stages = {stage: {"enabled": True, "recipe": str(tmp_path / f"{stage}.yaml")} for stage in ("sft", "rl")}
    values = {"cluster": {"gpusPerNode": 0}, "stages": stages}
    (tmp_path / "values.yaml").write_text(json.dumps(values))
    return tmp_path / "values.yaml", checkpoints


def run_release_chain(kube, values_file, checkpoints, release, run_id):
    """The chart's run Job for `release`: every stage's job succeeds and writes its export where the run puts it."""
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    from medo1.launch import launch_chain

    short = run_id[:8]
    for stage in ("sft", "rl"):
        run = ContainerRun(f"{stage}-{short}-uid", 0, [f"{stage} done"])
        kube.script(
            f"{release}-{stage}-{short}", [Step(CREATED["status"]), Step(SUCCEEDED["status"], run, exit_code=0)]
        )
        (checkpoints / stage / release / short / "export").mkdir(parents=True, exist_ok=True)
    client = TrainingClient(client_configuration=Configuration(host=kube.url))
    return launch_chain(
        values_files=[values_file],
        namespace=NS,
        client=client,
        timeout_s=30,
        poll_s=0.05,
        release=release,
        run_id=run_id,
    )


def test_two_releases_and_a_reinstall_never_share_a_chains_jobs_or_folders(kube, tiny_model, tmp_path, capsys):
    """The chain named every job medo1-<stage>: a second release in the namespace attached to the first one's
    jobs, and a reinstall found medo1-sft succeeded and skipped SFT, its RL then reading the old SFT export."""
    values_file, checkpoints = chain_of_two_stages(tmp_path, tiny_model)
    first_uid, second_uid = "3f2a9c1e-5b7d-4e2a-9c1f-0a1b2c3d4e5f", "7c0d4e8a-1f2b-4c3d-8e9f-a0b1c2d3e4f5"

    first = run_release_chain(kube, values_file, checkpoints, "team-a-medo1", first_uid)
    other = run_release_chain(kube, values_file, checkpoints, "team-b-medo1", first_uid)  # same id, other release
    reinstall = run_release_chain(kube, values_file, checkpoints, "team-a-medo1", second_uid)
    retried = run_release_chain(kube, values_file, checkpoints, "team-a-medo1", second_uid)  # its run pod again

    created = [post.body["metadata"]["name"] for post in kube.calls("POST")]
    assert created == [
        "team-a-medo1-sft-3f2a9c1e",
        "team-a-medo1-rl-3f2a9c1e",
        "team-b-medo1-sft-3f2a9c1e",
        "team-b-medo1-rl-3f2a9c1e",
        "team-a-medo1-sft-7c0d4e8a",
        "team-a-medo1-rl-7c0d4e8a",
    ]
    assert [r.action for r in first + other + reinstall] == ["created"] * 6
    assert [r.action for r in retried] == ["already-succeeded"] * 2
    # Each run's stages write under <output>/<release>/<run>, and RL starts from that run's SFT export.
    args = {
        post.body["metadata"]["name"]: post.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
            "containers"
        ][0]["args"]
        for post in kube.calls("POST")
    }
    sft_out = checkpoints / "sft" / "team-b-medo1" / "3f2a9c1e"
    assert args["team-b-medo1-sft-3f2a9c1e"][-2:] == ["--set", f'output.dir="{sft_out}"']
    assert args["team-b-medo1-rl-3f2a9c1e"][-4:] == [
        "--set",
        f'model.name_or_path="{sft_out / "export"}"',
        "--set",
        f'output.dir="{checkpoints / "rl" / "team-b-medo1" / "3f2a9c1e"}"',
    ]


def test_the_charts_run_job_names_its_chain_after_the_release_and_the_run_jobs_uid():
    from medo1.cli import build_parser
    from medo1.launch.chain import RunScope

    names = []
    for release in ("team-a", "team-b"):
        (run,) = [o for o in chart.render_chart(chart.load_profile("h100-1node"), release, NS) if o["kind"] == "Job"]
        container = run["spec"]["template"]["spec"]["containers"][0]
        (run_id,) = [e for e in container["env"] if e["name"] == "MEDO1_RUN_ID"]
        assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/controller-uid']"
        # Kubernetes expands $(MEDO1_RUN_ID) in args; the Job controller's label is the Job's UID.
        args = [a.replace("$(MEDO1_RUN_ID)", "0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f") for a in container["args"]]
        parsed = build_parser().parse_args(args)
        names.append(RunScope.of(parsed.release, parsed.run_id).job_name("sft"))
    assert names == ["team-a-medo1-sft-0f9e8d7c", "team-b-medo1-sft-0f9e8d7c"]
    named = {**chart.load_profile("h100-1node"), "chain": {"enabled": True, "runId": "exp3"}}
    (run,) = [o for o in chart.render_chart(named) if o["kind"] == "Job"]
    assert run["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--run-id", "exp3"]


@pytest.mark.parametrize(
    "release,run_id,problem",
    [
        ("Team-A", None, "release 'Team-A'"),
        ("medo1", "exp_3", "run id 'exp_3'"),
        ("a" * 40, "x" * 12, "is too long"),
    ],
)
def test_release_and_run_names_the_cluster_would_refuse_are_refused(release, run_id, problem):
    from medo1.launch.chain import RunScope

    with pytest.raises(LaunchError, match=problem):
        RunScope.of(release, run_id).job_name("translate")


@pytest.mark.e2e
def test_chain_runs_every_stage_in_order_on_the_local_backend(tiny_model, tmp_path):
    recipes = REPO / "recipes"
    out = {stage: tmp_path / stage for stage in ("sft", "rl", "eval")}
    values = {
        "stages": {
            "sft": {
                "enabled": True,
                "recipe": str(recipes / "sft-tiny-cpu.yaml"),
                "set": [
                    f"model.name_or_path={tiny_model}",
                    f"data.path={DEMO_DATA}",
                    "data.limit=8",
                    "data.max_length=512",
                    "train.max_steps=1",
                    f"output.dir={out['sft']}",
                ],
            },
            "rl": {
                "enabled": True,
                "recipe": str(recipes / "rl-ppo-tiny-cpu.yaml"),
                "set": [
                    f"model.name_or_path={out['sft'] / 'export'}",
                    f"data.path={DEMO_DATA}",
                    "data.limit=8",
                    "train.total_episodes=8",
                    "sampling.response_length=16",
                    "train.eval_fraction=0",
                    f"output.dir={out['rl']}",
                ],
            },
        },
        "jobs": {
            "eval": {
                "enabled": True,
                "recipe": str(recipes / "eval-demo-cpu.yaml"),
                "gpus": 0,
                "set": [
                    f"model={out['rl'] / 'export'}",
                    f"benchmarks.demo_mcq={DEMO_DATA}",
                    "limit=4",
                    "max_new_tokens=8",
                    f"output_dir={out['eval']}",
                ],
            },
            "upload": {
                "enabled": True,
                "recipe": str(recipes / "upload.yaml"),
                "set": [
                    f"model_dir={out['rl'] / 'export'}",
                    "repo_id=medo1/tiny-demo",
                    "dry_run=true",
                    f"eval_report={out['eval'] / 'report.json'}",
                ],
            },
        },
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(json.dumps(values))

    done = run_medo1(
        ["launch", "chain", "--backend", "local", "--values", str(values_file), "--nproc", "1"], timeout=900
    )

    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert [r["stage"] for r in results] == ["sft", "rl", "eval", "upload"]
    assert all(r["state"]["phase"] == "Succeeded" and r["action"] == "ran" for r in results)
    started = [line.split("chain: starting ")[1] for line in done.stderr.splitlines() if "chain: starting " in line]
    assert started == ["sft", "rl", "eval", "upload"]
    # Each stage began after the one before it finished: its first output is newer than that export / report.
    sft_export, rl_export = out["sft"] / "export", out["rl"] / "export"
    assert (sft_export / "model.safetensors").is_file() and (rl_export / "model.safetensors").is_file()
    assert min(p.stat().st_mtime for p in out["rl"].rglob("*")) >= sft_export.stat().st_mtime
    assert (out["eval"] / "report.json").stat().st_mtime >= rl_export.stat().st_mtime
    assert '"repo_id": "medo1/tiny-demo"' in done.stdout


# ---- the README's local launch, and Ctrl-C --------------------------------------------------------


def test_readme_local_launch_runs_the_recipe_as_written():
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("medo1 launch sft --backend local"))
    args = line.split("#")[0].split()
    assert args[:5] == ["medo1", "launch", "sft", "--backend", "local"]
    options = dict(zip(args[5::2], args[6::2], strict=True))
    job = stage_job("sft", backend="local", nproc=int(options["--nproc"]), recipe=options["--recipe"])
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    # The recipe's own paths (model, data, output) apply: no chart default overrides them.
    assert container["args"] == ["-m", "medo1", "sft", "--config", "recipes/sft-tiny-cpu.yaml", "--resume", "auto"]


@pytest.mark.multiprocess
def test_ctrl_c_on_a_local_launch_stops_it_with_one_clean_message(tiny_model, tmp_path):
    out = tmp_path / "sft"
    args = local_launch_args(tiny_model, out, "--set", "train.max_steps=100000", "--set", "output.save_steps=1")
    process = subprocess.Popen(
        [sys.executable, "-m", "medo1", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in process.stdout:  # wait until training is under way
            lines.append(line)
            if list(out.glob("checkpoint-*")):
                break
        assert process.poll() is None, "".join(lines[-40:])
        seen = len(lines)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    after = rest.splitlines()
    assert process.returncode == 128 + signal.SIGINT
    assert after[-1] == "medo1: cancelled by SIGINT; stopped the local sft run"
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in after), "\n".join(after[:40])
    assert len(after) <= 20, (seen, after)  # was about 140: every rank's traceback


def processes_mentioning(text: str) -> dict[int, str]:
    """Live (not zombie) processes whose command line holds `text`: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and text in cmdline and state not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "target,signum,nproc",
    [
        ("launcher", signal.SIGKILL, 2),  # kill -9 of `medo1 launch`
        ("launcher", signal.SIGHUP, 1),  # the terminal closed
        ("torchrun", signal.SIGKILL, 1),  # torchrun itself gone: its ranks run in sessions of their own
    ],
)
def test_no_rank_outlives_its_local_launcher(tiny_model, tmp_path, target, signum, nproc):
    """Issue 28 item 9: killing the local launcher left torchrun and its ranks training, and a relaunch then wrote
    to the same run folder beside them."""
    import time

    out = tmp_path / "sft"
    # Quiet ranks, as in a long run between log lines: a rank that prints into the dead launcher's pipe stops on the
    # broken pipe, one that does not print goes on. The batch trace shows training under way, past step 1 (logged).
    quiet = [f"output.{key}=100000" for key in ("save_steps", "logging_steps")]
    args = local_launch_args(
        tiny_model,
        out,
        *[
            a
            for o in ["train.max_steps=100000", "data.limit=2", "output.batch_trace=true", *quiet]
            for a in ("--set", o)
        ],
        "--nproc",
        str(nproc),
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "medo1", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while not last_logged_step(out / "batch-trace-rank0.jsonl", 2):
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.2)
        running = processes_mentioning(str(out))
        torchrun = [pid for pid, cmd in running.items() if "/torchrun " in cmd]
        ranks = [pid for pid, cmd in running.items() if " -m medo1 sft " in cmd and pid not in torchrun]
        assert len(ranks) == nproc and len(torchrun) == 1, running
        os.kill(launcher.pid if target == "launcher" else torchrun[0], signum)
        signalled = time.time()
        while processes_mentioning(str(out)) and time.time() < signalled + 60:
            time.sleep(0.2)
        left = processes_mentioning(str(out))
        assert not left, f"still running {time.time() - signalled:.0f} s after the {signum.name}: {left}"
    finally:
        for pid in processes_mentioning(str(out)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
    # A relaunch writes alone: the lock was released, or left by a rank that is gone and is taken over.
    with RunLock(out):
        pass


def test_the_job_stops_by_itself_when_its_launcher_dies(kube):
    """Finding 8: a pipeline step pod that dies left its PyTorchJob holding GPUs; the job's own deadline
    is now the launcher's timeout, so the operator stops it even with no launcher left."""
    run = ContainerRun("8c9d-uid", 0, ["step 1 loss 2.31"])
    kube.script(NAME, [Step(CREATED["status"]), Step(SUCCEEDED["status"], run, exit_code=0)])
    launch(kube, timeout_s=5400.5)
    (post,) = kube.calls("POST")
    assert post.body["spec"]["runPolicy"]["activeDeadlineSeconds"] == 5401


def test_a_single_pod_stage_runs_as_the_charts_batch_job(kube, capsys):
    """The chain's eval / upload / translate stages on a cluster: the chart's Job, followed like a PyTorchJob."""
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    name = "medo1-eval"
    run = ContainerRun("3e4f-uid", 0, ["medqa: 812/1273 correct", "report: /checkpoints/eval/report.md"])
    active = {"active": 1, "startTime": "2026-11-23T10:00:00Z"}
    complete = {"succeeded": 1, "conditions": [{**condition("Complete", "CompletionsReached"), "type": "Complete"}]}
    kube.script(name, [Step({}), Step(active, run), Step(complete, run, exit_code=0)])
    client = TrainingClient(client_configuration=Configuration(host=kube.url))

    result = launch_stage("eval", profile="h100-1node", namespace=NS, client=client, timeout_s=30, poll_s=0.05)

    assert result.state.phase == "Succeeded" and result.action == "created"
    (post,) = kube.calls("POST", "jobs")
    assert post.path == f"/apis/batch/v1/namespaces/{NS}/jobs"
    expected = launched(build_job("eval", chart.load_profile("h100-1node"), namespace=NS))
    expected["spec"]["activeDeadlineSeconds"] = 30
    assert (
        post.body == expected
        and expected["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    )
    assert capsys.readouterr().out.splitlines() == run.lines


# ---- the stage's plan before its job is created ---------------------------------------------------

LLAMA_70B = "model.name_or_path=meta-llama/Llama-3.1-70B-Instruct"


def test_a_stage_that_does_not_fit_its_gpus_is_launched_with_a_warning(kube, caplog):
    run = ContainerRun("1f2a-uid", 0, ["step 1 loss 2.31"])
    kube.script(NAME, [Step(CREATED["status"]), Step(SUCCEEDED["status"], run, exit_code=0)])
    caplog.set_level(logging.INFO, logger="medo1.launch")

    result = launch(kube, overrides=[LLAMA_70B])

    assert result.state.phase == "Succeeded"
    (post,) = kube.calls("POST")
    assert post.body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--set",
        LLAMA_70B,
    ]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "medo1.launch.preflight"]
    assert caplog.records[0].name == "medo1.launch.preflight" and caplog.records[0].levelno == logging.WARNING
    # A 70B full fine-tune on one 8x H100 node: the figures, the plan's first fix, and the command for the rest.
    assert warning.startswith("stage sft does not fit its GPUs: ")
    assert (
        "GiB predicted per GPU, 71.64 GiB usable (h100-80gb: 79.60 GiB less 10% headroom), on 1 node(s) x 8 "
        "h100-80gb, Llama-3.1-70B" in warning
    )
    assert "suggested: LoRA (r=16) on ZeRO-3 with activation checkpointing (--set lora.enabled=true" in warning
    assert warning.endswith(
        f"see medo1 plan --config /opt/medo1/recipes/sft-qwen2.5-7b-8xh100.yaml --set {LLAMA_70B} "
        "--nodes 1 --gpus-per-node 8 --gpu h100-80gb --architecture Llama-3.1-70B"
    )
    predicted = float(warning.split(": ")[1].split(" GiB")[0])
    from medo1.plan import plan_recipe

    assert predicted == pytest.approx(
        plan_recipe(
            str(REPO / "recipes" / "sft-qwen2.5-7b-8xh100.yaml"), profile="h100-1node", overrides=[LLAMA_70B]
        ).total
        / 2**30,
        abs=0.01,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"overrides": [LLAMA_70B], "strict": True},
        {"overrides": [LLAMA_70B], "value_overrides": ["plan.strict=true"]},  # the chart value, as the run Job reads it
        # The 7B recipe on 2 GPUs, of the kind the node selector names: ZeRO-3 shards over too few of them.
        {
            "value_overrides": [
                "cluster.gpusPerNode=2",
                "cluster.nodeSelector={nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
            ],
            "strict": True,
        },
    ],
)
def test_a_strict_launch_refuses_a_stage_that_does_not_fit_and_creates_nothing(kube, options):
    with pytest.raises(
        PlanDoesNotFit,
        match=r"^stage sft does not fit its GPUs: .*; not launching it \(strict: "
        r"--strict or plan\.strict\)$",
    ) as refused:
        launch(kube, **options)
    assert kube.requests == []
    assert refused.value.exit_code == 3
    if "cluster.gpusPerNode=2" in options.get("value_overrides", []):
        assert "on 1 node(s) x 2 a100-80gb, Qwen2.5-7B" in str(refused.value)


def test_readme_strict_launch_is_one_error_line_and_exit_3(capsys):
    lines = (REPO / "README.md").read_text().splitlines()
    command = next(i for i, line in enumerate(lines) if line.startswith("$ medo1 launch sft") and "--strict" in line)
    # No cluster here: the refusal comes before any client or object.
    assert main([*lines[command].split()[2:], "--namespace", NS]) == 3
    assert capsys.readouterr().err.splitlines() == [lines[command + 1]]


def test_a_strict_chain_refuses_before_its_first_stage_starts(kube):
    """The chart's run Job: every stage planned first, so a PPO stage that does not fit 40 GB GPUs stops the
    chain before the SFT stage that would fit spends its GPU hours."""
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    from medo1.launch import launch_chain

    client = TrainingClient(client_configuration=Configuration(host=kube.url))
    with pytest.raises(PlanDoesNotFit, match=r"^stage rl does not fit its GPUs: .* on 1 node\(s\) x 8 a100-40gb"):
        launch_chain(
            profile="h100-1node",
            value_overrides=["plan.gpu=a100-40gb", "plan.strict=true"],
            namespace=NS,
            client=client,
            timeout_s=30,
            poll_s=0.05,
        )
    assert kube.requests == []


def test_a_strict_trainjob_launch_plans_its_runtimes_recipe_and_creates_nothing(kube):
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubernetes.client import Configuration

    client = TrainerClient(KubernetesBackendConfig(namespace=NS, client_configuration=Configuration(host=kube.url)))
    with pytest.raises(
        PlanDoesNotFit,
        match=r"^stage rl does not fit .* see medo1 plan --config "
        r"/opt/medo1/recipes/rl-grpo-qwen2\.5-7b-8xh100\.yaml .*--gpu a100-40gb",
    ):
        launch_stage(
            "rl",
            backend="trainjob",
            runtime="medo1-grpo",
            profile="h100-1node",
            namespace=NS,
            client=client,
            value_overrides=["plan.gpu=a100-40gb"],
            strict=True,
            timeout_s=30,
            poll_s=0.05,
        )
    assert {r.method for r in kube.requests} <= {"GET"}  # the SDK's client reads its version ConfigMap at start


def test_every_shipped_profile_fits_its_gpus_without_a_warning(caplog):
    from medo1.launch.chain import chain_stages
    from medo1.launch.preflight import check_plan
    from medo1.launch.rendering import release_values
    from medo1.plan.check import fit_check

    caplog.set_level(logging.INFO, logger="medo1.launch")
    checked = set()
    for profile in chart.profiles():
        stages = chain_stages(release_values(profile=profile))
        for stage in stages:
            values = stage_values(stage, profile=profile)
            check = fit_check(stage, values)
            if stage in ("translate", "upload") or profile == "cpu-smoke":
                assert check is None, (profile, stage)  # no GPU of ours to size
                continue
            assert check.fits, check.describe()
            check_plan(stage, values, strict=True)
            checked.add((profile, stage))
    assert {("h100-1node", "sft"), ("h100-1node", "rl"), ("h100-1node", "eval"), ("h100-2nodes", "sft")} <= checked
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sum("fits its GPUs" in r.getMessage() for r in caplog.records) == len(checked)


def test_a_local_cpu_launch_is_not_planned(caplog):
    from medo1.launch.preflight import check_plan
    from medo1.launch.rendering import job_values

    caplog.set_level(logging.INFO, logger="medo1.launch")
    values = job_values("sft", backend="local", profile="h100-1node", overrides=[LLAMA_70B], nproc=1)
    check_plan("sft", values, strict=True)
    assert caplog.records == []


# ---- the run Job owns what it launches; an evicted launcher leaves training running --------------------------

RUN_POD = "medo1-run-x8k2f"
RUN_JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "name": "medo1-run",
    "uid": "5b0e7a52-run-job-uid",
    "controller": True,
    "blockOwnerDeletion": True,
}


def run_pod(disruption=None):
    """The chart's run pod as the API server has it; `disruption`: its DisruptionTarget condition's reason (the
    API server sets it before deleting a pod for an eviction, kubernetes staging/src/k8s.io/api/core/v1/types.go)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": RUN_POD, "namespace": NS, "ownerReferences": [RUN_JOB]},
        "status": {"phase": "Running", "conditions": []},
    }
    if disruption:
        pod["status"]["conditions"].append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "message": "Eviction API: evicting",
                "lastTransitionTime": "2026-11-23T10:30:00Z",
            }
        )
    return pod


def test_jobs_launched_from_the_run_pod_are_owned_by_the_run_job(kube, monkeypatch):
    """helm uninstall deletes the run Job; the garbage collector then deletes what it owns, whatever became of the
    run pod's own cleanup (Helm deletes its RBAC at the same time)."""
    kube.record(run_pod())
    monkeypatch.setenv("MEDO1_POD_NAME", RUN_POD)
    kube.script(NAME, [Step(SUCCEEDED["status"])])
    launch(kube)
    (post,) = kube.calls("POST")
    assert post.body["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "medo1-run", "uid": "5b0e7a52-run-job-uid"}
    ]
    assert post.body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "medo1"


@pytest.mark.multiprocess
@pytest.mark.parametrize("disruption", ["EvictionByEvictionAPI", None], ids=["evicted", "deleted-without-eviction"])
def test_a_run_pod_sigtermed_leaves_its_job_running_and_the_next_one_attaches(kube, tmp_path, monkeypatch, disruption):
    """The chart's run pod gets SIGTERM when it is evicted (a drain, the autoscaler's consolidation) and when it is
    deleted without an eviction (`kubectl delete pod`, `kubectl drain --disable-eviction`, a managed node upgrade
    that force-deletes after its PodDisruptionBudget wait). Neither cancels anything: the run Job starts a new pod,
    which attaches to the training job. Deleting the run Job stops the job through its ownerReferences
    (test_jobs_launched_from_the_run_pod_are_owned_by_the_run_job)."""
    name = "medo1-sft-drained"
    run = ContainerRun("3c4d-uid", 0, ["step 1 loss 2.31"])
    kube.script(
        name,
        [
            Step(CREATED["status"]),
            Step(RUNNING["status"], run),
            Step(RUNNING["status"], run),
            Step(SUCCEEDED["status"], run, exit_code=0),
        ],
    )
    kube.record(run_pod(disruption=disruption))
    monkeypatch.setenv("MEDO1_POD_NAME", RUN_POD)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    returncode, out, err = sigterm_while_following(
        ["launch", "sft", "--profile", "h100-1node", "--job-name", name, "--poll", "0.1"], kubeconfig, run, REPO
    )
    assert returncode == 128 + signal.SIGTERM, err
    if disruption:
        assert (
            "cancelled by SIGTERM: this pod is being evicted (EvictionByEvictionAPI: Eviction API: evicting); left "
            f"PyTorchJob {NS}/{name} running: the launcher that replaces this pod attaches to it"
        ) in err
    else:
        assert (
            f"cancelled by SIGTERM; left PyTorchJob {NS}/{name} running: it is owned by Job medo1-run, whose next "
            "pod attaches to it (delete Job medo1-run to stop it)"
        ) in err
    assert kube.calls("DELETE") == [] and (NS, name) in kube.jobs
    # The run Job's next pod: the same launch, attached to the job, which finishes.
    result = launch(kube, job_name=name)
    assert result.action == "attached" and result.state.phase == "Succeeded"
    assert len(kube.calls("POST")) == 1


# ---- one owner of restarts; what a restart cannot cure is not restarted ----------------------------------------


def test_a_retried_launcher_does_not_add_restarts_to_a_job_that_used_them(kube):
    """The pipeline's step retries and the run Job's backoff restart the launcher, not the training: a job failed
    on its last allowed attempt (3 restarts used) is reported, not created a 5th time."""
    kube.add_job(expected_job(attempt=4), [Step(FAILED["status"])])
    with pytest.raises(JobFailed) as failed:
        launch(kube, value_overrides=["runPolicy.jobRestarts=3"])
    message = str(failed.value)
    assert "not restarted: that was attempt 4 of 4 (runPolicy.jobRestarts=3)" in message
    assert f"to start it over, delete it (kubectl delete pytorchjob -n {NS} {NAME}) and launch again" in message
    assert kube.calls("POST") == [] and kube.calls("DELETE") == []


@pytest.mark.parametrize(
    "termination",
    [
        "medo1: error: data.path /data/medical_o1_sft.json does not exist",
        "medo1: out of memory before the first training step: CUDA out of memory. Tried to allocate 2.00 GiB",
    ],
)
def test_a_failure_a_restart_cannot_cure_is_not_restarted_and_is_marked_on_the_job(kube, termination):
    run = ContainerRun("9e8f-uid", 0, ["loading /checkpoints/sft", "Traceback (most recent call last):"])
    kube.script(
        NAME,
        [
            Step(CREATED["status"]),
            Step(RUNNING["status"], run),
            Step(FAILED["status"], run, exit_code=1, message=termination),
        ],
    )
    with pytest.raises(JobFailed) as failed:
        launch(kube, value_overrides=["runPolicy.jobRestarts=3"])
    assert f"not restarted: pod {NAME}-master-0: {termination} (a restart would fail the same way)" in str(failed.value)
    assert len(kube.calls("POST")) == 1 and kube.calls("DELETE") == []
    (patch,) = kube.calls("PATCH")
    assert patch.body == {"metadata": {"annotations": {"medo1.io/final": f"pod {NAME}-master-0: {termination}"}}}
    # A retried step finds the mark and starts nothing.
    with pytest.raises(JobFailed, match="not restarted: pod .* \\(a restart would fail the same way\\)"):
        launch(kube, value_overrides=["runPolicy.jobRestarts=3"])
    assert len(kube.calls("POST")) == 1


def launcher_account(kube, drop_verb: str | None = None) -> str:
    """The chart's launcher Role and RoleBinding (the plain manifest of h100-1node) in NS, less `drop_verb` on
    PyTorchJobs; a token of the account they bind (the run pod's), whose every request RBAC checks."""
    for obj in yaml.safe_load_all((chart.MANIFESTS_DIR / "h100-1node.yaml").read_text()):
        if obj and obj["kind"] in ("Role", "RoleBinding"):
            obj["metadata"]["namespace"] = NS  # as `kubectl apply -n` creates it
            for rule in obj.get("rules", []):
                if "pytorchjobs" in rule["resources"] and drop_verb:
                    rule["verbs"].remove(drop_verb)
            kube.record(obj)
    return kube.service_account_token(NS, "medo1")


def launch_as(kube, token: str, **options):
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    configuration = Configuration(host=kube.url, api_key={"authorization": f"Bearer {token}"})
    settings = {"profile": "h100-1node", "job_name": NAME, "namespace": NS, "timeout_s": 30, "poll_s": 0.05} | options
    return launch_stage("sft", client=TrainingClient(client_configuration=configuration), **settings)


def test_the_launcher_as_the_charts_account_replaces_follows_and_marks_a_job_rbac_permitting(kube):
    """Every request the launcher makes on a job (get, delete, create, list, patch) and its pods, log and events,
    made with the chart's service account's token, passes RBAC where the chart's Role grants it: an earlier
    attempt's failed job is deleted and replaced, the new one followed to its failure and marked final."""
    termination = "medo1: error: data.path /data/medical_o1_sft.json does not exist"
    run = ContainerRun("3b4c-uid", 0, ["loading /checkpoints/sft"])
    kube.add_job(expected_job(), [Step(FAILED["status"])])
    kube.script(
        NAME,
        [
            Step(CREATED["status"]),
            Step(RUNNING["status"], run),
            Step(FAILED["status"], run, exit_code=1, message=termination),
        ],
    )
    with pytest.raises(JobFailed, match="a restart would fail the same way"):
        launch_as(kube, launcher_account(kube), value_overrides=["runPolicy.jobRestarts=3"])
    assert [r.method for r in kube.calls("DELETE") + kube.calls("POST") + kube.calls("PATCH")] == [
        "DELETE",
        "POST",
        "PATCH",
    ]
    assert (
        kube.jobs[(NS, NAME)].body["metadata"]["annotations"]["medo1.io/final"] == f"pod {NAME}-master-0: {termination}"
    )


def test_the_launchers_job_requests_are_refused_where_the_charts_role_does_not_grant_them(kube, caplog):
    """RBAC applies to the launcher's own job requests as to any other: an account the Role is not bound to may not
    even read the job (403, the API server's message in one line); a Role without patch leaves the job unmarked
    (a warning: the mark is advice to later launchers) and the failure still reported."""
    launcher_account(kube)
    with pytest.raises(LaunchError) as refused:
        launch_as(kube, kube.service_account_token(NS, "default"))
    assert str(refused.value) == (
        f'could not read PyTorchJob {NS}/{NAME}: 403 pytorchjobs.kubeflow.org "{NAME}" is forbidden: User '
        f'"system:serviceaccount:{NS}:default" cannot get resource "pytorchjobs" in API group "kubeflow.org" in the '
        f'namespace "{NS}"'
    )
    assert kube.calls("POST") == []

    kube.recorded.clear()
    termination = "medo1: error: data.path /data/medical_o1_sft.json does not exist"
    run = ContainerRun("5d6e-uid", 0, ["loading /checkpoints/sft"])
    kube.script(
        NAME,
        [
            Step(CREATED["status"]),
            Step(RUNNING["status"], run),
            Step(FAILED["status"], run, exit_code=1, message=termination),
        ],
    )
    with pytest.raises(JobFailed, match="a restart would fail the same way"):
        launch_as(kube, launcher_account(kube, drop_verb="patch"), value_overrides=["runPolicy.jobRestarts=3"])
    assert len(kube.calls("PATCH")) == 1
    assert kube.jobs[(NS, NAME)].body["metadata"]["annotations"] == {"medo1.io/attempt": "1"}
    assert (
        f'could not annotate PyTorchJob {NS}/{NAME}: 403 pytorchjobs.kubeflow.org "{NAME}" is forbidden: User '
        f'"system:serviceaccount:{NS}:medo1" cannot patch resource "pytorchjobs"'
    ) in caplog.text


def test_an_out_of_memory_after_training_steps_is_restarted(kube):
    late = "medo1: out of memory after 212 training step(s): CUDA out of memory. Tried to allocate 2.00 GiB"
    first = ContainerRun("5a6b-uid", 0, ["step 212 loss 1.2"])
    second = ContainerRun("7c8d-uid", 0, ["resuming from checkpoint-200"])
    kube.script(NAME, [Step(RUNNING["status"], first), Step(FAILED["status"], first, exit_code=1, message=late)])
    kube.script(NAME, [Step(RUNNING["status"], second), Step(SUCCEEDED["status"], second, exit_code=0)])
    result = launch(kube, value_overrides=["runPolicy.jobRestarts=1"])
    assert result.restarts == 1 and result.state.phase == "Succeeded"


def test_the_cli_leaves_its_error_in_the_termination_message(tmp_path, monkeypatch, capsys):
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("MEDO1_TERMINATION_LOG", str(termination_log))
    assert main(["sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert termination_log.read_text() == capsys.readouterr().err.strip()
    assert termination_log.read_text().startswith("medo1: error: ")


def test_an_out_of_memory_is_told_apart_by_whether_a_training_step_finished(monkeypatch):
    import torch

    from medo1.training import preemption, termination

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    monkeypatch.setattr(preemption, "_steps_completed", 0)
    assert termination.message_for(oom) == (
        "medo1: out of memory before the first training step: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    preemption.stop_agreed()  # a step boundary
    assert termination.message_for(oom).startswith("medo1: out of memory after 1 training step(s): ")
    assert termination.message_for(RuntimeError("NCCL watchdog timeout")) is None


def test_readme_says_who_retries_what():
    section = (REPO / "README.md").read_text().split("### Who retries what", 1)[1].split("\n#", 1)[0]
    for layer in ("runPolicy.jobRestarts", "medo1.io/attempt", "set_retry", "chain.backoffLimit", "medo1.io/final"):
        assert layer in section, layer


# ---- a replaced job whose pods hang Terminating on a dead node -------------------------------------------------


def test_a_replacement_is_created_under_new_pod_names_when_the_old_pods_never_finish_terminating(caplog):
    kube = KubeStandIn(foreground_reads=None).start()  # the dead node's kubelet never confirms the pods are gone
    try:
        first = ContainerRun("1d2e-uid", 0, ["step 40 loss 1.9", "NCCL watchdog timeout: rank 3 unreachable"])
        second = ContainerRun("3f4a-uid", 0, ["resuming from checkpoint-40", "exported /checkpoints/sft/export"])
        kube.script(NAME, [Step(RUNNING["status"], first), Step(FAILED["status"], first, exit_code=1)])
        kube.script(f"{NAME}-r2", [Step(RUNNING["status"], second), Step(SUCCEEDED["status"], second, exit_code=0)])
        caplog.set_level(logging.WARNING, logger="medo1.launch")
        result = launch(kube, value_overrides=["runPolicy.jobRestarts=1"], delete_wait_s=0.3)
        assert result.job_name == f"{NAME}-r2" and result.restarts == 1 and result.state.phase == "Succeeded"
        assert [d.body["propagationPolicy"] for d in kube.calls("DELETE")] == ["Foreground"]
        assert kube.calls("POST")[1].body == expected_job(f"{NAME}-r2", attempt=2) | {
            "metadata": {
                **expected_job(f"{NAME}-r2", attempt=2)["metadata"],
                "labels": {**expected_job(f"{NAME}-r2", attempt=2)["metadata"]["labels"], "medo1.io/job": NAME},
            }
        }
        assert (
            f"PyTorchJob {NS}/{NAME} is still being deleted after 0 s, waiting on {NAME}-master-0 (node gpu-node-1) "
            f"stuck Terminating (a dead or unreachable node?); creating attempt 2 as PyTorchJob {NS}/{NAME}-r2"
        ) in caplog.text
        # A retried launcher finds the replacement by the name it asked for.
        again = launch(kube)
        assert again.action == "already-succeeded" and again.job_name == f"{NAME}-r2" and len(kube.calls("POST")) == 2
    finally:
        kube.stop()


# ---- an API server that never answers; a missing recipe on the local backend ----------------------------------


class SilentServer:
    """Accepts connections and never answers, as a hung API server (or a black-holed load balancer) does."""

    def __init__(self):
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.held = []
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self):
        self.socket.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent(tmp_path):
    server = SilentServer()
    standin = KubeStandIn(url=server.url)  # only for its kubeconfig
    yield server, standin.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    server.close()


def medo1_against(kubeconfig, *args, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "medo1", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        **popen,
    )


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "command", [["launch", "sft", "--profile", "h100-1node"], ["doctor", "--profile", "h100-1node"]]
)
def test_an_api_server_that_never_answers_is_one_error_line_within_the_request_timeout(silent, command):
    server, kubeconfig = silent
    process = medo1_against(kubeconfig, *command, "--namespace", NS, "--request-timeout", "1")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 2, err
    assert err.splitlines()[-1].startswith("medo1: error: ")
    assert f"the Kubernetes API server at {server.url} did not answer within 1.0 s" in err.splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.multiprocess
def test_sigterm_while_the_api_server_never_answers_exits_within_seconds(silent):
    server, kubeconfig = silent
    process = medo1_against(
        kubeconfig, "launch", "sft", "--profile", "h100-1node", "--namespace", NS, "--request-timeout", "600"
    )
    try:
        deadline = time.monotonic() + 60
        while not server.held:  # its first request is waiting for an answer
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "medo1: cancelled by SIGTERM; nothing had been created"
    assert took < 10, took


def test_a_local_launch_with_a_missing_recipe_is_one_error_line_before_any_rank_starts(tmp_path, capsys):
    missing = tmp_path / "no-such-recipe.yaml"
    assert main(["launch", "sft", "--backend", "local", "--recipe", str(missing), "--nproc", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"medo1: error: stage sft: recipe {missing} not found"]
    assert captured.out == ""
