"""The chart over a release's life with real Helm (helm-python-sdk: Helm 4's own install / upgrade / uninstall)
against the API stand-in, which refuses what a real API server refuses: a batch Job's pod template changed,
an immutable ConfigMap's data changed (tests/kube_standin.py, checked here first)."""

from __future__ import annotations

import copy
import functools
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from medo1 import chart
from tests.kube_standin import KubeStandIn

CRDS = Path(__file__).parent / "fixtures" / "crds"
NS = "team-a"
RELEASE = "medo1"


@functools.cache
def kubeflow_crds() -> list[dict]:
    """The Kubeflow CRDs as discovery needs them (group, names, scope, versions; not their schemas)."""
    crds = []
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if crd:
                versions = [{k: v for k, v in version.items() if k != "schema"} for version in crd["spec"]["versions"]]
                crds.append({**crd, "spec": {**crd["spec"], "versions": versions}})
    return crds


@pytest.fixture
def kube():
    """A stand-in API server with the Kubeflow CRDs installed (discovery serves their kinds)."""
    standin = KubeStandIn().start()
    for crd in copy.deepcopy(kubeflow_crds()):
        standin.record(crd)
    yield standin
    standin.stop()


@pytest.fixture
def helm(kube, tmp_path):
    """Helm 4 (the SDK's) on the stand-in as a cluster admin; releases kept in memory for the test."""
    from helm_python import Config

    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    with Config(kubeconfig_path=str(kubeconfig), namespace=NS, storage_driver="memory") as config:
        yield config


def request(
    kube, method: str, path: str, body: dict | None = None, content_type: str = "application/json", token: str = "admin"
):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        kube.url + path,
        data=data,
        method=method,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def jobs(kube) -> dict[str, dict]:
    """Every job object the stand-in holds (batch Jobs, PyTorchJobs, TrainJobs) by kind/name."""
    return {f"{s.body['kind']}/{name}": s.body for (ns, name), s in kube.jobs.items() if ns == NS}


def objects(kube, collection: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in kube.recorded.get(collection, [])}


CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"


# ---- the stand-in refuses what the API server refuses ------------------------------------------------


def test_the_standin_refuses_a_changed_job_pod_template_and_immutable_configmap_data(kube):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "medo1-run"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "medo1", "image": "ghcr.io/medo1/trainer:0.1.0"}],
                }
            }
        },
    }
    path = f"/apis/batch/v1/namespaces/{NS}/jobs/medo1-run"
    apply = "application/apply-patch+yaml"
    assert request(kube, "PATCH", path, job, apply)[0] == 201
    assert request(kube, "PATCH", path, job, apply)[0] == 200  # the same configuration applied again
    changed = copy.deepcopy(job)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/medo1/trainer:0.1.1"
    code, status = request(kube, "PATCH", path, changed, apply)
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"].startswith('Job.batch "medo1-run" is invalid: spec.template: Invalid value: {')
    assert status["message"].endswith(": field is immutable") and "trainer:0.1.1" in status["message"]
    # The API server's labels on the Job's pods stay when the same template is applied (server-side apply).
    assert kube.jobs[(NS, "medo1-run")].body["spec"]["template"]["metadata"]["labels"]["job-name"] == "medo1-run"

    snapshot = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "snap"},
        "immutable": True,
        "data": {"values.yaml": "a: 1\n"},
    }
    assert request(kube, "POST", CONFIGMAPS, snapshot)[0] == 201
    code, status = request(kube, "PUT", f"{CONFIGMAPS}/snap", {**snapshot, "data": {"values.yaml": "a: 2\n"}})
    assert (code, status["message"]) == (
        422,
        'ConfigMap "snap" is invalid: data: Forbidden: field is immutable when `immutable` is set',
    )


def test_the_standin_refuses_the_same_for_a_job_its_script_plays(kube):
    """The jobs a test scripts (the controller's status steps) take the same path as any object: a changed pod
    template is refused, a stale replace conflicts, a strategic merge patch of a custom resource is unsupported;
    a metadata patch is applied and the script plays on. Jobs are listed by their own kind only."""
    from tests.kube_standin import Step

    kube.script("medo1-eval", [Step({"active": 1}), Step({"succeeded": 1})])
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "medo1-eval"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "medo1", "image": "ghcr.io/medo1/trainer:0.1.0"}],
                }
            }
        },
    }
    jobs_path = f"/apis/batch/v1/namespaces/{NS}/jobs"
    assert request(kube, "POST", jobs_path, job)[0] == 201
    changed = {
        "spec": {"template": {"spec": {"containers": [{"name": "medo1", "image": "ghcr.io/medo1/trainer:0.1.1"}]}}}
    }
    code, status = request(kube, "PATCH", f"{jobs_path}/medo1-eval", changed, "application/merge-patch+json")
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"].startswith('Job.batch "medo1-eval" is invalid: spec.template: Invalid value: {')
    code, patched = request(
        kube,
        "PATCH",
        f"{jobs_path}/medo1-eval",
        {"metadata": {"labels": {"medo1.io/job": "medo1-eval"}}},
        "application/strategic-merge-patch+json",
    )
    assert code == 200 and patched["metadata"]["labels"]["medo1.io/job"] == "medo1-eval"
    assert patched["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/medo1/trainer:0.1.0"
    assert [request(kube, "GET", f"{jobs_path}/medo1-eval")[1]["status"] for _ in range(2)] == [
        {"active": 1},
        {"succeeded": 1},
    ]
    stale = {**job, "metadata": {**job["metadata"], "resourceVersion": "1"}}
    code, status = request(kube, "PUT", f"{jobs_path}/medo1-eval", stale)
    assert (code, status["reason"]) == (409, "Conflict")
    assert status["message"].startswith(
        'Operation cannot be fulfilled on jobs.batch "medo1-eval": the object has been modified'
    )

    pytorchjobs = f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"
    pytorchjob = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "medo1-sft"}, "spec": {}}
    assert request(kube, "POST", pytorchjobs, pytorchjob)[0] == 201
    label = {"metadata": {"labels": {"medo1.io/job": "medo1-sft"}}}
    code, status = request(kube, "PATCH", f"{pytorchjobs}/medo1-sft", label, "application/strategic-merge-patch+json")
    assert (code, status["reason"]) == (415, "UnsupportedMediaType")
    assert request(kube, "PATCH", f"{pytorchjobs}/medo1-sft", label, "application/merge-patch+json")[0] == 200
    assert [j["metadata"]["name"] for j in request(kube, "GET", jobs_path)[1]["items"]] == ["medo1-eval"]
    assert [j["metadata"]["name"] for j in request(kube, "GET", pytorchjobs)[1]["items"]] == ["medo1-sft"]


# ---- helm upgrade ----------------------------------------------------------------------------------------


def upgraded(values: dict) -> dict:
    """What a user changes in an upgrade: a new image tag and the chain's timeout."""
    return {
        **values,
        "image": {**values.get("image", {}), "tag": "0.1.1"},
        "chain": {**values.get("chain", {}), "timeoutHours": 72},
    }


@pytest.mark.e2e
@pytest.mark.parametrize("profile", chart.profiles())
def test_helm_upgrade_with_a_new_image_keeps_every_job_as_it_was_created(kube, helm, profile):
    """Issue 26, item 1: `helm upgrade --set image.tag=...` failed on every profile with a batch Job (a Job's pod
    template is immutable) and left the chain's ConfigMap changed under the running run. Now every job that
    exists, and the snapshot of values the run reads, stays as it was created; the upgrade itself succeeds."""
    values = chart.load_profile(profile)
    installed = helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    assert installed["status"] == "deployed"
    before_jobs, before_maps = copy.deepcopy(jobs(kube)), copy.deepcopy(objects(kube, CONFIGMAPS))

    release = helm.upgrade(str(chart.CHART_DIR), RELEASE, upgraded(values), namespace=NS, timeout=60)

    assert release["status"] == "deployed"
    assert {name: job["spec"] for name, job in jobs(kube).items()} == {
        name: job["spec"] for name, job in before_jobs.items()
    }
    assert objects(kube, CONFIGMAPS).keys() == before_maps.keys()
    for name, config in objects(kube, CONFIGMAPS).items():
        assert (config["data"], config.get("immutable")) == (before_maps[name]["data"], True)
    if before_jobs:
        kept = ", ".join(f"{kind.lower()}/{name}" for kind, name in (key.split("/") for key in before_jobs))
        assert (
            f"Kept as they were created (an upgrade does not change or restart a job that exists): {kept}."
            in release["notes"]
        )
    else:
        assert "Kept as they were created" not in release["notes"]


@pytest.mark.e2e
def test_a_new_run_takes_the_upgraded_values_once_the_old_run_job_is_deleted(kube, helm):
    """The chain reads an immutable, content-named snapshot of the values: a new run (the run Job deleted, then
    an upgrade) gets a new snapshot with the new values; the old one goes with the release revision."""
    values = chart.load_profile("h100-1node")
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    (old_snapshot,) = objects(kube, CONFIGMAPS)
    first = jobs(kube)["Job/medo1-run"]
    volume = next(v for v in first["spec"]["template"]["spec"]["volumes"] if v["name"] == "chain-values")
    assert volume["configMap"]["name"] == old_snapshot and old_snapshot.startswith("medo1-chain-")
    assert "ttlSecondsAfterFinished" not in first["spec"]  # the record of the run, until uninstall

    assert request(kube, "DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/medo1-run")[0] == 200
    helm.upgrade(str(chart.CHART_DIR), RELEASE, upgraded(values), namespace=NS, timeout=60)

    (new_snapshot,) = objects(kube, CONFIGMAPS)
    assert new_snapshot != old_snapshot
    assert yaml.safe_load(objects(kube, CONFIGMAPS)[new_snapshot]["data"]["values.yaml"])["image"]["tag"] == "0.1.1"
    (container,) = jobs(kube)["Job/medo1-run"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/medo1/trainer:0.1.1"
    assert container["args"][container["args"].index("--timeout") + 1] == str(72 * 3600)


@pytest.mark.e2e
def test_turning_the_chain_on_is_refused_while_a_stage_job_of_the_chain_off_runs(kube, helm):
    """cpu-smoke (chain off) renders PyTorchJob medo1-sft; an upgrade with chain.enabled=true no longer renders it,
    so Helm deleted it mid-run. Now the upgrade is refused with one line saying what to do, and goes through once
    the job has finished (the chain's run starts anew under its own job names)."""
    from helm_python.errors import HelmError

    from tests.kube_standin import Step

    values = chart.load_profile("cpu-smoke")
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    installed = len(kube.requests)
    chain_on = {**values, "chain": {**values.get("chain", {}), "enabled": True}}
    with pytest.raises(HelmError) as refused:
        helm.upgrade(str(chart.CHART_DIR), RELEASE, chain_on, namespace=NS, timeout=60)
    assert (
        "chain.enabled=true would delete PyTorchJob medo1-sft, which the chart started with the chain off and which "
        f"is still running: wait for it to finish, or delete it (kubectl delete pytorchjob -n {NS} medo1-sft), then "
        "upgrade"
    ) in str(refused.value)
    assert [r for r in kube.requests[installed:] if r.method in ("DELETE", "POST", "PATCH", "PUT")] == []

    succeeded = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}
    kube.jobs[(NS, "medo1-sft")].steps = [Step(succeeded)]
    kube.jobs[(NS, "medo1-sft")].position = 0
    release = helm.upgrade(str(chart.CHART_DIR), RELEASE, chain_on, namespace=NS, timeout=60)
    assert release["status"] == "deployed" and "Job/medo1-run" in jobs(kube)


def training_runtime_container(kube, name: str) -> dict:
    (runtime,) = [
        o
        for o in kube.recorded.get(f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainingruntimes", [])
        if o["metadata"]["name"] == name
    ]
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (container,) = node["template"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.e2e
def test_a_trainjob_run_after_an_upgrade_runs_the_upgraded_image_and_a_running_one_keeps_its_runtime(kube, helm):
    """h100-1node-trainjob, chain off: the TrainJob names only its shape, its TrainingRuntime the image, recipe and
    resources. The runtime was a pre-install hook only, so a new run after `helm upgrade` (README: "The new values
    apply to the next run") ran the install-time image. Now an upgrade leaves the runtime of a TrainJob that exists
    as it was, and writes it afresh once that TrainJob has been deleted for a new run."""
    values = chart.load_profile("h100-1node-trainjob")
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    newer = {**values, "image": {**values.get("image", {}), "tag": "0.1.1"}}
    helm.upgrade(str(chart.CHART_DIR), RELEASE, newer, namespace=NS, timeout=60)
    assert training_runtime_container(kube, "medo1-sft")["image"] == "ghcr.io/medo1/trainer:0.1.0"  # still running

    request(kube, "DELETE", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs/medo1-sft")
    helm.upgrade(str(chart.CHART_DIR), RELEASE, newer, namespace=NS, timeout=60)
    assert training_runtime_container(kube, "medo1-sft")["image"] == "ghcr.io/medo1/trainer:0.1.1"
    assert (NS, "medo1-sft") in kube.jobs


@pytest.mark.e2e
def test_an_upgrade_that_enables_a_trainjob_stage_creates_its_runtime_first(kube, helm):
    """Enabling RL on upgrade renders TrainJob medo1-rl on TrainingRuntime medo1-rl, which the pre-install hook
    never created: Trainer's validating webhook refuses such a TrainJob (kubeflow/trainer
    pkg/runtime/core/trainingruntime.go, ValidateObjects: "specified trainingRuntime must be created before the
    TrainJob is created"). The pre-upgrade hook creates it before the TrainJob."""
    values = chart.load_profile("h100-1node-trainjob")
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    stages = {**values.get("stages", {}), "rl": {**values.get("stages", {}).get("rl", {}), "enabled": True}}
    installed = len(kube.requests)
    helm.upgrade(str(chart.CHART_DIR), RELEASE, {**values, "stages": stages}, namespace=NS, timeout=60)
    assert training_runtime_container(kube, "medo1-rl")["command"][0] == "torchrun"
    writes = [(r.method, r.path.rsplit("/", 2)[-2:]) for r in kube.requests[installed:] if r.method != "GET"]
    runtime_rl, trainjob_rl = ("PATCH", ["trainingruntimes", "medo1-rl"]), ("PATCH", ["trainjobs", "medo1-rl"])
    assert writes.index(runtime_rl) < writes.index(trainjob_rl)
    # The running SFT TrainJob's runtime is not deleted and created again under it.
    assert not [w for w in writes if w[1] == ["trainingruntimes", "medo1-sft"]]


@pytest.mark.e2e
@pytest.mark.parametrize("profile", chart.profiles())
def test_helm_uninstall_removes_the_release_and_keeps_the_volumes(kube, helm, profile):
    """What the README says `helm uninstall` does, for every profile: the jobs (a TrainJob too), the snapshot,
    RBAC, budget and runtimes go; the PVCs the chart created stay (helm.sh/resource-policy: keep) with the
    checkpoints; the TrainingRuntime of the chart's own TrainJob, a Helm hook, stays (no pods)."""
    values = chart.load_profile(profile)
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    claims = {o["metadata"]["name"] for o in chart.render_chart(values) if o["kind"] == "PersistentVolumeClaim"}
    helm.uninstall(RELEASE, timeout=60)
    assert jobs(kube) == {} and objects(kube, CONFIGMAPS) == {}
    assert objects(kube, f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets") == {}
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    for collection in (
        f"{rbac}/namespaces/{NS}/roles",
        f"{rbac}/namespaces/{NS}/rolebindings",
        f"{rbac}/clusterroles",
        f"{rbac}/clusterrolebindings",
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes",
    ):
        assert objects(kube, collection) == {}, collection
    assert set(objects(kube, f"/api/v1/namespaces/{NS}/persistentvolumeclaims")) == claims
    hooks = set(objects(kube, f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainingruntimes"))
    assert hooks == ({"medo1-sft"} if profile == "h100-1node-trainjob" else set())


# ---- a drain of the run pod (the chart's side) --------------------------------------------------------------


def run_pod(kube, ready: bool = True) -> dict:
    """The pod the Job controller creates from the installed run Job, recorded as running on a node."""
    template = jobs(kube)["Job/medo1-run"]["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "medo1-run-x7k2p", "namespace": NS, **copy.deepcopy(template["metadata"])},
        "spec": copy.deepcopy(template["spec"]) | {"nodeName": "cpu-01"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    kube.record(pod)
    return pod


def evict(kube, pod: dict):
    name = pod["metadata"]["name"]
    return request(
        kube,
        "POST",
        f"/api/v1/namespaces/{NS}/pods/{name}/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": NS}},
    )


@pytest.mark.e2e
def test_a_node_drain_cannot_evict_the_run_pod(kube, helm):
    """Issue 26, item 12: evicting the run pod (node drain, autoscaler consolidation) went through, and its SIGTERM
    handler deleted the training job. The chart now gives the run pod a PodDisruptionBudget that refuses the
    eviction `kubectl drain` asks for, and tells the cluster autoscaler and Karpenter not to evict it."""
    helm.install(str(chart.CHART_DIR), RELEASE, chart.load_profile("h100-1node"), namespace=NS, timeout=60)
    pod = run_pod(kube)
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    code, status = evict(kube, pod)
    assert (code, status["message"]) == (429, "Cannot evict pod as it would violate the pod's disruption budget.")
    assert (
        status["details"]["causes"][0]["message"]
        == "The disruption budget medo1-run needs 1 healthy pods and has 1 currently"
    )
    assert "medo1-run-x7k2p" in objects(kube, f"/api/v1/namespaces/{NS}/pods")
    # A run pod that is not Ready (stuck, crashing) does not hold a drain up.
    kube.recorded[f"/api/v1/namespaces/{NS}/pods"].clear()
    assert evict(kube, run_pod(kube, ready=False))[0] == 201


@pytest.mark.e2e
def test_without_the_budget_a_drain_evicts_the_run_pod(kube, helm):
    """The stand-in's Eviction API evicts what no budget protects (so the test above is the budget's doing)."""
    values = chart.load_profile("h100-1node") | {"chain": {"enabled": True, "disruptionBudget": False}}
    helm.install(str(chart.CHART_DIR), RELEASE, values, namespace=NS, timeout=60)
    assert evict(kube, run_pod(kube))[0] == 201
    assert objects(kube, f"/api/v1/namespaces/{NS}/pods") == {}


def notes(values: dict) -> str:
    from helm_python.chart import Chart

    with Chart.load(chart.CHART_DIR) as loaded:
        rendered = loaded.render(values=values, name=RELEASE, namespace=NS, is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def test_notes_say_who_creates_a_failed_job_again():
    """Issue 26, item 12: with the chain off a PyTorchJob has backoffLimit 0 and restartPolicy Never and nothing
    creates it again, though NOTES.txt said failed jobs were."""
    chain_off = notes(chart.load_profile("cpu-smoke"))
    assert "created again" not in chain_off and "restarted whole" not in chain_off
    assert "With the chain off nothing creates a failed job again (backoffLimit 0, restartPolicy Never)" in chain_off
    assert "A failed training job is created again whole by the run Job (runPolicy.jobRestarts: 3)" in notes(
        chart.load_profile("h100-1node")
    )
    assert "A failed TrainJob is restarted whole by its JobSet (runPolicy.jobRestarts: 3)" in notes(
        chart.load_profile("h100-1node-trainjob")
    )


# ---- RBAC as the chart's service account ---------------------------------------------------------------


def trainer_client_as(kube, account: str):
    """The Kubeflow SDK's TrainerClient with a service account's token: RBAC applies to what it asks."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubernetes.client import Configuration

    configuration = Configuration(
        host=kube.url, api_key={"authorization": f"Bearer {kube.service_account_token(NS, account)}"}
    )
    return TrainerClient(KubernetesBackendConfig(namespace=NS, client_configuration=configuration))


def launch_trainjob_as(kube, account: str = "medo1", profile: str = "h100-2nodes"):
    from medo1.launch import launch_stage

    return launch_stage(
        "sft",
        backend="trainjob",
        profile=profile,
        job_name="medo1-sft",
        namespace=NS,
        client=trainer_client_as(kube, account),
        timeout_s=30,
        poll_s=0.05,
    )


@pytest.mark.e2e
def test_the_charts_service_account_launches_a_trainjob_through_the_sdk(kube, helm):
    """Issue 26, item 2: the SDK's get_runtime reads the namespaced TrainingRuntime first and the chart's Role
    had no get on it: 403 as the chart's account. Now the team release's Role grants it (answered 404), and the
    platform install (trainer-v2-runtimes) grants get on its ClusterTrainingRuntimes; the launch goes through."""
    from tests.helpers import TRAINJOB_CREATED, TRAINJOB_SUCCEEDED
    from tests.kube_standin import Step

    helm.install(str(chart.CHART_DIR), RELEASE, chart.load_profile("infrastructure"), namespace=NS, timeout=60)
    helm.install(
        str(chart.CHART_DIR), "medo1-runtimes", chart.load_profile("trainer-v2-runtimes"), namespace=NS, timeout=60
    )
    kube.script("medo1-sft", [Step(TRAINJOB_CREATED), Step(TRAINJOB_SUCCEEDED)])
    first = len(kube.requests)

    result = launch_trainjob_as(kube)

    assert (result.backend, result.state.phase, result.action) == ("trainjob", "Succeeded", "created")
    runtime_reads = [r.path for r in kube.requests[first:] if "runtimes/" in r.path]
    assert runtime_reads == [
        f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainingruntimes/medo1-sft",
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/medo1-sft",
    ]
    (post,) = [r for r in kube.requests[first:] if r.method == "POST"]
    assert post.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
    # Issue 26, item 8: the Kueue profile's TrainJob, with its node shape and placement, as the SDK sent it.
    from medo1.launch.rendering import stage_values
    from medo1.launch.retries import mark
    from medo1.launch.trainjob import build_trainjob

    expected = mark(
        build_trainjob("sft", stage_values("sft", profile="h100-2nodes"), job_name="medo1-sft", timeout_s=30),
        "medo1-sft",
        1,
        None,
    )
    del expected["metadata"]["namespace"]
    assert post.body == expected
    assert post.body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100"
    assert post.body["spec"]["trainer"]["resourcesPerNode"]["limits"]["rdma/ib"] == "1"


@pytest.mark.e2e
def test_without_the_platform_grant_the_launch_says_what_it_may_not_read(kube, helm):
    """The ClusterTrainingRuntime read is cluster-scoped: a namespaced Role cannot grant it. Without the platform
    install's ClusterRoleBinding the launch fails in one line with the API server's 403 and where the grant is."""
    helm.install(str(chart.CHART_DIR), RELEASE, chart.load_profile("infrastructure"), namespace=NS, timeout=60)
    for runtime in (
        o
        for o in chart.render_chart(chart.load_profile("trainer-v2-runtimes"))
        if o["kind"] == "ClusterTrainingRuntime"
    ):
        kube.record(runtime)  # installed by an admin without runtimes.readers

    from medo1.launch import LaunchError

    with pytest.raises(LaunchError) as refused:
        launch_trainjob_as(kube)
    assert str(refused.value).startswith(
        f"could not create TrainJob {NS}/medo1-sft: may not read the runtime 'medo1-sft': 403 "
        'clustertrainingruntimes.trainer.kubeflow.org "medo1-sft" is forbidden: '
        'User "system:serviceaccount:team-a:medo1" cannot get resource "clustertrainingruntimes" in API group '
        '"trainer.kubeflow.org" at the cluster scope; the chart\'s launcher Role grants get on trainingruntimes'
    )
    assert "\n" not in str(refused.value)
    assert not [r for r in kube.requests if r.method == "POST" and r.path.endswith("/trainjobs")]


# ---- plain manifests in any namespace --------------------------------------------------------------------


def may(kube, token: str, verb: str, group: str, resource: str, namespace: str, name: str = "") -> bool:
    attributes = {"verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name}
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    code, answer = request(kube, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, token=token)
    assert code == 201, answer
    return answer["status"]["allowed"]


@pytest.mark.parametrize("profile", chart.profiles())
def test_the_plain_manifests_apply_in_any_namespace(kube, profile):
    """Issue 26, item 17: the manifests only worked in a namespace named medo1 (RoleBinding subjects and the
    chain's --namespace hard-coded). Created as `kubectl apply -n team-b -f` creates them, the launcher's
    account may launch in team-b, and the run Job takes its namespace from its pod (downward API)."""
    text = (chart.MANIFESTS_DIR / f"{profile}.yaml").read_text()
    manifest = [o for o in yaml.load_all(text, Loader=yaml.CSafeLoader) if o]
    assert "namespace: medo1" not in text and not [o for o in manifest if "namespace" in o["metadata"]]
    served = {
        kind: (group_version, plural, namespaced)
        for group_version, resources in kube.served_resources().items()
        for plural, kind, namespaced in resources
    }
    for obj in manifest:
        group_version, plural, namespaced = served[obj["kind"]]
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        code, answer = request(kube, "POST", f"{prefix}{'/namespaces/team-b' if namespaced else ''}/{plural}", obj)
        assert code == 201, answer
    bindings = [o for o in manifest if o["kind"] == "RoleBinding"]
    if bindings:
        launcher = kube.service_account_token("team-b", "medo1")
        assert may(kube, launcher, "create", "kubeflow.org", "pytorchjobs", "team-b")
        assert may(kube, launcher, "get", "trainer.kubeflow.org", "trainingruntimes", "team-b")
        assert not may(kube, launcher, "create", "kubeflow.org", "pytorchjobs", "medo1")
        assert not may(
            kube, kube.service_account_token("team-a", "medo1"), "create", "kubeflow.org", "pytorchjobs", "team-b"
        )
    for run in (o for o in manifest if o["kind"] == "Job" and o["metadata"]["name"].endswith("-run")):
        (container,) = run["spec"]["template"]["spec"]["containers"]
        assert container["args"][container["args"].index("--namespace") + 1] == "$(MEDO1_NAMESPACE)"
        assert {"name": "MEDO1_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container[
            "env"
        ]


# ---- doctor's cluster-wide reads for the chart's accounts only ----------------------------------------------


@pytest.mark.e2e
def test_only_the_charts_accounts_read_the_cluster_and_everyone_reads_the_runtimes(kube, helm):
    """The platform install bound one ClusterRole to system:authenticated: every identity could read the medo1
    runtimes (as Kubeflow's kubeflow-trainer-view-cluster-runtimes allows) and also list nodes, StorageClasses
    and Kueue's ClusterQueues. Now doctor's cluster-wide reads are the team release's own ClusterRoleBinding, for
    the accounts its launcher Role is bound to; two teams' releases `medo1` each install theirs."""
    helm.install(str(chart.CHART_DIR), RELEASE, chart.load_profile("infrastructure"), namespace=NS, timeout=60)
    helm.install(
        str(chart.CHART_DIR), "medo1-runtimes", chart.load_profile("trainer-v2-runtimes"), namespace=NS, timeout=60
    )
    helm.install(str(chart.CHART_DIR), RELEASE, {}, namespace="team-b", timeout=60)
    anyone = kube.service_account_token("team-c", "default")
    code, answer = request(kube, "GET", "/api/v1/nodes", token=anyone)
    assert (code, answer["message"]) == (
        403,
        'nodes is forbidden: User "system:serviceaccount:team-c:default" cannot list resource "nodes" in API group "" '
        "at the cluster scope",
    )
    assert not may(kube, anyone, "list", "storage.k8s.io", "storageclasses", "")
    assert not may(kube, anyone, "list", "kueue.x-k8s.io", "clusterqueues", "")
    for account in ("medo1", "default-editor"):  # the chart's account and rbac.pipelineServiceAccounts
        token = kube.service_account_token(NS, account)
        assert may(kube, token, "list", "", "nodes", "")
        assert may(kube, token, "list", "storage.k8s.io", "storageclasses", "")
        assert may(kube, token, "get", "kueue.x-k8s.io", "resourceflavors", "")
    assert may(kube, kube.service_account_token("team-b", "medo1"), "list", "", "nodes", "")
    assert not may(kube, kube.service_account_token("team-b", "default-editor"), "list", "", "nodes", "")
    for token in (anyone, kube.service_account_token(NS, "medo1")):
        assert may(kube, token, "get", "trainer.kubeflow.org", "clustertrainingruntimes", "", "medo1-sft")
