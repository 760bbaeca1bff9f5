"""The Helm chart as data: its values (profiles merged over the defaults as Helm merges them), its objects rendered
by real Helm (helm-python-sdk), the checked-in manifests (`python -m medo1.chart` writes manifests/), and what a
rendered pod gets from its operator (pod templates, the env PyTorchJob and Trainer inject). The schema and policy
checks of the rendered objects live with the tests (tests/manifest_checks.py)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from medo1.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = Path(os.environ.get("MEDO1_CHART", REPO_ROOT / "helm" / "medo1"))
PROFILES_DIR = CHART_DIR.parent / "profiles"  # the image copies helm/ whole (MEDO1_CHART)
MANIFESTS_DIR = REPO_ROOT / "manifests"
RELEASE = "medo1"
NAMESPACE = "medo1"

MAIN_CONTAINER = {"PyTorchJob": "pytorch", "TrainingRuntime": "node", "ClusterTrainingRuntime": "node", "Job": "medo1"}
# Helm's InstallOrder (helm/helm pkg/release/util/kind_sorter.go, Helm 4; pkg/releaseutil/kind_sorter.go
# in Helm 3): kinds in this list are installed in this order; any other kind (a CRD instance) after all
# of them, sorted by kind name ("TrainJob" < "TrainingRuntime"), then in rendered order.
HELM_INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]
# The checked-in manifests (`kubectl apply -f` creates objects in file order): Helm's order, then the
# Kubeflow kinds with each one after what it references.
KIND_ORDER = [*HELM_INSTALL_ORDER, "ClusterTrainingRuntime", "TrainingRuntime", "TrainJob", "PyTorchJob"]


def load_profile(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"no profile {name!r} in {PROFILES_DIR}; known: {known}")
    return yaml.safe_load(path.read_text()) or {}


def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merged as Helm merges them: mappings key by key; anything else, lists too, replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def with_chart_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """`values` over the chart's values.yaml: every key the templates read is there."""
    return merge_values(chart_defaults(), values)


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _sort_key(obj: dict[str, Any]) -> tuple[int, str]:
    kind = obj.get("kind", "")
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, obj.get("metadata", {}).get("name", "")


def render_chart(
    values: dict[str, Any] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    chart_dir: Path = CHART_DIR,
) -> list[dict[str, Any]]:
    """Render with real Helm (schema checked first); objects in apply order. Values the schema refuses, or a
    template's `fail`, raise ConfigError with Helm's message on one line."""
    from helm_python.chart import Chart
    from helm_python.errors import HelmRenderError, HelmValuesError

    try:
        with Chart.load(chart_dir) as chart:
            chart.validate_schema(values or {})
            rendered = chart.render(values=values or {}, name=release, namespace=namespace, is_install=True)
    except (HelmValuesError, HelmRenderError) as exc:
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()]
        lines = lines[1:] if len(lines) > 1 and lines[0] == f"{chart_dir.name}:" else lines  # Helm's "CHART:" heading
        raise ConfigError(f"chart values refused by {chart_dir.name}: {'; '.join(lines)}") from exc
    objects = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return sorted(objects, key=_sort_key)


def manifest_text(objects: list[dict[str, Any]], profile: str) -> str:
    header = (
        f"# Rendered from helm/medo1 with helm/profiles/{profile}.yaml by `make manifests`. Do not edit:\n"
        "# change the chart or the profile and regenerate. Apply with `kubectl apply -n NAMESPACE -f`.\n"
        "# Without the chart's doctor.clusterRead grant (its ClusterRoleBinding names the namespace).\n"
    )
    return header + "---\n".join(yaml.safe_dump(obj, sort_keys=False) for obj in objects)


def write_manifests(out_dir: Path = MANIFESTS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in profiles():
        path = out_dir / f"{name}.yaml"
        values = merge_values(load_profile(name), {"doctor": {"clusterRead": False}})
        path.write_text(manifest_text(render_chart(values), name))
        written.append(path)
    return written


def pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod a job object will create."""
    kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
    if kind == "Job":
        return [(f"Job/{name}", obj.get("spec", {}).get("template", {}))]
    if kind == "PyTorchJob":
        return [
            (f"PyTorchJob/{name} {role}", spec.get("template", {}))
            for role, spec in obj.get("spec", {}).get("pytorchReplicaSpecs", {}).items()
        ]
    if kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        jobs = obj.get("spec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [])
        return [(f"{kind}/{name} {job['name']}", job["template"]["spec"]["template"]) for job in jobs]
    return []


def operator_env(job: dict[str, Any], pod_index: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The environment Training Operator v1.9 injects into a PyTorchJob pod (see KUBEFLOW.md)."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    pods = sum(int(s.get("replicas", 1)) for s in specs.values())
    nproc = str(job["spec"].get("nprocPerNode", "1"))
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_ADDR": master_addr,
        "PET_MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "PET_MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(pods * int(nproc)) if nproc.isdigit() else str(pods),
        "RANK": str(pod_index),
        "PET_NODE_RANK": str(pod_index),
        "PET_NNODES": str(pods),
        "PET_NPROC_PER_NODE": nproc,
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m medo1.chart",
        description="Render the chart for every profile in helm/profiles/ into manifests/<profile>.yaml (`make manifests`).",
    )
    parser.add_argument("--out-dir", type=Path, default=MANIFESTS_DIR, help="where the YAML files go")
    args = parser.parse_args(argv)
    for path in write_manifests(args.out_dir):
        print(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


if __name__ == "__main__":
    main()
