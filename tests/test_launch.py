"""The launcher: its PyTorchJob is the chart's, and its wait reads recorded PyTorchJob statuses."""

from __future__ import annotations

import copy

import pytest
from medo1 import k8s
from medo1.launch import (
    JobState,
    LaunchError,
    build_pytorchjob,
    job_state,
    wait_for_job,
)

from tests.conftest import REPO

CRDS = REPO / "tests" / "fixtures" / "crds"


def condition(kind, reason, message="", at="2026-11-23T10:00:00Z"):
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": at,
            "lastUpdateTime": at}


# Status objects shaped as Training Operator v1.9 writes them.
CREATED = {"status": {"conditions": [condition("Created", "PyTorchJobCreated", "PyTorchJob medo1-sft is created.")]}}
RUNNING = {"status": {"conditions": [
    {**condition("Created", "PyTorchJobCreated"), "status": "True"},
    condition("Running", "PyTorchJobRunning", "PyTorchJob medo1-sft is running.", "2026-11-23T10:01:00Z"),
]}}
RESTARTING = {"status": {"conditions": [
    condition("Created", "PyTorchJobCreated"),
    {**condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
    condition("Restarting", "PyTorchJobRestarting", "PyTorchJob medo1-sft is restarting because 1 Master replica(s) failed.",
              "2026-11-23T10:05:00Z"),
]}}
SUCCEEDED = {"status": {"conditions": [
    condition("Created", "PyTorchJobCreated"),
    {**condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
    condition("Succeeded", "PyTorchJobSucceeded", "PyTorchJob medo1-sft is successfully completed.", "2026-11-23T11:00:00Z"),
], "completionTime": "2026-11-23T11:00:00Z"}}
FAILED = {"status": {"conditions": [
    condition("Created", "PyTorchJobCreated"),
    {**condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
    condition("Failed", "PyTorchJobFailed", "PyTorchJob medo1-sft has failed because it has reached the specified backoff limit",
              "2026-11-23T10:30:00Z"),
]}}


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
    [({}, "Pending"), (CREATED, "Created"), (RUNNING, "Running"), (RESTARTING, "Restarting"),
     (SUCCEEDED, "Succeeded"), (FAILED, "Failed")],
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
    values = k8s.load_profile("h100-1node")
    job = build_pytorchjob("rl", values)
    rendered = [o for o in k8s.render_chart(values) if o["kind"] == "PyTorchJob" and o["metadata"]["name"] == "medo1-rl"]
    expected = {**rendered[0], "metadata": {**rendered[0]["metadata"], "namespace": k8s.NAMESPACE}}
    assert job == expected
    assert k8s.schema_errors([job], CRDS) == []
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][2] == "rl"


def test_launcher_refuses_an_unknown_stage():
    with pytest.raises(LaunchError, match="known stages"):
        build_pytorchjob("sfft")
