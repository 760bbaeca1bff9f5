"""`medo1 doctor`: checks a namespace before a run, so that a forgotten Secret or a full volume is found
in seconds instead of after hours of queued 8x H100 time. What is checked follows the chart: the
objects a profile renders (every enabled stage's job, as the launcher renders it) name the Secrets and
keys, the claims, the service accounts, the node selector and tolerations, and the Kueue queue.

Checks: the Kubeflow CRDs the backend creates (served at the version the chart writes); each Secret
and key a pod references; each claim exists, is Bound, has the access mode the job needs (ReadWriteMany
when several nodes mount it) and, for the checkpoints claim, room for the checkpoints the recipes keep
(sized by `medo1.plan`); the caller and the launcher service accounts may create the jobs and read
pods, logs and events (SelfSubjectAccessReview, SubjectAccessReview); enough schedulable nodes match
the selector and tolerations with the GPUs (and RDMA devices) free; Istio sidecar injection (warn); the
Kueue LocalQueue.

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

from medo1 import k8s
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
KUEUE_QUEUE = ("kueue.x-k8s.io", "v1beta1", "localqueues")
ISTIO_OPT_OUT = "sidecar.istio.io/inject"
ACTIVE_POD_PHASES = ("Pending", "Running", "Unknown")
STORAGE_KEY = {"data": "data", "checkpoints": "checkpoints", "hf-cache": "hfCache"}


class DoctorError(StageError):
    pass


class Forbidden(DoctorError):
    """The credentials may not read something (a namespaced pipeline account reading nodes or CRDs)."""


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    """pass, warn or fail."""
    detail: str
    fix: str = ""


def _pass(check: str, detail: str) -> Finding:
    return Finding(check, "pass", detail)


def _fail(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "fail", detail, fix)


def _warn(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "warn", detail, fix)


# ---- what the profile needs, from its rendering -----------------------------------------------------


@dataclass
class Needs:
    values: dict[str, Any]
    """The chart's defaults merged with the profile, values files and overrides."""
    objects: list[dict[str, Any]]
    """The release's objects and every enabled stage's job as the launcher renders it."""
    namespace: str

    @property
    def pods(self) -> list[tuple[str, dict[str, Any]]]:
        return [t for obj in self.objects for t in k8s.pod_templates(obj)]

    def created(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects if o.get("kind") == kind}

    @functools.cached_property
    def checkpoints(self) -> tuple[float, str] | None:
        return checkpoint_bytes(self.values)


def profile_needs(*, profile: str | None, values_files: Sequence[str | Path], value_overrides: Sequence[str],
                  namespace: str) -> Needs:
    from medo1.launch import LaunchError
    from medo1.launch.chain import chain_stages
    from medo1.launch.rendering import merge_values, release_values, stage_job

    try:
        values = release_values(profile=profile, values_files=values_files, value_overrides=value_overrides)
        merged = merge_values(k8s.chart_defaults(), values)
        objects = k8s.render_chart(values, namespace=namespace)
        if merged["backend"] == "pytorchjob":  # the jobs the launcher creates (the run Job's, the pipeline's)
            objects += [stage_job(stage, profile=profile, values_files=values_files, value_overrides=value_overrides,
                                  namespace=namespace) for stage in chain_stages(values)]
    except (LaunchError, ValueError) as exc:
        raise DoctorError(f"chart values: {exc}") from None
    return Needs(merged, objects, namespace)


# ---- reading the cluster ------------------------------------------------------------------------------


class ClusterReader:
    """GETs and access reviews through the real kubernetes client, as camelCase dicts; None for 404."""

    def __init__(self, api_client: Any):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)

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
            if exc.status == 403:
                raise Forbidden(f"{call.__name__}: 403 forbidden") from None
            raise DoctorError(f"reading the cluster: {exc.status} {exc.reason}") from None
        return json.loads(response.data)

    def crd(self, name: str) -> dict[str, Any] | None:
        return self._read(self.extensions.read_custom_resource_definition, name)

    def secret(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_secret, name, namespace)

    def claim(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespace, name)

    def nodes(self) -> list[dict[str, Any]]:
        return (self._read(self.core.list_node) or {}).get("items", [])

    def pods_everywhere(self) -> list[dict[str, Any]]:
        return (self._read(self.core.list_pod_for_all_namespaces) or {}).get("items", [])

    def local_queue(self, name: str, namespace: str) -> dict[str, Any] | None:
        group, version, plural = KUEUE_QUEUE
        return self._read(self.custom.get_namespaced_custom_object, group, version, namespace, plural, name)

    def allowed(self, verb: str, group: str, resource: str, namespace: str, user: str | None = None) -> bool:
        """SelfSubjectAccessReview (user None: whoever runs this) or SubjectAccessReview about `user`."""
        resource, _, subresource = resource.partition("/")
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        if user is None:
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attributes}}
            review = self._read(self.authorization.create_self_subject_access_review, body)
        else:
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {"resourceAttributes": attributes, "user": user}}
            review = self._read(self.authorization.create_subject_access_review, body)
        return bool(((review or {}).get("status") or {}).get("allowed"))


# ---- the checks -----------------------------------------------------------------------------------------


def check_crds(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    kinds = {"PyTorchJob"} if needs.values["backend"] == "pytorchjob" else {"TrainJob"}
    kinds |= {o["kind"] for o in needs.objects if o.get("kind") in CRDS}
    kinds |= {o["spec"]["runtimeRef"].get("kind", "ClusterTrainingRuntime")
              for o in needs.objects if o.get("kind") == "TrainJob"}
    findings = []
    for kind in sorted(kinds):
        name, version = CRDS[kind]
        check = f"CRD {name}"
        crd = cluster.crd(name)
        if crd is None:
            install = ("the Kubeflow Training Operator v1 (kubectl apply --server-side -k "
                       "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.3\")"
                       if kind == "PyTorchJob" else "Kubeflow Trainer v2 (its manifests or Helm chart)")
            findings.append(_fail(check, "not installed", f"install {install}, or ask the cluster admin to"))
            continue
        served = [v["name"] for v in crd["spec"].get("versions", []) if v.get("served")]
        if version in served:
            findings.append(_pass(check, f"{version} served"))
        else:
            findings.append(_fail(check, f"{version} not served (served: {', '.join(served) or 'none'})",
                                  f"upgrade the operator to one that serves {kind} {version}"))
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
    for (name, key), optional in sorted(secret_references(needs).items(), key=lambda item: (item[0][0], item[0][1] or "")):
        check = f"Secret {name}" + (f" key {key}" if key else "")
        secret = cluster.secret(name, needs.namespace) or created.get(name)
        keys = set((secret or {}).get("data") or {}) | set((secret or {}).get("stringData") or {})
        missing = "the Secret does not exist" if secret is None else (f"no key {key}" if key and key not in keys else "")
        if not missing:
            findings.append(_pass(check, "present"))
            continue
        fix = (f"kubectl -n {needs.namespace} create secret generic {name} --from-literal={key or 'KEY'}=..."
               if secret is None else f"kubectl -n {needs.namespace} patch secret {name} with the key {key}, "
               f"or point the chart's secrets.* entry at the key that holds it")
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
            plan = plan_stage(str(local_recipe(stage["recipe"])), cluster=cluster, overrides=list(stage.get("set", [])),
                              stage=name, exports=exports, check_fixes=False)
            if plan.export_dir:
                exports[plan.export_dir] = plan.model.name
            total += plan.checkpoint["total"]
            parts.append(f"{name} {plan.checkpoint['kept']} x {plan.checkpoint['per_checkpoint'] / 2**30:.0f} GiB "
                         f"+ export {plan.checkpoint['export'] / 2**30:.0f} GiB")
    except (ConfigError, ValueError, OSError) as exc:
        log.info("could not size the checkpoints: %s", exc)
        return None
    return (total, "; ".join(parts)) if parts else None


def quantity_bytes(quantity: str) -> float:
    from medo1.plan.stages import parse_memory

    return parse_memory(quantity) * 2**30


def check_claims(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    nodes = int(needs.values["cluster"]["nodes"])
    findings = []
    created = needs.created("PersistentVolumeClaim")
    for claim_name, volume in sorted(claim_names(needs).items()):
        check = f"PVC {claim_name}"
        claim = cluster.claim(claim_name, needs.namespace)
        if claim is None and claim_name in created:
            spec = created[claim_name]["spec"]
            modes, size, where = spec.get("accessModes", []), spec["resources"]["requests"]["storage"], "the chart creates it"
        elif claim is None:
            key = STORAGE_KEY.get(volume, volume)
            findings.append(_fail(check, "does not exist", f"create it, or set storage.{key}.existingClaim to one that "
                                  "exists (or leave it empty: the chart creates one)"))
            continue
        else:
            phase = (claim.get("status") or {}).get("phase", "Pending")
            if phase != "Bound":
                findings.append(_fail(check, f"{phase}, not Bound", f"kubectl -n {needs.namespace} describe pvc "
                                      f"{claim_name}: its StorageClass must provision it (or a PV must match it)"))
                continue
            modes = claim["status"].get("accessModes") or claim["spec"].get("accessModes", [])
            size, where = claim["status"].get("capacity", {}).get("storage", "0"), "Bound"
        if nodes > 1 and "ReadWriteMany" not in modes:
            findings.append(_fail(check, f"{', '.join(modes)}: {nodes} nodes mount it, which needs ReadWriteMany",
                                  "use a ReadWriteMany StorageClass (NFS, CephFS, Lustre, Filestore, EFS, Azure Files) "
                                  f"for storage.{STORAGE_KEY.get(volume, volume)}"))
            continue
        if volume == "checkpoints":
            needed = needs.checkpoints
            if needed and quantity_bytes(size) < needed[0]:
                findings.append(_fail(check, f"{size} holds less than the {needed[0] / 2**30:.0f} GiB the recipes keep "
                                      f"({needed[1]})", f"a claim of at least {needed[0] / 2**40 * 1.2:.1f}Ti "
                                      "(20% margin), or lower output.keep"))
                continue
            if needed is None:
                findings.append(_warn(check, f"{size}, {', '.join(modes)}, {where}; the checkpoint size could not be "
                                      "computed here", "run `medo1 plan` with the recipe's model to size it"))
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
    bound = any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                for binding in needs.created("RoleBinding").values() for s in binding.get("subjects", []))
    return bound and bool(needs.created("Role"))


def check_access(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    group, jobs = JOB_RESOURCES[needs.values["backend"]]
    wanted = [("create", group, jobs), ("get", group, jobs), ("delete", group, jobs), *READS]
    findings = []
    subjects: list[tuple[str, str | None]] = [("you (the current credentials)", None)]
    subjects += [(f"ServiceAccount {a}", f"system:serviceaccount:{needs.namespace}:{a}") for a in launcher_accounts(needs)]
    for who, user in subjects:
        denied = [f"{verb} {resource}" for verb, api_group, resource in wanted
                  if not cluster.allowed(verb, api_group, resource, needs.namespace, user)]
        check = f"access {who}"
        if not denied:
            findings.append(_pass(check, f"may {', '.join(f'{v} {r}' for v, _, r in wanted)}"))
        elif user and chart_grants(needs, user.rsplit(":", 1)[1]):
            findings.append(_warn(check, f"may not yet {', '.join(denied)}; the chart's Role grants it on install",
                                  "install the chart (helm install) before launching"))
        else:
            fix = (f"bind a Role with those verbs to it (the chart's rbac.create, rbac.pipelineServiceAccounts), "
                   f"or kubectl -n {needs.namespace} create rolebinding ... --role=<release>-launcher")
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
    matching, fitting, reasons = 0, [], []
    for node in cluster.nodes():
        name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
        if node.get("spec", {}).get("unschedulable") or any(labels.get(k) != v for k, v in selector.items()):
            continue
        taints = [t for t in node.get("spec", {}).get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
        if not all(tolerates(t, tolerations) for t in taints):
            reasons.append(f"{name}: untolerated taint")
            continue
        matching += 1
        allocatable = node.get("status", {}).get("allocatable") or {}
        free = int(allocatable.get(resource, 0)) - used.get(name, {}).get(resource, 0)
        if free < gpus:
            reasons.append(f"{name}: {free:.0f} free {resource}")
            continue
        rdma_free = int(allocatable.get(rdma["resource"], 0)) - used.get(name, {}).get(rdma["resource"], 0) if rdma else 0
        if rdma and rdma_free < int(rdma["count"]):
            reasons.append(f"{name}: no free {rdma['resource']}")
            continue
        fitting.append(name)
    detail = f"{len(fitting)} of {matching} nodes matching the selector and tolerations fit ({nodes_wanted} needed)"
    if len(fitting) >= nodes_wanted:
        return [_pass(check, detail)]
    fix = ("wait for GPUs to free up (with kueue.queueName the job queues for them), lower cluster.nodes or "
           "cluster.gpusPerNode, or fix cluster.nodeSelector / tolerations")
    return [_fail(check, detail + (f": {'; '.join(reasons[:6])}" if reasons else ""), fix)]


def check_istio(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    namespace = cluster.namespace(needs.namespace)
    if namespace is None:
        return [_fail(f"namespace {needs.namespace}", "does not exist", f"kubectl create namespace {needs.namespace}")]
    labels = namespace["metadata"].get("labels") or {}
    injected = labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels
    if not injected:
        return [_pass("Istio injection", f"off in {needs.namespace}")]
    opted_out = all(str(((t.get("metadata") or {}).get("labels") or {}).get(ISTIO_OPT_OUT, "")).lower() == "false"
                    for _, t in needs.pods)
    if opted_out:
        return [_pass("Istio injection", f"on in {needs.namespace}; every pod opts out ({ISTIO_OPT_OUT}: \"false\")")]
    return [_warn("Istio injection", f"on in {needs.namespace} and some pods take the sidecar: it keeps a finished "
                  "pod running and proxies the rendezvous traffic",
                  f"keep podLabels / podAnnotations {ISTIO_OPT_OUT}: \"false\" (the chart's default)")]


def check_kueue(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    queue = needs.values["kueue"]["queueName"]
    if not queue:
        return [_pass("Kueue LocalQueue", "not used (kueue.queueName empty)")]
    check = f"Kueue LocalQueue {queue}"
    if cluster.crd("localqueues.kueue.x-k8s.io") is None:
        return [_fail(check, "Kueue is not installed", "install Kueue, or leave kueue.queueName empty")]
    if cluster.local_queue(queue, needs.namespace) is None:
        return [_fail(check, f"no LocalQueue {queue} in {needs.namespace}",
                      f"create a LocalQueue {queue} in {needs.namespace} pointing at a ClusterQueue with GPU quota, "
                      "or set kueue.queueName to an existing one (kubectl get localqueues)")]
    return [_pass(check, "exists")]


CHECKS = [check_crds, check_secrets, check_claims, check_access, check_nodes, check_istio, check_kueue]


def diagnose(cluster: ClusterReader, needs: Needs) -> list[Finding]:
    """Every check; one the credentials may not read becomes a warning, not a crash."""
    findings = []
    for check in CHECKS:
        try:
            findings += check(cluster, needs)
        except Forbidden as exc:
            name = check.__name__.removeprefix("check_")
            findings.append(_warn(name, f"not checked: {exc}", "run `medo1 doctor` with credentials that may read it "
                                  "(a cluster admin's), or ask the admin"))
    return findings


def table(findings: list[Finding]) -> str:
    width = max(len(f.check) for f in findings)
    lines = [f"{'check':<{width}}  status  detail"]
    for f in findings:
        lines.append(f"{f.check:<{width}}  {f.status:<6}  {f.detail}")
        if f.fix:
            lines.append(f"{'':<{width}}          fix: {f.fix}")
    counts = {status: sum(f.status == status for f in findings) for status in ("pass", "warn", "fail")}
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
    parser.add_argument("--values", action="append", default=[], metavar="FILE", help="chart values file, after the profile")
    parser.add_argument("--value", action="append", default=[], metavar="KEY=VALUE", help="override a chart value (YAML-typed)")
    parser.add_argument("--namespace", help="default: the pod's service-account namespace, else the kubeconfig context's")
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="SECONDS",
                        help="how long any Kubernetes API call waits for an answer")


def run(args: argparse.Namespace, client: Any = None) -> int:
    """Exit code 1 when any check fails."""
    if args.profile:
        k8s.load_profile(args.profile)  # a profile that is not there is the first thing to say, before any cluster
    client = bound_requests(client or api_client(), getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT_S))
    namespace = args.namespace
    if not namespace:
        from medo1.launch.kubernetes import default_namespace

        namespace = default_namespace()
    needs = profile_needs(profile=args.profile, values_files=args.values, value_overrides=args.value, namespace=namespace)
    from urllib3.exceptions import HTTPError

    try:
        findings = diagnose(ClusterReader(client), needs)
    except (HTTPError, OSError) as exc:  # a closed port, a refused or reset connection, a name that does not resolve
        host = getattr(getattr(client, "configuration", None), "host", "the API server")
        reason = getattr(exc, "reason", None) or exc
        raise DoctorError(f"cannot reach the Kubernetes API server at {host}: {type(reason).__name__}: "
                          f"{str(reason).split(': ', 1)[-1]}") from None
    if args.json:
        print(json.dumps({"namespace": namespace, "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        print(table(findings))
    return 1 if any(f.status == "fail" for f in findings) else 0
