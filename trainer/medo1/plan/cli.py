"""`medo1 plan` output: a table for people, JSON for machines, and the command itself."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import ConfigDict, Field

from medo1.config import Section
from medo1.plan.memory import GIB
from medo1.plan.stages import StagePlan


def gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def pipeline_summary(plans: list[StagePlan], price_per_gpu_hour: float | None) -> dict[str, Any]:
    hours = [plan.time.get("gpu_hours") for plan in plans]
    known = [value for value in hours if value is not None]
    summary: dict[str, Any] = {
        "gpu_hours": round(sum(known), 1) if known else None,
        "stages_without_time": [plan.stage for plan, value in zip(plans, hours) if value is None],
        "fits": all(plan.fits is not False for plan in plans),
        "checkpoint_volume_bytes": round(sum(plan.checkpoint.get("total", 0) for plan in plans)),
    }
    if price_per_gpu_hour is not None and known:
        summary["price_per_gpu_hour"] = price_per_gpu_hour
        summary["cost"] = round(sum(known) * price_per_gpu_hour, 2)
    return summary


def as_json(plans: list[StagePlan], price_per_gpu_hour: float | None) -> dict[str, Any]:
    return {"stages": [plan.as_dict() for plan in plans], "pipeline": pipeline_summary(plans, price_per_gpu_hour)}


def stage_table(plan: StagePlan) -> list[str]:
    memory = plan.breakdown.as_dict(plan.cuda)
    device = "GPU" if plan.cuda else "process"
    lines = [
        f"{plan.stage}: {plan.recipe} on {plan.cluster.describe()} ({plan.model.name}, {plan.model.parameters / 1e9:.2f}B parameters)",
        f"  {'memory per ' + device:<48} {'GiB':>8}",
    ]
    rows = [(name, value) for name, value in memory["resident"].items()]
    for phase, parts in memory["phases"].items():
        marker = ", peak" if phase == memory["peak_phase"] else ""
        rows += [(f"[{phase}{marker}] {name}", value) for name, value in parts.items()]
    rows += [("allocator slack (5%)", memory["allocator_slack"]), ("CUDA context", memory["cuda_context"])]
    lines += [f"    {name:<46} {gib(value):>8}" for name, value in rows if value]
    lines += [f"    note: {note}" for note in memory["notes"]]
    if plan.usable is None:
        lines.append(f"    {'total':<46} {gib(plan.total):>8} (no memory limit known: cannot say whether it fits)")
    else:
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        lines.append(
            f"    {'total':<46} {gib(plan.total):>8} of {gib(plan.cluster.capacity)} "
            f"({gib(plan.usable)} usable at {plan.headroom:.0%} headroom): {verdict}"
        )
    if plan.largest_micro_batch is not None:
        lines.append(f"  largest micro-batch that fits: {plan.largest_micro_batch} (recipe: {plan.micro_batch})")
    for suggestion in plan.suggestions:
        lines.append(f"  suggestion: {suggestion['change']}: --set {' --set '.join(suggestion['set'])}")
    if plan.strategies:
        lines.append(
            "  full fine-tuning model states per GPU by sharding (GiB): "
            + ", ".join(f"{name} {gib(value)}" for name, value in plan.strategies.items())
        )
    lines += time_lines(plan)
    if plan.checkpoint:
        c = plan.checkpoint
        lines.append(
            f"  checkpoint volume: {gib(c['per_checkpoint'])} GiB per checkpoint x {c['kept']} kept"
            f" + export {gib(c['export'])} GiB = {gib(c['total'])} GiB"
        )
    return lines


def time_lines(plan: StagePlan) -> list[str]:
    time = plan.time
    lines = []
    if plan.stage == "sft":
        lines.append(f"  data: {time['data']['source']}")
        if "tokens" in time:
            lines.append(
                f"  tokens: {time['tokens']:,} over {time['optimizer_steps']} optimizer steps; "
                f"{time['flops_per_token'] / 1e9:,.1f} GFLOP per token ({time['flops_per_token_formula']})"
            )
    elif plan.stage == "rl":
        lines.append(
            f"  rollouts: {time['episodes']:,} episodes, {time['response_tokens']}, prompts {time['prompt_tokens_assumed']} tokens (assumed)"
        )
        if "rollout_hours" in time:
            lines.append(
                f"  rollout: {time['rollout_tokens_per_second_per_gpu']:,} tokens/s per GPU ({time['rollout_source']}): "
                f"{time['rollout_hours']} h; training and scoring {time['training_and_scoring_hours']} h"
            )
    elif plan.stage == "eval":
        lines.append(
            f"  eval: {time['rows']:,} rows, {time['responses']:,} responses ({time['models']} model(s)) x "
            f"{time['new_tokens']}, engine {time['engine']}; " + "; ".join(time["sources"])
        )
        if "minutes" in time:
            lines.append(
                f"  decoding: {time['tokens_per_second']:,} tokens/s with {time['sequences_in_flight']} sequences "
                f"in flight ({time['bound']} bound): {time['minutes']} min"
            )
    if "hours" in time:
        source = f", {time['utilisation_source']}" if "utilisation" in time else ""
        lines.append(f"  time: {time['hours']} h = {time['gpu_hours']} GPU-hours{source}")
    elif "note" in time:
        lines.append(f"  time: {time['note']}")
    return lines


def table(plans: list[StagePlan], price_per_gpu_hour: float | None) -> str:
    lines: list[str] = []
    for plan in plans:
        lines += stage_table(plan) + [""]
    summary = pipeline_summary(plans, price_per_gpu_hour)
    if len(plans) > 1 or price_per_gpu_hour is not None:
        total = f"pipeline: {summary['gpu_hours']} GPU-hours"
        if "cost" in summary:
            total += f", {summary['cost']:,.2f} at {price_per_gpu_hour}/GPU-hour"
        if summary["stages_without_time"]:
            total += f" (no time for: {', '.join(summary['stages_without_time'])})"
        total += f"; checkpoint volume {gib(summary['checkpoint_volume_bytes'])} GiB; "
        total += "every stage fits" if summary["fits"] else "SOME STAGE DOES NOT FIT"
        lines.append(total)
    return "\n".join(lines).rstrip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a stage's YAML recipe; without it, every stage --profile enables")
    parser.add_argument("--stage", choices=["sft", "rl", "eval"], help="the recipe's stage (default: from its keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument("--profile", help="cluster (and, without --config, stages) from helm/profiles/NAME.yaml")
    parser.add_argument("--nodes", type=int, help="nodes (replaces the profile's)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (replaces the profile's)")
    parser.add_argument(
        "--gpu", help="GPU kind: h100-80gb, h100-pcie-80gb, h200-141gb, a100-80gb, a100-40gb, l40s-48gb"
    )
    parser.add_argument(
        "--architecture", help="the model's architecture when its path is not on this machine (e.g. Qwen2.5-7B)"
    )
    parser.add_argument(
        "--verifier-architecture", help="the verifier's architecture when its path is not on this machine"
    )
    parser.add_argument("--headroom", type=float, default=0.10, help="share of GPU memory to leave free (default 0.10)")
    parser.add_argument(
        "--mfu", type=float, help="utilisation of the GPUs' bf16 peak to assume (default: measured, else 0.35)"
    )
    parser.add_argument("--price-per-gpu-hour", type=float, help="cost of one GPU-hour, for the pipeline's cost")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a stage does not fit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class PlanOptions(Section):
    """`medo1 plan`'s numeric options, bounded here so that nonsense is one line, never a plan that "fits"."""

    model_config = ConfigDict(allow_inf_nan=False)
    nodes: int | None = Field(None, ge=1)
    """--nodes: nodes of the cluster."""
    gpus_per_node: int | None = Field(None, ge=0)
    """--gpus-per-node: GPUs per node; 0 plans a CPU run."""
    headroom: float = Field(0.10, ge=0, lt=1)
    """--headroom: share of GPU memory to leave free."""
    mfu: float | None = Field(None, gt=0, le=1)
    """--mfu: share of the GPUs' bf16 peak a training step uses."""
    price_per_gpu_hour: float | None = Field(None, ge=0)
    """--price-per-gpu-hour: cost of one GPU-hour."""


def check_options(args: argparse.Namespace) -> PlanOptions:
    from pydantic import ValidationError

    from medo1.config import ConfigError

    try:
        return PlanOptions.model_validate({name: getattr(args, name) for name in PlanOptions.model_fields})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(err['loc'][0]).replace('_', '-')} {err['input']}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(problems) from None


def run(args: argparse.Namespace) -> int:
    from medo1.config import ConfigError
    from medo1.plan.pipeline import plan_pipeline, plan_recipe

    check_options(args)
    options = {
        "architecture": args.architecture,
        "verifier_architecture": args.verifier_architecture,
        "headroom": args.headroom,
        "utilisation": args.mfu,
    }
    if args.config:
        plans = [
            plan_recipe(
                args.config,
                profile=args.profile,
                nodes=args.nodes,
                gpus_per_node=args.gpus_per_node,
                gpu=args.gpu,
                overrides=args.set,
                stage=args.stage,
                **options,
            )
        ]
    elif args.profile:
        if args.set or args.nodes is not None or args.gpus_per_node is not None:
            raise ConfigError(
                "--set, --nodes and --gpus-per-node need --config (a profile's stages take theirs from the profile)"
            )
        plans = plan_pipeline(args.profile, gpu=args.gpu, **options)
        if not plans:
            print(f"profile {args.profile} enables no stage that runs on our machines (sft, rl, eval): nothing to plan")
            return 0
    else:
        raise ConfigError("give --config RECIPE, --profile PROFILE, or both")
    if args.json:
        print(json.dumps(as_json(plans, args.price_per_gpu_hour), indent=2))
    else:
        print(table(plans, args.price_per_gpu_hour))
    return 3 if args.strict and any(plan.fits is False for plan in plans) else 0
