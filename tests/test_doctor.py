"""`medo1 doctor` against the API stand-in (no cluster here) through the real kubernetes client: a
namespace recorded ready for the h100-2nodes profile (tests/fixtures/cluster/doctor/ready.yaml) passes
every check; each test breaks one thing and the check fails (or warns) with the fix."""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from medo1 import doctor
from medo1.doctor import ClusterReader, Needs, profile_needs

from tests.kube_standin import KubeStandIn

READY = Path(__file__).parent / "fixtures" / "cluster" / "doctor" / "ready.yaml"
NS = "team-a"
LAUNCHER = f"system:serviceaccount:{NS}:medo1"
LAUNCH_RIGHTS = {("create", "kubeflow.org", "pytorchjobs"), ("get", "kubeflow.org", "pytorchjobs"),
                 ("delete", "kubeflow.org", "pytorchjobs"), ("list", "", "pods"), ("get", "", "pods/log"),
                 ("list", "", "events")}


def ready_objects() -> list[dict]:
    return yaml.safe_load(READY.read_text())


def ready_permissions() -> dict[str, set]:
    return {"": set(LAUNCH_RIGHTS), LAUNCHER: set(LAUNCH_RIGHTS)}


@pytest.fixture(scope="module")
def needs() -> Needs:
    """The h100-2nodes profile rendered once (2 nodes over InfiniBand, Kueue queue h100, hf-token)."""
    return profile_needs(profile="h100-2nodes", values_files=[], value_overrides=[], namespace=NS)


@pytest.fixture
def cluster():
    """Starts a stand-in serving the given recorded objects and permissions; a ClusterReader on it."""
    from kubernetes.client import ApiClient, Configuration

    started = []

    def serve(objects=None, permissions=None, forbidden=()) -> ClusterReader:
        kube = KubeStandIn(forbidden=set(forbidden)).start()
        started.append(kube)
        for obj in ready_objects() if objects is None else objects:
            kube.record(obj)
        kube.permissions = ready_permissions() if permissions is None else permissions
        return ClusterReader(ApiClient(Configuration(host=kube.url)))

    yield serve
    for kube in started:
        kube.stop()


def without(objects: list[dict], kind: str, name: str) -> list[dict]:
    kept = [o for o in objects if not (o["kind"] == kind and o["metadata"]["name"] == name)]
    assert len(kept) == len(objects) - 1
    return kept


def replaced(objects: list[dict], kind: str, name: str, change) -> list[dict]:
    objects = copy.deepcopy(objects)
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            change(obj)
    return objects


def statuses(findings) -> dict[str, str]:
    return {f.check: f.status for f in findings}


def only(findings, status: str):
    found = [f for f in findings if f.status == status]
    assert len(found) == 1, findings
    return found[0]


def test_a_ready_namespace_passes_every_check(needs, cluster, capsys):
    code = doctor.run(argparse.Namespace(profile="h100-2nodes", values=[], value=[], namespace=NS, json=True),
                      client=cluster().core.api_client)
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {f["check"]: f["status"] for f in report["findings"]} == {
        "CRD pytorchjobs.kubeflow.org": "pass",
        "Secret hf-token key HF_TOKEN": "pass",
        "PVC medo1-checkpoints": "pass", "PVC medo1-data": "pass", "PVC medo1-hf-cache": "pass",
        "access you (the current credentials)": "pass", "access ServiceAccount medo1": "pass",
        "nodes with 8 free nvidia.com/gpu and 1 rdma/ib": "pass",
        "Istio injection": "pass",
        "Kueue LocalQueue h100": "pass",
    }


def test_the_table_shows_each_failure_with_its_fix_and_exits_1(needs, cluster, capsys):
    client = cluster(objects=without(ready_objects(), "Secret", "hf-token")).core.api_client
    code = doctor.run(argparse.Namespace(profile="h100-2nodes", values=[], value=[], namespace=NS, json=False),
                      client=client)
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^Secret hf-token key HF_TOKEN +fail +the Secret does not exist;", out, re.MULTILINE)
    assert f"fix: kubectl -n {NS} create secret generic hf-token --from-literal=HF_TOKEN=..." in out
    assert out.rstrip().endswith("9 pass, 0 warn, 1 fail")


def test_crd_missing(needs, cluster):
    findings = doctor.check_crds(cluster(without(ready_objects(), "CustomResourceDefinition", "pytorchjobs.kubeflow.org")), needs)
    failure = only(findings, "fail")
    assert (failure.check, failure.detail) == ("CRD pytorchjobs.kubeflow.org", "not installed")
    assert "Training Operator v1" in failure.fix


def test_crd_not_served_at_the_version_the_chart_writes(needs, cluster):
    def unserve(crd):
        crd["spec"]["versions"] = [{"name": "v1", "served": False, "storage": True}]

    objects = replaced(ready_objects(), "CustomResourceDefinition", "pytorchjobs.kubeflow.org", unserve)
    failure = only(doctor.check_crds(cluster(objects), needs), "fail")
    assert failure.detail == "v1 not served (served: none)"
    assert statuses(doctor.check_crds(cluster(), needs)) == {"CRD pytorchjobs.kubeflow.org": "pass"}


def test_secret_key_missing(needs, cluster):
    def rename_key(secret):
        secret["data"] = {"TOKEN": secret["data"]["HF_TOKEN"]}

    failure = only(doctor.check_secrets(cluster(replaced(ready_objects(), "Secret", "hf-token", rename_key)), needs), "fail")
    assert failure.check == "Secret hf-token key HF_TOKEN"
    assert failure.detail == "no key HF_TOKEN; the pod would stay in CreateContainerConfigError"
    assert "aGZf" not in failure.detail + failure.fix  # never a Secret's value
    assert statuses(doctor.check_secrets(cluster(), needs)) == {"Secret hf-token key HF_TOKEN": "pass"}


def test_read_write_once_claim_for_two_nodes(needs, cluster):
    def read_write_once(claim):
        claim["spec"]["accessModes"] = claim["status"]["accessModes"] = ["ReadWriteOnce"]

    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-checkpoints", read_write_once)
    failure = only(doctor.check_claims(cluster(objects), needs), "fail")
    assert failure.check == "PVC medo1-checkpoints"
    assert failure.detail == "ReadWriteOnce: 2 nodes mount it, which needs ReadWriteMany"
    assert "storage.checkpoints" in failure.fix


def test_claim_pending_or_missing(needs, cluster):
    def pending(claim):
        claim["status"] = {"phase": "Pending"}

    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-data", pending)
    failure = only(doctor.check_claims(cluster(objects), needs), "fail")
    assert (failure.check, failure.detail) == ("PVC medo1-data", "Pending, not Bound")
    # Not in the cluster: the chart creates it (existingClaim empty), so its rendered spec is checked.
    findings = doctor.check_claims(cluster(without(ready_objects(), "PersistentVolumeClaim", "medo1-data")), needs)
    assert statuses(findings)["PVC medo1-data"] == "pass"
    assert "the chart creates it" in [f for f in findings if f.check == "PVC medo1-data"][0].detail


def test_checkpoints_claim_too_small_for_what_the_recipe_keeps(needs, cluster):
    def shrink(claim):
        claim["status"]["capacity"]["storage"] = "200Gi"

    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-checkpoints", shrink)
    failure = only(doctor.check_claims(cluster(objects), needs), "fail")
    # Qwen2.5-7B under ZeRO-3: output.keep 2 checkpoints of 16 bytes per parameter, plus the 16-bit export.
    assert failure.detail.startswith("200Gi holds less than the 241 GiB the recipes keep (sft 2 x 113 GiB + export 14 GiB)")
    passed = [f for f in doctor.check_claims(cluster(), needs) if f.check == "PVC medo1-checkpoints"][0]
    assert passed.status == "pass" and "holds the 241 GiB" in passed.detail


def test_service_account_without_create_on_pytorchjobs(needs, cluster):
    permissions = ready_permissions()
    permissions[LAUNCHER].discard(("create", "kubeflow.org", "pytorchjobs"))
    # rbac.create: false renders no Role or RoleBinding; the account's rights are the cluster's alone.
    no_chart_rbac = Needs(needs.values, [o for o in needs.objects if o["kind"] not in ("Role", "RoleBinding")], NS)
    failure = only(doctor.check_access(cluster(permissions=permissions), no_chart_rbac), "fail")
    assert (failure.check, failure.detail) == ("access ServiceAccount medo1", f"may not create pytorchjobs in {NS}")
    # With the chart's Role it is granted on install: a warning until then.
    assert only(doctor.check_access(cluster(permissions=permissions), needs), "warn").check == "access ServiceAccount medo1"
    assert set(statuses(doctor.check_access(cluster(), needs)).values()) == {"pass"}


def test_the_caller_without_rights_fails(needs, cluster):
    permissions = ready_permissions()
    permissions[""] = {("list", "", "pods")}
    failure = only(doctor.check_access(cluster(permissions=permissions), needs), "fail")
    assert failure.check == "access you (the current credentials)"
    assert failure.detail.startswith("may not create pytorchjobs, get pytorchjobs, delete pytorchjobs, get pods/log")


def busy(node_name: str, gpus: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"hog-{node_name}", "namespace": "team-b"},
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "example.com/x:1",
                                                            "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


def test_no_node_with_8_free_gpus(needs, cluster):
    objects = [*ready_objects(), busy("gpu-01", 1), busy("gpu-02", 2)]
    failure = only(doctor.check_nodes(cluster(objects), needs), "fail")
    assert failure.check == "nodes with 8 free nvidia.com/gpu and 1 rdma/ib"
    assert failure.detail == ("0 of 3 nodes matching the selector and tolerations fit (2 needed): gpu-01: 7 free "
                              "nvidia.com/gpu; gpu-02: 6 free nvidia.com/gpu; gpu-03: 4 free nvidia.com/gpu")
    assert "kueue.queueName" in failure.fix


def test_nodes_need_the_rdma_device_and_a_tolerated_taint(needs, cluster):
    def no_rdma(node):
        del node["status"]["allocatable"]["rdma/ib"]

    failure = only(doctor.check_nodes(cluster(replaced(ready_objects(), "Node", "gpu-02", no_rdma)), needs), "fail")
    assert "gpu-02: no free rdma/ib" in failure.detail

    def other_taint(node):
        node["spec"]["taints"] = [{"key": "dedicated", "value": "inference", "effect": "NoSchedule"}]

    failure = only(doctor.check_nodes(cluster(replaced(ready_objects(), "Node", "gpu-01", other_taint)), needs), "fail")
    assert "gpu-01: untolerated taint" in failure.detail


def test_istio_injection_warns_when_pods_take_the_sidecar(needs, cluster):
    assert statuses(doctor.check_istio(cluster(), needs)) == {"Istio injection": "pass"}
    sidecars = copy.deepcopy(needs)
    for _, template in sidecars.pods:
        template["metadata"]["labels"].pop("sidecar.istio.io/inject", None)
    warning = only(doctor.check_istio(cluster(), sidecars), "warn")
    assert "proxies the rendezvous traffic" in warning.detail
    failure = only(doctor.check_istio(cluster(without(ready_objects(), "Namespace", NS)), needs), "fail")
    assert failure.detail == "does not exist"


def test_kueue_local_queue(needs, cluster):
    assert statuses(doctor.check_kueue(cluster(), needs)) == {"Kueue LocalQueue h100": "pass"}
    failure = only(doctor.check_kueue(cluster(without(ready_objects(), "LocalQueue", "h100")), needs), "fail")
    assert failure.detail == f"no LocalQueue h100 in {NS}"
    objects = without(ready_objects(), "CustomResourceDefinition", "localqueues.kueue.x-k8s.io")
    assert only(doctor.check_kueue(cluster(objects), needs), "fail").detail == "Kueue is not installed"


def test_what_the_credentials_may_not_read_is_a_warning_not_a_crash(needs, cluster):
    """A pipeline step's namespaced account may not list nodes or pods in other namespaces."""
    findings = doctor.diagnose(cluster(forbidden={"/api/v1/nodes", "/api/v1/pods"}), needs)
    warning = only(findings, "warn")
    assert (warning.check, warning.detail) == ("nodes", "not checked: list_node: 403 forbidden")
    assert not [f for f in findings if f.status == "fail"]
    findings = doctor.check_nodes(cluster(forbidden={"/api/v1/pods"}), needs)
    assert statuses(findings) == {"nodes with 8 allocatable nvidia.com/gpu and 1 rdma/ib": "pass"}


@pytest.mark.slow
def test_the_cli_reads_the_kubeconfig_namespace_and_exits_1_on_a_missing_crd(tmp_path):
    from tests.conftest import run_medo1

    kube = KubeStandIn().start()
    try:
        for obj in without(ready_objects(), "CustomResourceDefinition", "pytorchjobs.kubeflow.org"):
            kube.record(obj)
        kube.permissions = ready_permissions()
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        result = run_medo1(["doctor", "--profile", "h100-2nodes", "--json"], env={"KUBECONFIG": str(kubeconfig)})
    finally:
        kube.stop()
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["namespace"] == NS
    failed = [f for f in report["findings"] if f["status"] == "fail"]
    assert [(f["check"], f["detail"]) for f in failed] == [("CRD pytorchjobs.kubeflow.org", "not installed")]


def test_trainjob_profile_needs_the_trainer_v2_crds(cluster):
    trainjob = profile_needs(profile="h100-1node-trainjob", values_files=[], value_overrides=[], namespace=NS)
    findings = doctor.check_crds(cluster(), trainjob)
    assert statuses(findings) == {"CRD trainjobs.trainer.kubeflow.org": "fail",
                                  "CRD trainingruntimes.trainer.kubeflow.org": "fail"}
    assert "Kubeflow Trainer v2" in findings[0].fix
    trainer_crds = [{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                     "metadata": {"name": f"{plural}.trainer.kubeflow.org"},
                     "spec": {"versions": [{"name": "v1alpha1", "served": True, "storage": True}]}}
                    for plural in ("trainjobs", "trainingruntimes")]
    passed = doctor.check_crds(cluster([*ready_objects(), *trainer_crds]), trainjob)
    assert set(statuses(passed).values()) == {"pass"}
