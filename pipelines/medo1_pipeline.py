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

from medo1 import chart

COMPILED = Path(__file__).with_suffix(".yaml")
_chart_image = chart.chart_defaults()["image"]
IMAGE = f"{_chart_image['repository']}:{_chart_image['tag']}"
MOUNTS = {"data": "/data", "checkpoints": "/checkpoints", "hf_cache": "/hf-cache"}
# A training step only renders, creates and follows its job: small, but Burstable (not BestEffort).
LAUNCHER_CPU, LAUNCHER_MEMORY = "500m", "1Gi"
TRAINING_RETRIES = 3
# The eval step's GPU node pool is usually tainted like the chart's h100-2nodes profile tolerates.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The default cluster profile; its existing Secrets (compiled in) are the ones the chart's pods use.
PROFILE = "h100-1node"
SECRETS = chart.load_profile(PROFILE)["secrets"]

# KFP ships each component's source alone (imports inside, multi-output types written inline), to
# run in the trainer image, which has kfp installed.
component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def run_directory(workspace: str, run_name: str, run_id: str) -> NamedTuple(
    "RunDirectory", [("path", str), ("name", str)]
):
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
def doctor(
    backend: str,
    profile: str,
    nodes: int,
    gpus_per_node: int,
    data_pvc: str,
    checkpoints_pvc: str,
    hf_cache_pvc: str,
    allow_unchecked: bool,
    report: dsl.Output[dsl.Markdown],
) -> str:
    """`medo1 doctor` on the namespace the training steps launch into, with their chart values: the run
    fails here, before any GPU is asked for, when a CRD, Secret key, PVC, permission, GPU node or Kueue
    queue is missing, or Kueue does not manage the backend's jobs (the table, with the fix for each
    failure, is this step's Markdown and log), and when a check could not be made with the step's account
    unless `allow_unchecked`. A local run has no cluster to check."""
    from pathlib import Path

    from medo1 import doctor as checks
    from medo1.launch.apicalls import DEFAULT_REQUEST_TIMEOUT_S, bound_requests
    from medo1.pipeline_steps import chart_values, doctor_markdown, doctor_skipped_markdown

    if backend == "local":
        Path(report.path).write_text(doctor_skipped_markdown(backend), encoding="utf-8")
        return f"skipped: backend {backend}"
    from medo1.launch.kubernetes import default_namespace

    namespace = default_namespace()
    values = [
        f"backend={backend}",
        *chart_values(
            data_pvc=data_pvc,
            checkpoints_pvc=checkpoints_pvc,
            hf_cache_pvc=hf_cache_pvc,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
        ),
    ]
    needs = checks.profile_needs(
        profile=profile or None, values_files=[], value_overrides=values, namespace=namespace, caller_launches=True
    )
    cluster = checks.ClusterReader(bound_requests(checks.api_client(), DEFAULT_REQUEST_TIMEOUT_S))
    findings = checks.diagnose(cluster, needs)
    print(checks.table(findings))
    Path(report.path).write_text(doctor_markdown(findings, namespace), encoding="utf-8")
    if checks.exit_code(findings, allow_unchecked):
        failed = sum(f.status == "fail" for f in findings)
        unchecked = sum(f.status == "unchecked" for f in findings)
        raise RuntimeError(
            f"medo1 doctor: {failed} check(s) failed and {unchecked} could not be made: the namespace "
            "is not ready for this run (the table above and this step's Markdown give the fix for "
            "each; doctor_allow_unchecked accepts what the step's account may not read)"
        )
    return "passed"


@component
def plan(
    sft_recipe: str,
    rl_recipe: str,
    eval_recipe: str,
    sft_overrides: list,
    rl_overrides: list,
    eval_overrides: list,
    base_model: str,
    sft_data: str,
    rl_data: str,
    rl_algorithm: str,
    run_dir: str,
    backend: str,
    profile: str,
    nodes: int,
    gpus_per_node: int,
    data_pvc: str,
    checkpoints_pvc: str,
    hf_cache_pvc: str,
    plan_strict: bool,
    eval_compare: bool,
    report: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> str:
    """`medo1 plan` of the SFT, RL and eval stages as this run launches them (its recipes, overrides, model and
    cluster): memory per GPU, time, GPU-hours and checkpoint volume, planned on the source data. Every stage's
    inputs are checked first (data files, local model folders, Hub ids in the cache or readable with the run's
    HF token, as `medo1 launch chain` checks them): a missing one fails the run here, one line each. With
    `plan_strict` (or the chart value plan.strict) a stage that does not fit, or that cannot be planned, fails
    the run here, before SFT starts; otherwise the training steps warn."""
    from pathlib import Path

    from medo1 import chart
    from medo1.launch.rendering import job_values
    from medo1.pipeline_steps import (
        chart_values,
        check_launch_inputs,
        eval_wiring,
        plan_markdown,
        plan_metrics,
        plan_stages,
        plan_verdict,
        stage_overrides,
    )

    values = chart_values(
        data_pvc=data_pvc,
        checkpoints_pvc=checkpoints_pvc,
        hf_cache_pvc=hf_cache_pvc,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
    )
    # The values a trainjob run's jobs are rendered from are the chart's, as for a PyTorchJob.
    launch = dict(
        backend="local" if backend == "local" else "pytorchjob",
        profile=profile or None,
        value_overrides=values,
        nproc=None if gpus_per_node else 1,
    )
    sft_export, rl_export = f"{run_dir}/sft/export", f"{run_dir}/rl/export"
    launches = [
        (
            "sft",
            job_values(
                "sft",
                recipe=sft_recipe,
                **launch,
                overrides=stage_overrides(sft_overrides, model=base_model, data=sft_data, output_dir=f"{run_dir}/sft"),
            ),
        ),
        (
            "rl",
            job_values(
                "rl",
                recipe=rl_recipe,
                **launch,
                overrides=stage_overrides(
                    rl_overrides, model=sft_export, data=rl_data, output_dir=f"{run_dir}/rl", algorithm=rl_algorithm
                ),
            ),
        ),
        # The eval step runs in its own pod, on one GPU (none on a CPU run).
        (
            "eval",
            job_values(
                "eval",
                recipe=eval_recipe,
                backend="pytorchjob",
                profile=profile or None,
                value_overrides=[*values, f"jobs.eval.gpus={1 if gpus_per_node else 0}"],
                overrides=[
                    *eval_overrides,
                    *eval_wiring(
                        model=rl_export,
                        output_dir=f"{run_dir}/eval",
                        compare=eval_compare,
                        base_model=base_model,
                        sft_dir=sft_export,
                    ),
                ],
            ),
        ),
    ]
    check_launch_inputs(launches, mounts=[] if backend == "local" else ["/data", "/checkpoints", "/hf-cache"])
    planned = plan_stages(launches)
    markdown = plan_markdown(planned)
    print(markdown)
    Path(report.path).write_text(markdown, encoding="utf-8")
    for name, value in plan_metrics(planned).items():
        metrics.log_metric(name, value)
    verdict = plan_verdict(planned)
    strict = plan_strict or chart.with_chart_defaults(launches[0][1])["plan"]["strict"]
    if strict and (verdict.startswith("DOES NOT FIT") or verdict.startswith("no plan")):
        raise RuntimeError(f"medo1 plan: {verdict}; not starting the run (plan_strict)")
    return verdict


@component
def check_data(sft_data: str, rl_data: str, report: dsl.Output[dsl.Markdown]) -> NamedTuple(
    "DataPaths", [("sft_data", str), ("rl_data", str)]
):
    """Translation skipped: the source files are used as they are, after a format check of every row."""
    from collections import namedtuple
    from pathlib import Path

    from medo1.data.sources import load_examples
    from medo1.pipeline_steps import data_check_markdown

    checked, formats = {}, {"sft": "medical_o1", "rl": "verifiable"}
    for name, path in (("sft", sft_data), ("rl", rl_data)):
        data_format = formats[name]
        loaded = load_examples(path, data_format)
        print(f"{path} ({data_format}): {len(loaded.examples)} valid rows, {len(loaded.problems)} invalid")
        for problem in loaded.problems[:10]:
            print(f"  {problem}")
        checked[name] = (path, len(loaded.examples), [str(p) for p in loaded.problems])
    Path(report.path).write_text(data_check_markdown(checked), encoding="utf-8")
    for name, (path, valid, _) in checked.items():
        if not valid:
            raise ValueError(f"{path}: no valid {formats[name]} rows")
    return namedtuple("DataPaths", ["sft_data", "rl_data"])(sft_data, rl_data)


@component
def translate(
    sft_data: str,
    rl_data: str,
    target_language: str,
    base_url: str,
    model: str,
    limit: int,
    run_dir: str,
    summary: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> NamedTuple("DataPaths", [("sft_data", str), ("rl_data", str)]):
    """Translate the SFT and RL sets; the key comes from $OPENAI_API_KEY (an existing Secret). The UI shows the
    kept / retried / rejected counts by reason (Metrics) and a short summary (Markdown)."""
    from collections import namedtuple
    from pathlib import Path

    from medo1.config import load_config
    from medo1.data.translate import TranslateConfig, run_translate
    from medo1.pipeline_steps import translation_markdown, translation_metrics

    summaries = {}
    for name, path, data_format in (("sft", sft_data, "medical_o1"), ("rl", rl_data, "verifiable")):
        output = f"{run_dir}/data/{data_format}.{target_language.lower()}.jsonl"
        overrides = [
            f"input={path}",
            f"output={output}",
            f"format={data_format}",
            f"target_language={target_language}",
            f"model={model}",
        ]
        overrides += [f"base_url={base_url}"] if base_url else []
        overrides += [f"limit={limit}"] if limit > 0 else []
        summaries[name] = run_translate(load_config(TranslateConfig, None, overrides))  # prints its summary
    Path(summary.path).write_text(translation_markdown(summaries), encoding="utf-8")
    for name, value in translation_metrics(summaries).items():
        metrics.log_metric(name, value)
    return namedtuple("DataPaths", ["sft_data", "rl_data"])(summaries["sft"]["output"], summaries["rl"]["output"])


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
    report: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
    plan_strict: bool = False,
) -> str:
    """One training stage through the launcher; returns the export directory. The model, data and output
    paths (and the RL algorithm) are applied after the user's overrides, so the pipeline's wiring wins.
    The launcher plans the stage first: a stage that does not fit its GPUs is a warning in this step's log,
    or with `plan_strict` fails the step before its job is created. The UI gets the run's report.html
    (its plots embedded) and its final figures as Metrics."""
    import shutil
    import time
    from pathlib import Path

    from medo1.launch import launch_stage
    from medo1.pipeline_steps import chart_values, stage_overrides, training_metrics
    from medo1.training.run_report import REPORT_HTML, write_report_safely

    started = time.monotonic()
    launch_stage(
        stage,
        backend=backend,
        profile=profile,
        value_overrides=chart_values(
            data_pvc=data_pvc,
            checkpoints_pvc=checkpoints_pvc,
            hf_cache_pvc=hf_cache_pvc,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
        ),
        recipe=recipe,
        overrides=stage_overrides(overrides, model=model, data=data, output_dir=output_dir, algorithm=algorithm),
        job_name=job_name,
        timeout_s=timeout_hours * 3600,
        strict=plan_strict,
        # gpus_per_node 0 means a CPU run: local torchrun with one process (tiny models, this machine).
        nproc=None if gpus_per_node else 1,
        # Trainer v2: the RL stage's runtime by algorithm (medo1-ppo, medo1-grpo); SFT's is medo1-sft.
        runtime=f"medo1-{algorithm}" if backend == "trainjob" and algorithm else None,
    )
    wall_time_s = time.monotonic() - started
    html = Path(output_dir) / REPORT_HTML
    if not html.is_file():  # the job's rank 0 writes it; a failure to plot there is only a warning
        write_report_safely(output_dir)
    if html.is_file():
        shutil.copyfile(html, report.path)
    else:
        Path(report.path).write_text(f"<p>No {REPORT_HTML} in {output_dir}: see this step's log.</p>", encoding="utf-8")
    for name, value in training_metrics(output_dir, gpus=nodes * gpus_per_node, wall_time_s=wall_time_s).items():
        metrics.log_metric(name, value)
    return f"{output_dir}/export"


@component
def evaluate(
    model_dir: str,
    recipe: str,
    overrides: list,
    output_dir: str,
    compare: bool,
    base_model: str,
    sft_dir: str,
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
) -> float:
    """MCQ accuracy, format-ok rate, response length and reward of the RL export (with `compare`, of the base
    model and the SFT export too, on the same questions); the UI shows the metrics and the Markdown report."""
    import shutil

    from medo1.config import load_config
    from medo1.eval.config import EvalConfig
    from medo1.eval.run import run_eval
    from medo1.pipeline_steps import eval_wiring

    wiring = eval_wiring(
        model=model_dir, output_dir=output_dir, compare=compare, base_model=base_model, sft_dir=sft_dir
    )
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
def upload(
    model_dir: str,
    repo_id: str,
    recipe: str,
    base_model: str,
    eval_report: str,
    dry_run: bool,
    report: dsl.Output[dsl.Markdown],
) -> str:
    """Publish the RL export (token from $HF_TOKEN, an existing Secret); a dry run lists what would be sent."""
    import json
    from pathlib import Path

    from medo1.config import load_config
    from medo1.hub.config import UploadConfig
    from medo1.hub.upload import upload
    from medo1.pipeline_steps import upload_markdown

    overrides = [
        f"model_dir={model_dir}",
        f"repo_id={repo_id}",
        f"base_model={base_model}",
        f"eval_report={eval_report}",
        f"dry_run={str(dry_run).lower()}",
    ]
    result = upload(load_config(UploadConfig, recipe, overrides))
    print(json.dumps({key: value for key, value in result.items() if key != "card"}, indent=2, default=str))
    Path(report.path).write_text(upload_markdown(result), encoding="utf-8")
    return repo_id


def _on_volumes(task: dsl.PipelineTask, data_pvc, checkpoints_pvc, hf_cache_pvc) -> dsl.PipelineTask:
    """Every step: the shared volumes, the HF cache on its PVC, and the chart's non-root user."""
    pod = chart.chart_defaults()["podSecurityContext"]
    kubernetes.set_security_context(
        task, run_as_user=pod["runAsUser"], run_as_group=pod["runAsGroup"], run_as_non_root=True
    )
    for claim, mount in (
        (data_pvc, MOUNTS["data"]),
        (checkpoints_pvc, MOUNTS["checkpoints"]),
        (hf_cache_pvc, MOUNTS["hf_cache"]),
    ):
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount)
    task.set_env_variable("HF_HOME", MOUNTS["hf_cache"])
    return task


def _with_secret(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """The profile's Secret as the env variable the stage reads (optional: a dry run needs no token)."""
    secret = SECRETS[name]
    return kubernetes.use_secret_as_env(task, secret["name"], {secret["key"]: secret["key"]}, optional=True)


# The run form's parameters by what a user decides, commonest first: the pipeline docstring's `Args:` follow
# this order (a test checks it) and `python -m pipelines.submit --list` prints them so. The KFP UI itself lists
# a run form's fields in the compiled spec's key order, which the compiler sorts alphabetically (README).
PARAMETER_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Start here",
        ("profile", "sft_data", "rl_data", "target_language", "base_model", "upload_model", "hub_repo", "run_name"),
    ),
    ("Training", ("rl_algorithm", "recipe_dir", "sft_recipe", "rl_recipe", "sft_overrides", "rl_overrides")),
    (
        "Evaluation and upload",
        ("eval_recipe", "eval_overrides", "eval_compare", "min_eval_accuracy", "upload_dry_run", "upload_recipe"),
    ),
    ("Translation", ("translation_base_url", "translation_model", "translation_limit")),
    ("Cluster", ("backend", "nodes", "gpus_per_node", "timeout_hours", "plan_strict", "doctor_allow_unchecked")),
    ("Storage", ("data_pvc", "checkpoints_pvc", "hf_cache_pvc", "workspace")),
)


@dsl.pipeline(
    name="medo1",
    description="Medical reasoning LLM: doctor -> plan -> translate -> SFT -> RL (PPO, GRPO or RLOO) -> eval -> upload. "
    "Start with profile, sft_data, rl_data, target_language, base_model, upload_model and hub_repo; every other "
    "parameter has a default for the h100-1node profile. Each parameter's description is in the pipeline spec "
    "(`python -m pipelines.submit --list` prints them, grouped).",
)
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
    """Train a HuatuoGPT-o1-style medical reasoning model and, when asked, publish it.

    Args:
        profile: Chart profile the training jobs are rendered with (helm/profiles/NAME.yaml in the image):
            h100-1node (1 node x 8 H100, the default), h100-2nodes, h100-1node-trainjob or cpu-smoke; empty:
            the chart's defaults. Its cluster shape is replaced by nodes and gpus_per_node. The Secrets the steps
            read are the h100-1node profile's (compiled in).
        sft_data: SFT data in the medical-o1 format (Question, Complex_CoT, Response): a JSON, JSONL, Parquet,
            CSV or Arrow file on the data volume (mounted at /data), or hf://OWNER/NAME?split=S. Default: the
            published medical-o1 SFT set, copied to /data first.
        rl_data: RL problems in the verifiable format (Open-ended Verifiable Question, Ground-True Answer), in
            any form sft_data accepts. Default: the published verifiable problems, copied to /data first.
        target_language: Language to translate both data sets into before training, in words (e.g. Japanese).
            Empty (the default): no translation; the source files are format-checked and used as they are.
        base_model: Model SFT starts from: a Hub id (downloaded into the HF cache volume) or a model folder on a
            mounted volume. Default: Qwen/Qwen2.5-7B-Instruct, the size the default recipes are tuned for.
        upload_model: true: publish the RL model to hub_repo when the eval's average accuracy reaches
            min_eval_accuracy. false (the default): the run ends after the eval.
        hub_repo: Hub repository to publish to (OWNER/NAME); needed when upload_model is true. The token comes
            from the profile's hf-token Secret (key HF_TOKEN).
        run_name: Name of the run's folder under workspace and of its training jobs (1-40 lowercase letters,
            digits and '-'). Give an earlier run's name to resume it from its last complete checkpoints. Empty
            (the default): the KFP run id, a fresh run.
        rl_algorithm: RL algorithm: ppo (medo1's PPO with a value model and the verifier's reward, as
            published; the default), grpo or rloo (through TRL). Applied over rl_recipe's own algo; with
            backend trainjob it also picks the ClusterTrainingRuntime medo1-<algorithm> (the chart installs
            medo1-ppo and medo1-grpo).
        recipe_dir: Folder holding the recipes named below. Default /opt/medo1/recipes: the recipes in the image.
        sft_recipe: SFT recipe file in recipe_dir. Default: full fine-tuning of a 7B model on 8 H100s.
        rl_recipe: RL recipe file in recipe_dir. Default: PPO for a 7B model on 8 H100s; use
            rl-grpo-qwen2.5-7b-8xh100.yaml with rl_algorithm grpo.
        sft_overrides: Recipe overrides for SFT as a JSON list of "key=value" strings, e.g.
            ["train.epochs=1", "train.lr=5e-6"]. The model, data and output folder are the pipeline's and win.
            Default []: the recipe as it is.
        rl_overrides: Recipe overrides for RL, as sft_overrides (e.g. ["train.total_episodes=2000"]).
        eval_recipe: Eval recipe file in recipe_dir: its benchmarks and generation settings. Default
            eval-mcq.yaml: the medical MCQ benchmarks.
        eval_overrides: Overrides for the eval recipe, as sft_overrides (e.g. ["limit=200"] for a quick look).
        eval_compare: true: the base model and the SFT export answer the eval questions too, in one comparison
            table (three times the eval's time). false (the default): the RL model only.
        min_eval_accuracy: Average eval accuracy (0 to 1) the RL model must reach to be published. Default 0:
            any result is published when upload_model is true.
        upload_dry_run: true: the upload step lists the files and the model card it would send, and sends
            nothing. false (the default): it publishes.
        upload_recipe: Upload recipe file in recipe_dir (model card fields, license, private or public).
        translation_base_url: OpenAI-compatible endpoint that translates (e.g. http://vllm.models:8000/v1).
            Empty (the default): https://api.openai.com/v1. The key comes from the profile's openai Secret (key
            OPENAI_API_KEY).
        translation_model: Model name the translation endpoint serves. Default gpt-4o-mini.
        translation_limit: Translate only the first N records of each set (a trial run). Default 0: all of them.
        backend: Where the training stages run: pytorchjob (a PyTorchJob per stage, rendered from the chart;
            the default), trainjob (a Kubeflow Trainer v2 TrainJob on the chart's ClusterTrainingRuntimes) or
            local (torchrun inside the step's own pod: small CPU runs only).
        nodes: Nodes per training job. Default 1.
        gpus_per_node: GPUs per node of each training job. Default 8; 0: a CPU run (backend local, one process).
        timeout_hours: Longest a training job may run (its activeDeadlineSeconds; the launcher deletes it
            then). Time Kueue keeps it suspended does not count. Default 72.
        plan_strict: true: the plan step fails the run when a stage does not fit its GPUs (or cannot be
            planned), before any training starts. false (the default): a warning in the plan and in the
            training step's log.
        doctor_allow_unchecked: true: the doctor step passes when some checks could not be made with the step's
            service account (what it may not read is listed with the grant it needs); none may fail. false (the
            default): a check that could not be made fails the run, as a failed one does.
        data_pvc: Existing PVC holding the data, mounted at /data in every step and job. Default medo1-data:
            the chart's claim (install it with helm/profiles/infrastructure.yaml).
        checkpoints_pvc: Existing PVC for checkpoints, exports and reports (the workspace), mounted at
            /checkpoints. Default medo1-checkpoints: the chart's claim.
        hf_cache_pvc: Existing PVC for the Hugging Face cache (models and datasets downloaded once), mounted at
            /hf-cache. Default medo1-hf-cache: the chart's claim.
        workspace: Folder on the checkpoints volume that holds one folder per run. Default /checkpoints/runs.

    Returns:
        The RL model's average eval accuracy (0 to 1).
    """
    volumes = dict(data_pvc=data_pvc, checkpoints_pvc=checkpoints_pvc, hf_cache_pvc=hf_cache_pvc)
    preflight = _on_volumes(
        doctor(
            backend=backend,
            profile=profile,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            allow_unchecked=doctor_allow_unchecked,
            **volumes,
        ),
        **volumes,
    )
    preflight.set_display_name("doctor").set_caching_options(False)
    run = _on_volumes(
        run_directory(workspace=workspace, run_name=run_name, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), **volumes
    )
    run.after(preflight)
    run.set_display_name("run folder").set_caching_options(False)
    run_dir = run.outputs["path"]

    recipes = dict(
        sft_recipe=f"{recipe_dir}/{sft_recipe}",
        rl_recipe=f"{recipe_dir}/{rl_recipe}",
        eval_recipe=f"{recipe_dir}/{eval_recipe}",
    )
    planned = plan(
        **recipes,
        sft_overrides=sft_overrides,
        rl_overrides=rl_overrides,
        eval_overrides=eval_overrides,
        base_model=base_model,
        sft_data=sft_data,
        rl_data=rl_data,
        rl_algorithm=rl_algorithm,
        run_dir=run_dir,
        backend=backend,
        profile=profile,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        plan_strict=plan_strict,
        eval_compare=eval_compare,
        **volumes,
    )
    _with_secret(planned, "hfToken")  # the Hub ids it checks are read with the token the stages get
    _on_volumes(planned, **volumes).set_display_name("plan").set_caching_options(False)

    with dsl.If(target_language != "", name="translate (target_language set)"):
        translated = translate(
            sft_data=sft_data,
            rl_data=rl_data,
            target_language=target_language,
            base_url=translation_base_url,
            model=translation_model,
            limit=translation_limit,
            run_dir=run_dir,
        )
        _with_secret(translated, "translationApiKey")
        _on_volumes(translated, **volumes).set_retry(2).set_caching_options(False)
        translated.after(planned)
    with dsl.Else(name="source language (no target_language)") as keep_source:
        source = _on_volumes(check_data(sft_data=sft_data, rl_data=rl_data), **volumes).set_caching_options(False)
        source.set_display_name("check data").after(planned)
    # dsl.If/Else sit in a group KFP names condition-branches-N; the graph shows what it decides instead.
    keep_source.parent_task_group.display_name = "data: translate or keep the source language"

    launcher = dict(
        backend=backend,
        profile=profile,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        timeout_hours=timeout_hours,
        plan_strict=plan_strict,
        **volumes,
    )
    sft = train(
        stage="sft",
        recipe=recipes["sft_recipe"],
        model=base_model,
        data=dsl.OneOf(translated.outputs["sft_data"], source.outputs["sft_data"]),
        algorithm="",
        overrides=sft_overrides,
        output_dir=f"{run_dir}/sft",
        job_name=f"medo1-sft-{run.outputs['name']}",
        **launcher,
    )
    rl = train(
        stage="rl",
        recipe=recipes["rl_recipe"],
        model=sft.outputs["Output"],
        data=dsl.OneOf(translated.outputs["rl_data"], source.outputs["rl_data"]),
        algorithm=rl_algorithm,
        overrides=rl_overrides,
        output_dir=f"{run_dir}/rl",
        job_name=f"medo1-rl-{run.outputs['name']}",
        **launcher,
    )
    # Display names are fixed when the pipeline compiles: a pipeline parameter in one would show as a placeholder.
    for task, name in ((sft, "sft"), (rl, "rl")):
        _on_volumes(task, **volumes).set_display_name(name).set_caching_options(False)
        task.set_retry(TRAINING_RETRIES, backoff_duration="60s")
        task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)

    # eval_compare: the base model and the SFT export answer the eval questions too (three times the eval time).
    scores = evaluate(
        model_dir=rl.outputs["Output"],
        recipe=recipes["eval_recipe"],
        overrides=eval_overrides,
        output_dir=f"{run_dir}/eval",
        compare=eval_compare,
        base_model=base_model,
        sft_dir=sft.outputs["Output"],
    )
    _on_volumes(scores, **volumes).set_display_name("eval").set_caching_options(False)
    scores.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    scores.set_cpu_request("16").set_memory_request("128Gi").set_cpu_limit("16").set_memory_limit("128Gi")
    kubernetes.add_toleration(scores, **GPU_TOLERATION)

    with dsl.If(upload_model == True, name="upload requested (upload_model)"):  # noqa: E712 (a KFP condition)
        with dsl.If(scores.outputs["Output"] >= min_eval_accuracy, name="eval accuracy >= min_eval_accuracy"):
            published = upload(
                model_dir=rl.outputs["Output"],
                repo_id=hub_repo,
                recipe=f"{recipe_dir}/{upload_recipe}",
                base_model=base_model,
                eval_report=f"{run_dir}/eval/report.json",
                dry_run=upload_dry_run,
            )
            _with_secret(published, "hfToken")
            _on_volumes(published, **volumes).set_retry(2).set_caching_options(False)
    return scores.outputs["Output"]


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(medo1_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
