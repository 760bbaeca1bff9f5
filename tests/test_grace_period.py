"""Issue 26, item 15: the grace period (SIGTERM to SIGKILL) per stage. 600 s was sized for the 7B SFT checkpoint;
`medo1 plan` gives the 7B PPO one as ~227 GiB. The launcher sizes each stage's from its own checkpoint
(medo1.launch.grace), the chart's jobs take the stage's value."""

from __future__ import annotations

import math

import pytest

from medo1 import chart
from medo1.launch.grace import grace_period_s
from medo1.launch.rendering import stage_values
from medo1.plan.check import fit_check
from tests.kube_standin import KubeStandIn, Step

NS = "team-a"


def env_of(container) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_grace_period_is_sized_from_the_stages_checkpoint():
    sft, how = grace_period_s("sft", stage_values("sft", profile="h100-1node"))
    assert (sft, how) == (610, "610 s: a 113 GiB checkpoint at 0.5 GB/s plus a 60 s step, x2 = 610 s, floor 600 s")
    rl, how = grace_period_s("rl", stage_values("rl", profile="h100-1node"))
    assert (rl, how) == (1200, "1200 s: a 227 GiB checkpoint at 0.5 GB/s plus a 60 s step, x2 = 1100 s, floor 1200 s")
    # A slower volume: the derivation, not the floor, decides.
    values = stage_values("rl", profile="h100-1node", value_overrides=["checkpointWriteGBps=0.25"])
    slow, how = grace_period_s("rl", values)
    size = fit_check("rl", values).plan.checkpoint["per_checkpoint"]
    assert slow == math.ceil(2 * (size / 0.25e9 + 60) / 10) * 10 > 2000
    assert how.startswith(f"{slow} s: a 227 GiB checkpoint at 0.25 GB/s")
    # Nothing to size: the stage's own value (CPU smoke run, eval writes no checkpoint).
    assert grace_period_s("sft", stage_values("sft", profile="cpu-smoke"))[0] == 600
    assert grace_period_s("eval", stage_values("eval", profile="h100-1node"))[0] == 600


def test_the_launcher_creates_the_pytorchjob_with_the_stages_grace_period():
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    from medo1.launch import launch_stage
    from tests.helpers import PYTORCHJOB_CREATED, PYTORCHJOB_SUCCEEDED

    kube = KubeStandIn().start()
    try:
        kube.script("medo1-rl", [Step(PYTORCHJOB_CREATED["status"]), Step(PYTORCHJOB_SUCCEEDED["status"])])
        client = TrainingClient(client_configuration=Configuration(host=kube.url))
        launch_stage(
            "rl", profile="h100-1node", job_name="medo1-rl", namespace=NS, client=client, timeout_s=30, poll_s=0.05
        )
    finally:
        kube.stop()
    (post,) = kube.calls("POST", "pytorchjobs")
    (master,) = post.body["spec"]["pytorchReplicaSpecs"].values()
    assert master["template"]["spec"]["terminationGracePeriodSeconds"] == 1200
    assert env_of(master["template"]["spec"]["containers"][0])["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "1170"


def test_the_launchers_trainjob_carries_the_grace_period_as_a_runtime_patch():
    from medo1.launch.trainjob import build_trainjob

    job = build_trainjob("sft", stage_values("sft", profile="h100-2nodes"))
    (patch,) = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 610
    assert env_of(job["spec"]["trainer"])["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "580"


@pytest.mark.parametrize(
    "override,sft,rl", [([], 600, 1200), (["stages.sft.terminationGracePeriodSeconds=900"], 900, 1200)]
)
def test_chart_rendered_jobs_take_each_stages_value(override, sft, rl):
    """With the chain off Helm renders the jobs and runs no Python: each stage's value from the values."""
    from medo1.launch.rendering import release_values

    values = release_values(profile="h100-1node", value_overrides=["chain.enabled=false", *override])
    seconds = {}
    for obj in chart.render_chart(values):
        for _, template in chart.pod_templates(obj):
            container = template["spec"]["containers"][0]
            seconds[obj["metadata"]["name"]] = (
                template["spec"]["terminationGracePeriodSeconds"],
                env_of(container)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"],
            )
    assert seconds["medo1-sft"] == (sft, str(sft - 30)) and seconds["medo1-rl"] == (rl, str(rl - 30))
    assert seconds["medo1-eval"] == (600, "570")
