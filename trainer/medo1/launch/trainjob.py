"""The trainjob backend (Kubeflow Trainer v2): the stage as a TrainJob on one of the chart's
ClusterTrainingRuntimes (`medo1-sft`, `medo1-ppo`, `medo1-grpo`, `medo1-eval`), created through the
Kubeflow SDK's TrainerClient (`kubeflow.trainer`), its node-0 pod's log followed, its status waited on;
safe to retry, cancelled, failed fast on stuck pods (JobSet labels every pod of the TrainJob with
`jobset.sigs.k8s.io/jobset-name`) and owned by the chart's run Job as the PyTorchJob backend is
(`medo1.launch.kubernetes`).

What the launch asks for is a TrainJob dict (validated in the tests against the Trainer CRDs); the SDK
builds the same body from it: `train(runtime=..., trainer=CustomTrainerContainer(image, num_nodes, env),
options=[Name, Labels, TrainerArgs, ActiveDeadlineSeconds])`. The recipe is the env MEDO1_RECIPE (the
runtime's args read `$(MEDO1_RECIPE)`), the recipe overrides `--set` args. A failed job is not created
again here: the runtime's JobSet restarts it whole (failurePolicy.maxRestarts = runPolicy.jobRestarts).

The SDK's client logs a warning with the whole HTTP response (headers included) when it cannot read Trainer's
version ConfigMap in kubeflow-system, which a namespaced account never can: that becomes one debug line.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from medo1 import chart
from medo1.launch.apicalls import DEFAULT_REQUEST_TIMEOUT_S, bound_requests, bounded_construction
from medo1.launch.grace import SHUTDOWN_ENV, grace_period_s
from medo1.launch.kubernetes import (
    DEFAULT_DELETE_WAIT_S,
    ClusterJobs,
    Policy,
    _api_message,
    _api_status,
    cancelled,
    follow_until_done,
)
from medo1.launch.launcherpod import LauncherPod
from medo1.launch.logs import MasterLogFollower
from medo1.launch.pods import DEFAULT_SCALE_UP_WAIT_S, DEFAULT_STUCK_AFTER_S
from medo1.launch.preflight import check_plan
from medo1.launch.rendering import MAX_NAME, check_job_name, stage_section, stage_values
from medo1.launch.retries import MANAGER
from medo1.launch.waiting import LaunchCancelled, LaunchError, LaunchResult, cancel_on_signals

if TYPE_CHECKING:
    from kubeflow.trainer import TrainerClient

log = logging.getLogger(__name__)


# kubeflow/sdk kubeflow/trainer/constants/constants.py (GROUP, VERSION, TRAINJOB_PLURAL).
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME_KIND = "ClusterTrainingRuntime"
# Stages with a runtime, and the runtime a stage gets when none is named.
DEFAULT_RUNTIME = {"sft": "medo1-sft", "rl": "medo1-ppo", "eval": "medo1-eval"}
RECIPE_ENV = "MEDO1_RECIPE"
SDK_PATCH_MANAGER = "trainer.kubeflow.org/kubeflow-sdk"
# JobSet names the first node pod's host `<trainjob>-node-0-0` (Trainer's PET_MASTER_ADDR, kubeflow/trainer
# pkg/runtime/framework/plugins/torch/torch.go), a DNS label of at most 63 characters.
MASTER_HOST_SUFFIX = "-node-0-0"
# The pods of a TrainJob's first node, as JobSet and the Job controller label them (kubeflow/sdk
# kubeflow/trainer/constants/constants.py: JOBSET_NAME_LABEL, JOBSET_RJOB_NAME_LABEL, JOB_INDEX_LABEL).
NODE0_SELECTOR = (
    "jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
    "batch.kubernetes.io/job-completion-index=0"
)


# kubeflow/sdk kubeflow/trainer/backends/kubernetes/backend.py, KubernetesBackend.verify_backend.
SDK_BACKEND_LOGGER = "kubeflow.trainer.backends.kubernetes.backend"
VERSION_WARNING = "Trainer control-plane version info is not available"


class _VersionWarningToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(VERSION_WARNING):
            logging.getLogger(__name__).debug("the SDK could not read Trainer's version ConfigMap (not needed)")
            return False
        return True


@contextlib.contextmanager
def quiet_version_check() -> Iterator[None]:
    """While a TrainerClient is made: its version-ConfigMap warning (an HTTP response dump) as one debug line."""
    sdk_log = logging.getLogger(SDK_BACKEND_LOGGER)
    quiet = _VersionWarningToDebug()
    sdk_log.addFilter(quiet)
    try:
        yield
    finally:
        sdk_log.removeFilter(quiet)


def trainer_client(namespace: str | None, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> TrainerClient:
    """A TrainerClient on the in-cluster config inside a pod, else the kubeconfig, for `namespace`
    (default: the SDK's: the pod's service-account namespace, else the kubeconfig context's); its requests
    bounded by `request_timeout_s`."""
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient
    from kubernetes.config import ConfigException

    try:
        with quiet_version_check(), bounded_construction(request_timeout_s):
            client = TrainerClient(KubernetesBackendConfig(namespace=namespace))
    except ConfigException as exc:
        raise LaunchError(f"no Kubernetes configuration: {exc}") from None
    bound_requests(client.backend.core_api.api_client, request_timeout_s)
    return client


def chart_runtime(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The chart's ClusterTrainingRuntime `name` as rendered with `values`."""
    runtimes = [
        o
        for o in chart.render_chart(chart.merge_values(values, {"runtimes": {"enabled": True}}))
        if o["kind"] == RUNTIME_KIND
    ]
    for runtime in runtimes:
        if runtime["metadata"]["name"] == name:
            return runtime
    known = ", ".join(r["metadata"]["name"] for r in runtimes)
    raise LaunchError(f"no runtime {name!r} in the chart's runtimes.training; known: {known}")


def build_trainjob(
    stage: str,
    values: dict[str, Any],
    *,
    runtime: str | None = None,
    job_name: str | None = None,
    namespace: str = chart.NAMESPACE,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """The TrainJob for `stage` on `runtime` (default: DEFAULT_RUNTIME), from chart values (see
    `stage_values`): the stage's recipe (the runtime's own when the values keep the chart's default) and
    `set` overrides, the chart's image, cluster.nodes nodes (one process per GPU; cluster.cpuProcsPerNode
    on CPU nodes), the Kueue queue label, and an activeDeadlineSeconds bounded by `timeout_s`."""
    if stage not in DEFAULT_RUNTIME:
        raise LaunchError(
            f"stage {stage!r} has no Trainer v2 runtime (those are {', '.join(DEFAULT_RUNTIME)}); "
            "run it with --backend pytorchjob"
        )
    runtime = runtime or DEFAULT_RUNTIME[stage]
    merged = chart.with_chart_defaults(values)
    runtime_object = chart_runtime(runtime, values)
    runs = runtime_object["metadata"]["labels"]["app.kubernetes.io/component"]
    if runs != stage:
        raise LaunchError(f"runtime {runtime!r} runs the {runs!r} stage, not {stage!r}")
    stage_config = merged[stage_section(stage)][stage]
    node = next(job for job in runtime_object["spec"]["template"]["spec"]["replicatedJobs"] if job["name"] == "node")
    (container,) = [c for c in node["template"]["spec"]["template"]["spec"]["containers"] if c["name"] == "node"]
    args = [*container["args"]] + [arg for override in stage_config.get("set", []) for arg in ("--set", override)]
    training = stage_section(stage) == "stages"
    if training and int(merged["cluster"]["gpusPerNode"]) == 0:
        # torchrun's flag wins over PET_NPROC_PER_NODE, which Trainer derives from the CPU request on a
        # GPU-less node (the SDK's CustomTrainerContainer has no numProcPerNode).
        args = [f"--nproc-per-node={merged['cluster']['cpuProcsPerNode']}", *args]
    trainer: dict[str, Any] = {"image": f"{merged['image']['repository']}:{merged['image']['tag']}"}
    if training:
        trainer["numNodes"] = int(merged["cluster"]["nodes"])
    # The recipe chosen in the values (profile, --recipe) wins; the chart's default for the stage gives way
    # to the runtime's own (medo1-grpo runs the GRPO recipe, not the rl stage's default PPO one).
    recipe = stage_config["recipe"]
    if recipe == chart.chart_defaults()[stage_section(stage)][stage]["recipe"]:
        recipe = next(e["value"] for e in container["env"] if e["name"] == RECIPE_ENV)
    # The NCCL settings (InfiniBand on for the 2-node profile) and, for a training stage, the node shape the
    # values give: the platform's runtime was installed with its own values (one node, no RDMA).
    trainer["env"] = [
        {"name": RECIPE_ENV, "value": str(recipe)},
        *({"name": name, "value": str(value)} for name, value in (merged.get("nccl") or {}).items()),
    ]
    trainer["args"] = args
    if training:
        trainer["resourcesPerNode"] = {"limits": node_resources(merged), "requests": node_resources(merged)}
    labels = {
        "app.kubernetes.io/part-of": "medo1",
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/managed-by": MANAGER,
    }
    if merged.get("kueue", {}).get("queueName"):
        labels["kueue.x-k8s.io/queue-name"] = merged["kueue"]["queueName"]
    name = job_name or f"{chart.RELEASE}-{stage}"
    job = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"runtimeRef": {"name": runtime, "kind": RUNTIME_KIND}, "trainer": trainer},
    }
    placement = {
        key: merged["cluster"][field]
        for key, field in (("nodeSelector", "nodeSelector"), ("tolerations", "tolerations"), ("affinity", "affinity"))
        if merged["cluster"].get(field)
    }
    # The grace period for the stage's own checkpoint (medo1.launch.grace), and torchrun's shutdown timeout with it.
    seconds, how = grace_period_s(stage, values, recipe=str(recipe))
    log.info("grace period (SIGTERM to SIGKILL): %s", how)
    placement["terminationGracePeriodSeconds"] = seconds
    trainer["env"].append({"name": SHUTDOWN_ENV, "value": str(max(30, seconds - 30))})
    job["spec"]["runtimePatches"] = [runtime_patch(placement)]
    deadlines = [
        d for d in (merged["runPolicy"].get("activeDeadlineSeconds"), timeout_s and max(1, math.ceil(timeout_s))) if d
    ]
    if deadlines:
        job["spec"]["activeDeadlineSeconds"] = min(deadlines)
    check_job_name(job)
    if len(name + MASTER_HOST_SUFFIX) > MAX_NAME:
        raise LaunchError(
            f"job name {name!r} is too long: JobSet would name its first pod's host "
            f"{name + MASTER_HOST_SUFFIX!r}, over {MAX_NAME} characters"
        )
    return job


def node_resources(values: dict[str, Any]) -> dict[str, str]:
    """A training node's requests (= limits) as the chart renders them (helm/medo1/templates/_helpers.tpl
    medo1.resources): cpu, memory, the GPUs and, with cluster.rdma, the RDMA devices."""
    shape = values["cluster"]
    resources = {"cpu": str(shape["cpu"]), "memory": str(shape["memory"])}
    if int(shape["gpusPerNode"]) > 0:
        resources[shape["gpuResource"]] = str(shape["gpusPerNode"])
    if shape["rdma"]["enabled"]:
        resources[shape["rdma"]["resource"]] = str(shape["rdma"]["count"])
    return resources


def runtime_patch(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A TrainJob runtimePatches entry setting `pod_spec` fields on the runtime's `node` pods, under the manager
    name the Kubeflow SDK's RuntimePatch option uses (kubeflow/trainer/options/kubernetes.py)."""
    return {
        "manager": SDK_PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod_spec}}}}]}
            }
        },
    }


class TrainJobs(ClusterJobs):
    """A TrainJob through the Kubeflow SDK's TrainerClient; reads and the node-0 pod's log through the
    SDK backend's Kubernetes client (the SDK's own TrainJob type keeps no condition reason or message)."""

    kind = "TrainJob"
    container = chart.MAIN_CONTAINER[RUNTIME_KIND]
    _custom = (GROUP, VERSION, PLURAL)

    def __init__(self, client: TrainerClient, name: str, namespace: str):
        # ClusterJobs reads `core_api` off its client: the SDK's KubernetesBackend holds it.
        super().__init__(client.backend, name, namespace)
        self.trainer = client
        if client.backend.namespace != namespace:
            raise LaunchError(f"the TrainerClient is for namespace {client.backend.namespace!r}, not {namespace!r}")

    @property
    def _serializer(self) -> Any:
        return self.client.core_api.api_client

    def _read(self) -> Any:
        return self.client.custom_api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def _create(self, job: dict[str, Any]) -> None:
        from kubeflow.trainer import CustomTrainerContainer
        from kubeflow.trainer.options import ActiveDeadlineSeconds, Annotations, Labels, Name, TrainerArgs

        spec = job["spec"]
        runtime_name = spec["runtimeRef"]["name"]
        try:
            runtime = self.trainer.get_runtime(runtime_name)
        except RuntimeError as exc:
            if _api_status(exc) == 404:
                raise LaunchError(
                    f"no runtime {runtime_name!r} on the cluster: the platform team installs the "
                    "ClusterTrainingRuntimes once (helm/profiles/trainer-v2-runtimes.yaml)"
                ) from None
            if _api_status(exc) == 403:
                # The SDK reads the namespaced TrainingRuntime, then on a 404 the ClusterTrainingRuntime.
                raise LaunchError(
                    f"may not read the runtime {runtime_name!r}: {_api_message(exc)}; the chart's "
                    "launcher Role grants get on trainingruntimes in the namespace, the platform install "
                    "(helm/profiles/trainer-v2-runtimes.yaml, runtimes.readers) get on its "
                    "ClusterTrainingRuntimes"
                ) from None
            raise
        trainer = spec["trainer"]
        container = CustomTrainerContainer(
            image=trainer["image"],
            num_nodes=trainer.get("numNodes"),
            env={e["name"]: e["value"] for e in trainer["env"]},
            resources_per_node=(trainer.get("resourcesPerNode") or {}).get("limits"),
        )
        metadata = job["metadata"]
        options = [Name(self.name), Labels(metadata["labels"]), TrainerArgs(trainer["args"])]
        if metadata.get("annotations"):
            options.append(Annotations(metadata["annotations"]))
        if "activeDeadlineSeconds" in spec:
            options.append(ActiveDeadlineSeconds(spec["activeDeadlineSeconds"]))
        if spec.get("runtimePatches"):
            options.append(_runtime_patches(spec["runtimePatches"]))
        self.trainer.train(runtime=runtime, trainer=container, options=options)
        if metadata.get("ownerReferences"):
            # The SDK's train() takes no owner: set right after (a launcher killed in between leaves it unowned,
            # still bounded by its activeDeadlineSeconds).
            self._patch({"metadata": {"ownerReferences": metadata["ownerReferences"]}})

    def _delete(self, propagation: str) -> None:
        if propagation == "Background":
            self.trainer.delete_job(self.name)
            return
        # The SDK's delete_job takes no propagation policy; Foreground keeps the TrainJob until its JobSet
        # and pods are gone, so a replacement's JobSet (same name) never meets them.
        from kubernetes.client import V1DeleteOptions

        self.client.custom_api.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, body=V1DeleteOptions(propagation_policy=propagation)
        )

    def master_pods(self) -> list[Any]:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self.client.core_api.list_namespaced_pod(
                self.namespace, label_selector=NODE0_SELECTOR.format(name=self.name)
            ).items
        except (ApiException, HTTPError) as exc:
            raise RuntimeError(f"listing the pods of {self.where}: {exc}") from exc


def _runtime_patches(patches: list[dict[str, Any]]) -> Any:
    """An SDK option (called as option(job_spec, trainer, backend), like the SDK's RuntimePatch) adding the
    TrainJob's runtimePatches as they are: the SDK's PodSpecPatch has no field for some of the pod spec fields
    the CRD's patch allows (terminationGracePeriodSeconds)."""

    def option(job_spec: dict[str, Any], trainer: Any, backend: Any) -> None:
        job_spec.setdefault("spec", {}).setdefault("runtimePatches", []).extend(copy.deepcopy(patches))

    return option


def run_trainjob(
    stage: str,
    job: dict[str, Any],
    client: TrainerClient,
    timeout_s: float,
    poll_s: float,
    keep_on_timeout: bool,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    *,
    scale_up_wait_s: float = DEFAULT_SCALE_UP_WAIT_S,
    delete_wait_s: float = DEFAULT_DELETE_WAIT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> LaunchResult:
    """Create the TrainJob (or attach to an earlier attempt's, as `run_on_cluster` does), follow node 0's log,
    wait; a pod stuck for `stuck_after_s` fails it (None: waits). SIGTERM / SIGINT delete it (not when this
    launcher's pod is being evicted). A failed TrainJob is not created again: JobSet restarted it already."""
    bound_requests(client.backend.core_api.api_client, request_timeout_s)
    jobs = TrainJobs(client, job["metadata"]["name"], job["metadata"]["namespace"])
    deadline = time.monotonic() + timeout_s
    followers: list[MasterLogFollower] = []
    launcher = None
    with cancel_on_signals():
        try:
            launcher = LauncherPod.find(client.backend.core_api, jobs.namespace)
            policy = Policy(
                0,
                delete_wait_s,
                launcher.owner if launcher else None,
                restarted_by="its JobSet (failurePolicy.maxRestarts)",
            )
            action, state, _ = follow_until_done(
                jobs, job, policy, deadline, poll_s, keep_on_timeout, followers, stuck_after_s, scale_up_wait_s
            )
        except LaunchCancelled as exc:
            raise cancelled(jobs, followers, exc, launcher) from None
    return LaunchResult(stage, "trainjob", jobs.name, jobs.namespace, state, action, kind="TrainJob")


def launch_trainjob(
    stage: str,
    *,
    runtime: str | None,
    profile: str | None,
    values_files: Any,
    value_overrides: Any,
    recipe: str | None,
    overrides: Any,
    job_name: str | None,
    namespace: str | None,
    timeout_s: float,
    poll_s: float,
    keep_on_timeout: bool,
    client: TrainerClient | None,
    strict: bool,
    plan_check: bool,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    **waits: float,
) -> LaunchResult:
    """`launch_stage` for backend trainjob; the plan checked is the runtime's recipe's."""
    values = stage_values(
        stage,
        profile=profile,
        values_files=values_files,
        value_overrides=value_overrides,
        recipe=recipe,
        overrides=overrides,
    )
    client = client or trainer_client(namespace, waits.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S))
    job = build_trainjob(
        stage,
        values,
        runtime=runtime,
        job_name=job_name,
        namespace=namespace or client.backend.namespace,
        timeout_s=timeout_s,
    )
    if plan_check:
        check_plan(
            stage,
            values,
            strict=strict,
            recipe=next(e["value"] for e in job["spec"]["trainer"]["env"] if e["name"] == RECIPE_ENV),
        )
    return run_trainjob(stage, job, client, timeout_s, poll_s, keep_on_timeout, stuck_after_s, **waits)
