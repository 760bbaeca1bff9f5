"""The Helm chart with real Helm: lint, render every profile and a matrix of values, validate every
object against the Kubernetes schemas and the Kubeflow CRDs, policy checks, and the checked-in
manifests. Each check is also shown to catch a planted mistake."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from helm_python.chart import lint

from medo1 import chart
from medo1.config import ConfigError
from tests import manifest_checks
from tests.conftest import REPO, run_medo1

CRDS = REPO / "tests" / "fixtures" / "crds"
PROFILES = chart.profiles()


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def main_container(pod_template, name="pytorch"):
    return next(c for c in pod_template["spec"]["containers"] if c["name"] == name)


def test_profiles_exist():
    assert {"h100-1node", "h100-2nodes", "cpu-smoke", "h100-1node-trainjob", "infrastructure"} <= set(PROFILES)


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_lint_is_clean(profile):
    values = chart.load_profile(profile) if profile else None
    report = lint(chart.CHART_DIR, values, strict=True, kube_version=f"v{manifest_checks.KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


MATRIX = {
    "defaults": {},
    "two-nodes-rdma-kueue": {
        "cluster": {"nodes": 2, "rdma": {"enabled": True, "resource": "rdma/ib", "count": 1}},
        "kueue": {"queueName": "h100"},
    },
    "four-nodes-4-gpus": {"cluster": {"nodes": 4, "gpusPerNode": 4}},
    "cpu": {"cluster": {"gpusPerNode": 0, "cpuProcsPerNode": 2, "cpu": "4", "memory": "8Gi", "shmSize": "1Gi"}},
    "trainjob-two-nodes": {"backend": "trainjob", "cluster": {"nodes": 2}, "stages": {"rl": {"enabled": True}}},
    "existing-claims-secrets": {
        "storage": {"checkpoints": {"existingClaim": "team-ckpt"}, "data": {"existingClaim": "team-data"}},
        "secrets": {
            "hfToken": {"name": "hf", "key": "HF_TOKEN"},
            "wandbApiKey": {"name": "wb", "key": "WANDB_API_KEY"},
            "translationApiKey": {"name": "oai", "key": "OPENAI_API_KEY"},
        },
    },
    "all-jobs": {
        "jobs": {
            "translate": {"enabled": True, "recipe": "/opt/medo1/recipes/translate-ja.yaml"},
            "eval": {"enabled": True, "recipe": "/opt/medo1/recipes/eval-mcq.yaml", "gpus": 1},
            "upload": {"enabled": True, "recipe": "/opt/medo1/recipes/upload.yaml"},
        },
        "secrets": {"translationApiKey": {"name": "oai", "key": "OPENAI_API_KEY"}},
    },
    "scheduling": {
        "cluster": {
            "nodeSelector": {"pool": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                        ]
                    }
                }
            },
        },
        "runPolicy": {"activeDeadlineSeconds": 86400, "backoffLimit": 5},
        "image": {"pullSecrets": [{"name": "regcred"}]},
        "extraEnv": [{"name": "NCCL_P2P_LEVEL", "value": "NVL"}],
    },
    "gang-priority-networkpolicy": {
        "cluster": {"nodes": 2},
        "scheduling": {
            "priorityClassName": "training-high",
            "gang": {"enabled": True, "queue": "gpu", "scheduleTimeoutSeconds": 900},
        },
        "networkPolicy": {"enabled": True},
    },
}


def merge(base, extra):
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def rendered_cases():
    for profile in PROFILES:
        yield f"profile:{profile}", chart.load_profile(profile)
    for name, values in MATRIX.items():
        yield f"matrix:{name}", values


@pytest.mark.parametrize("case,values", list(rendered_cases()))
def test_every_object_validates_and_passes_policy(case, values):
    objects = chart.render_chart(values)
    assert objects
    assert manifest_checks.schema_errors(objects, CRDS) == []
    existing = [v["existingClaim"] for v in values.get("storage", {}).values() if v.get("existingClaim")]
    assert manifest_checks.policy_violations(objects, existing) == []
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "medo1" and labels["app.kubernetes.io/instance"] == chart.RELEASE


@pytest.mark.parametrize("nodes,gpus", [(1, 8), (2, 8), (4, 4)])
def test_replicas_processes_and_gpus_follow_the_cluster_shape(nodes, gpus):
    objects = chart.render_chart({"cluster": {"nodes": nodes, "gpusPerNode": gpus}})
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
        assert spec["restartPolicy"] == "Never"  # whole-job restarts (see test_one_pod_loss_on_two_nodes...)


def test_secrets_are_references_and_pvcs_are_created_or_reused():
    values = MATRIX["existing-claims-secrets"]
    objects = chart.render_chart(values)
    pvcs = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    assert pvcs == {"medo1-hf-cache"}
    template = by_kind(objects, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    env = {e["name"]: e for e in main_container(template)["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN", "optional": False}},
    }
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wb", "key": "WANDB_API_KEY", "optional": True}
    assert "OPENAI_API_KEY" not in env  # the translation key is the translate stage's only
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in template["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": "team-data", "checkpoints": "team-ckpt", "hf-cache": "medo1-hf-cache"}
    assert template["spec"]["automountServiceAccountToken"] is False


def test_rbac_is_namespaced_and_minimal():
    objects = chart.render_chart({}, namespace="team-a")
    # Cluster-scoped: only doctor's reads, for the chart's own account (tests/test_helm_lifecycle.py checks who may).
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "medo1-team-a-doctor-reader"
    assert cluster_role["rules"] == [
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues", "resourceflavors"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    ]
    (cluster_binding,) = by_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": "medo1", "namespace": "team-a"}]
    assert not [o for o in chart.render_chart({"doctor": {"clusterRead": False}}) if o["kind"].startswith("Cluster")]
    (role,) = by_kind(objects, "Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {
        "pytorchjobs",
        "trainjobs",
        "trainingruntimes",
        "jobs",
        "pods",
        "pods/log",
        "events",
        "persistentvolumeclaims",
        "namespaces",
        "localqueues",
    }
    (events,) = [rule for rule in role["rules"] if rule["resources"] == ["events"]]
    assert events["verbs"] == ["list"]  # the launcher's stuck-pod check reads Warning events, nothing more
    assert all("*" not in rule["verbs"] for rule in role["rules"])
    reads = [
        rule
        for rule in role["rules"]
        if rule["resources"] in (["trainingruntimes"], ["persistentvolumeclaims"], ["namespaces"], ["localqueues"])
    ]
    assert all(rule["verbs"] == ["get"] for rule in reads)
    (binding,) = by_kind(objects, "RoleBinding")
    assert [s["name"] for s in binding["subjects"]] == ["medo1"]
    # Secrets: get on those the values name, no others (doctor checks their keys); none named, no rule.
    named = by_kind(chart.render_chart(chart.load_profile("h100-1node")), "Role")[0]["rules"]
    assert [rule for rule in named if rule["resources"] == ["secrets"]] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["hf-token", "openai", "wandb"],
        }
    ]


def test_pipeline_service_accounts_may_launch_jobs():
    objects = chart.render_chart(
        {"rbac": {"pipelineServiceAccounts": ["default-editor", "pipeline-runner"]}}, namespace="team-a"
    )
    (binding,) = by_kind(objects, "RoleBinding")
    # No namespace: the subjects are in the binding's own (tests/test_helm_lifecycle.py applies it in another).
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": name} for name in ("medo1", "default-editor", "pipeline-runner")
    ]
    # Doctor's cluster-wide reads: the same accounts, each with the namespace a ClusterRoleBinding needs.
    (cluster_binding,) = by_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["subjects"] == [{**s, "namespace": "team-a"} for s in binding["subjects"]]


def test_trainjob_backend_renders_runtime_and_job():
    objects = chart.render_chart({"backend": "trainjob", "cluster": {"nodes": 2}})
    assert not by_kind(objects, "PyTorchJob")
    (runtime,), (job,) = by_kind(objects, "TrainingRuntime"), by_kind(objects, "TrainJob")
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": runtime["metadata"]["name"],
    }
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
        ({"kueue": {"queueName": "h100"}, "scheduling": {"gang": {"enabled": True}}}, "use one"),
        ({"terminationGracePeriodSeconds": 5}, "terminationGracePeriodSeconds"),
        ({"scheduling": {"priorityClassName": "High_Priority"}}, "priorityClassName"),
        ({"networkPolicy": {"enabled": True, "allowAll": True}}, "allowAll"),
        # A ClusterRoleBinding's ServiceAccount subject must name its namespace.
        ({"doctor": {"clusterReaders": [{"kind": "ServiceAccount", "name": "ci"}]}}, "missing property 'namespace'"),
    ],
)
def test_values_schema_refuses_bad_values(bad_values, fragment):
    with pytest.raises(ConfigError, match=fragment) as refused:
        chart.render_chart(merge(chart.load_profile("h100-1node"), bad_values))
    assert "\n" not in str(refused.value) and str(refused.value).startswith("chart values refused by medo1: ")


def test_a_refused_chart_value_is_one_line_from_the_launcher():
    done = run_medo1(["launch", "sft", "--profile", "h100-1node", "--value", "cluster.nodes=zero"], timeout=120)
    assert (done.returncode, done.stderr) == (
        2,
        "medo1: error: chart values refused by medo1: at '/cluster/nodes': got string, want integer\n",
    )


# ---- planted mistakes: each check must catch one ----------------------------------------------------


# The h100-2nodes profile's shape with its jobs rendered in the release (no run Job creating them), as
# PyTorchJobs (the profile itself runs TrainJobs, for Kueue: tests/test_trainer_v2.py).
TWO_NODES_JOBS = merge(chart.load_profile("h100-2nodes"), {"chain": {"enabled": False}, "backend": "pytorchjob"})


@pytest.fixture
def objects():
    return chart.render_chart(TWO_NODES_JOBS)


def master(objects):
    return by_kind(objects, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]


def test_policy_catches_a_wrong_container_name(objects):
    main_container(master(objects))["name"] = "trainer"
    assert any("no container named 'pytorch'" in p for p in manifest_checks.policy_violations(objects))


def test_policy_catches_gpus_not_matching_processes(objects):
    main_container(master(objects))["resources"]["limits"]["nvidia.com/gpu"] = 4
    assert any("4 GPUs but 8 processes" in p for p in manifest_checks.policy_violations(objects))


def test_policy_catches_missing_shm(objects):
    template = master(objects)
    template["spec"]["volumes"] = [v for v in template["spec"]["volumes"] if v["name"] != "dshm"]
    main_container(template)["volumeMounts"] = [
        m for m in main_container(template)["volumeMounts"] if m["name"] != "dshm"
    ]
    assert any("/dev/shm" in p for p in manifest_checks.policy_violations(objects))


def test_policy_catches_an_inline_secret(objects):
    main_container(master(objects))["env"].append({"name": "HF_TOKEN", "value": "hf_plaintext"})
    assert any("HF_TOKEN holds a secret inline" in p for p in manifest_checks.policy_violations(objects))


def test_policy_catches_root_latest_and_a_missing_claim(objects):
    template = master(objects)
    template["spec"]["securityContext"]["runAsUser"] = 0
    main_container(template)["image"] = "ghcr.io/medo1/trainer:latest"
    template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "nowhere"
    problems = manifest_checks.policy_violations(objects)
    assert any("non-root" in p for p in problems)
    assert any("fixed tag" in p for p in problems)
    assert any("'nowhere'" in p for p in problems)


def test_crd_validation_catches_a_bad_pytorchjob(objects):
    job = by_kind(objects, "PyTorchJob")[0]
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    job["spec"]["runPolicy"]["backoffLimit"] = "3"
    errors = manifest_checks.schema_errors(objects, CRDS)
    assert any("replicas" in e for e in errors) and any("backoffLimit" in e for e in errors)


def test_core_validation_catches_a_bad_pod_template_and_pvc(objects):
    main_container(master(objects))["imagePullPolicy"] = 3
    by_kind(objects, "PersistentVolumeClaim")[0]["spec"]["resourcez"] = {}
    errors = manifest_checks.schema_errors(objects, CRDS)
    assert any("PyTorchJob/medo1-sft Master" in e and "imagePullPolicy" in e for e in errors)
    assert any("PersistentVolumeClaim" in e for e in errors)


# ---- checked-in manifests ------------------------------------------------------------------------


def test_manifests_are_up_to_date_and_regeneration_is_idempotent(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    chart.write_manifests(first)
    chart.write_manifests(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(f"{p}.yaml" for p in PROFILES)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} is not deterministic"
        checked_in = chart.MANIFESTS_DIR / name
        assert checked_in.is_file(), f"manifests/{name} missing: run `make manifests`"
        assert checked_in.read_text() == (first / name).read_text(), f"manifests/{name} is stale: run `make manifests`"
    assert sorted(p.name for p in chart.MANIFESTS_DIR.glob("*.yaml")) == names


def test_make_manifests_entry_point_writes_every_profile():
    done = subprocess.run([sys.executable, "-m", "medo1.chart"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(f"manifests/{p}.yaml" for p in PROFILES)


def test_the_manifests_entry_points_help_writes_nothing(tmp_path):
    """`python -m medo1.chart --help` rewrote manifests/ (it read no arguments); now it prints its usage only."""
    done = subprocess.run([sys.executable, "-m", "medo1.chart", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m medo1.chart"), done.stderr
    chart.main(["--out-dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p}.yaml" for p in PROFILES)


def test_single_pod_stages_render_as_plain_jobs():
    objects = chart.render_chart(MATRIX["all-jobs"])
    jobs = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in by_kind(objects, "Job")}
    assert set(jobs) == {"translate", "eval", "upload"}
    for name, job in jobs.items():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["medo1"] and container["args"][:2] == [name, "--config"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if name == "eval" else None)
    translate_env = {e["name"]: e for e in jobs["translate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert translate_env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "oai",
        "key": "OPENAI_API_KEY",
        "optional": False,
    }


def test_policy_catches_a_job_without_its_container(objects):
    objects = chart.render_chart(MATRIX["all-jobs"])
    job = by_kind(objects, "Job")[0]
    job["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    assert any("no container named 'medo1'" in p for p in manifest_checks.policy_violations(objects))


# ---- a first run on a real cluster -----------------------------------------------------------------


def pod_specs(objects):
    """(where, pod template, main container) of every pod the objects create."""
    for obj in objects:
        for where, template in chart.pod_templates(obj):
            container = next(
                c for c in template["spec"]["containers"] if c["name"] == chart.MAIN_CONTAINER[obj["kind"]]
            )
            yield where, template, container


@pytest.mark.parametrize("profile", PROFILES)
def test_helm_installs_every_profile_in_dependency_order(profile):
    """Finding 2: Helm creates unknown kinds last and by kind name, so a TrainJob came before its
    TrainingRuntime. Ordered as Helm orders them, nothing comes before what it references; so is the
    checked-in manifest, which `kubectl apply -f` creates in file order."""
    objects = chart.render_chart(chart.load_profile(profile))
    assert manifest_checks.install_order_problems(manifest_checks.helm_install_order(objects)) == []
    import yaml

    manifest = [doc for doc in yaml.safe_load_all((chart.MANIFESTS_DIR / f"{profile}.yaml").read_text()) if doc]
    assert manifest_checks.install_order_problems(manifest) == []


def test_install_order_catches_a_trainjob_before_its_runtime():
    objects = chart.render_chart(chart.load_profile("h100-1node-trainjob"))
    names = [f"{o['kind']}/{o['metadata']['name']}" for o in manifest_checks.helm_install_order(objects)]
    assert names.index("TrainingRuntime/medo1-sft") < names.index("TrainJob/medo1-sft")
    # Planted: the runtime as an ordinary release object, not a pre-install hook: Helm sorts it after the TrainJob.
    (runtime,) = by_kind(objects, "TrainingRuntime")
    del runtime["metadata"]["annotations"]
    assert manifest_checks.install_order_problems(manifest_checks.helm_install_order(objects)) == [
        "TrainJob/medo1-sft is created before TrainingRuntime/medo1-sft, which it needs"
    ]


def test_install_order_catches_a_binding_or_a_pod_before_what_it_uses():
    objects = manifest_checks.helm_install_order(chart.render_chart(TWO_NODES_JOBS))
    (job,) = by_kind(objects, "PyTorchJob")
    (binding,) = by_kind(objects, "RoleBinding")
    planted = [job, binding] + [o for o in objects if o not in (job, binding)]
    problems = manifest_checks.install_order_problems(planted)
    assert "RoleBinding/medo1-launcher is created before Role/medo1-launcher, which it needs" in problems
    assert "RoleBinding/medo1-launcher is created before ServiceAccount/medo1, which it needs" in problems
    assert "PyTorchJob/medo1-sft is created before PersistentVolumeClaim/medo1-checkpoints, which it needs" in problems


def test_one_node_profile_runs_its_stages_one_after_another():
    """Finding 3: h100-1node created SFT, RL, eval and upload at once. Now one CPU run Job creates them in
    turn (tests/test_launch.py runs that chain here); no stage job is in the release."""
    from medo1.launch.chain import chain_stages

    objects = chart.render_chart(chart.load_profile("h100-1node"))
    assert not by_kind(objects, "PyTorchJob") and not by_kind(objects, "TrainJob")
    (run,) = by_kind(objects, "Job")
    pod = run["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["medo1"] and container["args"][:4] == [
        "launch",
        "chain",
        "--values",
        "/etc/medo1/values.yaml",
    ]
    assert not any(k.endswith("/gpu") for k in container["resources"]["limits"])  # no GPU held while waiting
    assert pod["serviceAccountName"] == "medo1" and pod["automountServiceAccountToken"] is True
    (config,) = by_kind(objects, "ConfigMap")
    import yaml

    values = yaml.safe_load(config["data"]["values.yaml"])
    assert values["chain"]["enabled"] is False
    assert chain_stages(values) == ["sft", "rl", "eval", "upload"]
    # The launcher renders each stage from these values: a valid job with the release's settings.
    from medo1.launch import build_job, build_pytorchjob

    stage_jobs = [build_pytorchjob("sft", values), build_pytorchjob("rl", values), build_job("eval", values)]
    assert (
        manifest_checks.schema_errors(stage_jobs, CRDS) == []
        and manifest_checks.policy_violations([*objects, *stage_jobs]) == []
    )


def test_each_pod_gets_only_the_secrets_its_stage_reads():
    """Finding 4: every training pod required the wandb and openai Secrets."""
    values = merge(
        chart.load_profile("h100-1node"), {"chain": {"enabled": False}, "jobs": {"translate": {"enabled": True}}}
    )
    objects = chart.render_chart(values)
    secret_env = {}
    for where, _, container in pod_specs(objects):
        component = where.split("/")[1].split()[0].removeprefix("medo1-")
        secret_env[component] = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
        }
    hf = {"name": "hf-token", "key": "HF_TOKEN", "optional": False}
    wandb = {"name": "wandb", "key": "WANDB_API_KEY", "optional": True}  # W&B off: the pod starts without it
    assert secret_env == {
        "sft": {"HF_TOKEN": hf, "WANDB_API_KEY": wandb},
        "rl": {"HF_TOKEN": hf, "WANDB_API_KEY": wandb},
        "translate": {"OPENAI_API_KEY": {"name": "openai", "key": "OPENAI_API_KEY", "optional": False}},
        "eval": {"HF_TOKEN": hf},
        "upload": {"HF_TOKEN": hf},
    }
    # The chain's run pod: the HF token only, to check before the first job that the stages' Hub ids are readable;
    # optional there, so a missing Secret does not hold the run pod in CreateContainerConfigError (no controller
    # ends that): the launcher's input check names what it cannot read instead.
    (run,) = by_kind(chart.render_chart(chart.load_profile("h100-1node")), "Job")
    assert [
        e for e in run["spec"]["template"]["spec"]["containers"][0]["env"] if "secretKeyRef" in e.get("valueFrom", {})
    ] == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": hf | {"optional": True}}}]


def test_policy_catches_a_secret_that_does_not_say_whether_it_is_optional(objects):
    env = main_container(master(objects))["env"]
    next(e for e in env if e["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"].pop("optional")
    assert any(
        "HF_TOKEN from Secret hf-token must say whether it is optional" in p
        for p in manifest_checks.policy_violations(objects)
    )


def test_rdma_pods_get_the_device_and_network_annotations_and_no_added_capability():
    """Finding 5: RDMA pods need the device and a way to ask for a Multus / SR-IOV network. Issue 26, item 16:
    they got IPC_LOCK, which does nothing for uid 1000 and which Pod Security's baseline level forbids; RDMA's
    pinned memory needs the node's memlock limit instead (values.yaml cluster.rdma)."""
    network = {"k8s.v1.cni.cncf.io/networks": "ib-sriov-1"}
    values = merge(TWO_NODES_JOBS, {"podAnnotations": network})
    objects = chart.render_chart(values)
    assert manifest_checks.policy_violations(objects) == []
    for where, template, container in pod_specs(objects):
        assert container["resources"]["limits"]["rdma/ib"] == 1, where
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, where
        assert template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-sriov-1", where


def test_policy_catches_a_capability_pod_security_baseline_forbids(objects):
    main_container(master(objects))["securityContext"]["capabilities"]["add"] = ["IPC_LOCK"]
    assert any(
        "Pod Security baseline forbids adding the IPC_LOCK capability" in p
        for p in manifest_checks.policy_violations(objects)
    )


def test_rdma_with_nccl_infiniband_off_is_refused_and_no_runtime_turns_it_off():
    """Issue 26, item 16: the cluster runtimes set NCCL_IB_DISABLE=1 (the chart's default) while the README runs
    them on 2 nodes over InfiniBand. No default turns InfiniBand off now, and RDMA with it off is refused."""
    with pytest.raises(
        ConfigError, match=r'cluster.rdma asks for an InfiniBand / RoCE device but nccl.NCCL_IB_DISABLE is "1"'
    ):
        chart.render_chart(merge(TWO_NODES_JOBS, {"nccl": {"NCCL_IB_DISABLE": "1"}}))
    for profile in PROFILES:
        for where, _, container in pod_specs(
            chart.render_chart(merge(chart.load_profile(profile), {"chain": {"enabled": False}}))
        ):
            assert {"name": "NCCL_IB_DISABLE", "value": "1"} not in container["env"], where
    objects = chart.render_chart(merge(TWO_NODES_JOBS, {"chain": {"enabled": False}}))
    main_container(master(objects))["env"].append({"name": "NCCL_IB_DISABLE", "value": "1"})
    assert any("RDMA requested with NCCL_IB_DISABLE=1" in p for p in manifest_checks.policy_violations(objects))


@pytest.mark.parametrize("profile", PROFILES)
def test_volumes_are_not_chowned_at_every_pod_start(profile):
    """Issue 26, item 16: fsGroup made the kubelet change the group of every file of the 2 TiB checkpoint volume
    at each pod start; OnRootMismatch does it only when the volume's root does not have the group yet."""
    pods = list(pod_specs(chart.render_chart(merge(chart.load_profile(profile), {"chain": {"enabled": False}}))))
    assert pods or profile == "infrastructure"
    for where, template, _ in pods:
        assert template["spec"]["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch", where


@pytest.mark.parametrize("profile", PROFILES)
def test_istio_sidecar_is_off_on_every_pod(profile):
    """Finding 6: multi-user Kubeflow injects an Istio sidecar that keeps a finished pod running."""
    values = merge(chart.load_profile(profile), {"podLabels": {"team": "med"}})
    objects = chart.render_chart(values)
    objects += [o for o in chart.render_chart(merge(values, {"chain": {"enabled": False}})) if chart.pod_templates(o)]
    pods = list(pod_specs(objects))
    assert pods or profile == "infrastructure"
    for where, template, _ in pods:
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false", where
        assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false", where
        assert template["metadata"]["labels"]["team"] == "med", where


# Common 8x H100 nodes: capacity, and what the managed Kubernetes service reserves on that node (kube and
# system reservations plus the eviction threshold), estimated upward from each provider's published formula.
# Sources: learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndh100v5-series and
# learn.microsoft.com/azure/aks/node-resource-reservations; aws.amazon.com/ec2/instance-types/p5 and the
# EKS AMI's kube-reserved formula (awslabs/amazon-eks-ami); cloud.google.com/compute/docs/accelerator-optimized-machines
# and cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes.
H100_NODES = {
    # name: (vCPU, memory GiB, reserved CPU, reserved memory GiB)
    "Azure ND96isr_H100_v5 (AKS)": (96, 1900, 1.1, 6),
    "AWS p5.48xlarge (EKS)": (192, 2048, 0.6, 9),
    "GCP a3-highgpu-8g (GKE)": (208, 1872e9 / 2**30, 0.6, 42),
}
DAEMONSET_HEADROOM = (8, 64)  # CPU, GiB for the GPU / network operators, CNI, monitoring


def _quantity(text):
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}
    for suffix, factor in units.items():
        if str(text).endswith(suffix):
            return float(str(text)[: -len(suffix)]) * factor
    return float(text[:-1]) / 1000 if str(text).endswith("m") else float(text)


@pytest.mark.parametrize("node", H100_NODES)
def test_default_training_pod_fits_common_h100_nodes(node):
    """Finding 7: cpu "96" asked for a whole Azure ND H100 v5 node, which never has 96 allocatable."""
    cpus, memory, reserved_cpu, reserved_memory = H100_NODES[node]
    for where, _, container in pod_specs(chart.render_chart(TWO_NODES_JOBS)):
        requests = container["resources"]["requests"]
        assert _quantity(requests["cpu"]) + DAEMONSET_HEADROOM[0] <= cpus - reserved_cpu, where
        assert _quantity(requests["memory"]) + DAEMONSET_HEADROOM[1] <= memory - reserved_memory, where
        assert requests["nvidia.com/gpu"] == 8


def test_one_pod_loss_on_two_nodes_restarts_the_whole_job():
    """Finding 9: OnFailure restarted one container under a static rendezvous and backoffLimit counted
    restarts summed over pods. Now a pod failure fails the job, no Worker outlives it, and the launcher
    (tests/test_launch.py) or the JobSet creates the job again whole."""
    # The profile's run Job is the launcher that creates the job again (tests/test_launch.py).
    (run,) = by_kind(chart.render_chart(chart.load_profile("h100-2nodes")), "Job")
    assert run["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["launch", "chain"]
    (job,) = by_kind(chart.render_chart(TWO_NODES_JOBS), "PyTorchJob")
    assert {role: spec["restartPolicy"] for role, spec in job["spec"]["pytorchReplicaSpecs"].items()} == {
        "Master": "Never",
        "Worker": "Never",
    }
    assert job["spec"]["runPolicy"]["backoffLimit"] == 0
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    assert chart.chart_defaults()["runPolicy"]["jobRestarts"] >= 1
    container = main_container(job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"])
    assert container["args"][5:7] == ["--resume", "auto"]
    objects = chart.render_chart(merge(chart.load_profile("h100-1node-trainjob"), {"cluster": {"nodes": 2}}))
    (runtime,) = by_kind(objects, "TrainingRuntime")
    jobset = runtime["spec"]["template"]["spec"]
    assert jobset["failurePolicy"]["maxRestarts"] == chart.chart_defaults()["runPolicy"]["jobRestarts"]
    (node,) = jobset["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0
    assert node["template"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# ---- scheduling: gang admission, priority, grace period, network policy ---------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_every_pod_has_the_checkpoint_grace_period(profile):
    """600 s covers writing a 7B ZeRO-3 SFT checkpoint after SIGTERM, 1200 s the PPO one (the arithmetic is in
    values.yaml; the launcher sizes its own jobs: tests/test_grace_period.py)."""
    values = merge(chart.load_profile(profile), {"chain": {"enabled": False}})
    specs = {
        f"{obj['metadata']['name']} {where}": template["spec"]["terminationGracePeriodSeconds"]
        for obj in chart.render_chart(values)
        for where, template in chart.pod_templates(obj)
    }
    rl = [where for where in specs if any(name in where for name in ("-rl", "medo1-ppo", "medo1-grpo"))]
    assert all(seconds == (1200 if where in rl else 600) for where, seconds in specs.items()), specs
    assert chart.chart_defaults()["terminationGracePeriodSeconds"] == 600


@pytest.mark.parametrize("profile", PROFILES)
def test_torchrun_gives_its_workers_the_grace_period_to_save(profile):
    """torchrun SIGKILLs its workers 30 s after forwarding SIGTERM unless TORCH_ELASTIC_SHUTDOWN_TIMEOUT says
    otherwise: a 7B preemption save needs most of the pod's grace period, and torchrun must exit inside it."""
    values = merge(
        chart.load_profile(profile),
        {
            "chain": {"enabled": False},
            "terminationGracePeriodSeconds": 900,
            "stages": {"rl": {"terminationGracePeriodSeconds": 900}},
        },
    )
    pods = list(pod_specs(chart.render_chart(values)))
    assert pods or profile == "infrastructure"
    for where, template, container in pods:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) == 870, where
        assert template["spec"]["terminationGracePeriodSeconds"] == 900, where


def test_kueue_admits_the_two_node_job_whole():
    (job,) = by_kind(chart.render_chart(TWO_NODES_JOBS), "PyTorchJob")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100"
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]


def test_gang_scheduling_priority_and_deadline_without_kueue():
    values = merge(
        TWO_NODES_JOBS,
        {
            "kueue": {"queueName": ""},
            "runPolicy": {"activeDeadlineSeconds": 86400},
            "scheduling": {"priorityClassName": "training-high", "gang": {"enabled": True, "queue": "gpu"}},
        },
    )
    objects = chart.render_chart(values)
    (job,) = by_kind(objects, "PyTorchJob")
    policy = job["spec"]["runPolicy"]
    assert policy["schedulingPolicy"] == {"minAvailable": 2, "queue": "gpu", "priorityClass": "training-high"}
    assert policy["activeDeadlineSeconds"] == 86400
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    specs = [spec["template"]["spec"] for spec in job["spec"]["pytorchReplicaSpecs"].values()]
    assert [spec["priorityClassName"] for spec in specs] == ["training-high", "training-high"]
    assert manifest_checks.schema_errors(objects, CRDS) == []
    defaults = chart.render_chart({})
    (default_job,) = by_kind(defaults, "PyTorchJob")
    assert "priorityClassName" not in default_job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def test_network_policy_is_off_by_default_and_admits_only_the_jobs_own_pods():
    assert by_kind(chart.render_chart(chart.load_profile("h100-2nodes")), "NetworkPolicy") == []
    objects = chart.render_chart(merge(TWO_NODES_JOBS, {"networkPolicy": {"enabled": True}}))
    (policy,) = by_kind(objects, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]
    (job,) = by_kind(objects, "PyTorchJob")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        labels = spec["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selector["matchLabels"].items())
        assert labels["app.kubernetes.io/component"] in selector["matchExpressions"][0]["values"]
    assert selector["matchExpressions"][0]["values"] == ["sft", "rl"]  # not the run, eval or upload pods
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress == {"from": [{"podSelector": selector}]}  # any port: rendezvous and NCCL / gloo sockets
    to_pods, dns, https = policy["spec"]["egress"]
    assert to_pods == {"to": [{"podSelector": selector}]}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert https == {"ports": [{"protocol": "TCP", "port": 443}]}
    closed = chart.render_chart(merge(TWO_NODES_JOBS, {"networkPolicy": {"enabled": True, "httpsEgress": False}}))
    assert len(by_kind(closed, "NetworkPolicy")[0]["spec"]["egress"]) == 2
