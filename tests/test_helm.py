"""The Helm chart with real Helm: lint, render every profile and a matrix of values, validate every
object against the Kubernetes schemas and the Kubeflow CRDs, policy checks, and the checked-in
manifests. Each check is also shown to catch a planted mistake."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from helm_python.chart import lint
from helm_python.errors import HelmError
from medo1 import k8s

from tests.conftest import REPO

CRDS = REPO / "tests" / "fixtures" / "crds"
PROFILES = k8s.profiles()


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def main_container(pod_template, name="pytorch"):
    return next(c for c in pod_template["spec"]["containers"] if c["name"] == name)


def test_profiles_exist():
    assert {"h100-1node", "h100-2nodes", "cpu-smoke", "h100-1node-trainjob"} <= set(PROFILES)


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_lint_is_clean(profile):
    values = k8s.load_profile(profile) if profile else None
    report = lint(k8s.CHART_DIR, values, strict=True, kube_version=f"v{k8s.KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


MATRIX = {
    "defaults": {},
    "two-nodes-rdma-kueue": {"cluster": {"nodes": 2, "rdma": {"enabled": True, "resource": "rdma/ib", "count": 1}},
                             "kueue": {"queueName": "h100"}},
    "four-nodes-4-gpus": {"cluster": {"nodes": 4, "gpusPerNode": 4}},
    "cpu": {"cluster": {"gpusPerNode": 0, "cpuProcsPerNode": 2, "cpu": "4", "memory": "8Gi", "shmSize": "1Gi"}},
    "trainjob-two-nodes": {"backend": "trainjob", "cluster": {"nodes": 2}, "stages": {"rl": {"enabled": True}}},
    "existing-claims-secrets": {
        "storage": {"checkpoints": {"existingClaim": "team-ckpt"}, "data": {"existingClaim": "team-data"}},
        "secrets": {"hfToken": {"name": "hf", "key": "HF_TOKEN"}, "wandbApiKey": {"name": "wb", "key": "WANDB_API_KEY"},
                    "translationApiKey": {"name": "oai", "key": "OPENAI_API_KEY"}},
    },
    "all-jobs": {"jobs": {"translate": {"enabled": True, "recipe": "/opt/medo1/recipes/translate-ja.yaml"},
                          "eval": {"enabled": True, "recipe": "/opt/medo1/recipes/eval-mcq.yaml", "gpus": 1},
                          "upload": {"enabled": True, "recipe": "/opt/medo1/recipes/upload.yaml"}},
                 "secrets": {"translationApiKey": {"name": "oai", "key": "OPENAI_API_KEY"}}},
    "scheduling": {"cluster": {"nodeSelector": {"pool": "h100"},
                               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                   "nodeSelectorTerms": [{"matchExpressions": [
                                       {"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}},
                   "runPolicy": {"activeDeadlineSeconds": 86400, "backoffLimit": 5},
                   "image": {"pullSecrets": [{"name": "regcred"}]},
                   "extraEnv": [{"name": "NCCL_P2P_LEVEL", "value": "NVL"}]},
}


def merge(base, extra):
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def rendered_cases():
    for profile in PROFILES:
        yield f"profile:{profile}", k8s.load_profile(profile)
    for name, values in MATRIX.items():
        yield f"matrix:{name}", values


@pytest.mark.parametrize("case,values", list(rendered_cases()))
def test_every_object_validates_and_passes_policy(case, values):
    objects = k8s.render_chart(values)
    assert objects
    assert k8s.schema_errors(objects, CRDS) == []
    existing = [v["existingClaim"] for v in values.get("storage", {}).values() if v.get("existingClaim")]
    assert k8s.policy_violations(objects, existing) == []
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "medo1" and labels["app.kubernetes.io/instance"] == k8s.RELEASE


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (2, 8), (4, 4)])
def test_replicas_processes_and_gpus_follow_the_cluster_shape(nodes, gpus):
    objects = k8s.render_chart({"cluster": {"nodes": nodes, "gpusPerNode": gpus}})
    (job,) = by_kind(objects, "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    if nodes == 1:
        assert set(specs) == {"Master"}
    else:
        assert specs["Worker"]["replicas"] == nodes - 1
    assert job["spec"]["nprocPerNode"] == str(gpus)
    for spec in specs.values():
        container = main_container(spec["template"])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["command"] == ["torchrun"]
        assert container["args"][:7] == ["-m", "medo1", "sft", "--config", container["args"][4], "--resume", "auto"]
        assert spec["restartPolicy"] == "OnFailure"


def test_secrets_are_references_and_pvcs_are_created_or_reused():
    values = MATRIX["existing-claims-secrets"]
    objects = k8s.render_chart(values)
    pvcs = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    assert pvcs == {"medo1-hf-cache"}
    template = by_kind(objects, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    env = {e["name"]: e for e in main_container(template)["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}}
    assert "value" not in env["OPENAI_API_KEY"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"data": "team-data", "checkpoints": "team-ckpt", "hf-cache": "medo1-hf-cache"}
    assert template["spec"]["automountServiceAccountToken"] is False


def test_rbac_is_namespaced_and_minimal():
    objects = k8s.render_chart({})
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    (role,) = by_kind(objects, "Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pytorchjobs", "pytorchjobs/status", "trainjobs", "trainjobs/status", "pods", "pods/log"}
    assert all("*" not in rule["verbs"] for rule in role["rules"])
    (binding,) = by_kind(objects, "RoleBinding")
    assert [s["name"] for s in binding["subjects"]] == ["medo1"]


def test_pipeline_service_accounts_may_launch_jobs():
    objects = k8s.render_chart({"rbac": {"pipelineServiceAccounts": ["default-editor", "pipeline-runner"]}}, namespace="team-a")
    (binding,) = by_kind(objects, "RoleBinding")
    assert [(s["name"], s["namespace"]) for s in binding["subjects"]] == [
        ("medo1", "team-a"), ("default-editor", "team-a"), ("pipeline-runner", "team-a")
    ]


def test_trainjob_backend_renders_runtime_and_job():
    objects = k8s.render_chart({"backend": "trainjob", "cluster": {"nodes": 2}})
    assert not by_kind(objects, "PyTorchJob")
    (runtime,), (job,) = by_kind(objects, "TrainingRuntime"), by_kind(objects, "TrainJob")
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": runtime["metadata"]["name"]}
    assert job["spec"]["trainer"] == {"numNodes": 2, "numProcPerNode": 8}
    assert runtime["spec"]["mlPolicy"]["numNodes"] == 2


@pytest.mark.parametrize(
    "bad_values,fragment",
    [
        ({"image": {"tag": "latest"}}, "tag"),
        ({"extraEnv": [{"name": "HF_TOKEN", "value": "hf_abc"}]}, "extraEnv"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"cluster": {"nodes": 0}}, "nodes"),
        ({"backend": "mpijob"}, "backend"),
        ({"stages": {"sft": {"enabled": True, "recipe": "x.yaml", "set": ["no equals sign"]}}}, "set"),
        ({"cluster": {"gpuz": 8}}, "gpuz"),
    ],
)
def test_values_schema_refuses_bad_values(bad_values, fragment):
    with pytest.raises(HelmError, match=fragment):
        k8s.render_chart(merge(k8s.load_profile("h100-1node"), bad_values))


# ---- planted mistakes: each check must catch one ----------------------------------------------------


@pytest.fixture
def objects():
    return k8s.render_chart(k8s.load_profile("h100-2nodes"))


def master(objects):
    return by_kind(objects, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]


def test_policy_catches_a_wrong_container_name(objects):
    main_container(master(objects))["name"] = "trainer"
    assert any("no container named 'pytorch'" in p for p in k8s.policy_violations(objects))


def test_policy_catches_gpus_not_matching_processes(objects):
    main_container(master(objects))["resources"]["limits"]["nvidia.com/gpu"] = 4
    assert any("4 GPUs but 8 processes" in p for p in k8s.policy_violations(objects))


def test_policy_catches_missing_shm(objects):
    template = master(objects)
    template["spec"]["volumes"] = [v for v in template["spec"]["volumes"] if v["name"] != "dshm"]
    main_container(template)["volumeMounts"] = [m for m in main_container(template)["volumeMounts"] if m["name"] != "dshm"]
    assert any("/dev/shm" in p for p in k8s.policy_violations(objects))


def test_policy_catches_an_inline_secret(objects):
    main_container(master(objects))["env"].append({"name": "HF_TOKEN", "value": "hf_plaintext"})
    assert any("HF_TOKEN holds a secret inline" in p for p in k8s.policy_violations(objects))


def test_policy_catches_root_latest_and_a_missing_claim(objects):
    template = master(objects)
    template["spec"]["securityContext"]["runAsUser"] = 0
    main_container(template)["image"] = "ghcr.io/medo1/trainer:latest"
    template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "nowhere"
    problems = k8s.policy_violations(objects)
    assert any("non-root" in p for p in problems)
    assert any("fixed tag" in p for p in problems)
    assert any("'nowhere'" in p for p in problems)


def test_crd_validation_catches_a_bad_pytorchjob(objects):
    job = by_kind(objects, "PyTorchJob")[0]
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    job["spec"]["runPolicy"]["backoffLimit"] = "3"
    errors = k8s.schema_errors(objects, CRDS)
    assert any("replicas" in e for e in errors) and any("backoffLimit" in e for e in errors)


def test_core_validation_catches_a_bad_pod_template_and_pvc(objects):
    main_container(master(objects))["imagePullPolicy"] = 3
    by_kind(objects, "PersistentVolumeClaim")[0]["spec"]["resourcez"] = {}
    errors = k8s.schema_errors(objects, CRDS)
    assert any("PyTorchJob/medo1-sft Master" in e and "imagePullPolicy" in e for e in errors)
    assert any("PersistentVolumeClaim" in e for e in errors)


# ---- checked-in manifests ------------------------------------------------------------------------


def test_manifests_are_up_to_date_and_regeneration_is_idempotent(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    k8s.write_manifests(first)
    k8s.write_manifests(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(f"{p}.yaml" for p in PROFILES)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} is not deterministic"
        checked_in = k8s.MANIFESTS_DIR / name
        assert checked_in.is_file(), f"manifests/{name} missing: run `make manifests`"
        assert checked_in.read_text() == (first / name).read_text(), f"manifests/{name} is stale: run `make manifests`"
    assert sorted(p.name for p in k8s.MANIFESTS_DIR.glob("*.yaml")) == names


def test_make_manifests_entry_point_writes_every_profile():
    done = subprocess.run([sys.executable, "-m", "medo1.k8s"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(f"manifests/{p}.yaml" for p in PROFILES)


def test_single_pod_stages_render_as_plain_jobs():
    objects = k8s.render_chart(MATRIX["all-jobs"])
    jobs = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in by_kind(objects, "Job")}
    assert set(jobs) == {"translate", "eval", "upload"}
    for name, job in jobs.items():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["medo1"] and container["args"][:2] == [name, "--config"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if name == "eval" else None)
    translate_env = {e["name"]: e for e in jobs["translate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert translate_env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "oai", "key": "OPENAI_API_KEY"}


def test_policy_catches_a_job_without_its_container(objects):
    objects = k8s.render_chart(MATRIX["all-jobs"])
    job = by_kind(objects, "Job")[0]
    job["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    assert any("no container named 'medo1'" in p for p in k8s.policy_violations(objects))
