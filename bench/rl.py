"""RL throughput per update: seconds in generation, scoring and training, and generated tokens/s.

Both algorithms run the tiny CPU recipe (recipes/rl-ppo-tiny-cpu.yaml: 8 rollouts per update, the
answer-match reward) on a fresh tiny model, each in its own process, through the library, with
`sampling.engine=hf` (HF generate, on the CPU) and, where vLLM imports and a GPU exists, `vllm`:
- PPO (`medo1.rl.ppo`) writes these figures itself to metrics.jsonl for every update;
- GRPO (`medo1.rl.grpo`, TRL's GRPOTrainer) logs only whole-step times, so the child runs it with a
  subclass that times TRL's generation call, its rollout call (generation, rewards, reference
  log-probs, advantages) and each optimizer step, and logs them under the PPO names.
A randomly initialised model rarely samples its end-of-turn token, so responses run to the length
limit: the figures are for full-length responses.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import DEMO, REPO, child_main, measuring, run_child, write_rows

RECIPE = REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"
RECIPE_DATA = DEMO  # the recipe's data.path
EPISODES_PER_UPDATE = 8  # the recipe's per_device_batch_size x gradient_accumulation_steps
SPLIT = ("time_generation", "time_scoring", "time_training")
QUESTION, ANSWER = "Open-ended Verifiable Question", "Ground-True Answer"


def measure(quick: bool = False) -> dict:
    from medo1.models import init_tiny_model

    updates, response_length = (1, 8) if quick else (4, 64)
    vllm = vllm_status()
    engines = ["hf"] + (["vllm"] if vllm == "measured" else [])
    with tempfile.TemporaryDirectory(prefix="medo1-bench-rl-") as tmp:
        tmp = Path(tmp)
        model = init_tiny_model(tmp / "model", seed=0)
        problems = write_rows(short_problems(), tmp / "problems.json") if quick else RECIPE_DATA
        runs = {}
        for engine in engines:
            for algo in ("ppo", "grpo"):
                name = f"{algo}_{engine}"
                spec = {
                    "model": str(model),
                    "data": str(problems),
                    "algo": algo,
                    "engine": engine,
                    "updates": updates,
                    "response_length": response_length,
                    "out": str(tmp / name / "run"),
                }
                # HF generate runs on the CPU, like the tiny recipe; vLLM needs the GPU.
                with measuring(f"{name}, {updates} update(s)"):
                    runs[name] = run_figures(run_child("bench.rl", spec, tmp / name, hide_gpu=engine == "hf"))
    return {
        "config": {
            "recipe": str(RECIPE.relative_to(REPO)),
            "problems": "the recipe's (the demo set's verifiable problems)"
            + (", questions cut short (--quick)" if quick else ""),
            "model": "tiny Qwen2 (medo1.models.init_tiny_model), random weights",
            "device": "cpu (hf engine)",
            "updates": updates,
            "episodes_per_update": EPISODES_PER_UPDATE,
            "response_length": response_length,
            "grpo_num_generations": 4,
            "reward": "answer_match",
        },
        "runs": runs,
        "vllm": vllm,
    }


def short_problems() -> list[dict]:
    """The recipe's problems with each question cut to 160 characters: shorter prompts for --quick."""
    return [{QUESTION: row[QUESTION][:160], ANSWER: row[ANSWER]} for row in json.loads(RECIPE_DATA.read_text())]


def vllm_status() -> str:
    if importlib.util.find_spec("vllm") is None:
        return "not installed"
    return "measured" if torch.cuda.is_available() else "installed, but vLLM rollouts need a CUDA device"


def run_figures(raw: dict) -> dict:
    updates = raw["updates"]
    # The first update pays for warm-up (allocations, first kernels); the mean leaves it out when it can.
    steady = updates[1:] or updates
    mean = {key: round(statistics.fmean(u[key] for u in steady), 3) for key in (*SPLIT, "generated_tokens_per_second")}
    total = sum(mean[key] for key in SPLIT)
    return {
        "algorithm": raw["algo"],
        "engine": raw["engine"],
        "updates": updates,
        "mean_over_updates": [u["update"] for u in steady],
        "mean": mean,
        "share_of_update": {key.removeprefix("time_"): round(mean[key] / total, 3) for key in SPLIT},
    }


def summary(result: dict) -> list[str]:
    config = result["config"]
    lines = [
        (
            f"rl (tiny CPU recipe, {config['episodes_per_update']} episodes/update, responses up to "
            f"{config['response_length']} tokens); seconds per update, mean over updates after the first"
        ),
        f"{'run':<20} {'generation':>10} {'scoring':>8} {'training':>8} {'gen tok/s':>9} {'gen share':>9}",
    ]
    for name, run in result["runs"].items():
        mean = run["mean"]
        lines.append(
            f"{name:<20} {mean['time_generation']:>10} {mean['time_scoring']:>8} {mean['time_training']:>8} "
            f"{mean['generated_tokens_per_second']:>9} {run['share_of_update']['generation']:>9}"
        )
    lines.append(f"vllm (sampling.engine=vllm): {result['vllm']}")
    return lines


# ---- child: one run of the library ---------------------------------------------------------------


def timed_grpo_trainer():
    """medo1's GRPO trainer class, timing generation, the rollout and each optimizer step."""
    from transformers import TrainerCallback

    from medo1.rl.grpo import Medo1GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.trainer.log_step_split(time.perf_counter() - self.started)

    class TimedGRPOTrainer(Medo1GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.generation_s = self.rollout_s = 0.0
            self.generated_tokens = 0
            self.add_callback(StepTimer(self))

        def _generate(self, prompts):
            start = time.perf_counter()
            result = super()._generate(prompts)
            self.generation_s += time.perf_counter() - start
            self.generated_tokens += sum(len(ids) for ids in result[1])  # completion ids, cut after end of turn
            return result

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            result = super()._generate_and_score_completions(inputs)
            self.rollout_s += time.perf_counter() - start
            return result

        def log_step_split(self, step_s: float) -> None:
            # TRL averages these lists into the step's log line, which JsonlMetrics writes to metrics.jsonl.
            metrics = self._metrics["train"]
            metrics["time_generation"].append(self.generation_s)
            metrics["time_scoring"].append(self.rollout_s - self.generation_s)
            metrics["time_training"].append(step_s - self.rollout_s)
            metrics["generated_tokens"].append(self.generated_tokens)
            metrics["generated_tokens_per_second"].append(self.generated_tokens / max(self.generation_s, 1e-9))
            self.generation_s = self.rollout_s = 0.0
            self.generated_tokens = 0

    return TimedGRPOTrainer


def run_algorithm(spec: dict) -> dict:
    from medo1.config import load_config
    from medo1.rl import grpo, run_rl
    from medo1.rl.config import RLConfig
    from medo1.training.metrics import read_metrics

    overrides = {
        "algo": spec["algo"],
        "model.name_or_path": spec["model"],
        "data.path": spec["data"],
        "output.dir": spec["out"],
        "output.save_steps": 10**9,
        "output.export": False,
        "train.total_episodes": spec["updates"] * EPISODES_PER_UPDATE,
        "train.eval_fraction": 0.0,
        "train.eval_steps": 0,
        "sampling.response_length": spec["response_length"],
        "sampling.engine": spec["engine"],
    }
    config = load_config(RLConfig, RECIPE, [f"{key}={value}" for key, value in overrides.items()])
    if spec["algo"] == "grpo":
        # run_grpo builds its trainer from this module attribute; this process exists only for this run.
        grpo.Medo1GRPOTrainer = timed_grpo_trainer()
    result = run_rl(config)
    logged = [m for m in read_metrics(result.output_dir / "metrics.jsonl") if "time_generation" in m]
    updates = [
        {
            "update": m["step"],
            **{key: round(m[key], 3) for key in SPLIT},
            "generated_tokens_per_second": round(m["generated_tokens_per_second"], 1),
        }
        for m in logged
    ]
    return {"algo": spec["algo"], "engine": spec["engine"], "updates": updates}


if __name__ == "__main__":
    child_main(run_algorithm)
