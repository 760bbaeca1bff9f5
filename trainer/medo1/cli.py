"""`medo1` command line: a thin layer over the library functions of each stage."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path

from medo1.config import (
    ConfigError,
    OutputConfig,
    check_model_reference,
    check_output_dir,
    check_output_file,
    check_outputs_apart,
    describe_options,
    load_config,
    read_yaml_mapping,
    stage_config_class,
)
from medo1.data.sources import PRESETS
from medo1.errors import Medo1Error
from medo1.launch import (
    DEFAULT_POLL_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_SCALE_UP_WAIT_S,
    DEFAULT_STUCK_AFTER_S,
    DEFAULT_TIMEOUT_S,
)
from medo1.launch.kubernetes import DEFAULT_DELETE_WAIT_S
from medo1.training import termination
from medo1.training.paths import check_training_paths
from medo1.training.process import exit_with_parent, is_main_process


def _key_values(items: list[str], flag: str, form: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected {form}")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def cmd_data_validate(args: argparse.Namespace) -> int:
    from medo1.data.sources import load_examples
    from medo1.data.validate import validation_report

    if args.max_length is not None and args.max_length < 1:
        raise ConfigError(f"--max-length {args.max_length}: must be at least 1")
    if args.tokenizer:
        check_model_reference(args.tokenizer, "--tokenizer")
    if args.rejects:
        check_output_file(args.rejects, "--rejects")
        check_outputs_apart({"--rejects": args.rejects}, {"the data file": args.path, "--tokenizer": args.tokenizer})
    loaded = load_examples(
        args.path,
        args.format,
        args.preset,
        _key_values(args.field, "--field", "NAME=COLUMN"),
        args.system_prompt,
        duplicates=args.duplicates,
    )
    tokenizer = None
    if args.tokenizer:
        from medo1.models import load_tokenizer  # torch and transformers: only for token statistics

        tokenizer = load_tokenizer(args.tokenizer)
    report = validation_report(loaded, tokenizer, args.max_length)
    if args.rejects and loaded.problems:
        from medo1.data.sources import write_rejects

        write_rejects(args.rejects, loaded.problems, loaded.raw)
        report["rejects_file"] = args.rejects
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(
            f"{report['path']} ({report['format']}): {report['rows']} rows, {report['valid']} valid, {report['invalid']} invalid"
        )
        for problem in loaded.problems[:20]:
            print(f"  {problem}")
        if len(loaded.problems) > 20:
            print(f"  ... and {len(loaded.problems) - 20} more (use --json or --rejects for all)")
        if loaded.duplicates and args.duplicates == "keep":
            pairs = ", ".join(f"row {row} = row {first}" for row, first in loaded.duplicates[:5])
            more = ", ..." if len(loaded.duplicates) > 5 else ""
            print(
                f"  warning: {len(loaded.duplicates)} duplicate row(s) ({pairs}{more}); --duplicates reject makes them invalid"
            )
        if "tokens" in report and report["tokens"].get("count"):
            t = report["tokens"]
            over = f", {t['over_max_length']} over max length {t['max_length']}" if "max_length" in t else ""
            print(f"  tokens: mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']}{over}")
    return 1 if loaded.problems else 0


def _training_config(args: argparse.Namespace, config_class, extra_overrides: list[str]):
    """Recipe + overrides -> typed config, its bounds checked by the types (before the stage imports torch)."""
    overrides = list(args.set) + extra_overrides
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    config = load_config(config_class, args.config, overrides)
    if args.allow_changed:
        config.resume.allow_changes = [*config.resume.allow_changes, *args.allow_changed]
    return config


def _run_training(config, run, resume: str) -> int:
    """Runs the stage; prints where the outputs landed (rank 0), and whether the run had finished before."""
    result = run(config, resume=resume)
    if is_main_process():
        export = str(result.export_dir) if result.export_dir else None
        print(
            json.dumps(
                {
                    "output_dir": str(result.output_dir),
                    "final_step": result.final_step,
                    "export_dir": export,
                    "already_finished": result.already_finished,
                }
            )
        )
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from medo1.sft.config import SFTConfig

    config = _training_config(args, SFTConfig, [])
    check_training_paths(config)
    from medo1.sft.trainer import run_sft

    return _run_training(config, run_sft, args.resume)


def cmd_rl(args: argparse.Namespace) -> int:
    from medo1.rl.config import RLConfig

    config = _training_config(args, RLConfig, [f"algo={args.algo}"] if args.algo else [])
    models = {"ppo.value_model": config.ppo.value_model if config.algo == "ppo" else None}
    if config.reward.kind == "verifier":
        models |= {"reward.model": config.reward.model, "reward.tokenizer": config.reward.tokenizer}
    check_training_paths(config, models)
    from medo1.rl import run_rl

    return _run_training(config, run_rl, args.resume)


def cmd_config_show(args: argparse.Namespace) -> int:
    config_class = stage_config_class(args.stage)
    recipe = read_yaml_mapping(args.recipe, "recipe") if args.recipe else None
    if args.recipe:
        load_config(config_class, args.recipe)  # a recipe that does not load is an error, not a table
    rows = describe_options(config_class, recipe)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        recipe_cell = f"  recipe: {row.get('recipe', '-')}" if args.recipe else ""
        when = f"  [when {row['when']}]" if "when" in row else ""
        print(f"{row['key']}  ({row['type']})  default: {row['default']}{recipe_cell}{when}")
        print(f"    {row['description']}")
    return 0


def _config_stage(args: argparse.Namespace, config_class, flag_overrides: dict[str, object]):
    """Recipe (optional) + `--set` + the stage's convenience flags (those given) -> typed config."""
    overrides = list(args.set) + [f"{key}={value}" for key, value in flag_overrides.items() if value is not None]
    return load_config(config_class, args.config, overrides)


def cmd_translate(args: argparse.Namespace) -> int:
    from medo1.data.translate import TranslateConfig, run_translate

    flags = {
        "input": args.input,
        "output": args.output,
        "format": args.format,
        "target_language": args.target_language,
        "base_url": args.base_url,
        "model": args.model,
        "concurrency": args.concurrency,
        "limit": args.limit,
        "max_failure_ratio": args.max_failure_ratio,
    }
    config = _config_stage(args, TranslateConfig, flags)
    check_output_file(config.output, "output")
    summary = run_translate(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from medo1.eval.config import EvalConfig
    from medo1.eval.run import run_eval

    flags = {
        "model": args.model,
        "endpoint": args.endpoint,
        "output_dir": args.output_dir,
        "limit": args.limit,
        "preset": args.preset,
    }
    benchmarks = _key_values(args.benchmark, "--benchmark", "NAME=PATH")
    flags.update({f"benchmarks.{name}": path for name, path in benchmarks.items()})
    config = _config_stage(args, EvalConfig, flags)
    if config.model is not None:
        check_model_reference(config.model, "model")
    for label, model in config.compare_with.items():
        check_model_reference(model, f"compare_with.{label}")
    check_output_dir(config.output_dir, "output_dir")
    inputs = {f"benchmarks.{name}": path for name, path in config.benchmarks.items()} | {"model": config.model}
    inputs |= {f"compare_with.{label}": model for label, model in config.compare_with.items()}
    inputs |= {f"reward.{key}": getattr(config.reward, key, None) for key in ("model", "tokenizer")}
    check_outputs_apart({"output_dir": config.output_dir}, inputs)
    report = run_eval(config)
    print((Path(config.output_dir) / "report.md").read_text(encoding="utf-8"))
    print(
        json.dumps(
            {name: {k: b[k] for k in ("n", "accuracy", "unparseable")} for name, b in report["benchmarks"].items()}
            | {"average_accuracy": report["average_accuracy"]}
        )
    )
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from medo1.hub.config import UploadConfig
    from medo1.hub.upload import upload

    flags = {
        "model_dir": args.model_dir,
        "repo_id": args.repo_id,
        "eval_report": args.eval_report,
        "base_model": args.base_model,
        "dry_run": True if args.dry_run else None,
        "private": False if args.public else None,
    }
    if args.dataset:
        flags["datasets"] = json.dumps(args.dataset)
    result = upload(_config_stage(args, UploadConfig, flags))
    print(json.dumps(result, indent=2, default=str))
    return 0


def _check_launch_numbers(args: argparse.Namespace) -> None:
    """The launcher's waits: finite, positive (--stuck-after 0 switches its check off)."""
    for flag, value, least in (
        ("--timeout", args.timeout, 0),
        ("--poll", args.poll, 0),
        ("--stuck-after", args.stuck_after, None),
        ("--scale-up-wait", args.scale_up_wait, 0),
        ("--delete-wait", args.delete_wait, 0),
        ("--request-timeout", args.request_timeout, 0),
    ):
        bad = not math.isfinite(value) or (value < 0 if least is None else value <= least)
        if bad:
            raise ConfigError(
                f"{flag} {value:g}: must be a finite number of seconds above 0"
                + (" (or 0 to turn it off)" if least is None else "")
            )
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: must be at least 1")


def cmd_launch(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from medo1.launch import LaunchCancelled, LaunchError, launch_chain, launch_stage

    _check_launch_numbers(args)
    waits = dict(
        stuck_after_s=args.stuck_after or None,
        scale_up_wait_s=args.scale_up_wait,
        delete_wait_s=args.delete_wait,
        request_timeout_s=args.request_timeout,
    )
    try:
        if args.stage != "chain" and (args.release or args.run_id):
            raise LaunchError("--release and --run-id name a chain's run; a single stage takes --job-name")
        if args.stage == "chain":
            if args.recipe or args.set or args.job_name:
                raise LaunchError("chain: --recipe, --set and --job-name are per stage; set them in the chart values")
            results = launch_chain(
                backend=args.backend,
                profile=args.profile,
                values_files=args.values,
                value_overrides=args.value,
                namespace=args.namespace,
                timeout_s=args.timeout,
                poll_s=args.poll,
                nproc=args.nproc,
                strict=args.strict,
                release=args.release,
                run_id=args.run_id,
                **waits,
            )
            print(json.dumps([asdict(result) for result in results]))
            return 0
        result = launch_stage(
            args.stage,
            backend=args.backend,
            profile=args.profile,
            values_files=args.values,
            value_overrides=args.value,
            recipe=args.recipe,
            overrides=args.set,
            job_name=args.job_name,
            namespace=args.namespace,
            timeout_s=args.timeout,
            poll_s=args.poll,
            nproc=args.nproc,
            keep_on_timeout=args.keep_on_timeout,
            runtime=args.runtime,
            strict=args.strict,
            **waits,
        )
    except LaunchCancelled as exc:
        print(f"medo1: {exc}", file=sys.stderr)
        # Cancelled means now: do not wait at exit for a request thread an unanswering API server holds.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(128 + exc.signum)
    print(json.dumps(asdict(result)))
    return 0


def cmd_model_init_tiny(args: argparse.Namespace) -> int:
    from medo1.models import init_tiny_model

    path = init_tiny_model(args.out, layers=args.layers, hidden_size=args.hidden_size, seed=args.seed)
    print(path)
    return 0


def cmd_model_import_gguf(args: argparse.Namespace) -> int:
    from medo1.gguf_import import import_gguf

    print(import_gguf(args.source, args.out))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from medo1.plan.cli import run

    return run(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from medo1.doctor import run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from medo1.training.run_report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_model_check(args: argparse.Namespace) -> int:
    from medo1.models import check_generates

    text = check_generates(args.path, args.prompt, args.max_new_tokens)
    print(json.dumps({"path": args.path, "prompt": args.prompt, "generated": text}, ensure_ascii=False))
    return 0


# The flag's help is the option's own description (`medo1 config show`), so the two never disagree.
OUTPUT_DIR_HELP = OutputConfig.model_fields["dir"].description
RESUME_HELP = (
    "auto: continue the latest complete checkpoint (a finished run does nothing); none: a fresh start; or a "
    "checkpoint path. A checkpoint written under another recipe is refused, naming the keys that differ"
)
ALLOW_CHANGED_HELP = "a recipe key (or section) the resumed run may change; repeatable (adds to resume.allow_changes)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medo1", description="Medical reasoning LLM training stack.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error too")
    stages = parser.add_subparsers(dest="command", required=True)

    data = stages.add_parser("data", help="inspect and validate datasets").add_subparsers(
        dest="data_cmd", required=True
    )
    validate = data.add_parser("validate", help="count valid and invalid rows; token-length statistics")
    validate.add_argument(
        "path",
        help="a .json list, .jsonl, .parquet, .csv or .arrow file, a save_to_disk folder, or a Hub dataset "
        "hf://OWNER/NAME[?config=C&split=S&revision=R] (split default train)",
    )
    validate.add_argument("--format", required=True, choices=sorted(PRESETS))
    validate.add_argument("--preset", help="field-name preset (medical_o1: en, es)")
    validate.add_argument(
        "--field", action="append", default=[], metavar="NAME=COLUMN", help="override one field's column"
    )
    validate.add_argument("--system-prompt")
    validate.add_argument("--tokenizer", help="tokenizer directory for token-length statistics")
    validate.add_argument(
        "--max-length",
        type=int,
        help="count rows longer than this many tokens (default 8192; longer rows are not tokenized whole)",
    )
    validate.add_argument(
        "--duplicates",
        choices=["keep", "reject"],
        default="keep",
        help="rows repeating an earlier row's example: keep (count and warn) or reject (invalid rows)",
    )
    validate.add_argument("--rejects", help="write invalid rows, with their problem, to this JSONL file")
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(func=cmd_data_validate)

    sft = stages.add_parser("sft", help="supervised fine-tuning on chain-of-thought data")
    sft.add_argument("--config", required=True, help="YAML recipe")
    sft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    sft.add_argument("--output-dir", help=f"sets output.dir: {OUTPUT_DIR_HELP}")
    sft.add_argument("--resume", default="none", help=RESUME_HELP)
    sft.add_argument("--allow-changed", action="append", default=[], metavar="KEY", help=ALLOW_CHANGED_HELP)
    sft.set_defaults(func=cmd_sft)

    rl = stages.add_parser("rl", help="reinforcement learning against a verifier: PPO, GRPO or RLOO")
    rl.add_argument("--config", required=True, help="YAML recipe")
    rl.add_argument("--algo", choices=["ppo", "grpo", "rloo"], help="override the recipe's algorithm")
    rl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    rl.add_argument("--output-dir", help=f"sets output.dir: {OUTPUT_DIR_HELP}")
    rl.add_argument("--resume", default="none", help=RESUME_HELP)
    rl.add_argument("--allow-changed", action="append", default=[], metavar="KEY", help=ALLOW_CHANGED_HELP)
    rl.set_defaults(func=cmd_rl)

    translate = stages.add_parser("translate", help="translate SFT / RL / MCQ data with an OpenAI-compatible LLM")
    translate.add_argument("input", nargs="?", help="source JSON or JSONL")
    translate.add_argument("--output", help="translated JSONL (input order)")
    translate.add_argument("--format", choices=["medical_o1", "verifiable", "mcq"])
    translate.add_argument("--target-language", help="e.g. Japanese")
    translate.add_argument(
        "--base-url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL); key from $OPENAI_API_KEY"
    )
    translate.add_argument("--model", help="the endpoint's model name")
    translate.add_argument("--concurrency", type=int)
    translate.add_argument("--limit", type=int)
    translate.add_argument(
        "--max-failure-ratio",
        type=float,
        metavar="SHARE",
        help="fail the run, keeping the previous output, when more than this share of records "
        "fails (default 0.25; must be below 1)",
    )
    translate.add_argument("--config", help="YAML recipe")
    translate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    translate.set_defaults(func=cmd_translate)

    evaluate = stages.add_parser(
        "eval", help="medical MCQ accuracy of a model directory or an OpenAI-compatible endpoint"
    )
    evaluate.add_argument("--config", help="YAML recipe")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    evaluate.add_argument("--model", help="local Hugging Face model directory")
    evaluate.add_argument("--endpoint", help="OpenAI-compatible base URL (key from $OPENAI_API_KEY)")
    evaluate.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a file to score; FILE#SET for one set of a JSON file of named sets, which given "
        "whole is one benchmark per set (the published HuatuoGPT-o1 eval_data.json)",
    )
    evaluate.add_argument(
        "--preset",
        choices=["huatuo"],
        help="a published protocol: huatuo = HuatuoGPT-o1's prompt, decoding, scorer and table",
    )
    evaluate.add_argument("--limit", type=int, help="score only the first N rows of each benchmark")
    evaluate.add_argument("--output-dir")
    evaluate.set_defaults(func=cmd_eval)

    push = stages.add_parser("upload", help="push an exported model to the Hugging Face Hub (token from $HF_TOKEN)")
    push.add_argument("model_dir", nargs="?", help="exported model directory")
    push.add_argument("--repo-id", help="owner/name on the Hub (created if missing, private by default)")
    push.add_argument("--config", help="YAML recipe")
    push.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    push.add_argument("--public", action="store_true", help="create the repo public")
    push.add_argument("--dry-run", action="store_true", help="list what would be sent; nothing leaves the machine")
    push.add_argument("--eval-report", help="a medo1 eval report.json for the model card")
    push.add_argument("--base-model")
    push.add_argument("--dataset", action="append", default=[], help="a dataset the model was trained on (repeatable)")
    push.set_defaults(func=cmd_upload)

    launch = stages.add_parser("launch", help="run a stage as the chart's job (PyTorchJob / Job), or here")
    launch.add_argument(
        "stage",
        help="a stage of the chart (sft, rl, translate, eval, upload), or `chain`: every "
        "enabled stage in order, each after the one before has a complete export",
    )
    launch.add_argument(
        "--backend",
        choices=["pytorchjob", "trainjob", "local"],
        help="default: the chart value `backend` (pytorchjob unless the values say trainjob); trainjob: "
        "a Kubeflow Trainer v2 TrainJob on one of the chart's ClusterTrainingRuntimes",
    )
    launch.add_argument(
        "--runtime",
        help="trainjob: the ClusterTrainingRuntime (default medo1-sft, medo1-ppo for rl, "
        "medo1-eval; medo1-grpo runs the GRPO recipe)",
    )
    launch.add_argument("--profile", help="chart values from helm/profiles/NAME.yaml")
    launch.add_argument(
        "--values", action="append", default=[], metavar="FILE", help="chart values file, after the profile"
    )
    launch.add_argument(
        "--value", action="append", default=[], metavar="KEY=VALUE", help="override a chart value (YAML-typed)"
    )
    launch.add_argument("--recipe", help="the stage's recipe path (in the image for pytorchjob)")
    launch.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    launch.add_argument("--job-name", help="PyTorchJob name (default: the chart's <release>-<stage>)")
    launch.add_argument(
        "--release",
        help="chain: the release its jobs are named after, <release>-<stage>-<run id> "
        "(default medo1; the chart passes its full name)",
    )
    launch.add_argument(
        "--run-id",
        help="chain: names this run; every stage's output goes under "
        "<output>/<release>/<run id> and a rerun with the same id continues the run (a Kubernetes UID "
        "is cut to its first 8 characters; default: none, the recipes' own paths)",
    )
    launch.add_argument(
        "--namespace", help="default: the pod's service-account namespace, else the kubeconfig context's"
    )
    launch.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    launch.add_argument(
        "--poll", type=float, default=DEFAULT_POLL_S, metavar="SECONDS", help="job status poll interval"
    )
    launch.add_argument("--nproc", type=int, help="local backend: that many CPU processes instead of one per GPU")
    launch.add_argument("--keep-on-timeout", action="store_true", help="leave the PyTorchJob running at the timeout")
    launch.add_argument(
        "--stuck-after",
        type=float,
        default=DEFAULT_STUCK_AFTER_S,
        metavar="SECONDS",
        help="fail once a pod has been stuck this long (missing Secret or image, failed mount, "
        "Unschedulable); 0: wait on it until the timeout",
    )
    launch.add_argument(
        "--scale-up-wait",
        type=float,
        default=DEFAULT_SCALE_UP_WAIT_S,
        metavar="SECONDS",
        help="how long an Unschedulable pod may wait while the cluster autoscaler adds a node for it "
        "(TriggeredScaleUp, a ProvisioningRequest): a GPU node takes minutes to boot",
    )
    launch.add_argument(
        "--delete-wait",
        type=float,
        default=DEFAULT_DELETE_WAIT_S,
        metavar="SECONDS",
        help="how long a failed job's deletion is waited on before its restart is created under "
        "another name (pods stuck Terminating on a dead node)",
    )
    launch.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="how long any Kubernetes API call waits for an answer",
    )
    launch.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 3, nothing created) when the stage's plan does not fit its GPUs or none can "
        "be made; without it, a warning (chart value plan.strict does the same)",
    )
    launch.set_defaults(func=cmd_launch)

    plan = stages.add_parser(
        "plan", help="per-GPU memory, time and cost of a stage or a profile's pipeline, before a run"
    )
    from medo1.plan.cli import add_arguments as add_plan_arguments

    add_plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)

    doctor = stages.add_parser(
        "doctor",
        help="check a namespace before a run: CRDs, Secrets, PVCs, access, GPU nodes, "
        "Istio, Kueue; exit 1 on any failure",
    )
    from medo1.doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(doctor)
    doctor.set_defaults(func=cmd_doctor)

    config = stages.add_parser("config", help="a stage's options").add_subparsers(dest="config_cmd", required=True)
    show = config.add_parser("show", help="every option of a stage: type, default, the recipe's value, description")
    show.add_argument("stage", choices=["sft", "rl", "translate", "eval", "upload"])
    show.add_argument("--recipe", help="a YAML recipe whose values are shown beside the defaults")
    show.add_argument("--json", action="store_true", help="print a JSON list of options")
    show.set_defaults(func=cmd_config_show)

    report = stages.add_parser(
        "report", help="write RUN_DIR/report.html: plots of metrics.jsonl, data and eval reports, config"
    )
    report.add_argument("run_dir", help="a training stage's output directory")
    report.set_defaults(func=cmd_report)

    model = stages.add_parser("model", help="model utilities").add_subparsers(dest="model_cmd", required=True)
    tiny = model.add_parser("init-tiny", help="a tiny random Qwen2 model with the real Qwen tokenizer (offline)")
    tiny.add_argument("out")
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_model_init_tiny)
    gguf = model.add_parser(
        "import-gguf", help="a GGUF model (file, or installed package shipping one) to a safetensors directory"
    )
    gguf.add_argument("source", help="path to a .gguf file, or an installed PyPI package whose files include one")
    gguf.add_argument("out", help="model directory to write (replaced if present)")
    gguf.set_defaults(func=cmd_model_import_gguf)
    check = model.add_parser("check", help="load a model directory with from_pretrained and generate")
    check.add_argument("path")
    check.add_argument("--prompt", default="A 30-year-old presents with fever and a rash. What is the next step?")
    check.add_argument("--max-new-tokens", type=int, default=16)
    check.set_defaults(func=cmd_model_check)
    return parser


# What the file system answers a user can act on (a folder they may not write, a full or read-only disk): one line,
# not a traceback, wherever in a stage it happens.
FILESYSTEM_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        exit_with_parent()  # a rank under torchrun stops when torchrun ends, even by SIGKILL
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if is_main_process() or args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except BrokenPipeError:  # `medo1 config show sft | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter shutdown flushes stdout once more
        return 0
    except Medo1Error as exc:
        termination.record(exc)
        if args.debug:
            raise
        print(f"medo1: error: {exc}", file=sys.stderr)  # a list of bad rows follows on its own lines
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in FILESYSTEM_REFUSALS:
            termination.record(exc)
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        refusal = ConfigError(f"{where}{exc.strerror} (check the path's owner, permissions and free space)")
        termination.record(refusal)  # a restart cannot cure it either
        if args.debug:
            raise
        print(f"medo1: error: {refusal}", file=sys.stderr)
        return refusal.exit_code
    except BaseException as exc:  # a bug or out of memory: its traceback follows; the pod says which
        termination.record(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
