"""`medo1 eval`'s sampled generation on the CPU: several samples per question, as the demo's RL comparison asks
(48 held-out questions x 4 samples x 72 new tokens at temperature 1.0, SmolLM2-135M-Instruct).

Contenders, the same questions, seed and batch of sequences, run interleaved:
- medo1_shared_prefill: `HFGenerator.generate(questions, samples=k)`: each question's KV cache computed once and
  copied for its samples;
- separate_prompts: the same generator on each question written k times (samples=1), what `num_return_sequences`
  does inside `generate` (it copies the prompt before the prefill).
Figures: seconds, generated token slots per second, and the process's CPU seconds (this machine is shared: CPU
time shows the work when other jobs slow the wall clock). Never pass/fail.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import DEMO, REPO, claim_check, interleaved, median_and_spread

SMOLLM2 = REPO / "runs" / "models" / "smollm2-135m-instruct"
FULL = {"questions": 48, "samples": 4, "new_tokens": 72, "repetitions": 3}
QUICK = {"questions": 4, "samples": 2, "new_tokens": 4, "repetitions": 1}


def measure(quick: bool) -> dict:
    """The demo's SmolLM2 when it is imported (runs/models, as `make` imports it) and not --quick, else the tiny model."""
    if not quick and (SMOLLM2 / "model.safetensors").is_file():
        return _measure(FULL, SMOLLM2, "SmolLM2-135M-Instruct")
    from medo1.models import init_tiny_model

    with tempfile.TemporaryDirectory(prefix="medo1-bench-eval-") as tmp:
        return _measure(QUICK if quick else FULL, init_tiny_model(Path(tmp) / "tiny"), "tiny random Qwen2 (test model)")


def _measure(config: dict, model: Path, model_name: str) -> dict:
    from medo1.eval.generators import HFGenerator

    rows = json.loads(DEMO.read_text())[90 : 90 + config["questions"]]
    prompts = [[{"role": "user", "content": row["Open-ended Verifiable Question"]}] for row in rows]
    samples, questions = config["samples"], config["questions"]
    generator = HFGenerator(str(model), max_new_tokens=config["new_tokens"], temperature=1.0, batch_size=questions)

    def run(shared: bool):
        def once(_repetition: int) -> dict:
            wall, cpu = time.perf_counter(), time.process_time()
            if shared:
                generator.batch_size = questions
                out = generator.generate(prompts, samples=samples, seed=0)
            else:
                generator.batch_size = questions * samples
                out = generator.generate([p for p in prompts for _ in range(samples)], samples=1, seed=0)
            seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
            slots = questions * samples * config["new_tokens"]
            return {
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "token_slots_per_second": round(slots / seconds, 1),
                "responses": sum(len(gens) for gens in out),
            }

        return once

    results = interleaved({"medo1_shared_prefill": run(True), "separate_prompts": run(False)}, config["repetitions"])
    contenders = {
        name: {
            "runs": runs,
            "seconds": median_and_spread([r["seconds"] for r in runs]),
            "cpu_seconds": median_and_spread([r["cpu_seconds"] for r in runs]),
        }
        for name, runs in results.items()
    }
    ratios = [
        b["cpu_seconds"] / a["cpu_seconds"]
        for a, b in zip(results["medo1_shared_prefill"], results["separate_prompts"])
    ]
    return {
        "model": model_name,
        "config": config,
        "repetitions": config["repetitions"],
        "contenders": contenders,
        "claims": [claim_check("CPU seconds, separate prompts over shared prefill", ratios)],
    }


def summary(result: dict) -> list[str]:
    config = result["config"]
    lines = [
        f"eval sampling: {result['model']}, {config['questions']} questions x {config['samples']} samples x "
        f"{config['new_tokens']} new tokens (median of {result['repetitions']})",
        f"{'contender':<22} {'seconds':>9} {'CPU seconds':>12}",
    ]
    for name, figures in result["contenders"].items():
        lines.append(f"{name:<22} {figures['seconds']['median']:>9} {figures['cpu_seconds']['median']:>12}")
    lines += [f"WARNING: {claim['warning']}" for claim in result["claims"] if claim["warning"]]
    return lines
