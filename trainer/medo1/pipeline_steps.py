"""The library side of the Kubeflow pipeline's steps (`pipelines/medo1_pipeline.py`): the chart values and stage
overrides the plan and training steps share, the plan of the pipeline's stages, and what each step shows in the
Kubeflow Pipelines UI.

KFP ships each component's source alone, so what its steps have in common lives here, in the image's medo1.
The UI shows a step's `Markdown` and `HTML` artifacts as pages and its `Metrics` as a table of name -> number,
which the run comparison puts side by side across runs; the local runner (`python -m pipelines.run_local`)
writes the same artifacts under the run's KFP outputs folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medo1.training.metrics import read_metrics

# Final figures of a training run are the mean of its last few logged steps: one step's reward or loss is noisy.
FINAL_WINDOW = 5


# ---- wiring shared by the plan and training steps ------------------------------------------------------------


def chart_values(
    *, data_pvc: str, checkpoints_pvc: str, hf_cache_pvc: str, nodes: int, gpus_per_node: int
) -> list[str]:
    """The chart values (`key=value`) of a pipeline run's jobs: its PVCs and cluster shape. `gpus_per_node` 0 is a
    CPU run (the local backend), which keeps the chart's GPU count out of the values."""
    values = [
        f"storage.data.existingClaim={data_pvc}",
        f"storage.checkpoints.existingClaim={checkpoints_pvc}",
        f"storage.hfCache.existingClaim={hf_cache_pvc}",
        f"cluster.nodes={nodes}",
    ]
    return values + ([f"cluster.gpusPerNode={gpus_per_node}"] if gpus_per_node else [])


def stage_overrides(
    overrides: Iterable[str], *, model: str, data: str, output_dir: str, algorithm: str = ""
) -> list[str]:
    """A training stage's recipe overrides: the user's, then the pipeline's wiring (model, data, output folder and
    the RL algorithm), so the wiring wins."""
    wiring = [f"model.name_or_path={model}", f"data.path={data}", f"output.dir={output_dir}"]
    return [*overrides, *wiring, *([f"algo={algorithm}"] if algorithm else [])]


# ---- plan ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    plan: Any = None
    """A `medo1.plan.stages.StagePlan`, or None when none could be made (`problem` says why)."""
    problem: str = ""


def eval_wiring(*, model: str, output_dir: str, compare: bool, base_model: str, sft_dir: str) -> list[str]:
    """The eval step's overrides after the user's: the RL export as `rl`, and with `compare` (eval_compare) the base
    model and the SFT export beside it. The plan step checks the eval's inputs with the same wiring."""
    wiring = [f"model={model}", f"output_dir={output_dir}", "label=rl"]
    return wiring + ([f"compare_with.base={base_model}", f"compare_with.sft={sft_dir}"] if compare else [])


def check_launch_inputs(launches: Sequence[tuple[str, dict[str, Any]]], *, mounts: Sequence[str]) -> None:
    """Every stage's inputs as the run launches them (`medo1.launch.inputs`, as `medo1 launch chain` checks a
    chain's): data files, local model folders, and Hub ids in the HF cache or readable with $HF_TOKEN. A missing one
    raises InputsMissing, one line each naming the stage, the path or id and the fix, before any stage starts;
    what an earlier stage writes (the SFT export the RL stage reads) is not checked. `mounts`: the step's volume
    paths (a path under one that is not mounted here is not checked); none on a local run."""
    import os

    from medo1 import chart
    from medo1.launch.inputs import StagePlan, check_inputs
    from medo1.launch.rendering import stage_section
    from medo1.plan.stages import local_recipe

    plans = []
    for stage, values in launches:
        config = chart.with_chart_defaults(values)[stage_section(stage)][stage]
        plans.append(
            StagePlan(
                stage, str(local_recipe(config["recipe"])), list(config.get("set", [])), os.environ.get("HF_TOKEN")
            )
        )
    check_inputs(plans, mounts)


def plan_stages(launches: Sequence[tuple[str, dict[str, Any]]]) -> list[PlannedStage]:
    """Memory, time and checkpoint size of each (stage, chart values as `medo1.launch.rendering.job_values` gives
    them), in order: the plan the launcher's pre-flight checks, with the time estimate too. A stage that starts
    from an earlier stage's export gets that stage's architecture. A stage that cannot be planned (a model not
    on this machine and of no known architecture, a recipe error) is reported, not raised."""
    from medo1 import chart
    from medo1.config import ConfigError
    from medo1.plan.check import stage_cluster, stage_config
    from medo1.plan.stages import NothingToSize, local_recipe, plan_stage

    planned: list[PlannedStage] = []
    exports: dict[str, str] = {}
    for stage, values in launches:
        merged = chart.with_chart_defaults(values)
        config = stage_config(stage, merged)
        try:
            plan = plan_stage(
                str(local_recipe(str(config["recipe"]))),
                cluster=stage_cluster(stage, merged),
                overrides=[str(o) for o in config.get("set", [])],
                stage=stage,
                exports=exports,
                headroom=float(merged["plan"]["headroom"]),
            )
        except NothingToSize as exc:
            planned.append(PlannedStage(stage, problem=f"nothing to plan: {exc}"))
            continue
        except (ConfigError, ValueError, OSError) as exc:
            planned.append(PlannedStage(stage, problem=str(exc)))
            continue
        if plan.export_dir:
            exports[plan.export_dir.rstrip("/")] = plan.model.name
        planned.append(PlannedStage(stage, plan))
    return planned


def _gib(value: float) -> float:
    from medo1.plan.memory import GIB

    return round(value / GIB, 2)


def plan_metrics(planned: Sequence[PlannedStage]) -> dict[str, float]:
    """Per stage: predicted memory per GPU (or CPU process) in GiB, whether it fits (1 or 0; absent when the
    memory limit is unknown, as on a CPU), hours and GPU-hours; and the pipeline's GPU-hours and checkpoint volume."""
    metrics: dict[str, float] = {}
    gpu_hours = checkpoint_bytes = 0.0
    for item in planned:
        plan = item.plan
        if plan is None:
            continue
        metrics[f"{item.stage}_memory_gib"] = _gib(plan.total)
        if plan.fits is not None:
            metrics[f"{item.stage}_fits"] = float(plan.fits)
        if "hours" in plan.time:
            metrics[f"{item.stage}_hours"] = float(plan.time["hours"])
            metrics[f"{item.stage}_gpu_hours"] = float(plan.time["gpu_hours"])
            gpu_hours += float(plan.time["gpu_hours"])
        checkpoint_bytes += plan.checkpoint.get("total", 0)
    metrics["gpu_hours"] = round(gpu_hours, 2)
    metrics["checkpoint_volume_gib"] = _gib(checkpoint_bytes)
    return metrics


def plan_verdict(planned: Sequence[PlannedStage]) -> str:
    """One line: every stage fits, which do not, or that a CPU run has no memory limit to check."""
    if any(item.plan is None and not item.problem.startswith("nothing to plan") for item in planned):
        unplanned = ", ".join(item.stage for item in planned if item.plan is None)
        return f"no plan for {unplanned}: whether it fits is not known"
    plans = [item.plan for item in planned if item.plan is not None]
    misfits = [plan.stage for plan in plans if plan.fits is False]
    if misfits:
        return f"DOES NOT FIT: {', '.join(misfits)}"
    if any(plan.cuda for plan in plans):
        return "every stage fits its GPUs"
    if any(plan.fits for plan in plans):
        return "CPU run: every stage fits the memory its pod asks for"
    return "CPU run: no memory limit to check"


def plan_markdown(planned: Sequence[PlannedStage]) -> str:
    """The plan as the UI shows it: one row per stage, the pipeline's totals, and `medo1 plan`'s full table."""
    from medo1.plan.cli import stage_table

    lines = [
        "# Plan",
        "",
        f"**{plan_verdict(planned)}**",
        "",
        "| stage | resources | model | memory per GPU (GiB) | usable (GiB) | fits | time (h) | GPU-hours | checkpoints (GiB) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for item in planned:
        plan = item.plan
        if plan is None:
            lines.append(f"| {item.stage} | | | | | {item.problem} | | | |")
            continue
        usable = "" if plan.usable is None else f"{_gib(plan.usable):,.2f}"
        fits = {True: "yes", False: "**no**", None: "no limit known"}[plan.fits]
        time = plan.time
        lines.append(
            f"| {item.stage} | {plan.cluster.describe()} | {plan.model.name} | {_gib(plan.total):,.2f} | {usable} | {fits} "
            f"| {time.get('hours', '')} | {time.get('gpu_hours', '')} | {_gib(plan.checkpoint.get('total', 0)):,.2f} |"
        )
    totals = plan_metrics(planned)
    lines += [
        "",
        f"Pipeline: {totals['gpu_hours']} GPU-hours; checkpoint volume {totals['checkpoint_volume_gib']} GiB "
        "(time and GPU-hours are estimates at the recipe's settings; a CPU run has none).",
    ]
    details = [line for item in planned if item.plan is not None for line in [*stage_table(item.plan), ""]]
    if details:
        lines += ["", "## Each stage, part by part (`medo1 plan`)", "", "```", *details, "```"]
    return "\n".join(lines).rstrip() + "\n"


# ---- doctor ----------------------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def doctor_markdown(findings: Sequence[Any], namespace: str) -> str:
    """`medo1 doctor`'s findings (`medo1.doctor.Finding`) as a table, failures first, each with its fix."""
    order = {"fail": 0, "unchecked": 1, "warn": 2, "info": 3, "pass": 4}
    counts = {status: sum(f.status == status for f in findings) for status in order}
    lines = [
        f"# Doctor: namespace `{namespace}`",
        "",
        f"**{counts['fail']} failed, {counts['unchecked']} unchecked, {counts['warn']} warnings, "
        f"{counts['info']} not checkable here, {counts['pass']} passed**",
        "",
        "| check | status | detail | fix |",
        "|---|---|---|---|",
    ]
    for f in sorted(findings, key=lambda f: order[f.status]):
        status = f"**{f.status}**" if f.status != "pass" else f.status
        lines.append(f"| {_cell(f.check)} | {status} | {_cell(f.detail)} | {_cell(f.fix)} |")
    return "\n".join(lines) + "\n"


def doctor_skipped_markdown(backend: str) -> str:
    return (
        f"# Doctor\n\nSkipped: backend `{backend}`. The doctor checks the namespace a `pytorchjob` run launches "
        "into (CRDs, Secrets, PVCs, permissions, GPU nodes, Kueue queues); this run has none to check.\n"
    )


# ---- translate and the source-data check -----------------------------------------------------------------------


def translation_metrics(summaries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per data set (`sft`, `rl`): records, kept, rejected, from the cache, validation retries and HTTP retries,
    and the retried / rejected counts by reason (a record failing two checks counts under both)."""
    metrics: dict[str, float] = {}
    for name, summary in summaries.items():
        metrics.update(
            {
                f"{name}_records": summary["records"],
                f"{name}_kept": summary["translated"],
                f"{name}_rejected": summary["rejected"],
                f"{name}_from_cache": summary["from_cache"],
                f"{name}_validation_retries": summary["validation_retries"],
                f"{name}_http_retries": summary["retries"],
            }
        )
        for kind in ("retried", "rejected"):
            for reason, count in sorted(summary[f"{kind}_by_reason"].items()):
                metrics[f"{name}_{kind}_{reason}"] = count
    return metrics


def translation_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    first = next(iter(summaries.values()))
    lines = [
        f"# Translation into {first['target_language']} ({first['model']})",
        "",
        "| data set | records | kept | rejected | from cache | retried (validation) | HTTP retries | tokens in / out | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['records']} | {s['translated']} | {s['rejected']} | {s['from_cache']} "
            f"| {s['validation_retries']} | {s['retries']} | {s['prompt_tokens']:,} / {s['completion_tokens']:,} "
            f"| {s['elapsed_s']} |"
        )
    for name, s in summaries.items():
        reasons = [
            f"{kind} for `{reason}`: {count}"
            for kind in ("retried", "rejected")
            for reason, count in sorted(s[f"{kind}_by_reason"].items())
        ]
        if reasons:
            lines += ["", f"**{name}** by reason: " + "; ".join(reasons)]
        if s.get("rejects"):
            lines += ["", f"**{name}** rejected rows, with their reasons: `{s['rejects']}`"]
        for warning in s.get("warnings", []):
            lines += ["", f"**{name}** warning: {warning}"]
    lines += ["", "Output: " + ", ".join(f"`{s['output']}`" for s in summaries.values())]
    return "\n".join(lines) + "\n"


def data_check_markdown(checked: dict[str, tuple[str, int, Sequence[Any]]]) -> str:
    """`checked`: data set -> (path, valid rows, problems), for a run that keeps the source language."""
    lines = [
        "# Source data (no translation)",
        "",
        "| data set | file | valid rows | invalid rows |",
        "|---|---|---:|---:|",
    ]
    for name, (path, valid, problems) in checked.items():
        lines.append(f"| {name} | `{path}` | {valid} | {len(problems)} |")
    for name, (_, _, problems) in checked.items():
        if problems:
            lines += ["", f"**{name}**, first invalid rows:", ""] + [f"- {_cell(p)}" for p in list(problems)[:10]]
    return "\n".join(lines) + "\n"


# ---- training --------------------------------------------------------------------------------------------------

# (metric name, the metrics.jsonl keys it reads, first found wins): what a user compares across runs.
TRAINING_FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("token_accuracy", ("mean_token_accuracy",)),
    ("reward", ("reward_mean", "reward")),
    ("format_ok", ("format_ok_rate", "rewards/format_ok/mean")),
    ("correct", ("verifier_true_rate", "rewards/verifier_true/mean")),
    ("kl", ("kl",)),
    ("response_length", ("response_length", "completions/mean_length")),
    ("tokens_per_second", ("tokens_per_second",)),
    ("generated_tokens_per_second", ("generated_tokens_per_second",)),
)


def _numbers(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [
        float(r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])
    ]


def train_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Seconds the training loop ran: medo1's PPO logs each update's generation, scoring and training time (kept
    across a resume); the transformers trainers log `train_runtime` at the end (the last session's, on a resume)."""
    per_update = [
        sum(float(r.get(k, 0.0)) for k in ("time_generation", "time_scoring", "time_training"))
        for r in rows
        if "time_training" in r
    ]
    if per_update:
        return round(sum(per_update), 1)
    runtimes = _numbers(rows, "train_runtime")
    return round(runtimes[-1], 1) if runtimes else None


def training_metrics(run_dir: str | Path, *, gpus: int, wall_time_s: float | None = None) -> dict[str, float]:
    """A training run's final figures from its metrics.jsonl: each of TRAINING_FIGURES the run logged (the mean
    of its last FINAL_WINDOW logged steps), steps, training seconds, GPU-hours (`gpus` x training seconds: the
    figure `medo1 plan` predicts; 0 on a CPU) and the step's wall time (`wall_time_s`: the launch, queueing,
    loading and saving included)."""
    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if isinstance(r, dict)]
    steps = [r for r in rows if "step" in r and "train_runtime" not in r]
    metrics: dict[str, float] = {}
    for name, keys in TRAINING_FIGURES:
        for key in keys:
            values = _numbers(steps, key)
            if values:
                window = values[-FINAL_WINDOW:]
                metrics[name] = round(sum(window) / len(window), 6)
                break
    if steps:
        metrics["steps"] = float(max(r["step"] for r in steps))
    seconds = train_seconds(rows)
    if seconds is not None:
        metrics["train_time_s"] = seconds
        metrics["gpu_hours"] = round(gpus * seconds / 3600, 3)
    if wall_time_s is not None:
        metrics["wall_time_s"] = round(wall_time_s, 1)
    return metrics


# ---- upload ----------------------------------------------------------------------------------------------------


def upload_markdown(result: dict[str, Any]) -> str:
    """What `medo1.hub.upload.upload` sent (or, on a dry run, would send)."""
    files = [(f["path"], f["size"]) if isinstance(f, dict) else (f, None) for f in result.get("files", [])]
    if result.get("dry_run"):
        head = [
            f"# Upload (dry run): nothing was sent to `{result['repo_id']}`",
            "",
            f"{len(files)} files, {result.get('total_bytes', 0):,} bytes would go up.",
        ]
    else:
        head = [f"# Upload: `{result['repo_id']}`", "", f"Commit: {result.get('commit_url', '')}"]
    lines = [*head, "", "| file | bytes |", "|---|---:|"]
    lines += [f"| `{path}` | {'' if size is None else f'{size:,}'} |" for path, size in files]
    skipped = result.get("skipped", [])
    if skipped:
        lines += ["", "Left out:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"
