"""Failing fast on a stuck job: recorded pods and events (tests/fixtures/cluster/stuck) for each state
the operator never fails a job on, read by `medo1.launch.pods` and, through the real kubernetes
client, from the API stand-in during a launch; and a Kueue-suspended job waited on, not failed."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import yaml
from medo1.launch import JobStuck, JobTimedOut, launch_stage, wait_for_job
from medo1.launch.pods import FIX, StuckPods, pod_problems

from tests.kube_standin import KubeStandIn, Step

STUCK = Path(__file__).parent / "fixtures" / "cluster" / "stuck"
STATES = ["create-container-config-error", "err-image-pull", "image-pull-backoff", "failed-mount", "unschedulable"]
NAME, NS = "medo1-sft-run42", "team-a"


def recorded(state: str) -> dict:
    return yaml.safe_load((STUCK / f"{state}.yaml").read_text())


def split(items: list[dict]) -> tuple[list[dict], list[dict]]:
    return [o for o in items if o["kind"] == "Pod"], [o for o in items if o["kind"] == "Event"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("state", STATES)
def test_each_stuck_state_is_read_with_the_api_message(state):
    fixture = recorded(state)
    pods, events = split(fixture["items"])
    problems = [p for pod in pods for p in pod_problems(pod, events)]
    expect = fixture["expect"]
    assert [(p.pod, p.reason, p.message) for p in problems] == [(expect["pod"], expect["reason"], expect["message"])]


@pytest.mark.parametrize("state", STATES)
def test_a_stuck_pod_fails_only_after_the_grace_period_naming_pod_reason_and_fix(state):
    fixture = recorded(state)
    pods, events = split(fixture["items"])
    clock = Clock()
    stuck = StuckPods(300, clock)
    stuck.check(pods, events)
    clock.now = 299
    stuck.check(pods, events)  # still within the grace period
    clock.now = 300
    with pytest.raises(JobStuck) as failure:
        stuck.check(pods, events)
    message = str(failure.value)
    expect = fixture["expect"]
    assert f"pod {expect['pod']}: {expect['reason']}: {expect['message']}" in message
    assert f"fix: {FIX[expect['reason']]}" in message


def test_a_problem_that_clears_is_forgotten():
    pods, events = split(recorded("image-pull-backoff")["items"])
    clock = Clock()
    stuck = StuckPods(300, clock)
    stuck.check(pods, events)
    pulled = copy.deepcopy(pods)
    pulled[1]["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": "2026-11-23T10:03:00Z"}}
    clock.now = 200
    stuck.check(pulled, events)
    clock.now = 400  # backing off again: the grace period starts over
    stuck.check(pods, events)
    clock.now = 699
    stuck.check(pods, events)
    clock.now = 700
    with pytest.raises(JobStuck):
        stuck.check(pods, events)


def test_a_running_pod_and_a_finished_pod_are_not_stuck():
    pods, events = split(recorded("failed-mount")["items"])
    running = copy.deepcopy(pods[0])
    running["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": "2026-11-23T10:03:00Z"}}
    finished = copy.deepcopy(recorded("unschedulable")["items"][0])
    finished["status"]["phase"] = "Failed"
    assert pod_problems(running, events) == []  # a FailedMount event from before the mount succeeded
    assert pod_problems(finished) == []


def test_the_launch_fails_and_deletes_the_job_when_a_pod_stays_unschedulable():
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    kube = KubeStandIn().start()
    try:
        created = {"conditions": [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                                   "lastTransitionTime": "2026-11-23T10:00:00Z"}]}
        kube.script(NAME, [Step(created)])  # the operator leaves it Created while a pod waits
        for obj in recorded("unschedulable")["items"]:
            kube.record(obj)
        client = TrainingClient(client_configuration=Configuration(host=kube.url))
        with pytest.raises(JobStuck) as failure:
            launch_stage("sft", client=client, profile="h100-2nodes", job_name=NAME, namespace=NS, timeout_s=60,
                         poll_s=0.05, stuck_after_s=0.3)
    finally:
        kube.stop()
    message = str(failure.value)
    assert f"PyTorchJob {NS}/{NAME}" in message
    assert ("pod medo1-sft-run42-worker-0: Unschedulable: 0/12 nodes are available: 12 Insufficient "
            "nvidia.com/gpu.") in message
    assert FIX["Unschedulable"] in message and "deleted it" in message
    assert len(kube.calls("POST")) == 1  # not restarted: no room does not heal on a retry
    assert [d.path for d in kube.calls("DELETE")] == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/{NAME}"]
    pod_reads = [r for r in kube.calls("GET", "pods") if r.query.get("labelSelector") == [f"training.kubeflow.org/job-name={NAME}"]]
    assert pod_reads
    assert kube.calls("GET", "events")[0].query["fieldSelector"] == ["type=Warning"]


class Replay:
    """Job objects in order (the last repeats); a fake clock advances per sleep."""

    def __init__(self, *jobs):
        self.jobs = list(jobs)
        self.reads = 0
        self.now = 0.0
        self.pod_checks = 0

    def read(self):
        job = self.jobs[min(self.reads, len(self.jobs) - 1)]
        self.reads += 1
        return copy.deepcopy(job)

    def sleep(self, seconds):
        self.now += seconds

    def check_pods(self):
        self.pod_checks += 1


def admitted(job: dict, phase: str) -> dict:
    job = copy.deepcopy(job)
    job["spec"]["runPolicy"]["suspend"] = False
    job["status"]["conditions"][1] = {"type": phase, "status": "True", "reason": f"PyTorchJob{phase}",
                                      "message": "", "lastTransitionTime": "2026-11-23T12:00:00Z"}
    return job


def test_a_job_suspended_by_kueue_is_waited_on_without_counting_against_the_timeout(caplog):
    suspended = yaml.safe_load((STUCK / "kueue-suspended.yaml").read_text())
    replay = Replay(*[suspended] * 30, admitted(suspended, "Running"), admitted(suspended, "Running"),
                    admitted(suspended, "Succeeded"))
    with caplog.at_level(logging.INFO, logger="medo1.launch.waiting"):
        state = wait_for_job(replay.read, 60, 10, clock=lambda: replay.now, sleep=replay.sleep,
                             check_pods=replay.check_pods)
    assert state.phase == "Succeeded"
    assert replay.now == 320  # 300 s suspended, far past the 60 s timeout, then 20 s running
    assert replay.pod_checks == 2  # no pods exist while suspended
    assert "job suspended by Kueue: waiting for admission in LocalQueue h100 (not counted against the timeout)" in caplog.text
    assert "job admitted by Kueue" in caplog.text


def test_the_timeout_still_runs_once_kueue_has_admitted_the_job():
    suspended = yaml.safe_load((STUCK / "kueue-suspended.yaml").read_text())
    replay = Replay(*[suspended] * 5, admitted(suspended, "Running"))
    with pytest.raises(JobTimedOut):
        wait_for_job(replay.read, 60, 10, clock=lambda: replay.now, sleep=replay.sleep)
    assert replay.now == 50 + 60
