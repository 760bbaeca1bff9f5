"""The medo1 Kubeflow pipeline: translate -> SFT -> RL -> eval -> upload.

Every step runs the medo1 trainer image and calls the library. SFT and RL go through the launcher
(`medo1.launch.launch_stage`): a PyTorchJob rendered from the Helm chart on a cluster (`backend=pytorchjob`),
a Kubeflow Trainer v2 TrainJob on the chart's ClusterTrainingRuntimes through the Kubeflow SDK
(`backend=trainjob`: medo1-sft, and medo1-ppo or medo1-grpo by `rl_algorithm`), or torchrun in the
step itself with `backend=local` (what `python -m pipelines.run_local` does on one machine).
Data, checkpoints and the HF cache live on existing PVCs mounted at /data, /checkpoints and
/hf-cache, the same claims the PyTorchJobs mount: install the chart with
helm/profiles/infrastructure.yaml first (PVCs, the launcher's service account and Role, no jobs).
Each run writes under `{workspace}/{run_name or run id}/`, so a retried step resumes from its last
complete checkpoint.

On a cluster: steps that read or publish outside data (check-data, translate, upload) are never
cached, so a rerun after retraining publishes the new model. Training steps are retried (the launcher
attaches to the PyTorchJob a failed attempt left running, or replaces it when it failed) and request
the CPU and memory they use, so a 72 h wait is not evicted as BestEffort. If a training step's pod
dies for good, its PyTorchJob still stops at its activeDeadlineSeconds, which the launcher sets to
the step's timeout; ownerReferences to the step pod were not chosen because the garbage collector
would delete the job when a retry replaces the pod, and the retry could not attach to it.

`python -m pipelines.medo1_pipeline` compiles it to pipelines/medo1_pipeline.yaml (`make pipeline`).
"""

# No `from __future__ import annotations`: KFP reads the component signatures' real types.
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from medo1 import k8s

COMPILED = Path(__file__).with_suffix(".yaml")
_chart_image = k8s.chart_defaults()["image"]
IMAGE = f"{_chart_image['repository']}:{_chart_image['tag']}"
MOUNTS = {"data": "/data", "checkpoints": "/checkpoints", "hf_cache": "/hf-cache"}
# A training step only renders, creates and follows its job: small, but Burstable (not BestEffort).
LAUNCHER_CPU, LAUNCHER_MEMORY = "500m", "1Gi"
TRAINING_RETRIES = 3
# The eval step's GPU node pool is usually tainted like the chart's h100-2nodes profile tolerates.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The default cluster profile; its existing Secrets (compiled in) are the ones the chart's pods use.
PROFILE = "h100-1node"
SECRETS = k8s.load_profile(PROFILE)["secrets"]

# KFP ships each component's source alone (imports inside, multi-output types written inline), to
# run in the trainer image, which has kfp installed.
component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def run_directory(workspace: str, run_name: str, run_id: str) -> NamedTuple("RunDirectory", [("path", str), ("name", str)]):
    """The run's folder on the checkpoints volume: `run_name` when given (to resume an earlier run), else the run id."""
    import re
    from collections import namedtuple
    from pathlib import Path

    name = run_name or run_id
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", name):
        raise ValueError(f"run name {name!r}: use 1-40 lowercase letters, digits and '-' (it names the training jobs)")
    path = Path(workspace) / name
    path.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {path}")
    return namedtuple("RunDirectory", ["path", "name"])(str(path), name)


@component
def doctor(backend: str, profile: str, nodes: int, gpus_per_node: int, data_pvc: str, checkpoints_pvc: str,
           hf_cache_pvc: str, allow_unchecked: bool) -> str:
    """`medo1 doctor` on the namespace the training steps launch into, with their chart values: the run
    fails here, before any GPU is asked for, when a CRD, Secret key, PVC, permission, GPU node or Kueue
    queue is missing, or Kueue does not manage the backend's jobs (the table, with the fix for each
    failure, is in this step's log), and when a check could not be made with the step's account unless
    `allow_unchecked`. A local run has no cluster to check."""
    if backend == "local":
        return f"skipped: backend {backend}"
    import argparse

    from medo1.doctor import run

    chart_values = [
        f"backend={backend}",
        f"storage.data.existingClaim={data_pvc}",
        f"storage.checkpoints.existingClaim={checkpoints_pvc}",
        f"storage.hfCache.existingClaim={hf_cache_pvc}",
        f"cluster.nodes={nodes}",
        f"cluster.gpusPerNode={gpus_per_node}",
    ]
    if run(argparse.Namespace(profile=profile, values=[], value=chart_values, namespace=None, json=False,
                              allow_unchecked=allow_unchecked)):
        raise RuntimeError("medo1 doctor: the namespace is not ready for this run, or could not be checked (above, each "
                           "with its fix; doctor_allow_unchecked accepts what the step's account may not read)")
    return "passed"


@component
def check_data(sft_data: str, rl_data: str) -> NamedTuple("DataPaths", [("sft_data", str), ("rl_data", str)]):
    """Translation skipped: the source files are used as they are, after a format check of every row."""
    from collections import namedtuple

    from medo1.data import load_examples

    for path, data_format in ((sft_data, "medical_o1"), (rl_data, "verifiable")):
        loaded = load_examples(path, data_format)
        print(f"{path} ({data_format}): {len(loaded.examples)} valid rows, {len(loaded.problems)} invalid")
        for problem in loaded.problems[:10]:
            print(f"  {problem}")
        if not loaded.examples:
            raise ValueError(f"{path}: no valid {data_format} rows")
    return namedtuple("DataPaths", ["sft_data", "rl_data"])(sft_data, rl_data)


@component
def translate(
    sft_data: str, rl_data: str, target_language: str, base_url: str, model: str, limit: int, run_dir: str
) -> NamedTuple("DataPaths", [("sft_data", str), ("rl_data", str)]):
    """Translate the SFT and RL sets; the key comes from $OPENAI_API_KEY (an existing Secret)."""
    import json
    from collections import namedtuple

    from medo1.config import load_config
    from medo1.translate import TranslateConfig, run_translate

    outputs = []
    for path, data_format in ((sft_data, "medical_o1"), (rl_data, "verifiable")):
        output = f"{run_dir}/data/{data_format}.{target_language.lower()}.jsonl"
        overrides = [f"input={path}", f"output={output}", f"format={data_format}", f"target_language={target_language}",
                     f"model={model}"]
        overrides += [f"base_url={base_url}"] if base_url else []
        overrides += [f"limit={limit}"] if limit > 0 else []
        summary = run_translate(load_config(TranslateConfig, None, overrides))
        print(json.dumps(summary, indent=2, default=str))
        outputs.append(output)
    return namedtuple("DataPaths", ["sft_data", "rl_data"])(*outputs)


@component
def train(
    stage: str,
    recipe: str,
    model: str,
    data: str,
    algorithm: str,
    overrides: list,
    output_dir: str,
    backend: str,
    profile: str,
    nodes: int,
    gpus_per_node: int,
    data_pvc: str,
    checkpoints_pvc: str,
    hf_cache_pvc: str,
    job_name: str,
    timeout_hours: float,
    plan_strict: bool = False,
) -> str:
    """One training stage through the launcher; returns the export directory. The model, data and output
    paths (and the RL algorithm) are applied after the user's overrides, so the pipeline's wiring wins.
    The launcher plans the stage first: a stage that does not fit its GPUs is a warning in this step's log,
    or with `plan_strict` fails the step before its job is created."""
    from medo1.launch import launch_stage

    chart_values = [
        f"storage.data.existingClaim={data_pvc}",
        f"storage.checkpoints.existingClaim={checkpoints_pvc}",
        f"storage.hfCache.existingClaim={hf_cache_pvc}",
        f"cluster.nodes={nodes}",
    ]
    # gpus_per_node 0 means a CPU run: local torchrun with one process (tiny models, this machine).
    chart_values += [f"cluster.gpusPerNode={gpus_per_node}"] if gpus_per_node else []
    launch_stage(
        stage,
        backend=backend,
        profile=profile,
        value_overrides=chart_values,
        recipe=recipe,
        overrides=[*overrides, f"model.name_or_path={model}", f"data.path={data}", f"output.dir={output_dir}"]
        + ([f"algo={algorithm}"] if algorithm else []),
        job_name=job_name,
        timeout_s=timeout_hours * 3600,
        strict=plan_strict,
        nproc=None if gpus_per_node else 1,
        # Trainer v2: the RL stage's runtime by algorithm (medo1-ppo, medo1-grpo); SFT's is medo1-sft.
        runtime=f"medo1-{algorithm}" if backend == "trainjob" and algorithm else None,
    )
    return f"{output_dir}/export"


@component
def evaluate(model_dir: str, recipe: str, overrides: list, output_dir: str, compare: bool, base_model: str,
             sft_dir: str, metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.Markdown]) -> float:
    """MCQ accuracy, format-ok rate, response length and reward of the RL export (with `compare`, of the base
    model and the SFT export too, on the same questions); the UI shows the metrics and the Markdown report."""
    import shutil

    from medo1.config import load_config
    from medo1.eval import EvalConfig, run_eval

    wiring = [f"model={model_dir}", f"output_dir={output_dir}", "label=rl"]
    wiring += [f"compare_with.base={base_model}", f"compare_with.sft={sft_dir}"] if compare else []
    result = run_eval(load_config(EvalConfig, recipe, [*overrides, *wiring]))
    for label, benchmarks in result["comparison"].items():
        for name, scores in benchmarks.items():
            for key in ("accuracy", "format_ok", "reward_mean"):
                metrics.log_metric(f"{label}_{name}_{key}", scores[key])
    metrics.log_metric("average_accuracy", result["average_accuracy"])
    shutil.copyfile(f"{output_dir}/report.md", report.path)
    print(open(f"{output_dir}/report.md", encoding="utf-8").read())
    return float(result["average_accuracy"])


@component
def upload(model_dir: str, repo_id: str, recipe: str, base_model: str, eval_report: str, dry_run: bool) -> str:
    """Publish the RL export (token from $HF_TOKEN, an existing Secret); a dry run lists what would be sent."""
    import json

    from medo1.config import load_config
    from medo1.upload import UploadConfig, upload

    overrides = [f"model_dir={model_dir}", f"repo_id={repo_id}", f"base_model={base_model}",
                 f"eval_report={eval_report}", f"dry_run={str(dry_run).lower()}"]
    result = upload(load_config(UploadConfig, recipe, overrides))
    print(json.dumps({key: value for key, value in result.items() if key != "card"}, indent=2, default=str))
    return repo_id


def _on_volumes(task: dsl.PipelineTask, data_pvc, checkpoints_pvc, hf_cache_pvc) -> dsl.PipelineTask:
    """Every step: the shared volumes, the HF cache on its PVC, and the chart's non-root user."""
    pod = k8s.chart_defaults()["podSecurityContext"]
    kubernetes.set_security_context(task, run_as_user=pod["runAsUser"], run_as_group=pod["runAsGroup"], run_as_non_root=True)
    for claim, mount in ((data_pvc, MOUNTS["data"]), (checkpoints_pvc, MOUNTS["checkpoints"]), (hf_cache_pvc, MOUNTS["hf_cache"])):
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount)
    task.set_env_variable("HF_HOME", MOUNTS["hf_cache"])
    return task


def _with_secret(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """The profile's Secret as the env variable the stage reads (optional: a dry run needs no token)."""
    secret = SECRETS[name]
    return kubernetes.use_secret_as_env(task, secret["name"], {secret["key"]: secret["key"]}, optional=True)


@dsl.pipeline(name="medo1", description="Medical reasoning LLM: translate -> SFT -> RL (PPO or GRPO) -> eval -> upload")
def medo1_pipeline(
    base_model: str = "Qwen/Qwen2.5-7B-Instruct",
    sft_data: str = "/data/medical_o1_sft.json",
    rl_data: str = "/data/medical_o1_verifiable.json",
    target_language: str = "",
    translation_base_url: str = "",
    translation_model: str = "gpt-4o-mini",
    translation_limit: int = 0,
    rl_algorithm: str = "ppo",
    recipe_dir: str = "/opt/medo1/recipes",
    sft_recipe: str = "sft-qwen2.5-7b-8xh100.yaml",
    rl_recipe: str = "rl-ppo-qwen2.5-7b-8xh100.yaml",
    eval_recipe: str = "eval-mcq.yaml",
    upload_recipe: str = "upload.yaml",
    sft_overrides: list = [],  # noqa: B006 (KFP takes list defaults as parameter defaults, never mutated)
    rl_overrides: list = [],  # noqa: B006
    eval_overrides: list = [],  # noqa: B006
    backend: str = "pytorchjob",
    profile: str = PROFILE,
    nodes: int = 1,
    gpus_per_node: int = 8,
    timeout_hours: float = 72.0,
    plan_strict: bool = False,
    data_pvc: str = "medo1-data",
    checkpoints_pvc: str = "medo1-checkpoints",
    hf_cache_pvc: str = "medo1-hf-cache",
    workspace: str = "/checkpoints/runs",
    run_name: str = "",
    hub_repo: str = "",
    upload_model: bool = False,
    upload_dry_run: bool = False,
    min_eval_accuracy: float = 0.0,
    eval_compare: bool = False,
    doctor_allow_unchecked: bool = False,
) -> float:
    volumes = dict(data_pvc=data_pvc, checkpoints_pvc=checkpoints_pvc, hf_cache_pvc=hf_cache_pvc)
    preflight = _on_volumes(doctor(backend=backend, profile=profile, nodes=nodes, gpus_per_node=gpus_per_node,
                                   allow_unchecked=doctor_allow_unchecked, **volumes), **volumes)
    preflight.set_display_name("doctor").set_caching_options(False)
    run = _on_volumes(run_directory(workspace=workspace, run_name=run_name, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), **volumes)
    run.after(preflight)
    run.set_caching_options(False)
    run_dir = run.outputs["path"]

    with dsl.If(target_language != "", name="translate"):
        translated = translate(
            sft_data=sft_data, rl_data=rl_data, target_language=target_language, base_url=translation_base_url,
            model=translation_model, limit=translation_limit, run_dir=run_dir,
        )
        _with_secret(translated, "translationApiKey")
        _on_volumes(translated, **volumes).set_retry(2).set_caching_options(False)
    with dsl.Else(name="keep-source-language"):
        source = _on_volumes(check_data(sft_data=sft_data, rl_data=rl_data), **volumes).set_caching_options(False)

    launcher = dict(backend=backend, profile=profile, nodes=nodes, gpus_per_node=gpus_per_node, timeout_hours=timeout_hours,
                    plan_strict=plan_strict, **volumes)
    sft = train(
        stage="sft", recipe=f"{recipe_dir}/{sft_recipe}", model=base_model,
        data=dsl.OneOf(translated.outputs["sft_data"], source.outputs["sft_data"]), algorithm="", overrides=sft_overrides,
        output_dir=f"{run_dir}/sft", job_name=f"medo1-sft-{run.outputs['name']}", **launcher,
    )
    rl = train(
        stage="rl", recipe=f"{recipe_dir}/{rl_recipe}", model=sft.output,
        data=dsl.OneOf(translated.outputs["rl_data"], source.outputs["rl_data"]), algorithm=rl_algorithm,
        overrides=rl_overrides, output_dir=f"{run_dir}/rl", job_name=f"medo1-rl-{run.outputs['name']}", **launcher,
    )
    for task, name in ((sft, "sft"), (rl, f"rl ({rl_algorithm})")):
        _on_volumes(task, **volumes).set_display_name(name).set_caching_options(False)
        task.set_retry(TRAINING_RETRIES, backoff_duration="60s")
        task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)

    # eval_compare: the base model and the SFT export answer the eval questions too (three times the eval time).
    scores = evaluate(model_dir=rl.output, recipe=f"{recipe_dir}/{eval_recipe}", overrides=eval_overrides,
                      output_dir=f"{run_dir}/eval", compare=eval_compare, base_model=base_model, sft_dir=sft.output)
    _on_volumes(scores, **volumes).set_caching_options(False)
    scores.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    scores.set_cpu_request("16").set_memory_request("128Gi").set_cpu_limit("16").set_memory_limit("128Gi")
    kubernetes.add_toleration(scores, **GPU_TOLERATION)

    with dsl.If(upload_model == True, name="upload-requested"):
        with dsl.If(scores.outputs["Output"] >= min_eval_accuracy, name="eval-threshold-met"):
            published = upload(model_dir=rl.output, repo_id=hub_repo, recipe=f"{recipe_dir}/{upload_recipe}",
                               base_model=base_model, eval_report=f"{run_dir}/eval/report.json", dry_run=upload_dry_run)
            _with_secret(published, "hfToken")
            _on_volumes(published, **volumes).set_retry(2).set_caching_options(False)
    return scores.outputs["Output"]


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(medo1_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
