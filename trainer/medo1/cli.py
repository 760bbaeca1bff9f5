"""`medo1` command line: a thin layer over the library functions of each stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from medo1.checkpoint import ResumeError
from medo1.config import ConfigError, StageError, load_config
from medo1.data import PRESETS, DataError
from medo1.launch import DEFAULT_POLL_S, DEFAULT_TIMEOUT_S
from medo1.rl.rewards import RewardLoadError
from medo1.runtime import is_main_process


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} {item!r}: expected name=column")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def cmd_data_validate(args: argparse.Namespace) -> int:
    from medo1.data import load_examples
    from medo1.models import load_tokenizer
    from medo1.validate import validation_report

    loaded = load_examples(args.path, args.format, args.preset, _key_values(args.field, "--field"), args.system_prompt)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    report = validation_report(loaded, tokenizer, args.max_length)
    if args.rejects and loaded.problems:
        from medo1.data import write_rejects

        write_rejects(args.rejects, loaded.problems, loaded.raw)
        report["rejects_file"] = args.rejects
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{report['path']} ({report['format']}): {report['rows']} rows, {report['valid']} valid, {report['invalid']} invalid")
        for problem in loaded.problems[:20]:
            print(f"  {problem}")
        if len(loaded.problems) > 20:
            print(f"  ... and {len(loaded.problems) - 20} more (use --json or --rejects for all)")
        if "tokens" in report and report["tokens"].get("count"):
            t = report["tokens"]
            over = f", {t['over_max_length']} over max length {t['max_length']}" if "max_length" in t else ""
            print(f"  tokens: mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']}{over}")
    return 1 if loaded.problems else 0


def _run_training(args: argparse.Namespace, config_class, run, extra_overrides: list[str]) -> int:
    """Recipe + overrides -> typed config -> stage run; prints where the outputs landed (rank 0)."""
    overrides = list(args.set) + extra_overrides
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    result = run(load_config(config_class, args.config, overrides), resume=args.resume)
    if is_main_process():
        export = str(result.export_dir) if result.export_dir else None
        print(json.dumps({"output_dir": str(result.output_dir), "final_step": result.final_step, "export_dir": export}))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from medo1.sft import SFTConfig, run_sft

    return _run_training(args, SFTConfig, run_sft, [])


def cmd_rl(args: argparse.Namespace) -> int:
    from medo1.rl import run_rl
    from medo1.rl.config import RLConfig

    return _run_training(args, RLConfig, run_rl, [f"algo={args.algo}"] if args.algo else [])


def _config_stage(args: argparse.Namespace, config_class, flag_overrides: dict[str, object]):
    """Recipe (optional) + `--set` + the stage's convenience flags (those given) -> typed config."""
    overrides = list(args.set) + [f"{key}={value}" for key, value in flag_overrides.items() if value is not None]
    return load_config(config_class, args.config, overrides)


def cmd_translate(args: argparse.Namespace) -> int:
    from medo1.translate import TranslateConfig, run_translate

    flags = {"input": args.input, "output": args.output, "format": args.format, "target_language": args.target_language,
             "base_url": args.base_url, "model": args.model, "concurrency": args.concurrency, "limit": args.limit}
    summary = run_translate(_config_stage(args, TranslateConfig, flags))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from medo1.eval import EvalConfig, run_eval

    flags = {"model": args.model, "endpoint": args.endpoint, "output_dir": args.output_dir, "limit": args.limit}
    flags.update({f"benchmarks.{name}": path for name, path in _key_values(args.benchmark, "--benchmark").items()})
    report = run_eval(_config_stage(args, EvalConfig, flags))
    print(json.dumps({name: {k: b[k] for k in ("n", "accuracy", "unparseable")} for name, b in report["benchmarks"].items()}
                     | {"average_accuracy": report["average_accuracy"]}))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from medo1.upload import UploadConfig, upload

    flags = {"model_dir": args.model_dir, "repo_id": args.repo_id, "eval_report": args.eval_report,
             "base_model": args.base_model, "dry_run": True if args.dry_run else None,
             "private": False if args.public else None}
    if args.dataset:
        flags["datasets"] = json.dumps(args.dataset)
    result = upload(_config_stage(args, UploadConfig, flags))
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from medo1.launch import LaunchCancelled, launch_stage

    try:
        result = launch_stage(
            args.stage, backend=args.backend, profile=args.profile, values_files=args.values,
            value_overrides=args.value, recipe=args.recipe, overrides=args.set, job_name=args.job_name,
            namespace=args.namespace, timeout_s=args.timeout, poll_s=args.poll, nproc=args.nproc,
            keep_on_timeout=args.keep_on_timeout,
        )
    except LaunchCancelled as exc:
        print(f"medo1: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(json.dumps(asdict(result)))
    return 0


def cmd_model_init_tiny(args: argparse.Namespace) -> int:
    from medo1.models import init_tiny_model

    path = init_tiny_model(args.out, layers=args.layers, hidden_size=args.hidden_size, seed=args.seed)
    print(path)
    return 0


def cmd_model_check(args: argparse.Namespace) -> int:
    from medo1.models import check_generates

    text = check_generates(args.path, args.prompt, args.max_new_tokens)
    print(json.dumps({"path": args.path, "prompt": args.prompt, "generated": text}, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medo1", description="Medical reasoning LLM training stack.")
    parser.add_argument("-v", "--verbose", action="store_true")
    stages = parser.add_subparsers(dest="command", required=True)

    data = stages.add_parser("data", help="inspect and validate datasets").add_subparsers(dest="data_cmd", required=True)
    validate = data.add_parser("validate", help="count valid and invalid rows; token-length statistics")
    validate.add_argument("path")
    validate.add_argument("--format", required=True, choices=sorted(PRESETS))
    validate.add_argument("--preset", help="field-name preset (medical_o1: en, es)")
    validate.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN", help="override one field's column")
    validate.add_argument("--system-prompt")
    validate.add_argument("--tokenizer", help="tokenizer directory for token-length statistics")
    validate.add_argument("--max-length", type=int, help="count rows longer than this many tokens")
    validate.add_argument("--rejects", help="write invalid rows, with their problem, to this JSONL file")
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(func=cmd_data_validate)

    sft = stages.add_parser("sft", help="supervised fine-tuning on chain-of-thought data")
    sft.add_argument("--config", required=True, help="YAML recipe")
    sft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    sft.add_argument("--output-dir")
    sft.add_argument("--resume", default="none", help="auto (latest complete checkpoint), none, or a checkpoint path")
    sft.set_defaults(func=cmd_sft)

    rl = stages.add_parser("rl", help="reinforcement learning against a verifier: PPO or GRPO")
    rl.add_argument("--config", required=True, help="YAML recipe")
    rl.add_argument("--algo", choices=["ppo", "grpo"], help="override the recipe's algorithm")
    rl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    rl.add_argument("--output-dir")
    rl.add_argument("--resume", default="none", help="auto (latest complete checkpoint), none, or a checkpoint path")
    rl.set_defaults(func=cmd_rl)

    translate = stages.add_parser("translate", help="translate SFT / RL / MCQ data with an OpenAI-compatible LLM")
    translate.add_argument("input", nargs="?", help="source JSON or JSONL")
    translate.add_argument("--output", help="translated JSONL (input order)")
    translate.add_argument("--format", choices=["medical_o1", "verifiable", "mcq"])
    translate.add_argument("--target-language", help="e.g. Japanese")
    translate.add_argument("--base-url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL); key from $OPENAI_API_KEY")
    translate.add_argument("--model", help="the endpoint's model name")
    translate.add_argument("--concurrency", type=int)
    translate.add_argument("--limit", type=int)
    translate.add_argument("--config", help="YAML recipe")
    translate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    translate.set_defaults(func=cmd_translate)

    evaluate = stages.add_parser("eval", help="medical MCQ accuracy of a model directory or an OpenAI-compatible endpoint")
    evaluate.add_argument("--config", help="YAML recipe")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    evaluate.add_argument("--model", help="local Hugging Face model directory")
    evaluate.add_argument("--endpoint", help="OpenAI-compatible base URL (key from $OPENAI_API_KEY)")
    evaluate.add_argument("--benchmark", action="append", default=[], metavar="NAME=PATH", help="an MCQ file to score")
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

    launch = stages.add_parser("launch", help="run a training stage as the chart's PyTorchJob, or here under torchrun")
    launch.add_argument("stage", help="training stage of the chart: sft or rl")
    launch.add_argument("--backend", choices=["pytorchjob", "local"], default="pytorchjob")
    launch.add_argument("--profile", help="chart values from helm/profiles/NAME.yaml")
    launch.add_argument("--values", action="append", default=[], metavar="FILE", help="chart values file, after the profile")
    launch.add_argument("--value", action="append", default=[], metavar="KEY=VALUE", help="override a chart value (YAML-typed)")
    launch.add_argument("--recipe", help="the stage's recipe path (in the image for pytorchjob)")
    launch.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    launch.add_argument("--job-name", help="PyTorchJob name (default: the chart's <release>-<stage>)")
    launch.add_argument("--namespace", help="default: the pod's service-account namespace, else the kubeconfig context's")
    launch.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    launch.add_argument("--poll", type=float, default=DEFAULT_POLL_S, metavar="SECONDS", help="job status poll interval")
    launch.add_argument("--nproc", type=int, help="local backend: that many CPU processes instead of one per GPU")
    launch.add_argument("--keep-on-timeout", action="store_true", help="leave the PyTorchJob running at the timeout")
    launch.set_defaults(func=cmd_launch)

    model = stages.add_parser("model", help="model utilities").add_subparsers(dest="model_cmd", required=True)
    tiny = model.add_parser("init-tiny", help="a tiny random Qwen2 model with the real Qwen tokenizer (offline)")
    tiny.add_argument("out")
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_model_init_tiny)
    check = model.add_parser("check", help="load a model directory with from_pretrained and generate")
    check.add_argument("path")
    check.add_argument("--prompt", default="A 30-year-old presents with fever and a rash. What is the next step?")
    check.add_argument("--max-new-tokens", type=int, default=16)
    check.set_defaults(func=cmd_model_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if is_main_process() or args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (DataError, ConfigError, ResumeError, RewardLoadError, StageError) as exc:
        print(f"medo1: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
