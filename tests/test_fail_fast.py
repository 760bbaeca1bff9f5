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
from medo1.launch.pods import FIX, StuckPods, pod_problems, stuck_checker
from tests.helpers import PYTORCHJOB_CREATED, PYTORCHJOB_SUCCEEDED
from tests.kube_standin import ContainerRun, KubeStandIn, Step

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
        created = {
            "conditions": [
                {
                    "type": "Created",
                    "status": "True",
                    "reason": "PyTorchJobCreated",
                    "lastTransitionTime": "2026-11-23T10:00:00Z",
                }
            ]
        }
        kube.script(NAME, [Step(created)])  # the operator leaves it Created while a pod waits
        for obj in recorded("unschedulable")["items"]:
            kube.record(obj)
        client = TrainingClient(client_configuration=Configuration(host=kube.url))
        with pytest.raises(JobStuck) as failure:
            launch_stage(
                "sft",
                backend="pytorchjob",
                client=client,
                profile="h100-2nodes",
                job_name=NAME,
                namespace=NS,
                timeout_s=60,
                poll_s=0.05,
                stuck_after_s=0.3,
            )
    finally:
        kube.stop()
    message = str(failure.value)
    assert f"PyTorchJob {NS}/{NAME}" in message
    assert (
        "pod medo1-sft-run42-worker-0: Unschedulable: 0/12 nodes are available: 12 Insufficient nvidia.com/gpu."
    ) in message
    assert FIX["Unschedulable"] in message and "deleted it" in message
    assert len(kube.calls("POST")) == 1  # not restarted: no room does not heal on a retry
    assert [d.path for d in kube.calls("DELETE")] == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/{NAME}"]
    pod_reads = [
        r
        for r in kube.calls("GET", "pods")
        if r.query.get("labelSelector") == [f"training.kubeflow.org/job-name={NAME}"]
    ]
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

    def check_pods(self, job):
        self.pod_checks += 1


def admitted(job: dict, phase: str) -> dict:
    job = copy.deepcopy(job)
    job["spec"]["runPolicy"]["suspend"] = False
    job["status"]["conditions"][1] = {
        "type": phase,
        "status": "True",
        "reason": f"PyTorchJob{phase}",
        "message": "",
        "lastTransitionTime": "2026-11-23T12:00:00Z",
    }
    return job


def test_a_job_suspended_by_kueue_is_waited_on_without_counting_against_the_timeout(caplog):
    suspended = yaml.safe_load((STUCK / "kueue-suspended.yaml").read_text())
    replay = Replay(
        *[suspended] * 30,
        admitted(suspended, "Running"),
        admitted(suspended, "Running"),
        admitted(suspended, "Succeeded"),
    )
    with caplog.at_level(logging.INFO, logger="medo1.launch.waiting"):
        state = wait_for_job(
            replay.read, 60, 10, clock=lambda: replay.now, sleep=replay.sleep, check_pods=replay.check_pods
        )
    assert state.phase == "Succeeded"
    assert replay.now == 320  # 300 s suspended, far past the 60 s timeout, then 20 s running
    assert replay.pod_checks == 32  # while suspended too: Kueue's reason is read beside the (absent) pods
    assert (
        "job suspended by Kueue: waiting for admission in LocalQueue h100 (not counted against the timeout)"
        in caplog.text
    )
    assert "job admitted by Kueue" in caplog.text


def test_the_timeout_still_runs_once_kueue_has_admitted_the_job():
    suspended = yaml.safe_load((STUCK / "kueue-suspended.yaml").read_text())
    replay = Replay(*[suspended] * 5, admitted(suspended, "Running"))
    with pytest.raises(JobTimedOut):
        wait_for_job(replay.read, 60, 10, clock=lambda: replay.now, sleep=replay.sleep)
    assert replay.now == 50 + 60


# ---- no controller, the cluster autoscaler, admission refusing the pods ---------------------------------------

QUOTA = (
    "exceeded quota: gpu, requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=0, "
    "limited: requests.nvidia.com/gpu=4"
)
# The operator's statuses as Step takes them (a job's `.status`).
CREATED = PYTORCHJOB_CREATED["status"]
SUCCEEDED = PYTORCHJOB_SUCCEEDED["status"]


def training_client(kube):
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    return TrainingClient(client_configuration=Configuration(host=kube.url))


def launch_on(kube, **options):
    """The 2-node profile as a PyTorchJob, where users have the v1 operator (the profile's own backend is trainjob,
    issue 26 item 8; tests/test_trainer_v2.py launches its TrainJobs)."""
    settings = {
        "profile": "h100-2nodes",
        "backend": "pytorchjob",
        "job_name": NAME,
        "namespace": NS,
        "timeout_s": 20,
        "poll_s": 0.05,
    } | options
    return launch_stage("sft", client=training_client(kube), **settings)


def stuck_launch(kube: KubeStandIn, **options) -> str:
    """Launch on the started stand-in `kube`, which the launch must end with JobStuck; its message, one line (the
    problem; the fix; what was done). Stops `kube`."""
    try:
        with pytest.raises(JobStuck) as failure:
            launch_on(kube, **options)
    finally:
        kube.stop()
    message = str(failure.value)
    assert "\n" not in message
    return message


def autoscaler_event(reason: str, message: str, at: str) -> dict:
    """As kubernetes/autoscaler cluster-autoscaler/processors/status/eventing_scale_up_processor.go records it."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "type": "Normal",
        "reason": reason,
        "message": message,
        "metadata": {"name": f"{NAME}-worker-0.{reason.lower()}", "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": f"{NAME}-worker-0", "namespace": NS},
        "source": {"component": "cluster-autoscaler"},
        "firstTimestamp": at,
        "lastTimestamp": at,
    }


def test_a_job_no_controller_acts_on_fails_after_stuck_after_naming_the_missing_operator():
    kube = KubeStandIn(controllers={"Job"}).start()  # the PyTorchJob CRD is installed, the operator is not running
    kube.script(NAME, [Step(CREATED)])  # what the operator would write, were it running
    message = stuck_launch(kube, stuck_after_s=0.3)
    assert (
        f"PyTorchJob {NS}/{NAME}: NoController: no controller is acting on this job (is the Kubeflow training "
        "operator running?): it has no status, no conditions and no pods"
    ) in message
    assert "fix: check that the controller is installed and running" in message
    assert [d.path for d in kube.calls("DELETE")] == [f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs/{NAME}"]


def test_pods_admission_keeps_refusing_fail_the_launch_with_the_admission_message():
    kube = KubeStandIn(refuse_pods=QUOTA).start()
    kube.script(NAME, [Step(CREATED)])  # the operator marks it Created and records FailedCreatePod, again and again
    message = stuck_launch(kube, stuck_after_s=0.5)  # under REFUSAL_GRACE_S: the refusal waits --stuck-after
    assert message.startswith(f"PyTorchJob {NS}/{NAME}: refused for over 0 s: ")
    assert (
        f'PyTorchJob {NS}/{NAME}: FailedCreatePod: Error creating: pods "{NAME}-master-0" is forbidden: {QUOTA}'
        in message
    )
    assert FIX["FailedCreatePod"] in message and message.endswith("deleted it")


def test_one_refused_pod_that_the_controller_then_creates_does_not_cost_the_run(caplog):
    """A webhook that timed out once: the operator's FailedCreatePod stays in the events for an hour, but the pod
    it created on its retry is newer, so the launch goes on to the job's end."""
    kube = KubeStandIn(refuse_pods=QUOTA, refuse_pods_once=True).start()
    run = ContainerRun("7c2e-uid", 0, ["step 1 loss 2.31"])
    kube.script(NAME, [*[Step(CREATED, run=run)] * 12, Step(SUCCEEDED, run=run, exit_code=0)])
    try:
        result = launch_on(kube, stuck_after_s=0.3)
    finally:
        kube.stop()
    assert result.state.phase == "Succeeded" and kube.calls("DELETE") == []
    assert [e["reason"] for e in kube.recorded[f"/api/v1/namespaces/{NS}/events"]] == ["FailedCreatePod"]


def test_a_refusal_fails_once_it_has_lasted_its_grace_and_a_pod_created_since_clears_it():
    from medo1.launch.pods import REFUSAL_GRACE_S

    job = {"kind": "PyTorchJob", "metadata": {"name": NAME, "namespace": NS, "uid": "u1"}, "status": {}}
    refusal = {
        "type": "Warning",
        "reason": "FailedCreatePod",
        "involvedObject": {"kind": "PyTorchJob", "name": NAME, "uid": "u1"},
        "message": f'Error creating: pods "{NAME}-worker-0" is forbidden: {QUOTA}',
        "lastTimestamp": "2026-11-23T10:00:30Z",
    }
    master = {"metadata": {"name": f"{NAME}-master-0", "creationTimestamp": "2026-11-23T10:00:10Z"}, "status": {}}
    clock = Clock()
    stuck = StuckPods(300, clock)
    stuck.check([master], [refusal], job, "PyTorchJob")  # the worker refused after the master was created
    clock.now = REFUSAL_GRACE_S - 1
    stuck.check([master], [refusal], job, "PyTorchJob")
    clock.now = REFUSAL_GRACE_S
    with pytest.raises(JobStuck, match=f"^refused for over {REFUSAL_GRACE_S:.0f} s: .*FailedCreatePod: Error creating"):
        stuck.check([master], [refusal], job, "PyTorchJob")

    worker = {"metadata": {"name": f"{NAME}-worker-0", "creationTimestamp": "2026-11-23T10:00:31Z"}, "status": {}}
    cleared = StuckPods(300, clock)
    cleared.check([master], [refusal], job, "PyTorchJob")
    clock.now += 2 * REFUSAL_GRACE_S
    cleared.check([master, worker], [refusal], job, "PyTorchJob")  # the retry created it: no problem left


@pytest.mark.parametrize(
    "source, reason, said",
    [
        ("cluster-autoscaler", "TriggeredScaleUp", "pod triggered scale-up: [{h100-pool 0->2 (max: 4)}]"),
        # kubernetes-sigs/karpenter pkg/controllers/provisioning/scheduling/events.go (NominatePodEvent); EKS Auto
        # Mode records the same event from its own component.
        ("karpenter", "Nominated", "Pod should schedule on: nodeclaim/gpu-h100-x7k2q"),
        ("eks-auto-mode/compute", "Nominated", "Pod should schedule on: nodeclaim/gpu-node-pool-c4bb5"),
    ],
    ids=["cluster-autoscaler", "karpenter", "eks-auto-mode"],
)
def test_an_unschedulable_pod_waits_while_the_autoscaler_adds_a_node(source, reason, said, caplog):
    kube = KubeStandIn().start()
    kube.script(NAME, [*[Step(CREATED)] * 12, Step(SUCCEEDED)])  # scheduled once the node is up, past stuck_after_s
    for obj in recorded("unschedulable")["items"]:
        kube.record(obj)
    event = autoscaler_event(reason, said, "2026-11-23T10:00:20Z")
    event["source"]["component"] = source
    kube.record(event)
    try:
        with caplog.at_level(logging.WARNING, logger="medo1.launch.pods"):
            result = launch_on(kube, stuck_after_s=0.3, scale_up_wait_s=60)
    finally:
        kube.stop()
    assert result.state.phase == "Succeeded" and kube.calls("DELETE") == []
    assert [r.query["fieldSelector"] for r in kube.calls("GET", "events")[:4]] == [
        ["type=Warning"],
        ["source=cluster-autoscaler"],
        ["reason=Nominated"],
        ["involvedObject.kind=Workload,reason=Pending"],
    ]
    shown = "cluster autoscaler" if source == "cluster-autoscaler" else source
    assert f"{shown}: {said}; fix: " in caplog.text and "(failing after 60 s)" in caplog.text


def test_an_unschedulable_pod_no_scale_up_is_coming_for_fails_after_stuck_after_with_the_autoscalers_reason():
    kube = KubeStandIn().start()
    kube.script(NAME, [Step(CREATED)])
    for obj in recorded("unschedulable")["items"]:
        kube.record(obj)
    kube.record(
        autoscaler_event(
            "TriggeredScaleUp", "pod triggered scale-up: [{h100-pool 0->2 (max: 2)}]", "2026-11-23T10:00:20Z"
        )
    )
    kube.record(
        autoscaler_event(
            "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached", "2026-11-23T10:09:00Z"
        )
    )  # the newer verdict wins
    message = stuck_launch(kube, stuck_after_s=0.3, scale_up_wait_s=60)
    assert (
        "Unschedulable: 0/12 nodes are available: 12 Insufficient nvidia.com/gpu. preemption: 0/12 nodes are "
        "available: 12 No preemption victims found for incoming pod.; cluster autoscaler: pod didn't trigger "
        "scale-up: 1 max node group size reached"
    ) in message


def test_the_scale_up_wait_is_bounded_and_a_provisioning_request_counts_as_a_scale_up():
    pods, events = split(recorded("unschedulable")["items"])
    clock = Clock()
    stuck = StuckPods(300, clock, scale_up_wait_s=1800)
    scaling = [
        *events,
        autoscaler_event(
            "TriggeredScaleUp", "pod triggered scale-up: [{h100-pool 0->2 (max: 4)}]", "2026-11-23T10:00:20Z"
        ),
    ]
    stuck.check(pods, scaling)
    clock.now = 1799
    stuck.check(pods, scaling)
    clock.now = 1800
    with pytest.raises(JobStuck, match="stuck for over 1800 s"):
        stuck.check(pods, scaling)

    provisioned = copy.deepcopy(pods)
    provisioned[0]["metadata"]["annotations"] = {
        "autoscaling.x-k8s.io/consume-provisioning-request": "medo1-sft-prov-1"
    }
    (problem,) = pod_problems(provisioned[0], events, scale_up_wait_s=1800)
    assert problem.grace_s == 1800 and problem.message.endswith(
        "waiting for the nodes of ProvisioningRequest medo1-sft-prov-1"
    )
    (plain,) = pod_problems(pods[0], events, scale_up_wait_s=1800)
    assert plain.grace_s is None  # no autoscaler says a node is coming: --stuck-after


def test_the_default_scale_up_wait_is_documented_and_long_enough_for_a_gpu_node_to_boot():
    from medo1.cli import build_parser
    from medo1.launch.pods import DEFAULT_SCALE_UP_WAIT_S

    assert DEFAULT_SCALE_UP_WAIT_S >= 20 * 60
    args = build_parser().parse_args(["launch", "sft"])
    assert args.scale_up_wait == DEFAULT_SCALE_UP_WAIT_S
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "--scale-up-wait" in readme and "TriggeredScaleUp" in readme


# ---- a job Kueue can never admit --------------------------------------------------------------------------------

SUSPENDED = {
    "conditions": [
        {
            "type": "Suspended",
            "status": "True",
            "reason": "PyTorchJobSuspended",
            "lastTransitionTime": "2026-11-23T10:00:01Z",
        }
    ]
}
# Kueue's scheduler's messages (pkg/scheduler/flavorassigner/flavorassigner.go): a resource no flavor of the
# ClusterQueue covers, and quota that is only busy.
NOT_COVERED = "couldn't assign flavors to pod set worker: resource rdma/ib unavailable in ClusterQueue"
BUSY = "couldn't assign flavors to pod set worker: insufficient unused quota for nvidia.com/gpu in flavor h100, 8 more needed"


def test_a_job_kueue_can_never_admit_fails_after_stuck_after_with_kueues_reason():
    """A ClusterQueue that does not cover rdma/ib keeps the workload suspended for ever; without reading Kueue's
    reason the launcher waited for ever too (suspended time does not count against --timeout)."""
    kube = KubeStandIn(kueue_pending=NOT_COVERED).start()
    kube.script(NAME, [Step(SUSPENDED)])
    message = stuck_launch(kube, stuck_after_s=0.3)
    assert f"PyTorchJob {NS}/{NAME}: Inadmissible: {NOT_COVERED}" in message
    assert FIX["Inadmissible"] in message and message.endswith("deleted it")
    (post,) = kube.calls("POST")
    assert post.body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100"


def test_a_job_waiting_for_busy_quota_is_no_problem_and_kueues_reason_is_logged_once(caplog):
    job = yaml.safe_load((STUCK / "kueue-suspended.yaml").read_text())
    event = {
        "kind": "Event",
        "type": "Normal",
        "reason": "Pending",
        "message": BUSY,
        "involvedObject": {"kind": "Workload", "name": f"pytorchjob-{job['metadata']['name']}-1f3a9"},
        "lastTimestamp": "2026-11-23T10:00:02Z",
    }
    other = copy.deepcopy(event) | {"message": NOT_COVERED}
    other["involvedObject"] = {"kind": "Workload", "name": "pytorchjob-another-job-77a0c"}
    clock = Clock()
    check = stuck_checker(lambda: ([], [event, other]), 300, clock, kind="PyTorchJob")
    with caplog.at_level(logging.INFO, logger="medo1.launch.pods"):
        for clock.now in (0, 400, 100_000):
            check(job)  # the other job's Workload is not this one's
    assert caplog.text.count(f"Kueue: {BUSY}") == 1


def test_the_cli_exits_4_on_a_stuck_job_and_the_run_job_fails_on_that_code_at_once(tmp_path, monkeypatch):
    """The chart's run Job (backoffLimit 3) would start a new launcher for a stuck stage job, which creates the job
    again and holds the started pods' GPUs for another --stuck-after; its podFailurePolicy fails the run on the
    launcher's exit codes for what a retry cannot cure (4: stuck, 3: a strict plan refusal) and does not count an
    evicted run pod."""
    from medo1 import chart
    from medo1.cli import main
    from medo1.launch.preflight import PlanDoesNotFit

    kube = KubeStandIn(kueue_pending=NOT_COVERED).start()
    kube.script(NAME, [Step(SUSPENDED)])
    monkeypatch.setattr(  # what KUBECONFIG sets, read once when the kubernetes client is imported
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)),
    )
    try:
        args = ["launch", "sft", "--profile", "h100-2nodes", "--backend", "pytorchjob", "--job-name", NAME]
        code = main([*args, "--namespace", NS, "--poll", "0.05", "--stuck-after", "0.3"])
    finally:
        kube.stop()
    assert code == JobStuck.exit_code == 4
    (run_job,) = [
        o
        for o in chart.render_chart(chart.load_profile("h100-1node"), release="medo1", namespace=NS)
        if o["kind"] == "Job" and o["metadata"]["name"] == "medo1-run"
    ]
    rules = run_job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {
            "containerName": "medo1",
            "operator": "In",
            "values": [PlanDoesNotFit.exit_code, JobStuck.exit_code],
        },
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert run_job["spec"]["template"]["spec"]["containers"][0]["name"] == "medo1"
