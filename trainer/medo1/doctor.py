"""`medo1 doctor`: checks a namespace before a run, so that a forgotten Secret or a full volume is found
in seconds instead of after hours of queued 8x H100 time. What is checked follows the chart: the
objects a profile renders (every enabled stage's job, as the launcher renders it) name the Secrets and
keys, the claims, the service accounts, the node selector and tolerations, and the Kueue queue.

Checks: the API server's version and the Kubeflow APIs the backend creates (served at the version the
chart writes, read through discovery, which every account may read), Trainer's version; each Secret and
key a pod references; each claim exists, is Bound (or Pending on a WaitForFirstConsumer StorageClass,
which is normal), has the access mode the job needs (ReadWriteMany when several nodes mount it; which
StorageClass provides it when the default does not) and, for the checkpoints claim, room for the
checkpoints the recipes keep (sized by `medo1.plan`); the caller and the launcher service accounts may
create the jobs and read what the launcher reads (SelfSubjectAccessReview, SubjectAccessReview); enough
schedulable nodes match the selector and tolerations with the GPUs (and RDMA devices) free, and their
NVIDIA driver is R580 or newer; Istio sidecar injection (warn); the Kueue LocalQueue, the ClusterQueue
behind it covering every resource the pods request, and Kueue managing the kind of job the backend creates.

A check the credentials may not make (a namespaced account reading nodes or Kueue's configuration) is
`unchecked`, with the API server's 403 and what would grant it: not a pass, and the exit code is 1
unless `--allow-unchecked`. One the caller cannot make by design (`Needs.caller_launches`: the pipeline's
step reading Kueue's namespace) is `info`, "not checkable here", with who can make it: not a failure.

Raises DoctorError (one line) for values that do not render or a cluster that cannot be reached.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from medo1 import chart
from medo1.config import ConfigError, StageError
from medo1.launch.apicalls import DEFAULT_REQUEST_TIMEOUT_S, bound_requests, describe_unanswered

log = logging.getLogger(__name__)

# The CRD behind each Kubeflow kind, at the version the chart writes (shared/crds).
CRDS = {
    "PyTorchJob": ("pytorchjobs.kubeflow.org", "v1"),
    "TrainJob": ("trainjobs.trainer.kubeflow.org", "v1alpha1"),
    "TrainingRuntime": ("trainingruntimes.trainer.kubeflow.org", "v1alpha1"),
    "ClusterTrainingRuntime": ("clustertrainingruntimes.trainer.kubeflow.org", "v1alpha1"),
}
JOB_RESOURCES = {"pytorchjob": ("kubeflow.org", "pytorchjobs"), "trainjob": ("trainer.kubeflow.org", "trainjobs")}
# What a launcher does (medo1.launch): create, follow and delete its job; read the pods, their log and
# the Warning events (the stuck-pod checks).
READS = [("list", "", "pods"), ("get", "", "pods/log"), ("list", "", "events")]
# The Kubeflow SDK reads the namespaced TrainingRuntime, then the ClusterTrainingRuntime (cluster-scoped) of the
# runtime's name before it creates a TrainJob (kubeflow 0.5 kubeflow/trainer/backends/kubernetes/backend.py get_runtime).
RUNTIME_READS = [
    ("get", "trainer.kubeflow.org", "trainingruntimes"),
    ("get", "trainer.kubeflow.org", "clustertrainingruntimes"),
]
CLUSTER_SCOPED = {"clustertrainingruntimes"}
KUEUE_GROUP = "kueue.x-k8s.io"
# v1beta2 first (v1beta1 is deprecated); v1beta1 only where it is all the server serves.
KUEUE_VERSIONS = ("v1beta2", "v1", "v1beta1")
# The Kueue Helm chart's Configuration (kubernetes-sigs/kueue charts/kueue/templates/manager/manager-config.yaml:
# <release>-manager-config, key controller_manager_config.yaml; release `kueue` in kueue-system by its docs).
KUEUE_CONFIG = ("kueue-system", "kueue-manager-config", "controller_manager_config.yaml")
# Kueue's integration names (integrations.frameworks) for the kinds a backend creates and the batch Jobs.
KUEUE_FRAMEWORKS = {
    "PyTorchJob": "kubeflow.org/pytorchjob",
    "TrainJob": "trainer.kubeflow.org/trainjob",
    "Job": "batch/job",
}
# Trainer publishes its version for the SDK (kubeflow/sdk reads this ConfigMap key); the chart's runtimes are
# written for Trainer v2.3.
TRAINER_PUBLIC = ("kubeflow-system", "kubeflow-trainer-public", "kubeflow_trainer_version")
TRAINER_MINIMUM = (2, 3)
KUBERNETES_MINIMUM = (1, 28)  # helm/medo1/Chart.yaml kubeVersion
# The NVIDIA driver's major version as GPU feature discovery labels a node (NVIDIA/k8s-device-plugin, GFD labels;
# the second is its deprecated form). CUDA 13 (the trainer image's user-space libraries) needs R580 or newer.
DRIVER_LABELS = ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major")
DRIVER_MINIMUM = 580
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
# Provisioners that make block disks, mountable ReadWriteOnce only (the GKE, EKS and AKS defaults, kind's), and
# provisioners of shared file systems that serve ReadWriteMany.
RWO_ONLY_PROVISIONERS = {
    "pd.csi.storage.gke.io",
    "kubernetes.io/gce-pd",
    "ebs.csi.aws.com",
    "kubernetes.io/aws-ebs",
    "disk.csi.azure.com",
    "kubernetes.io/azure-disk",
    "rancher.io/local-path",
    "cinder.csi.openstack.org",
}
RWX_PROVISIONERS = (
    "filestore.csi.storage.gke.io",
    "lustre.csi.storage.gke.io",
    "efs.csi.aws.com",
    "fsx.csi.aws.com",
    "file.csi.azure.com",
    "kubernetes.io/azure-file",
    "nfs.csi.k8s.io",
    "cephfs.csi.ceph.com",
)
ISTIO_OPT_OUT = "sidecar.istio.io/inject"
ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")
STORAGE_KEY = {"data": "data", "checkpoints": "checkpoints", "hf-cache": "hfCache"}


class DoctorError(StageError):
    pass


class Forbidden(DoctorError):
    """The credentials may not read something (a namespaced pipeline account reading nodes): its message is the
    API server's 403."""


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    """pass, warn, fail, unchecked (the credentials could not make the check: not a pass), or info: a check the
    caller cannot make by design (a pipeline step's namespaced account reading Kueue's namespace), said so."""
    detail: str
    fix: str = ""


def _pass(check: str, detail: str) -> Finding:
    return Finding(check, "pass", detail)


def _fail(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "fail", detail, fix)


def _warn(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "warn", detail, fix)


def _unchecked(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "unchecked", detail, fix)


def _info(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "info", detail, fix)


# What grants a read a namespaced account lacks: the team release's Role and its doctor ClusterRole.
GRANTS = (
    "the chart's launcher Role grants the namespaced reads; its doctor reader ClusterRole (doctor.clusterRead, "
    "doctor.clusterReaders for other subjects) the cluster-scoped ones; or run doctor as a cluster admin "
    "(--allow-unchecked accepts what cannot be checked)"
)


# ---- what the profile needs, from its rendering -----------------------------------------------------


@dataclass
class Needs:
    values: dict[str, Any]
    """The chart's defaults merged with the profile, values files and overrides."""
    objects: list[dict[str, Any]]
    """The release's objects and every enabled stage's job as the launcher renders it."""
    namespace: str
    caller_launches: bool = False
    """The caller is the account that launches the jobs: a pipeline step's (a profile's namespaced default-editor
    in multi-user Kubeflow), as every step of the run is. Its own access is the launcher's; no other account is
    reviewed (the pipeline does not use the chain's run Job), and Kueue's Configuration, in a namespace no
    profile's account may read, is `info` rather than unchecked."""

    @property
    def pods(self) -> list[tuple[str, dict[str, Any]]]:
        return [t for obj in self.objects for t in chart.pod_templates(obj)]

    def created(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects if o.get("kind") == kind}

    @functools.cached_property
    def checkpoints(self) -> tuple[float, str] | None:
        return checkpoint_bytes(self.values)


def profile_needs(
    *,
    profile: str | None,
    values_files: Sequence[str | Path],
    value_overrides: Sequence[str],
    namespace: str,
    caller_launches: bool = False,
) -> Needs:
    from medo1.launch import LaunchError
    from medo1.launch.chain import chain_stages
    from medo1.launch.rendering import release_values, stage_job

    try:
        values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
        merged = chart.with_chart_defaults(values)
        objects = chart.render_chart(values, namespace=namespace)
        # The jobs the launcher creates (the run Job's, the pipeline's): PyTorchJobs and batch Jobs; with the
        # trainjob backend the pods come from the ClusterTrainingRuntime each training stage runs on.
        rendered_trainjobs = any(o["kind"] == "TrainJob" for o in objects)  # the chart's own (chain off)
        for stage in chain_stages(values):
            if merged["backend"] == "trainjob" and stage in ("sft", "rl"):
                if rendered_trainjobs:
                    continue
                from medo1.launch.trainjob import DEFAULT_RUNTIME, build_trainjob, chart_runtime

                objects += [
                    chart_runtime(DEFAULT_RUNTIME[stage], values),
                    build_trainjob(stage, values, namespace=namespace),
                ]
            else:
                objects.append(
                    stage_job(
                        stage,
                        profile=profile,
                        values_files=values_files,
                        value_overrides=value_overrides,
                        namespace=namespace,
                    )
                )
    except (LaunchError, ValueError) as exc:
        raise DoctorError(f"chart values: {exc}") from None
    return Needs(merged, objects, namespace, caller_launches)


# ---- reading the cluster ------------------------------------------------------------------------------


class ClusterReader:
    """GETs, discovery and access reviews through the real kubernetes client, as camelCase dicts; None for 404;
    Forbidden (the API server's message) for 403."""

    def __init__(self, api_client: Any):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.custom_objects = client.CustomObjectsApi(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        self.authentication = client.AuthenticationV1Api(api_client)
        self.apis = client.ApisApi(api_client)
        self.version = client.VersionApi(api_client)

    @staticmethod
    def _read(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = call(*args, _preload_content=False, **kwargs)
        except HTTPError as exc:  # no answer in time (medo1.launch.apicalls bounds every call), or no connection
            host = call.__self__.api_client.configuration.host
            raise DoctorError(describe_unanswered(exc, host) or f"reading the cluster: {exc}") from None
        except ApiException as exc:
            if exc.status == 404:
                return None
            try:
                message = json.loads(exc.body)["message"]
            except (TypeError, ValueError, KeyError):
                message = f"{call.__name__}: {exc.status} {exc.reason}"
            if exc.status == 403:
                raise Forbidden(message) from None
            raise DoctorError(f"reading the cluster: {exc.status} {message}") from None
        except HTTPError as exc:
            raise DoctorError(f"reading the cluster: {exc}") from None
        return json.loads(response.data)

    @functools.cached_property
    def _groups(self) -> dict[str, list[str]]:
        """API group -> the versions the server serves (discovery: every authenticated account may read it)."""
        listing = self._read(self.apis.get_api_versions) or {}
        return {g["name"]: [v["version"] for v in g.get("versions", [])] for g in listing.get("groups", [])}

    def served_versions(self, group: str) -> list[str]:
        return self._groups.get(group, [])

    def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists `plural` at group/version (a group can be served without every kind)."""
        if version not in self.served_versions(group):
            return False
        api_client = self.apis.api_client

        def discover(**kwargs: Any) -> Any:
            return api_client.call_api(
                f"/apis/{group}/{version}", "GET", auth_settings=["BearerToken"], _return_http_data_only=True, **kwargs
            )

        discover.__name__ = f"discovery of {group}/{version}"
        listing = self._read(discover) or {}
        return any(r.get("name") == plural for r in listing.get("resources", []))

    def server_version(self) -> str:
        return (self._read(self.version.get_code) or {}).get("gitVersion", "")

    def secret(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_secret, name, namespace)

    def claim(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespace, name)

    def config_map(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_config_map, name, namespace)

    def nodes(self) -> list[dict[str, Any]]:
        return (self._read(self.core.list_node) or {}).get("items", [])

    def pods_everywhere(self) -> list[dict[str, Any]]:
        return (self._read(self.core.list_pod_for_all_namespaces) or {}).get("items", [])

    def storage_classes(self) -> list[dict[str, Any]]:
        return (self._read(self.storage.list_storage_class) or {}).get("items", [])

    def custom(
        self, group: str, version: str, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        if namespace is None:
            return self._read(self.custom_objects.get_cluster_custom_object, group, version, plural, name)
        return self._read(self.custom_objects.get_namespaced_custom_object, group, version, namespace, plural, name)

    def local_queue(self, name: str, namespace: str, version: str = "v1beta2") -> dict[str, Any] | None:
        return self.custom(KUEUE_GROUP, version, "localqueues", name, namespace)

    def whoami(self) -> str | None:
        """The caller's user name (SelfSubjectReview, Kubernetes 1.28+); None where it cannot be asked."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            review = self._read(self.authentication.create_self_subject_review, body)
        except DoctorError:
            return None
        return (((review or {}).get("status") or {}).get("userInfo") or {}).get("username")

    def allowed(
        self, verb: str, group: str, resource: str, namespace: str, user: str | None = None, name: str = ""
    ) -> bool:
        """SelfSubjectAccessReview (user None: whoever runs this) or SubjectAccessReview about `user`; a
        cluster-scoped resource is asked without a namespace; `name` for a grant limited to some names."""
        resource, _, subresource = resource.partition("/")
        attributes = {"verb": verb, "group": group, "resource": resource}
        if resource not in CLUSTER_SCOPED:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        if subresource:
            attributes["subresource"] = subresource
        if user is None:
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            review = self._read(self.authorization.create_self_subject_access_review, body)
        else:
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {"resourceAttributes": attributes, "user": user},
            }
            review = self._read(self.authorization.create_subject_access_review, body)
        return bool(((review or {}).get("status") or {}).get("allowed"))


# ---- the checks -----------------------------------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    """`v1.36.2`, `v2.3.0-rc.1` -> (1, 36, 2), (2, 3, 0)."""
    numbers = []
    for part in text.lstrip("v").split("-")[0].split("+")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def check_versions(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """The API server's version (the chart's kubeVersion) and, for the trainjob backend, Trainer's."""
    server = cluster.server_version()
    findings = []
    if version_tuple(server)[:2] >= KUBERNETES_MINIMUM:
        findings.append(_pass("Kubernetes", f"{server} (the chart needs {'.'.join(map(str, KUBERNETES_MINIMUM))}+)"))
    else:
        findings.append(
            _fail(
                "Kubernetes",
                f"{server or 'unknown'}: the chart needs {'.'.join(map(str, KUBERNETES_MINIMUM))}+",
                "upgrade the cluster",
            )
        )
    if needs.values["backend"] != "trainjob" and not needs.created("TrainJob"):
        return findings
    namespace, name, key = TRAINER_PUBLIC
    check = "Kubeflow Trainer"
    try:
        published = cluster.config_map(name, namespace)
    except Forbidden as exc:
        return [*findings, _unchecked(check, f"its version cannot be read: {exc}", GRANTS)]
    version = ((published or {}).get("data") or {}).get(key)
    minimum = "v" + ".".join(map(str, TRAINER_MINIMUM))
    if not version:
        findings.append(
            _warn(
                check,
                f"no version published ({namespace}/{name} key {key}); the runtimes need {minimum}+",
                f"check the Trainer install: kubectl -n {namespace} get deploy -o wide",
            )
        )
    elif version_tuple(version)[:2] < TRAINER_MINIMUM:
        findings.append(
            _fail(check, f"{version}: the chart's runtimes need {minimum}+", f"upgrade Kubeflow Trainer to {minimum}+")
        )
    else:
        findings.append(_pass(check, f"{version} (the runtimes need {minimum}+)"))
    return findings


def check_crds(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """Each Kubeflow API the jobs use, served at the chart's version: read through discovery (no RBAC needed)."""
    kinds = {"PyTorchJob"} if needs.values["backend"] == "pytorchjob" else {"TrainJob"}
    kinds |= {o["kind"] for o in needs.objects if o.get("kind") in CRDS and o["kind"] != "ClusterTrainingRuntime"}
    kinds |= {
        o["spec"]["runtimeRef"].get("kind", "ClusterTrainingRuntime")
        for o in needs.objects
        if o.get("kind") == "TrainJob"
    }
    findings = []
    for kind in sorted(kinds):
        name, version = CRDS[kind]
        group = name.split(".", 1)[1]
        check = f"CRD {name}"
        served = cluster.served_versions(group)
        if not served or (version in served and not cluster.serves(group, version, name.split(".", 1)[0])):
            install = (
                "the Kubeflow Training Operator v1 (kubectl apply --server-side -k "
                '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.3")'
                if kind == "PyTorchJob"
                else "Kubeflow Trainer v2 (its manifests or Helm chart)"
            )
            findings.append(_fail(check, "not installed", f"install {install}, or ask the cluster admin to"))
        elif version in served:
            findings.append(_pass(check, f"{version} served"))
        else:
            findings.append(
                _fail(
                    check,
                    f"{version} not served (served: {', '.join(served) or 'none'})",
                    f"upgrade the operator to one that serves {kind} {version}",
                )
            )
    return findings


def secret_references(needs: Needs) -> dict[tuple[str, str | None], bool]:
    """(Secret, key or None for the whole Secret) -> optional, from every pod template's env, envFrom,
    volumes and imagePullSecrets."""
    refs: dict[tuple[str, str | None], bool] = {}

    def add(name: str, key: str | None, optional: bool) -> None:
        refs[(name, key)] = refs.get((name, key), True) and optional

    for _, template in needs.pods:
        spec = template.get("spec", {})
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    add(ref["name"], ref["key"], bool(ref.get("optional")))
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    add(source["secretRef"]["name"], None, bool(source["secretRef"].get("optional")))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                add(volume["secret"]["secretName"], None, bool(volume["secret"].get("optional")))
        for pull in spec.get("imagePullSecrets", []):
            add(pull["name"], None, False)
    return refs


def check_secrets(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    findings = []
    created = needs.created("Secret")
    for (name, key), optional in sorted(
        secret_references(needs).items(), key=lambda item: (item[0][0], item[0][1] or "")
    ):
        check = f"Secret {name}" + (f" key {key}" if key else "")
        secret = cluster.secret(name, needs.namespace) or created.get(name)
        keys = set((secret or {}).get("data") or {}) | set((secret or {}).get("stringData") or {})
        missing = (
            "the Secret does not exist" if secret is None else (f"no key {key}" if key and key not in keys else "")
        )
        if not missing:
            findings.append(_pass(check, "present"))
            continue
        fix = (
            f"kubectl -n {needs.namespace} create secret generic {name} --from-literal={key or 'KEY'}=..."
            if secret is None
            else f"kubectl -n {needs.namespace} patch secret {name} with the key {key}, "
            f"or point the chart's secrets.* entry at the key that holds it"
        )
        if optional:
            findings.append(_warn(check, f"{missing} (optional: the variable is left unset)", fix))
        else:
            findings.append(_fail(check, f"{missing}; the pod would stay in CreateContainerConfigError", fix))
    return findings


def claim_names(needs: Needs) -> dict[str, str]:
    """Claim name -> the volume name the pods mount it as (data, checkpoints, hf-cache)."""
    claims = {}
    for _, template in needs.pods:
        for volume in template.get("spec", {}).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claims[volume["persistentVolumeClaim"]["claimName"]] = volume["name"]
    return claims


def checkpoint_bytes(values: dict[str, Any]) -> tuple[float, str] | None:
    """Bytes the enabled training stages keep on the checkpoints volume (output.keep checkpoints with
    optimizer state, plus the export), from `medo1.plan`; None when a recipe cannot be sized here."""
    from medo1.plan.stages import cluster_from_values, local_recipe, plan_stage

    total, parts, exports = 0.0, [], {}
    try:
        cluster = cluster_from_values(values)
        for name in ("sft", "rl"):
            stage = values["stages"][name]
            if not stage.get("enabled"):
                continue
            plan = plan_stage(
                str(local_recipe(stage["recipe"])),
                cluster=cluster,
                overrides=list(stage.get("set", [])),
                stage=name,
                exports=exports,
                check_fixes=False,
            )
            if plan.export_dir:
                exports[plan.export_dir] = plan.model.name
            total += plan.checkpoint["total"]
            parts.append(
                f"{name} {plan.checkpoint['kept']} x {plan.checkpoint['per_checkpoint'] / 2**30:.0f} GiB "
                f"+ export {plan.checkpoint['export'] / 2**30:.0f} GiB"
            )
    except (ConfigError, ValueError, OSError) as exc:
        log.info("could not size the checkpoints: %s", exc)
        return None
    return (total, "; ".join(parts)) if parts else None


def quantity_bytes(quantity: str) -> float:
    from medo1.plan.stages import parse_memory

    return parse_memory(quantity) * 2**30


def storage_class_of(spec: dict[str, Any], classes: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """(the class name a claim gets, the StorageClass or None when there is none by that name): its own
    storageClassName, else the cluster's default class; "" names none (a statically provisioned volume)."""
    name = spec.get("storageClassName")
    if name is None:
        default = next(
            (c for c in classes if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true"), None
        )
        return (default["metadata"]["name"], default) if default else ("", None)
    return name, next((c for c in classes if c["metadata"]["name"] == name), None)


def serves_read_write_many(storage_class: dict[str, Any]) -> bool:
    return storage_class.get("provisioner", "").endswith(RWX_PROVISIONERS)


def read_write_many_advice(key: str, nodes: int, classes: list[dict[str, Any]]) -> str:
    """Which StorageClass and access mode to use for storage.KEY when the one it gets gives ReadWriteOnce only."""
    shared = [c for c in classes if serves_read_write_many(c)]
    if shared:
        names = ", ".join(f"{c['metadata']['name']} ({c['provisioner']})" for c in shared)
        return (
            f"set storage.{key}.storageClass={shared[0]['metadata']['name']} and keep accessMode ReadWriteMany "
            f"(ReadWriteMany classes here: {names})"
        )
    if nodes == 1:
        # One training node is not one mounting node: the chain's run pod, the eval and upload Jobs and the
        # pipeline's steps mount the same claims from wherever they are scheduled (a ReadWriteOnce volume attached
        # to another node fails them with Multi-Attach).
        return (
            "install a ReadWriteMany StorageClass (Filestore, EFS, Azure Files, NFS, CephFS) and set "
            f"storage.{key}.storageClass to it; storage.{key}.accessMode=ReadWriteOnce works only if every pod "
            "that mounts the volume (training, the chain's run pod, eval and upload, pipeline steps) runs on "
            "that one node"
        )
    return (
        f"install a ReadWriteMany StorageClass (Filestore, EFS, FSx for Lustre, Azure Files, NFS, CephFS) and set "
        f"storage.{key}.storageClass to it: {nodes} nodes mount the volume at once"
    )


def check_claims(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    nodes = int(needs.values["cluster"]["nodes"])
    findings = []
    created = needs.created("PersistentVolumeClaim")
    try:
        classes, classes_unread = cluster.storage_classes(), ""
    except Forbidden as exc:
        classes, classes_unread = [], str(exc)
    for claim_name, volume in sorted(claim_names(needs).items()):
        key = STORAGE_KEY.get(volume, volume)
        check = f"PVC {claim_name}"
        claim = cluster.claim(claim_name, needs.namespace)
        unbound = claim is None or (claim.get("status") or {}).get("phase", "Pending") != "Bound"
        if claim is None and claim_name not in created:
            findings.append(
                _fail(
                    check,
                    "does not exist",
                    f"create it, or set storage.{key}.existingClaim to one that "
                    "exists (or leave it empty: the chart creates one)",
                )
            )
            continue
        spec = created[claim_name]["spec"] if claim is None else claim["spec"]
        class_name, storage_class = storage_class_of(spec, classes)
        modes, size = spec.get("accessModes", []), spec["resources"]["requests"]["storage"]
        if claim is None:
            where = "the chart creates it"
        elif not unbound:
            modes = claim["status"].get("accessModes") or modes
            size, where = claim["status"].get("capacity", {}).get("storage", "0"), "Bound"
        else:
            phase = (claim.get("status") or {}).get("phase", "Pending")
            if phase == "Pending" and classes_unread:
                findings.append(
                    _unchecked(
                        check,
                        "Pending; normal only if its StorageClass binds WaitForFirstConsumer, "
                        f"which cannot be read: {classes_unread}",
                        GRANTS,
                    )
                )
                continue
            if (
                phase == "Pending"
                and storage_class
                and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer"
            ):
                where = f"Pending until the first pod mounts it (StorageClass {class_name} binds WaitForFirstConsumer): normal"
            else:
                why = (
                    f"StorageClass {class_name} binds Immediately, so it should have its volume by now"
                    if storage_class
                    else f"its StorageClass {class_name} does not exist"
                    if class_name
                    else "no StorageClass provisions it and no PersistentVolume matches it"
                )
                findings.append(
                    _fail(
                        check,
                        f"{phase}, not Bound: {why}",
                        f"kubectl -n {needs.namespace} describe pvc "
                        f"{claim_name}: its StorageClass must provision it (or a PV must match it)",
                    )
                )
                continue
        if unbound and classes_unread and "ReadWriteMany" in modes:
            findings.append(
                _unchecked(
                    check,
                    f"{where}; whether its StorageClass serves ReadWriteMany cannot be read: {classes_unread}",
                    GRANTS,
                )
            )
            continue
        if (
            unbound
            and "ReadWriteMany" in modes
            and storage_class
            and storage_class.get("provisioner") in RWO_ONLY_PROVISIONERS
        ):
            findings.append(
                _fail(
                    check,
                    f"asks ReadWriteMany of StorageClass {class_name} ({storage_class['provisioner']}), "
                    "which provisions ReadWriteOnce disks only: it would stay Pending",
                    read_write_many_advice(key, nodes, classes),
                )
            )
            continue
        if nodes > 1 and "ReadWriteMany" not in modes:
            findings.append(
                _fail(
                    check,
                    f"{', '.join(modes)}: {nodes} nodes mount it, which needs ReadWriteMany",
                    f"use a ReadWriteMany StorageClass for storage.{key}: "
                    + read_write_many_advice(key, nodes, classes),
                )
            )
            continue
        if volume == "checkpoints":
            needed = needs.checkpoints
            if needed and quantity_bytes(size) < needed[0]:
                findings.append(
                    _fail(
                        check,
                        f"{size} holds less than the {needed[0] / 2**30:.0f} GiB the recipes keep ({needed[1]})",
                        f"a claim of at least {needed[0] / 2**40 * 1.2:.1f}Ti (20% margin), or lower output.keep",
                    )
                )
                continue
            if needed is None:
                findings.append(
                    _warn(
                        check,
                        f"{size}, {', '.join(modes)}, {where}; the checkpoint size could not be computed here",
                        "run `medo1 plan` with the recipe's model to size it",
                    )
                )
                continue
            where += f"; holds the {needed[0] / 2**30:.0f} GiB of checkpoints the recipes keep"
        findings.append(_pass(check, f"{size}, {', '.join(modes)}, {where}"))
    return findings


def launcher_accounts(needs: Needs) -> list[str]:
    """The service accounts that create jobs: the chart's launcher (the run Job) and the pipeline's."""
    run_jobs = [o for o in needs.objects if o.get("kind") == "Job" and o["metadata"]["name"].endswith("-run")]
    accounts = [job["spec"]["template"]["spec"].get("serviceAccountName", "default") for job in run_jobs]
    accounts += needs.values["rbac"]["pipelineServiceAccounts"]
    return list(dict.fromkeys(accounts))


def chart_grants(needs: Needs, account: str) -> bool:
    """Whether the rendered Role and RoleBinding give `account` the launcher's rules on install."""
    bound = any(
        s.get("kind") == "ServiceAccount" and s.get("name") == account
        for binding in needs.created("RoleBinding").values()
        for s in binding.get("subjects", [])
    )
    return bound and bool(needs.created("Role"))


def check_access(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """What you and each launcher account may do. Your own answers (SelfSubjectAccessReview, always allowed) are
    kept when asking about another account (SubjectAccessReview, cluster-scoped) is forbidden: that account is then
    unchecked, unless you are it."""
    backend = needs.values["backend"]
    group, jobs = JOB_RESOURCES[backend]
    wanted = [
        (verb, api_group, resource, "")
        for verb, api_group, resource in [
            ("create", group, jobs),
            ("get", group, jobs),
            ("delete", group, jobs),
            *READS,
        ]
    ]
    if backend == "trainjob":
        runtimes = sorted({o["spec"]["runtimeRef"]["name"] for o in needs.objects if o.get("kind") == "TrainJob"})
        wanted += [
            (verb, api_group, resource, runtime) for runtime in runtimes for verb, api_group, resource in RUNTIME_READS
        ]
    me = cluster.whoami()
    if needs.caller_launches:
        account = me.rsplit(":", 1)[1] if me and me.startswith("system:serviceaccount:") else None
        accounts = {me: account} if account else {}
    else:
        accounts = {f"system:serviceaccount:{needs.namespace}:{a}": a for a in launcher_accounts(needs)}
    subjects: list[tuple[str, str | None]] = [
        (f"you (ServiceAccount {accounts[me]})" if me in accounts else "you (the current credentials)", None)
    ]
    subjects += [(f"ServiceAccount {a}", user) for user, a in accounts.items() if user != me]
    findings = []
    for who, user in subjects:
        check = f"access {who}"
        try:
            denied = [
                f"{verb} {resource}" + (f" {name}" if name else "")
                for verb, api_group, resource, name in wanted
                if not cluster.allowed(verb, api_group, resource, needs.namespace, user, name)
            ]
        except Forbidden as exc:
            findings.append(
                _unchecked(
                    check,
                    f"may not ask what it may do (SubjectAccessReview): {exc}",
                    "run doctor as that account (medo1 doctor in its pod, the pipeline's first step "
                    "does) or as an admin",
                )
            )
            continue
        if not denied:
            findings.append(_pass(check, f"may {', '.join(dict.fromkeys(f'{v} {r}' for v, _, r, _ in wanted))}"))
        elif user and chart_grants(needs, user.rsplit(":", 1)[1]):
            findings.append(
                _warn(
                    check,
                    f"may not yet {', '.join(denied)}; the chart's Role grants it on install",
                    "install the chart (helm install) before launching",
                )
            )
        else:
            fix = (
                f"bind a Role with those verbs to it (the chart's rbac.create, rbac.pipelineServiceAccounts), "
                f"or kubectl -n {needs.namespace} create rolebinding ... --role=<release>-launcher"
            )
            if any(resource == "clustertrainingruntimes" for resource in (d.split()[1] for d in denied)):
                fix += "; get on clustertrainingruntimes comes from the platform install (runtimes.readers)"
            findings.append(_fail(check, f"may not {', '.join(denied)} in {needs.namespace}", fix))
    return findings


def tolerates(taint: dict[str, Any], tolerations: Iterable[dict[str, Any]]) -> bool:
    """Kubernetes' toleration matching (k8s.io/api core/v1 Toleration.ToleratesTaint)."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def check_nodes(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    shape = needs.values["cluster"]
    nodes_wanted, gpus, resource = int(shape["nodes"]), int(shape["gpusPerNode"]), shape["gpuResource"]
    selector, tolerations = shape.get("nodeSelector") or {}, shape.get("tolerations") or []
    rdma = shape["rdma"] if shape["rdma"]["enabled"] else None
    check = f"nodes with {gpus} free {resource}" + (f" and {rdma['count']} {rdma['resource']}" if rdma else "")
    if gpus == 0:
        return [_pass("nodes", "CPU-only profile: no GPU nodes needed")]
    used: dict[str, dict[str, float]] = {}
    try:
        pods = cluster.pods_everywhere()
    except Forbidden:
        pods, check = [], check.replace(" free ", " allocatable ")  # pods in use elsewhere cannot be seen
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") not in ACTIVE_POD_PHASES:
            continue
        for container in pod["spec"].get("containers", []):
            resources = container.get("resources") or {}
            requests = resources.get("requests") or resources.get("limits") or {}
            for name, amount in requests.items():
                used.setdefault(node, {}).setdefault(name, 0.0)
                used[node][name] += float(amount) if str(amount).isdigit() else 0.0
    matching, fitting, reasons, drivers = 0, [], [], {}
    for node in cluster.nodes():
        name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
        if node.get("spec", {}).get("unschedulable") or any(labels.get(k) != v for k, v in selector.items()):
            continue
        taints = [t for t in node.get("spec", {}).get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
        if not all(tolerates(t, tolerations) for t in taints):
            reasons.append(f"{name}: untolerated taint")
            continue
        matching += 1
        drivers[name] = next((labels[label] for label in DRIVER_LABELS if labels.get(label)), None)
        allocatable = node.get("status", {}).get("allocatable") or {}
        free = int(allocatable.get(resource, 0)) - used.get(name, {}).get(resource, 0)
        if free < gpus:
            reasons.append(f"{name}: {free:.0f} free {resource}")
            continue
        rdma_free = (
            int(allocatable.get(rdma["resource"], 0)) - used.get(name, {}).get(rdma["resource"], 0) if rdma else 0
        )
        if rdma and rdma_free < int(rdma["count"]):
            reasons.append(f"{name}: no free {rdma['resource']}")
            continue
        fitting.append(name)
    detail = f"{len(fitting)} of {matching} nodes matching the selector and tolerations fit ({nodes_wanted} needed)"
    driver = check_driver(drivers)
    if len(fitting) >= nodes_wanted:
        return [_pass(check, detail), *driver]
    fix = (
        "wait for GPUs to free up (with kueue.queueName the job queues for them), lower cluster.nodes or "
        "cluster.gpusPerNode, or fix cluster.nodeSelector / tolerations"
    )
    return [_fail(check, detail + (f": {'; '.join(reasons[:6])}" if reasons else ""), fix), *driver]


def check_driver(drivers: dict[str, str | None]) -> list[Finding]:
    """The NVIDIA driver of the GPU nodes the job may land on, from GPU feature discovery's labels: the image's
    CUDA 13 libraries need R580 or newer."""
    check = "NVIDIA driver"
    if not drivers:
        return []
    unknown = sorted(name for name, major in drivers.items() if not (major or "").isdigit())
    old = sorted(
        f"{name} R{major}" for name, major in drivers.items() if (major or "").isdigit() and int(major) < DRIVER_MINIMUM
    )
    if old:
        return [
            _fail(
                check,
                f"{', '.join(old)}: the trainer image's CUDA 13 needs R{DRIVER_MINIMUM} or newer",
                "upgrade the driver on those nodes (GPU operator: driver.version), or keep the job off them "
                "with cluster.nodeSelector",
            )
        ]
    if unknown:
        return [
            _unchecked(
                check,
                f"no {DRIVER_LABELS[0]} label on {', '.join(unknown)} (GPU feature discovery does not run "
                f"there): the trainer image's CUDA 13 needs R{DRIVER_MINIMUM} or newer",
                "nvidia-smi on a node shows the driver; the NVIDIA GPU operator labels nodes with it",
            )
        ]
    majors = sorted({f"R{major}" for major in drivers.values()})
    return [_pass(check, f"{', '.join(majors)} on {len(drivers)} node(s) (CUDA 13 needs R{DRIVER_MINIMUM}+)")]


def check_istio(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    namespace = cluster.namespace(needs.namespace)
    if namespace is None:
        return [_fail(f"namespace {needs.namespace}", "does not exist", f"kubectl create namespace {needs.namespace}")]
    labels = namespace["metadata"].get("labels") or {}
    injected = labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels
    if not injected:
        return [_pass("Istio injection", f"off in {needs.namespace}")]
    opted_out = all(
        str(((t.get("metadata") or {}).get("labels") or {}).get(ISTIO_OPT_OUT, "")).lower() == "false"
        for _, t in needs.pods
    )
    if opted_out:
        return [_pass("Istio injection", f'on in {needs.namespace}; every pod opts out ({ISTIO_OPT_OUT}: "false")')]
    return [
        _warn(
            "Istio injection",
            f"on in {needs.namespace} and some pods take the sidecar: it keeps a finished "
            "pod running and proxies the rendezvous traffic",
            f'keep podLabels / podAnnotations {ISTIO_OPT_OUT}: "false" (the chart\'s default)',
        )
    ]


def quantity(value: Any) -> float:
    """A Kubernetes quantity (`80`, `500m`, `1000Gi`, `1.5T`) as a number of base units."""
    text = str(value)
    for suffix, factor in (
        ("Ki", 2**10),
        ("Mi", 2**20),
        ("Gi", 2**30),
        ("Ti", 2**40),
        ("Pi", 2**50),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def workload_requests(needs: Needs) -> dict[str, float]:
    """What one training job asks Kueue for: every node pod's requests times cluster.nodes (cpu, memory, the GPUs
    and the RDMA devices, as the chart renders them)."""
    shape = needs.values["cluster"]
    per_pod = {"cpu": quantity(shape["cpu"]), "memory": quantity(shape["memory"])}
    if int(shape["gpusPerNode"]) > 0:
        per_pod[shape["gpuResource"]] = float(shape["gpusPerNode"])
    if shape["rdma"]["enabled"]:
        per_pod[shape["rdma"]["resource"]] = float(shape["rdma"]["count"])
    return {name: amount * int(shape["nodes"]) for name, amount in per_pod.items()}


def kueue_managed_kinds(needs: Needs) -> list[str]:
    """The kinds of job the run creates with the queue label: the backend's training jobs, and batch Jobs for
    translate / eval / upload."""
    kinds = ["TrainJob" if needs.values["backend"] == "trainjob" else "PyTorchJob"]
    if any(job.get("enabled") for job in needs.values["jobs"].values()):
        kinds.append("Job")
    return kinds


def check_kueue(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    queue = needs.values["kueue"]["queueName"]
    if not queue:
        return [_pass("Kueue LocalQueue", "not used (kueue.queueName empty)")]
    check = f"Kueue LocalQueue {queue}"
    served = cluster.served_versions(KUEUE_GROUP)
    version = next((v for v in KUEUE_VERSIONS if v in served), None)
    if version is None:
        return [_fail(check, "Kueue is not installed", "install Kueue, or leave kueue.queueName empty")]
    try:
        local_queue = cluster.local_queue(queue, needs.namespace, version)
    except Forbidden as exc:
        return [_unchecked(check, f"cannot be read: {exc}", GRANTS)]
    if local_queue is None:
        return [
            _fail(
                check,
                f"no LocalQueue {queue} in {needs.namespace}",
                f"create a LocalQueue {queue} in {needs.namespace} pointing at a ClusterQueue with GPU quota, "
                "or set kueue.queueName to an existing one (kubectl get localqueues)",
            )
        ]
    cluster_queue_name = local_queue.get("spec", {}).get("clusterQueue", "")
    findings = [_pass(check, f"exists ({KUEUE_GROUP}/{version}), ClusterQueue {cluster_queue_name}")]
    findings += check_cluster_queue(cluster, needs, version, cluster_queue_name)
    findings += check_kueue_integrations(cluster, needs)
    return findings


def check_cluster_queue(cluster: ClusterReader, needs: Needs, version: str, name: str) -> list[Finding]:
    """The ClusterQueue covers every resource the pods request (one that is not covered leaves the workload
    inadmissible forever) and one flavor of each resource group has the quota for the whole job
    (kubernetes-sigs/kueue apis/kueue/v1beta2/clusterqueue_types.go: resourceGroups[].coveredResources,
    flavors[].resources[].nominalQuota)."""
    check = f"Kueue ClusterQueue {name}"
    try:
        cluster_queue = cluster.custom(KUEUE_GROUP, version, "clusterqueues", name)
    except Forbidden as exc:
        return [
            _unchecked(check, f"cannot be read, so whether it covers the job's resources is unknown: {exc}", GRANTS)
        ]
    if cluster_queue is None:
        return [_fail(check, "does not exist: the LocalQueue points at nothing", "ask the Kueue admin to create it")]
    needed = workload_requests(needs)
    groups = cluster_queue.get("spec", {}).get("resourceGroups") or []
    covered = {r for group in groups for r in group.get("coveredResources", [])}
    missing = [r for r in needed if r not in covered]
    if missing:
        return [
            _fail(
                check,
                f"does not cover {', '.join(missing)}, which the pods request: Kueue never admits the job",
                f"add {', '.join(missing)} to a resourceGroup's coveredResources (with quota in its flavors)",
            )
        ]
    short = []
    for group in groups:
        wanted = {r: needed[r] for r in group.get("coveredResources", []) if r in needed}
        if not wanted:
            continue
        quotas = [
            {r["name"]: quantity(r.get("nominalQuota", 0)) for r in flavor.get("resources", [])}
            for flavor in group.get("flavors", [])
        ]
        if not any(all(quota.get(r, 0) >= amount for r, amount in wanted.items()) for quota in quotas):
            short.append(
                ", ".join(
                    f"{r} {amount / 2**30:g}Gi" if r == "memory" else f"{r} {amount:g}" for r, amount in wanted.items()
                )
            )
    if short:
        borrowing = cluster_queue["spec"].get("cohortName")
        detail = f"no flavor's nominal quota holds the job ({'; '.join(short)})"
        fix = "raise the nominalQuota of a flavor, or lower cluster.nodes / the pod's requests"
        if borrowing:
            return [_warn(check, f"{detail}; it may borrow from cohort {borrowing}", fix)]
        return [_fail(check, f"{detail}: Kueue never admits it", fix)]
    return [_pass(check, f"covers {', '.join(needed)} with quota for the whole job")]


def check_kueue_integrations(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """Kueue manages only the kinds its Configuration lists (integrations.frameworks): for any other the queue label
    does nothing (no quota, no gang admission). Kueue turned its PyTorchJob integration off by default in mid-2026
    (kubernetes-sigs/kueue PR 12606, charts/kueue/values.yaml); trainer.kubeflow.org/trainjob stays on."""
    namespace, name, key = KUEUE_CONFIG
    check = "Kueue integrations"
    wanted = [KUEUE_FRAMEWORKS[kind] for kind in kueue_managed_kinds(needs)]
    try:
        config_map = cluster.config_map(name, namespace)
    except Forbidden as exc:
        if needs.caller_launches:
            return [
                _info(
                    check,
                    f"not checkable here: Kueue's Configuration is in {namespace}, which a pipeline step's account "
                    f"(its grants are its own namespace's) may not read, so whether Kueue manages "
                    f"{', '.join(wanted)} is not known: {exc}",
                    f"ask your Kueue admin to run medo1 doctor --namespace {needs.namespace} with this run's "
                    f"profile (or kubectl -n {namespace} get configmap {name}: integrations.frameworks)",
                )
            ]
        return [
            _unchecked(
                check,
                f"Kueue's Configuration cannot be read, so whether it manages {', '.join(wanted)} is unknown: {exc}",
                f"ask the Kueue admin (kubectl -n {namespace} get configmap {name}) "
                "whether integrations.frameworks lists them, or run doctor as an admin",
            )
        ]
    if config_map is None or key not in (config_map.get("data") or {}):
        return [
            _unchecked(
                check,
                f"no {namespace}/{name} ({key}): Kueue's Configuration is elsewhere here, so whether it "
                f"manages {', '.join(wanted)} is unknown",
                "ask the Kueue admin for its integrations.frameworks",
            )
        ]
    try:
        configuration = yaml.safe_load(config_map["data"][key]) or {}
    except yaml.YAMLError as exc:
        return [
            _unchecked(check, f"{namespace}/{name} {key} is not YAML: {exc}".splitlines()[0], "ask the Kueue admin")
        ]
    enabled = set((configuration.get("integrations") or {}).get("frameworks") or [])
    off = [framework for framework in wanted if framework not in enabled]
    if not off:
        return [_pass(check, f"Kueue manages {', '.join(wanted)}")]
    fix = "ask the Kueue admin to add them to integrations.frameworks"
    if KUEUE_FRAMEWORKS["PyTorchJob"] in off:
        fix = (
            f"use backend: trainjob (Kubeflow Trainer v2 TrainJobs, which Kueue manages as "
            f"{KUEUE_FRAMEWORKS['TrainJob']}; the h100-2nodes profile does), or {fix}"
        )
    return [
        _fail(
            check,
            f"Kueue does not manage {', '.join(off)} (not in integrations.frameworks): the queue label "
            "does nothing for them (no quota, no gang admission)",
            fix,
        )
    ]


CHECKS = [check_versions, check_crds, check_secrets, check_claims, check_access, check_nodes, check_istio, check_kueue]


def diagnose(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """Every check; one the credentials may not make is `unchecked`, with the API server's 403: not a pass."""
    findings = []
    for check in CHECKS:
        try:
            findings += check(cluster, needs)
        except Forbidden as exc:
            name = check.__name__.removeprefix("check_")
            findings.append(_unchecked(name, f"cannot be read: {exc}", GRANTS))
    return findings


STATUSES = ("pass", "warn", "fail", "unchecked", "info")


def table(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    status_width = max(len(s) for s in STATUSES)
    lines = [f"{'check':<{width}}  {'status':<{status_width}}  detail"]
    for f in findings:
        lines.append(f"{f.check:<{width}}  {f.status:<{status_width}}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<{width}}  {'':<{status_width}}  fix: {f.fix}")
    counts = {status: sum(f.status == status for f in findings) for status in STATUSES}
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)


def api_client() -> Any:
    """The in-cluster config inside a pod, else the kubeconfig (as the Kubeflow SDK loads it)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise DoctorError(f"no Kubernetes configuration: {exc}") from None
    return client.ApiClient()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="chart values from helm/profiles/NAME.yaml")
    parser.add_argument(
        "--values", action="append", default=[], metavar="FILE", help="chart values file, after the profile"
    )
    parser.add_argument(
        "--value", action="append", default=[], metavar="KEY=VALUE", help="override a chart value (YAML-typed)"
    )
    parser.add_argument(
        "--namespace", help="default: the pod's service-account namespace, else the kubeconfig context's"
    )
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="how long any Kubernetes API call waits for an answer",
    )
    parser.add_argument(
        "--allow-unchecked",
        action="store_true",
        help="exit 0 although some checks could not be made with these credentials (none may fail)",
    )


def exit_code(findings: list[Finding], allow_unchecked: bool = False) -> int:
    """1 when a check fails, or one could not be made and that is not allowed; else 0."""
    failed = any(f.status == "fail" for f in findings)
    return 1 if failed or (not allow_unchecked and any(f.status == "unchecked" for f in findings)) else 0


def run(args: argparse.Namespace, client: Any = None) -> int:
    """Exit code 1 when any check fails or, without --allow-unchecked, could not be made."""
    if args.profile:
        chart.load_profile(args.profile)  # a profile that is not there is the first thing to say, before any cluster
    client = bound_requests(client or api_client(), getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT_S))
    namespace = args.namespace
    if not namespace:
        from medo1.launch.kubernetes import default_namespace

        namespace = default_namespace()
    needs = profile_needs(
        profile=args.profile, values_files=args.values, value_overrides=args.value, namespace=namespace
    )
    from urllib3.exceptions import HTTPError

    try:
        findings = diagnose(ClusterReader(client), needs)
    except (HTTPError, OSError) as exc:  # a closed port, a refused or reset connection, a name that does not resolve
        host = getattr(getattr(client, "configuration", None), "host", "the API server")
        reason = getattr(exc, "reason", None) or exc
        raise DoctorError(
            f"cannot reach the Kubernetes API server at {host}: {type(reason).__name__}: "
            f"{str(reason).split(': ', 1)[-1]}"
        ) from None
    if args.json:
        print(json.dumps({"namespace": namespace, "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        print(table(findings))
    return exit_code(findings, getattr(args, "allow_unchecked", False))
