"""Checks on rendered manifests that only the tests run: Helm's install order, the Kubernetes and CRD schemas, and the
project's pod policy (non-root, no inline secrets, fixed image tags, /dev/shm for NCCL, GPUs = processes)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from medo1 import chart

KUBE_VERSION = "1.33.0"
# Trainer v2 names an initializer's replicated job and its container alike (kubeflow/trainer pkg/constants/constants.go).
TRAINER_INITIALIZERS = ("dataset-initializer", "model-initializer")
# What Pod Security's baseline level lets a container add (kubernetes.io/docs/concepts/security/pod-security-standards).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIALS?)($|_)", re.IGNORECASE)
HOOK = "helm.sh/hook"


def _helm_kind_key(obj: dict[str, Any]) -> tuple[int, str]:
    """Helm's lessByKind: known kinds by InstallOrder, unknown kinds last and by kind name (a stable sort
    keeps the rendered order within a kind)."""
    kind = obj.get("kind", "")
    if kind in chart.HELM_INSTALL_ORDER:
        return chart.HELM_INSTALL_ORDER.index(kind), ""
    return len(chart.HELM_INSTALL_ORDER), kind


def helm_install_order(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The order `helm install` creates the objects in: pre-install hooks (by hook weight, then kind), the
    release's objects (by kind), then post-install hooks (helm/helm pkg/action/install.go runs the
    pre-install hooks, creates the resources, then runs the post-install hooks; hooks are sorted by
    weight, then kind, in pkg/action/hooks.go)."""
    phases: dict[str, list[dict[str, Any]]] = {"pre-install": [], "main": [], "post-install": []}
    for obj in objects:
        hooks = [
            h.strip() for h in obj.get("metadata", {}).get("annotations", {}).get(HOOK, "").split(",") if h.strip()
        ]
        phase = next((h for h in hooks if h in ("pre-install", "post-install")), "main" if not hooks else None)
        if phase is not None:
            phases[phase].append(obj)

    def hook_key(obj: dict[str, Any]) -> tuple[int, tuple[int, str]]:
        weight = obj["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0")
        return int(weight), _helm_kind_key(obj)

    return [
        *sorted(phases["pre-install"], key=hook_key),
        *sorted(phases["main"], key=_helm_kind_key),
        *sorted(phases["post-install"], key=hook_key),
    ]


def _needs(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of the objects this one references and cannot work without."""
    kind, spec = obj.get("kind"), obj.get("spec", {})
    needs = []
    if kind == "TrainJob":
        ref = spec.get("runtimeRef", {})
        needs.append((ref.get("kind", "ClusterTrainingRuntime"), ref.get("name")))
    if kind == "RoleBinding":
        needs.append((obj["roleRef"]["kind"], obj["roleRef"]["name"]))
        needs += [("ServiceAccount", s["name"]) for s in obj.get("subjects", []) if s.get("kind") == "ServiceAccount"]
    # A runtime is a template: it creates no pod, so it needs nothing its pods mount to exist yet.
    for _, template in [] if kind in ("TrainingRuntime", "ClusterTrainingRuntime") else chart.pod_templates(obj):
        pod = template.get("spec", {})
        if pod.get("serviceAccountName"):
            needs.append(("ServiceAccount", pod["serviceAccountName"]))
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                needs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            if "configMap" in volume:
                needs.append(("ConfigMap", volume["configMap"]["name"]))
    return needs


def install_order_problems(ordered: list[dict[str, Any]]) -> list[str]:
    """Objects created before an object of the same release they reference (a TrainJob before its
    TrainingRuntime, a RoleBinding before its Role or ServiceAccount, a pod before its PVC). References
    to objects the release does not create (existing claims, cluster runtimes) are not checked."""
    position = {(o["kind"], o["metadata"]["name"]): i for i, o in enumerate(ordered)}
    problems = []
    for index, obj in enumerate(ordered):
        for need in _needs(obj):
            if position.get(need, -1) > index:
                problems.append(
                    f"{obj['kind']}/{obj['metadata']['name']} is created before {need[0]}/{need[1]}, which it needs"
                )
    return problems


# ---- validation ---------------------------------------------------------------------------------


def crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from CustomResourceDefinition files."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def schema_errors(objects: Iterable[dict[str, Any]], crd_dir: Path, kube_version: str = KUBE_VERSION) -> list[str]:
    """Every object against the Kubernetes schemas (strict) or its CRD; pod templates inside
    Kubeflow objects also against the core PodTemplate schema."""
    import jsonschema
    import kubernetes_validate

    crds = crd_schemas(crd_dir)
    errors = []

    def core(doc: dict[str, Any], where: str) -> None:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")

    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in crds:
            validator = jsonschema.Draft7Validator(crds[key])
            for err in validator.iter_errors(obj):
                errors.append(f"{where}: {err.message} at {'.'.join(str(p) for p in err.absolute_path)}")
            for pod_where, template in chart.pod_templates(obj):
                core(
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template},
                    pod_where,
                )
        elif obj.get("apiVersion", "").endswith(".kubeflow.org/v1") or "kubeflow.org" in obj.get("apiVersion", ""):
            errors.append(f"{where}: no CRD for {key} in {crd_dir}")
        else:
            core(obj, where)
    return errors


def _nproc(obj: dict[str, Any], objects: list[dict[str, Any]]) -> int | None:
    """Processes per pod of a distributed job; None for plain Jobs (one process, any GPU count)."""
    if obj["kind"] == "PyTorchJob":
        value = obj["spec"].get("nprocPerNode")
        return int(value) if value is not None and str(value).isdigit() else None
    for job in objects:
        ref = job.get("spec", {}).get("runtimeRef", {})
        if job.get("kind") == "TrainJob" and ref.get("name") == obj["metadata"]["name"]:
            return job["spec"].get("trainer", {}).get("numProcPerNode")
    return None


def policy_violations(objects: list[dict[str, Any]], existing_claims: Iterable[str] = ()) -> list[str]:
    claims = {o["metadata"]["name"] for o in objects if o.get("kind") == "PersistentVolumeClaim"} | set(existing_claims)
    problems = []
    for obj in objects:
        if obj.get("kind") == "Secret":
            problems.append(f"Secret/{obj['metadata']['name']}: secrets must come from existing Secrets, not the chart")
        for where, template in chart.pod_templates(obj):
            job_name = where.rsplit(" ", 1)[-1]
            expected = job_name if job_name in TRAINER_INITIALIZERS else chart.MAIN_CONTAINER.get(obj.get("kind"))
            spec = template.get("spec", {})
            containers = spec.get("containers", [])
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            names = [c.get("name") for c in containers]
            if expected not in names:
                problems.append(f"{where}: no container named {expected!r} (found {names})")
            pod_security = spec.get("securityContext", {})
            if pod_security.get("runAsNonRoot") is not True or pod_security.get("runAsUser") == 0:
                problems.append(f"{where}: pod must run as non-root (runAsNonRoot: true, runAsUser != 0)")
            for volume in volumes.values():
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim is not None and claim not in claims:
                    problems.append(
                        f"{where}: volume {volume['name']!r} uses PVC {claim!r}, which is neither rendered nor declared existing"
                    )
            nproc = _nproc(obj, objects)
            if obj["kind"] == "PyTorchJob" and nproc is None:
                problems.append(f"{where}: spec.nprocPerNode must be a number of processes")
            for container in containers:
                cwhere = f"{where} container {container.get('name')}"
                image = container.get("image", "")
                tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
                if not tag or tag == "latest":
                    problems.append(f"{cwhere}: image {image!r} needs a fixed tag, not latest")
                security = container.get("securityContext", {})
                if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
                    problems.append(f"{cwhere}: privilege escalation must be off")
                if "ALL" not in security.get("capabilities", {}).get("drop", []):
                    problems.append(f"{cwhere}: capabilities must drop ALL")
                for added in set(security.get("capabilities", {}).get("add", [])) - BASELINE_CAPABILITIES:
                    problems.append(f"{cwhere}: Pod Security baseline forbids adding the {added} capability")
                for env in container.get("env", []):
                    if SECRET_NAME.search(env.get("name", "")) and "value" in env:
                        problems.append(f"{cwhere}: env {env['name']} holds a secret inline; use secretKeyRef")
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                for path, volume_name in mounts.items():
                    if volume_name not in volumes:
                        problems.append(f"{cwhere}: mount {path} names no volume {volume_name!r}")
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref is not None and "optional" not in ref:
                        problems.append(
                            f"{cwhere}: env {var['name']} from Secret {ref.get('name')} must say whether it is "
                            "optional (a missing required Secret holds the pod in CreateContainerConfigError)"
                        )
                if container.get("name") != expected:
                    continue
                limits = container.get("resources", {}).get("limits", {})
                gpus = next((int(v) for k, v in limits.items() if k.endswith("/gpu")), None)
                env = {e.get("name"): e.get("value") for e in container.get("env", [])}
                if any(k.startswith("rdma/") for k in limits) and env.get("NCCL_IB_DISABLE") == "1":
                    problems.append(f"{cwhere}: RDMA requested with NCCL_IB_DISABLE=1 (NCCL would not use it)")
                if template.get("metadata", {}).get("annotations", {}).get("sidecar.istio.io/inject") == "true":
                    problems.append(f"{cwhere}: an Istio sidecar keeps the pod running after training ends")
                shm = volumes.get(mounts.get("/dev/shm", ""), {}).get("emptyDir")
                if (gpus or nproc) and (not shm or shm.get("medium") != "Memory"):
                    problems.append(
                        f"{cwhere}: /dev/shm must be a memory-backed emptyDir (NCCL needs more than 64 MiB)"
                    )
                if gpus is not None and nproc is not None and gpus != nproc:
                    problems.append(f"{cwhere}: {gpus} GPUs but {nproc} processes per node")
    return problems
