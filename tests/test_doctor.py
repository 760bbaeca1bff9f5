"""`medo1 doctor` against the API stand-in (no cluster here) through the real kubernetes client: a
namespace recorded ready for the h100-2nodes profile (tests/fixtures/cluster/doctor/ready.yaml) passes
every check; each test breaks one thing and the check fails (or warns) with the fix."""

from __future__ import annotations

import argparse
import copy
import json
import re

import pytest

from medo1 import doctor
from medo1.doctor import ClusterReader, Needs, profile_needs
from tests.helpers import LAUNCHER, NS, ready_objects, ready_permissions, run_doctor_step, without
from tests.kube_standin import KubeStandIn


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
    code = doctor.run(
        argparse.Namespace(profile="h100-2nodes", values=[], value=[], namespace=NS, json=True),
        client=cluster().core.api_client,
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {f["check"]: f["status"] for f in report["findings"]} == {
        "Kubernetes": "pass",
        "Kubeflow Trainer": "pass",
        "CRD clustertrainingruntimes.trainer.kubeflow.org": "pass",
        "CRD trainjobs.trainer.kubeflow.org": "pass",
        "Secret hf-token key HF_TOKEN": "pass",
        "PVC medo1-checkpoints": "pass",
        "PVC medo1-data": "pass",
        "PVC medo1-hf-cache": "pass",
        "access you (the current credentials)": "pass",
        "access ServiceAccount medo1": "pass",
        "nodes with 8 free nvidia.com/gpu and 1 rdma/ib": "pass",
        "NVIDIA driver": "pass",
        "Istio injection": "pass",
        "Kueue LocalQueue h100": "pass",
        "Kueue ClusterQueue h100-cluster": "pass",
        "Kueue integrations": "pass",
    }


def test_the_table_shows_each_failure_with_its_fix_and_exits_1(needs, cluster, capsys):
    client = cluster(objects=without(ready_objects(), "Secret", "hf-token")).core.api_client
    code = doctor.run(
        argparse.Namespace(profile="h100-2nodes", values=[], value=[], namespace=NS, json=False), client=client
    )
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^Secret hf-token key HF_TOKEN +fail +the Secret does not exist;", out, re.MULTILINE)
    assert f"fix: kubectl -n {NS} create secret generic hf-token --from-literal=HF_TOKEN=..." in out
    assert out.rstrip().endswith("15 pass, 0 warn, 1 fail, 0 unchecked, 0 info")


def test_crd_missing(needs, cluster):
    trainer = [
        o for o in ready_objects() if o["kind"] == "CustomResourceDefinition" and "trainer" in o["metadata"]["name"]
    ]
    findings = doctor.check_crds(cluster([o for o in ready_objects() if o not in trainer]), needs)
    assert statuses(findings) == {
        "CRD clustertrainingruntimes.trainer.kubeflow.org": "fail",
        "CRD trainjobs.trainer.kubeflow.org": "fail",
    }
    assert findings[0].detail == "not installed" and "Kubeflow Trainer v2" in findings[0].fix
    one_node = profile_needs(profile="h100-1node", values_files=[], value_overrides=[], namespace=NS)
    failure = only(doctor.check_crds(cluster(), one_node), "fail")
    assert (failure.check, failure.detail) == ("CRD pytorchjobs.kubeflow.org", "not installed")
    assert "Training Operator v1" in failure.fix


def test_crd_not_served_at_the_version_the_chart_writes(needs, cluster):
    def unserve(crd):
        crd["spec"]["versions"] = [
            {"name": "v1alpha1", "served": False, "storage": True},
            {"name": "v1", "served": True},
        ]

    objects = replaced(ready_objects(), "CustomResourceDefinition", "trainjobs.trainer.kubeflow.org", unserve)
    objects = replaced(objects, "CustomResourceDefinition", "clustertrainingruntimes.trainer.kubeflow.org", unserve)
    failure = [
        f for f in doctor.check_crds(cluster(objects), needs) if f.check == "CRD trainjobs.trainer.kubeflow.org"
    ][0]
    assert (failure.status, failure.detail) == ("fail", "v1alpha1 not served (served: v1)")
    assert set(statuses(doctor.check_crds(cluster(), needs)).values()) == {"pass"}


def test_secret_key_missing(needs, cluster):
    def rename_key(secret):
        secret["data"] = {"TOKEN": secret["data"]["HF_TOKEN"]}

    failure = only(
        doctor.check_secrets(cluster(replaced(ready_objects(), "Secret", "hf-token", rename_key)), needs), "fail"
    )
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
    assert failure.fix.startswith(
        "use a ReadWriteMany StorageClass for storage.checkpoints: set "
        "storage.checkpoints.storageClass=cephfs and keep accessMode ReadWriteMany"
    )


def test_claim_pending_or_missing(needs, cluster):
    def pending(claim):
        claim["status"] = {"phase": "Pending"}

    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-data", pending)
    failure = only(doctor.check_claims(cluster(objects), needs), "fail")
    assert (failure.check, failure.detail) == (
        "PVC medo1-data",
        "Pending, not Bound: StorageClass cephfs binds Immediately, so it should have its volume by now",
    )

    # Not in the cluster: the chart creates it (existingClaim empty), so its rendered spec is checked, on the
    # default StorageClass (made cephfs here; tests below take GKE's ReadWriteOnce default).
    def default(storage_class):
        storage_class["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}

    objects = replaced(without(ready_objects(), "StorageClass", "standard-rwo"), "StorageClass", "cephfs", default)
    findings = doctor.check_claims(cluster(without(objects, "PersistentVolumeClaim", "medo1-data")), needs)
    assert statuses(findings)["PVC medo1-data"] == "pass"
    assert "the chart creates it" in [f for f in findings if f.check == "PVC medo1-data"][0].detail


def test_checkpoints_claim_too_small_for_what_the_recipe_keeps(needs, cluster):
    def shrink(claim):
        claim["status"]["capacity"]["storage"] = "200Gi"

    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-checkpoints", shrink)
    failure = only(doctor.check_claims(cluster(objects), needs), "fail")
    # Qwen2.5-7B under ZeRO-3: output.keep 2 checkpoints of 16 bytes per parameter, plus the 16-bit export.
    assert failure.detail.startswith(
        "200Gi holds less than the 241 GiB the recipes keep (sft 2 x 113 GiB + export 14 GiB)"
    )
    passed = [f for f in doctor.check_claims(cluster(), needs) if f.check == "PVC medo1-checkpoints"][0]
    assert passed.status == "pass" and "holds the 241 GiB" in passed.detail


def test_service_account_without_create_on_trainjobs(needs, cluster):
    permissions = ready_permissions()
    permissions[LAUNCHER].discard(("create", "trainer.kubeflow.org", "trainjobs"))
    # rbac.create: false renders no Role or RoleBinding; the account's rights are the cluster's alone.
    no_chart_rbac = Needs(needs.values, [o for o in needs.objects if o["kind"] not in ("Role", "RoleBinding")], NS)
    failure = only(doctor.check_access(cluster(permissions=permissions), no_chart_rbac), "fail")
    assert (failure.check, failure.detail) == ("access ServiceAccount medo1", f"may not create trainjobs in {NS}")
    # With the chart's Role it is granted on install: a warning until then.
    assert (
        only(doctor.check_access(cluster(permissions=permissions), needs), "warn").check
        == "access ServiceAccount medo1"
    )
    assert set(statuses(doctor.check_access(cluster(), needs)).values()) == {"pass"}


def test_the_caller_without_rights_fails(needs, cluster):
    permissions = ready_permissions()
    permissions[""] = {("list", "", "pods")}
    failure = only(doctor.check_access(cluster(permissions=permissions), needs), "fail")
    assert failure.check == "access you (the current credentials)"
    assert failure.detail.startswith("may not create trainjobs, get trainjobs, delete trainjobs, get pods/log")
    # Issue 26, item 2: the runtime reads the Kubeflow SDK makes before a TrainJob are checked too.
    assert failure.detail.endswith("get trainingruntimes medo1-sft, get clustertrainingruntimes medo1-sft in team-a")


# ---- doctor as the chart's own service account ------------------------------------------------------------


def as_account(objects, profile, account="medo1"):
    """The stand-in with `objects` and the profile's release installed (its Role and RoleBinding, as Helm
    creates them); a ClusterReader with `account`'s token: RBAC applies to every read and review."""
    from kubernetes.client import ApiClient, Configuration

    from medo1 import chart

    kube = KubeStandIn().start()
    for obj in objects:
        kube.record(obj)
    for obj in chart.render_chart(chart.load_profile(profile), namespace=NS):
        if obj["kind"] in ("Role", "RoleBinding"):
            kube.record({**obj, "metadata": {**obj["metadata"], "namespace": NS}})
    configuration = Configuration(
        host=kube.url, api_key={"authorization": f"Bearer {kube.service_account_token(NS, account)}"}
    )
    return kube, ClusterReader(ApiClient(configuration))


def test_doctor_as_the_charts_account_says_what_it_could_not_check_and_exits_1(capsys):
    """Issue 26, item 3: run as the chart's account (the pipeline's first step), doctor printed "warn: not checked:
    403" for most checks, dropped the access check when one SubjectAccessReview about another account was
    forbidden, and exited 0. Now the chart's Role lets it read what is in the namespace (claims, the Secrets the
    values name, the namespace, the LocalQueue); what it still may not read is `unchecked` with the API server's
    403 and what would grant it; its own access (SelfSubjectAccessReview) is kept; the exit code is 1 unless
    --allow-unchecked."""
    kube, reader = as_account(ready_objects(), "h100-1node")
    try:
        code = doctor.run(
            argparse.Namespace(profile="h100-1node", values=[], value=[], namespace=NS, json=True),
            client=reader.core.api_client,
        )
        report = {f["check"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
        allowed = doctor.run(
            argparse.Namespace(
                profile="h100-1node", values=[], value=[], namespace=NS, json=False, allow_unchecked=True
            ),
            client=reader.core.api_client,
        )
        table = capsys.readouterr().out
    finally:
        kube.stop()
    assert code == 1
    status = {check: f["status"] for check, f in report.items()}
    # Read through the chart's Role: the Secrets the values name, the claims, the namespace; CRDs by discovery.
    assert status["Secret hf-token key HF_TOKEN"] == "pass" and status["Istio injection"] == "pass"
    assert status["CRD pytorchjobs.kubeflow.org"] == "fail"  # discovery works for everyone; this cluster has none
    assert status["access you (ServiceAccount medo1)"] == "pass"
    # Another account: a SubjectAccessReview needs a cluster-scoped grant the namespaced account lacks.
    pipeline = report["access ServiceAccount default-editor"]
    assert pipeline["status"] == "unchecked"
    assert pipeline["detail"] == (
        "may not ask what it may do (SubjectAccessReview): subjectaccessreviews.authorization.k8s.io is forbidden: "
        'User "system:serviceaccount:team-a:medo1" cannot create resource "subjectaccessreviews" in API group '
        '"authorization.k8s.io" at the cluster scope'
    )
    nodes = report["nodes"]
    assert (nodes["status"], nodes["detail"]) == (
        "unchecked",
        "cannot be read: nodes is forbidden: User "
        '"system:serviceaccount:team-a:medo1" cannot list resource "nodes" in API group "" at the cluster scope',
    )
    assert "doctor.clusterRead" in nodes["fix"]
    assert status["PVC medo1-data"] == "pass"  # Bound: no StorageClass to read
    # No "warn: not checked" any more; the one warning is the optional W&B Secret the profile names.
    assert [check for check, s in status.items() if s == "warn"] == ["Secret wandb key WANDB_API_KEY"]
    # --allow-unchecked: still 1, for the missing PyTorchJob CRD; the table counts each status.
    assert allowed == 1 and table.rstrip().split("\n")[-1].endswith("unchecked, 0 info")


def test_allow_unchecked_exits_0_when_nothing_failed():
    checked = [doctor.Finding("a", "pass", "")]
    unchecked = [*checked, doctor.Finding("nodes", "unchecked", "cannot be read: 403")]
    assert (
        doctor.exit_code(checked),
        doctor.exit_code(unchecked),
        doctor.exit_code(unchecked, allow_unchecked=True),
    ) == (0, 1, 0)
    assert doctor.exit_code([*unchecked, doctor.Finding("x", "fail", "")], allow_unchecked=True) == 1


def test_with_its_doctor_reader_grant_the_charts_account_checks_the_cluster(cluster):
    """The team release's doctor reader ClusterRole (doctor.clusterRead) lets the chart's account read nodes,
    StorageClasses and Kueue's ClusterQueues (and the platform install's, the runtimes it launches on): doctor as
    that account then checks them."""
    from medo1 import chart

    grant = [
        o
        for values in (chart.load_profile("h100-2nodes"), chart.load_profile("trainer-v2-runtimes"))
        for o in chart.render_chart(values, namespace=NS)
        if o["kind"].startswith("ClusterRole")
    ]
    kube, reader = as_account([*ready_objects(), *grant], "h100-2nodes")
    try:
        needs = profile_needs(profile="h100-2nodes", values_files=[], value_overrides=[], namespace=NS)
        findings = doctor.diagnose(reader, needs)
    finally:
        kube.stop()
    status = statuses(findings)
    assert status["nodes with 8 allocatable nvidia.com/gpu and 1 rdma/ib"] == "pass"  # other namespaces' pods: not read
    assert status["PVC medo1-data"] == status["Kueue ClusterQueue h100-cluster"] == "pass"
    assert status["access you (ServiceAccount medo1)"] == "pass"
    # Kueue's Configuration lives in kueue-system: not the team's to read.
    assert status["Kueue integrations"] == "unchecked"
    assert [f.status for f in findings if f.status not in ("pass", "unchecked")] == []


# ---- claims and their StorageClass --------------------------------------------------------------------------


def test_a_pending_claim_on_a_wait_for_first_consumer_class_is_normal(needs, cluster):
    """Issue 26, item 4: doctor failed every Pending claim, though one of a WaitForFirstConsumer class (kind's
    default, most cloud defaults) stays Pending until the first pod mounts it."""

    def pending_on(class_name):
        def change(claim):
            claim["spec"]["storageClassName"] = class_name
            claim["status"] = {"phase": "Pending"}

        return change

    lazy = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "cephfs-lazy"},
        "provisioner": "rook-ceph.cephfs.csi.ceph.com",
        "volumeBindingMode": "WaitForFirstConsumer",
    }
    objects = replaced([*ready_objects(), lazy], "PersistentVolumeClaim", "medo1-data", pending_on("cephfs-lazy"))
    finding = [f for f in doctor.check_claims(cluster(objects), needs) if f.check == "PVC medo1-data"][0]
    assert finding.status == "pass"
    assert finding.detail == (
        "200Gi, ReadWriteMany, Pending until the first pod mounts it (StorageClass cephfs-lazy "
        "binds WaitForFirstConsumer): normal"
    )
    # Immediate binding and still Pending: something is wrong.
    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-data", pending_on("cephfs"))
    assert only(doctor.check_claims(cluster(objects), needs), "fail").detail.startswith(
        "Pending, not Bound: StorageClass cephfs binds Immediately"
    )
    # No class of that name at all.
    objects = replaced(ready_objects(), "PersistentVolumeClaim", "medo1-data", pending_on("gone"))
    assert only(doctor.check_claims(cluster(objects), needs), "fail").detail == (
        "Pending, not Bound: its StorageClass gone does not exist"
    )


def test_claims_the_chart_creates_on_a_read_write_once_default_class(cluster):
    """Issue 26, item 16: every volume asks ReadWriteMany of the default StorageClass, which on GKE / EKS / AKS makes
    ReadWriteOnce disks only: the claims stay Pending. Doctor names the class and mode to use instead."""
    objects = [o for o in ready_objects() if o["kind"] != "PersistentVolumeClaim"]
    two_nodes = profile_needs(profile="h100-2nodes", values_files=[], value_overrides=[], namespace=NS)
    failure = [f for f in doctor.check_claims(cluster(objects), two_nodes) if f.check == "PVC medo1-checkpoints"][0]
    assert failure.status == "fail"
    assert failure.detail == (
        "asks ReadWriteMany of StorageClass standard-rwo (pd.csi.storage.gke.io), which provisions "
        "ReadWriteOnce disks only: it would stay Pending"
    )
    assert failure.fix == (
        "set storage.checkpoints.storageClass=cephfs and keep accessMode ReadWriteMany "
        "(ReadWriteMany classes here: cephfs (rook-ceph.cephfs.csi.ceph.com))"
    )
    # No ReadWriteMany class in the cluster: two nodes need one installed; on one node too the run pod, eval and
    # pipeline steps mount the claims from other nodes, so ReadWriteOnce is advised only with that condition.
    only_rwo = [o for o in objects if o["metadata"]["name"] != "cephfs"]
    failure = [f for f in doctor.check_claims(cluster(only_rwo), two_nodes) if f.check == "PVC medo1-data"][0]
    assert failure.fix.startswith(
        "install a ReadWriteMany StorageClass (Filestore, EFS, FSx for Lustre, Azure Files, NFS, "
        "CephFS) and set storage.data.storageClass to it: 2 nodes mount the volume at once"
    )
    one_node = profile_needs(profile="h100-1node", values_files=[], value_overrides=[], namespace=NS)
    failure = [f for f in doctor.check_claims(cluster(only_rwo), one_node) if f.check == "PVC medo1-data"][0]
    assert failure.fix.startswith("install a ReadWriteMany StorageClass")
    assert "accessMode=ReadWriteOnce works only if every pod that mounts the volume" in failure.fix
    # Naming the class that serves ReadWriteMany: the checks pass.
    fixed = profile_needs(
        profile="h100-2nodes",
        values_files=[],
        namespace=NS,
        value_overrides=[f"storage.{key}.storageClass=cephfs" for key in ("data", "checkpoints", "hfCache")],
    )
    assert set(statuses(doctor.check_claims(cluster(objects), fixed)).values()) == {"pass"}


def busy(node_name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"hog-{node_name}", "namespace": "team-b"},
        "spec": {
            "nodeName": node_name,
            "containers": [
                {"name": "c", "image": "example.com/x:1", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
        "status": {"phase": "Running"},
    }


def test_no_node_with_8_free_gpus(needs, cluster):
    objects = [*ready_objects(), busy("gpu-01", 1), busy("gpu-02", 2)]
    failure = only(doctor.check_nodes(cluster(objects), needs), "fail")
    assert failure.check == "nodes with 8 free nvidia.com/gpu and 1 rdma/ib"
    assert failure.detail == (
        "0 of 3 nodes matching the selector and tolerations fit (2 needed): gpu-01: 7 free "
        "nvidia.com/gpu; gpu-02: 6 free nvidia.com/gpu; gpu-03: 4 free nvidia.com/gpu"
    )
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


def test_the_nvidia_driver_must_be_r580_or_newer(needs, cluster):
    """Issue 26, item 17: the image's CUDA 13 needs driver R580+; GPU feature discovery labels the node with it."""

    def driver(major):
        def change(node):
            node["metadata"]["labels"]["nvidia.com/cuda.driver-version.major"] = major

        return change

    assert statuses(doctor.check_nodes(cluster(), needs))["NVIDIA driver"] == "pass"
    findings = doctor.check_nodes(cluster(replaced(ready_objects(), "Node", "gpu-02", driver("550"))), needs)
    failure = only(findings, "fail")
    assert (failure.check, failure.detail) == (
        "NVIDIA driver",
        "gpu-02 R550: the trainer image's CUDA 13 needs R580 or newer",
    )

    def unlabelled(node):
        del node["metadata"]["labels"]["nvidia.com/cuda.driver-version.major"]

    findings = doctor.check_nodes(cluster(replaced(ready_objects(), "Node", "gpu-01", unlabelled)), needs)
    assert only(findings, "unchecked").detail.startswith("no nvidia.com/cuda.driver-version.major label on gpu-01")


def test_istio_injection_warns_when_pods_take_the_sidecar(needs, cluster):
    assert statuses(doctor.check_istio(cluster(), needs)) == {"Istio injection": "pass"}
    sidecars = copy.deepcopy(needs)
    for _, template in sidecars.pods:
        template["metadata"]["labels"].pop("sidecar.istio.io/inject", None)
    warning = only(doctor.check_istio(cluster(), sidecars), "warn")
    assert "proxies the rendezvous traffic" in warning.detail
    failure = only(doctor.check_istio(cluster(without(ready_objects(), "Namespace", NS)), needs), "fail")
    assert failure.detail == "does not exist"


# ---- Kueue --------------------------------------------------------------------------------------------------


def test_kueue_local_queue(needs, cluster):
    assert set(statuses(doctor.check_kueue(cluster(), needs)).values()) == {"pass"}
    failure = only(doctor.check_kueue(cluster(without(ready_objects(), "LocalQueue", "h100")), needs), "fail")
    assert failure.detail == f"no LocalQueue h100 in {NS}"
    objects = without(ready_objects(), "CustomResourceDefinition", "localqueues.kueue.x-k8s.io")
    objects = without(objects, "CustomResourceDefinition", "clusterqueues.kueue.x-k8s.io")
    assert only(doctor.check_kueue(cluster(objects), needs), "fail").detail == "Kueue is not installed"


def kueue_reads(kube) -> list[str]:
    return [r.path for r in kube.requests if "/kueue.x-k8s.io/" in r.path and r.method == "GET"]


def test_kueue_is_read_through_v1beta2_and_v1beta1_only_where_that_is_all_there_is(needs):
    from kubernetes.client import ApiClient, Configuration

    def serve(objects):
        kube = KubeStandIn().start()
        for obj in objects:
            kube.record(obj)
        return kube, ClusterReader(ApiClient(Configuration(host=kube.url)))

    kube, reader = serve(ready_objects())
    try:
        doctor.check_kueue(reader, needs)
    finally:
        kube.stop()
    assert kueue_reads(kube) == [
        "/apis/kueue.x-k8s.io/v1beta2/namespaces/team-a/localqueues/h100",
        "/apis/kueue.x-k8s.io/v1beta2/clusterqueues/h100-cluster",
    ]

    def v1beta1_only(obj):
        if obj["kind"] == "CustomResourceDefinition" and "kueue" in obj["metadata"]["name"]:
            obj["spec"]["versions"] = [{"name": "v1beta1", "served": True, "storage": True}]
        elif obj["apiVersion"] == "kueue.x-k8s.io/v1beta2":
            obj["apiVersion"] = "kueue.x-k8s.io/v1beta1"
        return obj

    kube, reader = serve([v1beta1_only(o) for o in ready_objects()])
    try:
        assert set(statuses(doctor.check_kueue(reader, needs)).values()) == {"pass"}
    finally:
        kube.stop()
    assert kueue_reads(kube) == [
        "/apis/kueue.x-k8s.io/v1beta1/namespaces/team-a/localqueues/h100",
        "/apis/kueue.x-k8s.io/v1beta1/clusterqueues/h100-cluster",
    ]


def test_a_cluster_queue_that_does_not_cover_rdma_never_admits_the_job(needs, cluster):
    """A ClusterQueue that does not list every resource the pods request (rdma/ib too) leaves the workload
    inadmissible forever; one whose largest flavor is smaller than the job never admits it either."""

    def without_rdma(queue):
        group = queue["spec"]["resourceGroups"][0]
        group["coveredResources"].remove("rdma/ib")
        group["flavors"][0]["resources"] = [r for r in group["flavors"][0]["resources"] if r["name"] != "rdma/ib"]

    failure = only(
        doctor.check_kueue(cluster(replaced(ready_objects(), "ClusterQueue", "h100-cluster", without_rdma)), needs),
        "fail",
    )
    assert (failure.check, failure.detail) == (
        "Kueue ClusterQueue h100-cluster",
        "does not cover rdma/ib, which the pods request: Kueue never admits the job",
    )

    def one_node_of_gpus(queue):
        queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2]["nominalQuota"] = "8"

    failure = only(
        doctor.check_kueue(cluster(replaced(ready_objects(), "ClusterQueue", "h100-cluster", one_node_of_gpus)), needs),
        "fail",
    )
    assert failure.detail == (
        "no flavor's nominal quota holds the job (cpu 160, memory 2000Gi, nvidia.com/gpu 16, "
        "rdma/ib 2): Kueue never admits it"
    )


def test_kueue_must_manage_the_kind_of_job_the_backend_creates(cluster):
    """Kueue turned off its PyTorchJob integration by default: a PyTorchJob with the queue label then runs with no
    quota and no gang admission. The fix is the trainjob backend."""
    pytorchjobs = profile_needs(
        profile="h100-2nodes", values_files=[], value_overrides=["backend=pytorchjob"], namespace=NS
    )
    failure = [f for f in doctor.check_kueue(cluster(), pytorchjobs) if f.check == "Kueue integrations"][0]
    assert (failure.status, failure.detail) == (
        "fail",
        "Kueue does not manage kubeflow.org/pytorchjob (not in "
        "integrations.frameworks): the queue label does nothing for them (no quota, no gang admission)",
    )
    assert failure.fix.startswith("use backend: trainjob (Kubeflow Trainer v2 TrainJobs")
    unread = [
        f
        for f in doctor.check_kueue(
            cluster(forbidden={"/api/v1/namespaces/kueue-system/configmaps/kueue-manager-config"}), pytorchjobs
        )
        if f.check == "Kueue integrations"
    ][0]
    assert unread.status == "unchecked" and unread.detail.startswith(
        "Kueue's Configuration cannot be read, so whether it manages kubeflow.org/pytorchjob is unknown"
    )


def test_what_the_credentials_may_not_read_is_unchecked_not_a_pass(needs, cluster, capsys):
    """A pipeline step's namespaced account may not list nodes or pods in other namespaces: the nodes check is
    `unchecked` (a distinct status, exit 1); without the other namespaces' pods it counts allocatable GPUs."""
    findings = doctor.diagnose(cluster(forbidden={"/api/v1/nodes", "/api/v1/pods"}), needs)
    unchecked = only(findings, "unchecked")
    assert (unchecked.check, unchecked.detail) == (
        "nodes",
        'cannot be read: nodes is forbidden: User "kubernetes-admin" '
        'cannot list resource "nodes" in API group "" at the cluster scope',
    )
    assert not [f for f in findings if f.status == "fail"]
    assert doctor.exit_code(findings) == 1 and doctor.exit_code(findings, allow_unchecked=True) == 0
    findings = doctor.check_nodes(cluster(forbidden={"/api/v1/pods"}), needs)
    assert statuses(findings) == {
        "nodes with 8 allocatable nvidia.com/gpu and 1 rdma/ib": "pass",
        "NVIDIA driver": "pass",
    }


def test_versions_kubernetes_and_trainer(needs, cluster):
    """Issue 26, item 17: the minimum versions (Kubernetes 1.28 for the chart, Trainer v2.3 for its runtimes)."""
    findings = doctor.check_versions(cluster(), needs)
    assert [(f.check, f.status, f.detail) for f in findings] == [
        ("Kubernetes", "pass", "v1.36.2 (the chart needs 1.28+)"),
        ("Kubeflow Trainer", "pass", "v2.3.0 (the runtimes need v2.3+)"),
    ]

    def old(config_map):
        config_map["data"]["kubeflow_trainer_version"] = "v2.1.0"

    failure = only(
        doctor.check_versions(cluster(replaced(ready_objects(), "ConfigMap", "kubeflow-trainer-public", old)), needs),
        "fail",
    )
    assert failure.detail == "v2.1.0: the chart's runtimes need v2.3+"


@pytest.mark.multiprocess
def test_the_cli_reads_the_kubeconfig_namespace_and_exits_1_on_a_missing_crd(tmp_path):
    from tests.conftest import run_medo1

    kube = KubeStandIn().start()
    try:
        for obj in without(ready_objects(), "CustomResourceDefinition", "trainjobs.trainer.kubeflow.org"):
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
    assert [(f["check"], f["detail"]) for f in failed] == [("CRD trainjobs.trainer.kubeflow.org", "not installed")]


def test_trainjob_profile_needs_the_trainer_v2_crds(cluster):
    trainjob = profile_needs(profile="h100-1node-trainjob", values_files=[], value_overrides=[], namespace=NS)
    trainer = [
        o for o in ready_objects() if o["kind"] == "CustomResourceDefinition" and "trainer" in o["metadata"]["name"]
    ]
    findings = doctor.check_crds(cluster([o for o in ready_objects() if o not in trainer]), trainjob)
    assert statuses(findings) == {
        "CRD trainjobs.trainer.kubeflow.org": "fail",
        "CRD trainingruntimes.trainer.kubeflow.org": "fail",
    }
    assert "Kubeflow Trainer v2" in findings[0].fix
    runtimes = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "trainingruntimes.trainer.kubeflow.org"},
        "spec": {
            "group": "trainer.kubeflow.org",
            "names": {"kind": "TrainingRuntime", "plural": "trainingruntimes"},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha1", "served": True, "storage": True}],
        },
    }
    passed = doctor.check_crds(cluster([*ready_objects(), runtimes]), trainjob)
    assert set(statuses(passed).values()) == {"pass"}


def test_the_pipelines_doctor_step_checks_the_trainjob_backend(tmp_path, monkeypatch, capsys):
    """The pipeline's first step ran doctor for PyTorchJobs only and skipped it for TrainJobs, the backend for
    Kueue-managed clusters (issue 26, item 8). Now it checks either backend; on this Kueue cluster PyTorchJobs
    would not be managed, and the step says so before any GPU is asked for."""
    kube = KubeStandIn().start()
    try:
        for obj in ready_objects():
            kube.record(obj)
        kube.permissions = ready_permissions()
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        assert run_doctor_step(kubeconfig, tmp_path / "report.md", monkeypatch)[1] == "passed"
        _, outcome = run_doctor_step(kubeconfig, tmp_path / "report.md", monkeypatch, backend="pytorchjob")
        assert isinstance(outcome, RuntimeError) and "not ready for this run" in str(outcome)
    finally:
        kube.stop()
    assert "Kueue does not manage kubeflow.org/pytorchjob" in capsys.readouterr().out


# ---- the pipeline's doctor step as multi-user Kubeflow's default-editor ----------------------------------------


def kubeflow_profile_rbac(namespace: str) -> list[dict]:
    """What multi-user Kubeflow grants a profile's default-editor: the aggregated ClusterRole kubeflow-edit, bound
    in its namespace only (the Profile controller's RoleBinding default-editor). kubeflow-edit's rules flattened (the
    stand-in does not aggregate), core and batch as kubeflow/manifests common/kubeflow-roles/base/cluster-roles.yaml
    gives them (kubeflow-kubernetes-edit and -view), and the training jobs; and Trainer's version ConfigMap, which
    kubeflow/trainer binds to every authenticated user (manifests/base/rbac/public_configmap_role_binding.yaml)."""
    rbac = "rbac.authorization.k8s.io/v1"
    read = ["get", "list", "watch"]
    write = ["create", "delete", "deletecollection", "patch", "update"]
    core_read = ["configmaps", "endpoints", "persistentvolumeclaims", "pods", "serviceaccounts", "services"]
    core_read += ["events", "limitranges", "pods/log", "pods/status", "resourcequotas", "namespaces"]
    edit = {
        "apiVersion": rbac,
        "kind": "ClusterRole",
        "metadata": {"name": "kubeflow-edit"},
        "rules": [
            {"apiGroups": [""], "resources": core_read, "verbs": read},
            {
                "apiGroups": [""],
                "resources": ["secrets", "pods/exec", "pods/attach", "pods/portforward"],
                "verbs": read,
            },
            {
                "apiGroups": [""],
                "resources": ["pods", "configmaps", "persistentvolumeclaims", "secrets"],
                "verbs": write,
            },
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": read + write},
            {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": read + write},
            {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": read + write},
        ],
    }
    binding = {
        "apiVersion": rbac,
        "kind": "RoleBinding",
        "metadata": {"name": "default-editor", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "default-editor", "namespace": namespace}],
    }
    public = {"apiVersion": rbac, "metadata": {"name": "kubeflow-trainer-public", "namespace": "kubeflow-system"}}
    return [
        edit,
        binding,
        {
            **public,
            "kind": "Role",
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get"],
                    "resourceNames": ["kubeflow-trainer-public"],
                }
            ],
        },
        {
            **public,
            "kind": "RoleBinding",
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeflow-trainer-public"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}],
        },
    ]


def installed_rbac(namespace: str) -> list[dict]:
    """The team release (infrastructure profile: its launcher Role and doctor reader, bound to default-editor too)
    and the platform install (who may get the runtimes), as Helm creates them."""
    from medo1 import chart

    objects = []
    for values in (chart.load_profile("infrastructure"), chart.load_profile("trainer-v2-runtimes")):
        for obj in chart.render_chart(values, namespace=namespace):
            if obj["kind"] in ("Role", "RoleBinding"):
                objects.append({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
            elif obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                objects.append(obj)
    return objects


def doctor_step_as(account: str, objects: list[dict], tmp_path, monkeypatch) -> tuple[str, str | Exception]:
    """The pipeline's doctor step (trainjob backend, h100-2nodes) run with `account`'s token, as its pod runs."""
    kube = KubeStandIn().start()
    try:
        for obj in objects:
            kube.record(obj)
        token = kube.service_account_token(NS, account)
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS, token=token)
        return run_doctor_step(kubeconfig, tmp_path / "report.md", monkeypatch)
    finally:
        kube.stop()


def test_the_pipelines_doctor_step_passes_as_default_editor_and_says_what_it_cannot_check(tmp_path, monkeypatch):
    """As multi-user Kubeflow's default-editor the step failed on two checks it can never make: a
    SubjectAccessReview about the chain's run Job account (cluster-scoped, and that account launches nothing in a
    pipeline: the step's own account does) and Kueue's Configuration in kueue-system. Now its own access is
    checked by itself and the Kueue integrations are `info`, saying why and who can check; the step passes."""
    ready = [*ready_objects(), *kubeflow_profile_rbac(NS), *installed_rbac(NS)]
    markdown, outcome = doctor_step_as("default-editor", ready, tmp_path, monkeypatch)
    assert outcome == "passed"
    rows = {row.split(" | ")[0].removeprefix("| "): row.split(" | ")[1:] for row in markdown.splitlines()[6:]}
    assert rows["access you (ServiceAccount default-editor)"][0] == "pass"
    assert not [check for check in rows if check.startswith("access ServiceAccount")]
    status, detail, fix = rows["Kueue integrations"]
    assert status == "**info**"
    assert detail.startswith(
        "not checkable here: Kueue's Configuration is in kueue-system, which a pipeline step's account (its grants "
        "are its own namespace's) may not read, so whether Kueue manages trainer.kubeflow.org/trainjob is not known: "
        'configmaps "kueue-manager-config" is forbidden: User "system:serviceaccount:team-a:default-editor"'
    )
    assert fix.startswith("ask your Kueue admin to run medo1 doctor --namespace team-a")
    assert "**0 failed, 0 unchecked, 0 warnings, 1 not checkable here" in markdown
    # What the account could be granted is still unchecked, and fails the step: here the doctor reader is missing.
    no_grant = [o for o in ready if not o["metadata"]["name"].endswith("-doctor-reader")]
    markdown, outcome = doctor_step_as("default-editor", no_grant, tmp_path, monkeypatch)
    assert isinstance(outcome, RuntimeError) and "0 check(s) failed and 2 could not be made" in str(outcome)
    assert "| nodes | **unchecked** | cannot be read: nodes is forbidden" in markdown
