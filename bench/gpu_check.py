"""`make gpu-check`: every GPU code path measured in one go (one GPU is enough), in under 8 minutes.

    python -m bench.gpu_check             # on a CUDA machine; writes bench/results/gpu_check-STAMP.json
    python -m bench.gpu_check --dry-run   # the same steps on the CPU with tiny shapes (the test suite runs it)

Steps, each recorded with its figures or the reason it did not run:
1. sft_benchmark: `bench.sft` (medo1 SFT, TRL's defaults, the padded loop) on the Qwen2.5-0.5B shape in bf16, with MFU;
2. varlen_equals_separate: a padding-free row of several sequences gives the same logits, and the same gradients
   (the attention's backward), as each sequence alone, with the attention the 7B SFT recipe uses on the GPU
   (flash_attention_4 from flash-attn-4 on Hopper: its varlen kernels; sdpa in the dry run);
3. zero3_sft_step: `medo1 sft` with train.distributed=deepspeed_zero3, two processes over NCCL (gloo in the dry run);
4. rollouts: greedy HF `generate` against vLLM on the same prompts (tokens/s, the same tokens), and a PPO update
   through `medo1 rl` with sampling.engine=hf and =vllm;
5. eval_engines: `medo1 eval`'s generators (engine hf and vllm) on the published prompt with the huatuo preset's
   decoding: tokens/s beside `medo1 plan`'s rate for the same run, and from their ratio the projected time of the
   published sets (recipes/eval-mcq.yaml: 8,381 rows, 2,000-token cap, Qwen2.5-7B) on this GPU;
6. memory: the measured peak of each run above beside `medo1 plan`'s prediction for it.
Failures are recorded, counted, and make the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench.common import DEMO, REPO, PeakMemory, demo_sft_rows, write_rows

RESULTS = REPO / "bench" / "results"
PPO_RECIPE = REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"
SFT_RECIPE = REPO / "recipes" / "sft-tiny-cpu.yaml"
GREEDY_TEMPERATURE = 1e-6
"""`sampling.temperature` must be > 0; below vLLM's 1e-5 threshold it samples greedily, and HF's logits / 1e-6
leave only the top token with any probability."""
MEMORY_TOLERANCE = 0.15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_unavailable(cuda: bool) -> str | None:
    """Why vLLM rollouts cannot run here, or None when they can."""
    import importlib.util

    if not cuda:
        return "dry run on the CPU: vLLM needs a CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        from medo1.rl.engines import vllm_install_command

        return f"vLLM is not installed ({vllm_install_command()})"
    return None


# ---- children -----------------------------------------------------------------------------------


def child(kind: str, spec_path: str, result_path: str) -> None:
    """One run in its own process (under torchrun for the distributed ones); each rank writes its own result."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    cuda = torch.cuda.is_available()
    if cuda and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    memory = PeakMemory(cuda=cuda)
    result: dict = {}
    if kind == "varlen":
        result = varlen_logits(spec)
    elif kind == "generate":
        memory.start()
        result = greedy_generation(spec)
    elif kind == "eval_generate":
        memory.start()
        result = eval_generation(spec)
    else:
        # Every module the run imports is imported before the measurement starts: module code is not the step's memory.
        import deepspeed  # noqa: F401
        import peft  # noqa: F401

        from medo1.config import load_config
        from medo1.rl import (
            ppo,  # noqa: F401
            run_rl,
        )
        from medo1.rl.config import RLConfig
        from medo1.sft.trainer import SFTConfig, run_sft
        from medo1.training.metrics import read_metrics

        config = load_config(SFTConfig if kind == "sft" else RLConfig, spec["recipe"])
        memory.start()
        if kind == "sft":
            outcome = run_sft(config)
        else:
            outcome = run_rl(config)
            updates = [
                m
                for m in read_metrics(Path(outcome.output_dir) / "metrics.jsonl")
                if "generated_tokens_per_second" in m
            ]
            result["generated_tokens_per_second"] = [m["generated_tokens_per_second"] for m in updates]
        result["final_step"] = outcome.final_step
    result.update(memory.result() if kind != "varlen" else {})
    rank = int(os.environ.get("RANK", 0))
    Path(f"{result_path}.rank{rank}").write_text(json.dumps(result))


def varlen_logits(spec: dict) -> dict:
    """Logits of a padding-free row (sequences end to end, positions restarting) against each sequence alone, and the
    gradients of the same loss with respect to the input embeddings: training runs the attention's backward too."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = (
        AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation=spec["attn"])
        .to(device)
        .eval()
    )
    model.requires_grad_(False)  # gradients for the inputs only
    embed = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(0)
    lengths = spec["lengths"]
    sequences = [torch.randint(0, model.config.vocab_size - 1, (n,), generator=generator) for n in lengths]

    def forward(ids: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, d loss / d input embeddings) with loss = sum of the positions' log-sum-exp of the logits."""
        inputs = embed(ids[None].to(device)).detach().requires_grad_()
        # As in training: no KV cache, which is also what lets transformers read packing from the restarting positions.
        logits = model(inputs_embeds=inputs, position_ids=positions, use_cache=False).logits[0].float()
        logits.logsumexp(-1).sum().backward()
        return logits.detach().cpu(), inputs.grad[0].float().cpu()

    alone = [forward(s) for s in sequences]
    positions = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    packed, packed_grad = forward(torch.cat(sequences), positions)
    separate, separate_grad = torch.cat([a for a, _ in alone]), torch.cat([g for _, g in alone])
    difference, scale = (packed - separate).abs().max().item(), separate.abs().max().item()
    grad_difference, grad_scale = (packed_grad - separate_grad).abs().max().item(), separate_grad.abs().max().item()
    # bf16 logits carry ~3 significant digits, bf16 gradients fewer; fp32 on the CPU should agree to rounding.
    tolerance, grad_tolerance = (0.02 * scale, 0.05 * grad_scale) if cuda else (1e-4 * scale, 1e-4 * grad_scale)
    return {
        "attn_implementation": spec["attn"],
        "lengths": lengths,
        "dtype": str(dtype).removeprefix("torch."),
        "max_abs_difference": difference,
        "largest_logit": scale,
        "tolerance": tolerance,
        "gradient_max_abs_difference": grad_difference,
        "largest_gradient": grad_scale,
        "gradient_tolerance": grad_tolerance,
        "equal": difference <= tolerance and grad_difference <= grad_tolerance,
    }


def greedy_generation(spec: dict) -> dict:
    """Greedy tokens and tokens/s of one engine on the demo problems' prompts."""
    import torch

    from medo1.models import load_tokenizer

    tokenizer = load_tokenizer(spec["model"])
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in spec["questions"]
    ]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    new_tokens = spec["new_tokens"]
    if spec["engine"] == "vllm":
        from vllm import LLM, SamplingParams

        llm = LLM(model=spec["model"], dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True, seed=0)
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts[:1]], sampling_params=params, use_tqdm=False)  # warm-up
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = [list(out.outputs[0].token_ids) for out in outputs]
    else:
        from transformers import AutoModelForCausalLM

        cuda = torch.cuda.is_available()
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32)
        model = model.to("cuda" if cuda else "cpu").eval()
        tokenizer.padding_side = "left"
        batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
        settings = {
            "do_sample": False,
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
        }
        with torch.no_grad():
            model.generate(
                **tokenizer.pad({"input_ids": prompts[:1]}, return_tensors="pt").to(model.device), **settings
            )
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            output = model.generate(**batch, **settings)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        tokens = output[:, batch["input_ids"].shape[1] :].tolist()
    generated = sum(len(t) for t in tokens)
    return {
        "engine": spec["engine"],
        "sequences": len(prompts),
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
        "tokens": tokens,
    }


def eval_generation(spec: dict) -> dict:
    """`medo1 eval`'s generator for one engine on the recipe's questions: decoding tokens/s after a warm-up."""
    import torch

    from medo1.config import load_config
    from medo1.eval.config import EvalConfig
    from medo1.eval.generators import make_generator
    from medo1.eval.prompts import build_messages
    from medo1.eval.scoring import benchmark_sources, load_benchmark

    config = load_config(EvalConfig, spec["recipe"])
    ((path, key),) = benchmark_sources(config.benchmarks).values()
    prompts = [build_messages(item, None, config.prompt) for _, item in load_benchmark(config, path, key).examples]
    generator = make_generator(config)
    generator.generate(prompts[:1])  # warm-up: kernels, CUDA graphs
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    generations = generator.generate(prompts)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    generated = sum(g.tokens or 0 for gens in generations for g in gens)
    return {
        "engine": spec["engine"],
        "sequences": len(prompts),
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
    }


# ---- parent -------------------------------------------------------------------------------------


def run_ranks(
    kind: str, spec: dict, work: Path, *, processes: int, cuda: bool, timeout: int = 900, torchrun: bool = False
) -> list[dict]:
    """`python -m bench.gpu_check --child KIND` in `processes` ranks (under torchrun when more than one, or when
    asked: DeepSpeed wants the distributed environment even for one rank); their results."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    module = ["-m", "bench.gpu_check", "--child", kind, str(spec_path), str(result_path)]
    if processes > 1 or torchrun:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(processes),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            *module,
        ]
    else:
        command = [sys.executable, *module]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if not cuda:
        # glibc returns freed blocks of 64 KiB and more to the OS at once (instead of raising its mmap threshold to
        # 32 MiB and keeping them), so the resident set follows the live tensors, as torch's allocated peak does on a GPU.
        env.update(CUDA_VISIBLE_DEVICES="", MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    results = [
        json.loads(Path(f"{result_path}.rank{r}").read_text())
        for r in range(processes)
        if Path(f"{result_path}.rank{r}").exists()
    ]
    if proc.returncode != 0 or len(results) != processes:
        raise RuntimeError(f"{kind} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return results


class Check:
    """The shared state of one gpu-check run: device, scratch directory, tiny or real shapes."""

    def __init__(self, dry_run: bool, work: Path):
        self.dry_run = dry_run
        self.cuda = not dry_run
        self.work = work
        self.memory: list[dict] = []
        self._model: Path | None = None
        self._gpus: int | None = None

    @property
    def gpus(self) -> int:
        if self._gpus is None:
            import torch

            self._gpus = torch.cuda.device_count() if self.cuda else 0
        return self._gpus

    def model(self) -> Path:
        """The tiny test model on the CPU, the Qwen2.5-0.5B shape (random weights) on the GPU."""
        if self._model is None:
            from bench.sft import build_model

            self._model = build_model(self.work / "model", self.cuda)
        return self._model

    def attn(self) -> str:
        from bench.sft import attention_implementation

        return attention_implementation(self.cuda)

    def cluster(self, processes: int):
        from medo1.plan.shapes import gpu_by_device_name
        from medo1.plan.stages import Cluster

        if not self.cuda:
            return Cluster(1, 0, None, cpu_procs_per_node=processes)
        import torch

        gpu = gpu_by_device_name(torch.cuda.get_device_name(0))
        if gpu is None:
            from medo1.plan.shapes import GPU

            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            gpu = GPU(torch.cuda.get_device_name(0), total, 0.0, 0.0, ())
        return Cluster(1, processes, gpu)

    def compare_memory(self, run: str, recipe: Path, stage: str, processes: int, measured: list[dict]) -> dict:
        """`medo1 plan`'s peak for the run beside the largest measured peak over its ranks."""
        from medo1.plan import plan_stage

        plan = plan_stage(str(recipe), cluster=self.cluster(processes), stage=stage, check_fixes=False)
        # The GPU figure is torch's allocated peak (tensors only): compare it with the plan's tensors.
        predicted = plan.breakdown.tensors / 2**20
        peak = max(result["peak_memory_mb"] for result in measured)
        entry = {
            "run": run,
            "predicted_mb": round(predicted, 1),
            "measured_mb": peak,
            "ratio": round(predicted / peak, 3) if peak > 0 else None,
            "within_tolerance": abs(predicted - peak) <= MEMORY_TOLERANCE * peak,
            "memory_method": measured[0]["memory_method"],
            "predicted_parts_mb": {
                name: round(value / 2**20, 1)
                for name, value in {
                    **plan.breakdown.resident,
                    **plan.breakdown.phases.get(plan.breakdown.peak_phase or "", {}),
                }.items()
            },
        }
        self.memory.append(entry)
        return entry


def sft_benchmark(check: Check) -> dict:
    from bench import sft

    shape = (
        sft.SHAPES[("cpu", True)]
        if check.dry_run
        else replace(sft.SHAPES[("cuda", False)], rows=96, warmup_steps=2, measured_steps=8)
    )
    result = sft.measure(quick=check.dry_run, gpu=check.cuda, shape=shape, repetitions=1)
    return {key: result[key] for key in ("device_name", "config", "contenders", "targets") if key in result} | (
        {"mfu": result["mfu"]} if "mfu" in result else {}
    )


def varlen_equals_separate(check: Check) -> dict:
    from medo1.config import StageError

    attn = check.attn()
    if check.cuda and not attn.startswith("flash_attention_"):
        raise StageError(
            "no flash-attention for this GPU: padding-free varlen cannot be checked (the GPU image has "
            "flash-attn-4, for Hopper and newer: pip install 'medo1[gpu]')"
        )
    (result,) = run_ranks(
        "varlen",
        {"model": str(check.model()), "attn": attn, "lengths": [37, 300, 5, 120]},
        check.work / "varlen",
        processes=1,
        cuda=check.cuda,
    )
    if not result["equal"]:
        raise AssertionError(f"padding-free logits or gradients differ from separate sequences: {result}")
    return result


def sft_recipe(check: Check, out: Path, overrides: dict, same_row: bool = False) -> Path:
    """A recipe file for a short `medo1 sft` on the check's model and the demo rows (or the first one 64 times, so every
    micro-batch has the same tokens and the plan's micro-batch is the measured one)."""
    from medo1.config import apply_overrides, read_yaml_mapping

    rows = demo_sft_rows(1 if same_row else 64, short=check.dry_run) * (64 if same_row else 1)
    rows = write_rows(rows, check.work / f"sft-rows{'-same' if same_row else ''}.json")
    recipe = apply_overrides(
        read_yaml_mapping(SFT_RECIPE, "recipe"),
        [
            f"{k}={v}"
            for k, v in {
                "model.name_or_path": check.model(),
                "model.attn_implementation": check.attn(),
                "data.path": rows,
                "data.limit": "null",
                "data.max_length": 1024,
                "train.max_steps": 2,
                "output.dir": out,
                "output.export": "false",
                "output.save_steps": 1000,
                **overrides,
            }.items()
        ],
    )
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def zero3_sft_step(check: Check) -> dict:
    """Two ranks; on one GPU, NCCL refuses two ranks on the same device, so one rank over NCCL says so."""
    if check.dry_run:
        processes, why = 2, "dry run: 2 CPU processes over gloo"
    elif check.gpus >= 2:
        processes, why = 2, "2 GPUs over NCCL"
    else:
        processes, why = 1, "1 GPU: NCCL does not allow two ranks on one device (duplicate GPU), so 1 rank over NCCL"
    if check.dry_run:
        # accelerate runs neither DeepSpeed nor FSDP on the CPU (it keeps MULTI_CPU), so the dry run takes the
        # ZeRO-3 path that does run over gloo: PPO's DeepSpeed engines (medo1.rl.sharding).
        recipe = ppo_recipe(check, check.work / "zero3" / "run", {"train.distributed": "deepspeed_zero3"})
        kind, stage = "ppo", "rl"
    else:
        recipe = sft_recipe(
            check,
            check.work / "zero3" / "run",
            {"train.distributed": "deepspeed_zero3", "train.per_device_batch_size": 2, "train.precision": "bf16"},
        )
        kind, stage = "sft", "sft"
    results = run_ranks(
        kind, {"recipe": str(recipe)}, check.work / "zero3", processes=processes, cuda=check.cuda, torchrun=True
    )
    memory = check.compare_memory(f"zero3 {stage} ({processes} processes)", recipe, stage, processes, results)
    return {
        "processes": processes,
        "why": why,
        "stage": stage,
        "final_step": results[0]["final_step"],
        "peak_memory_mb_per_rank": [r["peak_memory_mb"] for r in results],
        "memory": memory,
    }


def ppo_recipe(check: Check, out: Path, overrides: dict) -> Path:
    from medo1.config import apply_overrides, read_yaml_mapping

    problems = [
        {
            "Open-ended Verifiable Question": f"Case {i}: is the lesion benign? Reply yes or no.",
            "Ground-True Answer": "yes",
        }
        for i in range(16)
    ]
    data = write_rows(problems, check.work / "problems.json")
    recipe = apply_overrides(
        read_yaml_mapping(PPO_RECIPE, "recipe"),
        [
            f"{k}={v}"
            for k, v in {
                "model.name_or_path": check.model(),
                "data.path": data,
                "data.limit": "null",
                "sampling.response_length": 16,
                "sampling.temperature": GREEDY_TEMPERATURE,
                "train.total_episodes": 8,
                "train.per_device_batch_size": 2,
                "train.gradient_accumulation_steps": 2,
                "train.eval_fraction": 0.0,
                "train.warmup_ratio": 0.0,
                "output.dir": out,
                "output.save_steps": 1000,
                "output.export": "false",
                **overrides,
            }.items()
        ],
    )
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe))
    return path


def rollouts(check: Check) -> dict:
    """Greedy HF against vLLM on the same prompts, then a PPO update through `medo1 rl` with each engine."""
    skipped = vllm_unavailable(check.cuda)
    engines = ["hf"] + ([] if skipped else ["vllm"])
    questions = [row["Question"][:300] for row in json.loads(DEMO.read_text())[: 8 if check.dry_run else 32]]
    spec = {"model": str(check.model()), "questions": questions, "new_tokens": 16 if check.dry_run else 256}
    generation = {
        engine: run_ranks(
            "generate", {**spec, "engine": engine}, check.work / f"generate-{engine}", processes=1, cuda=check.cuda
        )[0]
        for engine in engines
    }
    result: dict = {
        "vllm": skipped or "measured",
        "generation": {e: {k: v for k, v in g.items() if k != "tokens"} for e, g in generation.items()},
    }
    if "vllm" in generation:
        pairs = list(zip(generation["hf"]["tokens"], generation["vllm"]["tokens"]))
        same = sum(a == b for a, b in pairs)
        agreeing = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in pairs)
        result["same_tokens"] = {
            "identical_sequences": same,
            "sequences": len(pairs),
            "agreeing_prefix_tokens": agreeing,
            "tokens": sum(len(a) for a, _ in pairs),
            "note": "bf16 kernels differ between engines: greedy paths may part after a near-tie",
        }
        result["vllm_speedup"] = round(
            generation["vllm"]["tokens_per_second"] / generation["hf"]["tokens_per_second"], 2
        )
    result["ppo"] = {}
    for engine in engines:
        recipe = ppo_recipe(
            check,
            check.work / f"ppo-{engine}" / "run",
            {"sampling.engine": engine, "sampling.response_length": 16 if check.dry_run else 256},
        )
        (run,) = run_ranks("ppo", {"recipe": str(recipe)}, check.work / f"ppo-{engine}", processes=1, cuda=check.cuda)
        result["ppo"][engine] = {
            "generated_tokens_per_second": run["generated_tokens_per_second"],
            "memory": check.compare_memory(f"ppo {engine} (1 process)", recipe, "rl", 1, [run]),
        }
    return result


EVAL_RECIPE = REPO / "recipes" / "eval-mcq.yaml"


def eval_recipe(check: Check, engine: str, questions: int, new_tokens: int) -> Path:
    """An eval recipe on the check's model: the demo's MCQ rows as published-shape questions, the huatuo preset's
    prompt and decoding, `new_tokens` at most (the random-weights model on the GPU runs every answer to the cap)."""
    rows = [
        {k: row[k] for k in ("question", "options", "answer_idx", "answer")} for row in json.loads(DEMO.read_text())
    ]
    rows = (rows * (questions // len(rows) + 1))[:questions]
    data = write_rows(rows, check.work / f"eval-questions-{questions}.json")
    recipe = {
        "model": str(check.model()),
        "benchmarks": {"MedQA_USLME_test": str(data)},
        "preset": "huatuo",
        "max_new_tokens": new_tokens,
        "engine": engine,
        "batch_size": 64,
        "vllm": {"gpu_memory_utilization": 0.5},
        "output_dir": str(check.work / "eval-out"),
    }
    path = check.work / f"eval-{engine}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def eval_engines(check: Check) -> dict:
    """`medo1 eval` on each engine against the plan's rate for the same run; the published sets projected from it."""
    from medo1.plan import plan_stage

    skipped = vllm_unavailable(check.cuda)
    engines = ["hf"] + ([] if skipped else ["vllm"])
    questions, new_tokens = (8, 8) if check.dry_run else (256, 256)
    result: dict = {"vllm": skipped or "measured", "engines": {}}
    for engine in engines:
        recipe = eval_recipe(check, engine, questions, new_tokens)
        (run,) = run_ranks(
            "eval_generate",
            {"recipe": str(recipe), "engine": engine},
            check.work / f"eval-{engine}",
            processes=1,
            cuda=check.cuda,
        )
        entry = {k: run[k] for k in ("sequences", "generated_tokens", "seconds", "tokens_per_second")}
        if check.cuda:
            planned = plan_stage(str(recipe), cluster=check.cluster(1), stage="eval", check_fixes=False).time
            in_flight = planned["sequences_in_flight"]
            planned_step = in_flight / planned["tokens_per_second"]
            # The random-weights model runs every answer to the cap: a decoding step per new token and wave.
            measured_step = run["seconds"] / (new_tokens * -(-run["sequences"] // in_flight))
            entry.update(
                {
                    "planned_tokens_per_second": planned["tokens_per_second"],
                    "planned_step_ms": round(1000 * planned_step, 3),
                    "measured_step_ms": round(1000 * measured_step, 3),
                    "step_overhead_ms": round(1000 * max(0.0, measured_step - planned_step), 3),
                }
            )
        result["engines"][engine] = entry
    if check.cuda:
        # A decoding step of the 7B model: the plan's (bandwidth or compute bound) plus the fixed per-step cost
        # (scheduling, kernel launches, sampling) measured here on the small model, where the bound is tiny.
        engine = engines[-1]
        published = plan_stage(
            str(EVAL_RECIPE),
            cluster=check.cluster(1),
            stage="eval",
            architecture="Qwen2.5-7B",
            check_fixes=False,
            overrides=[f"engine={engine}"],
        ).time
        step = published["sequences_in_flight"] / published["tokens_per_second"]
        overhead = result["engines"][engine]["step_overhead_ms"] / 1000
        result["published_sets"] = {
            "recipe": str(EVAL_RECIPE.relative_to(REPO)),
            "architecture": "Qwen2.5-7B",
            "engine": engine,
            "rows": published["rows"],
            "max_new_tokens": 2000,
            "planned_minutes": published["minutes"],
            "projected_minutes": round(published["minutes"] * (step + overhead) / step, 1),
            "note": "upper bound: every answer runs to the 2,000-token cap; the plan's step time plus the per-step "
            "overhead measured on this GPU",
        }
    return result


def sft_memory(check: Check) -> dict:
    """Full fine-tuning and LoRA through `medo1 sft`, one process: measured peak against the plan's."""
    result = {}
    for name, overrides in (("full", {}), ("lora", {"lora.enabled": "true", "lora.dropout": 0.0})):
        recipe = sft_recipe(
            check, check.work / f"sft-{name}" / "run", {"train.per_device_batch_size": 4, **overrides}, same_row=True
        )
        runs = run_ranks("sft", {"recipe": str(recipe)}, check.work / f"sft-{name}", processes=1, cuda=check.cuda)
        result[name] = check.compare_memory(f"sft {name} (1 process)", recipe, "sft", 1, runs)
    return result


STEPS = {
    "sft_benchmark": sft_benchmark,
    "varlen_equals_separate": varlen_equals_separate,
    "sft_memory": sft_memory,
    "zero3_sft_step": zero3_sft_step,
    "rollouts": rollouts,
    "eval_engines": eval_engines,
}


def run_check(dry_run: bool, only: list[str] | None = None) -> dict:
    import torch

    from bench.run import environment

    record: dict = {
        "benchmark": "gpu_check",
        "dry_run": dry_run,
        "date": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "environment": environment(),
        "steps": {},
    }
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU; on the CPU run it with --dry-run")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medo1-gpu-check-") as tmp:
        check = Check(dry_run, Path(tmp))
        for name, step in STEPS.items():
            if only and name not in only:
                continue
            step_started = time.perf_counter()
            try:
                outcome = {"status": "ok", **step(check)}
            except Exception as exc:  # a failed step is recorded and counted; the others still run
                outcome = {
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            outcome["seconds"] = round(time.perf_counter() - step_started, 1)
            record["steps"][name] = outcome
            print(step_line(name, outcome), flush=True)
        record["memory"] = check.memory
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["failed"] = sorted(name for name, step in record["steps"].items() if step["status"] == "failed")
    return record


def step_line(name: str, outcome: dict) -> str:
    if outcome["status"] == "failed":
        return f"{name}: FAILED after {outcome['seconds']} s: {outcome['error'].splitlines()[0]}"
    return f"{name}: ok ({outcome['seconds']} s)"


def summary(record: dict) -> list[str]:
    lines = [
        f"gpu-check{' --dry-run' if record['dry_run'] else ''}: {len(record['steps'])} steps in {record['seconds']} s, "
        f"{len(record['failed'])} failed"
    ]
    lines.append(f"{'memory: run':<36} {'predicted MB':>12} {'measured MB':>12} {'ratio':>6}  method")
    for entry in record["memory"]:
        lines.append(
            f"{entry['run']:<36} {entry['predicted_mb']:>12} {entry['measured_mb']:>12} {entry['ratio']:>6}  "
            f"{entry['memory_method']}"
        )
    rollout = record["steps"].get("rollouts", {})
    if rollout.get("status") == "ok":
        for engine, figures in rollout["generation"].items():
            lines.append(
                f"rollouts {engine}: {figures['tokens_per_second']} tokens/s greedy ({figures['sequences']} sequences)"
            )
        if "same_tokens" in rollout:
            same = rollout["same_tokens"]
            lines.append(
                f"rollouts hf vs vllm: {same['identical_sequences']}/{same['sequences']} identical, "
                f"{same['agreeing_prefix_tokens']}/{same['tokens']} tokens before the first difference"
            )
        else:
            lines.append(f"rollouts vllm: skipped ({rollout['vllm']})")
    evaluation = record["steps"].get("eval_engines", {})
    if evaluation.get("status") == "ok":
        for engine, figures in evaluation["engines"].items():
            planned = (
                f", plan {figures['planned_tokens_per_second']} tokens/s, step {figures['measured_step_ms']} ms "
                f"measured / {figures['planned_step_ms']} ms planned"
                if "planned_tokens_per_second" in figures
                else ""
            )
            lines.append(
                f"eval {engine}: {figures['tokens_per_second']} tokens/s ({figures['sequences']} questions){planned}"
            )
        if "published_sets" in evaluation:
            published = evaluation["published_sets"]
            lines.append(
                f"eval of the published sets ({published['rows']:,} rows, {published['max_new_tokens']}-token cap, "
                f"{published['architecture']}, {published['engine']}): {published['projected_minutes']} min "
                f"projected (plan: {published['planned_minutes']} min; {published['note']})"
            )
        if evaluation["vllm"] != "measured":
            lines.append(f"eval vllm: skipped ({evaluation['vllm']})")
    return lines


def write_record(record: dict, results: Path) -> Path:
    """Atomically: a reader never sees half a file."""
    results.mkdir(parents=True, exist_ok=True)
    name = f"gpu_check{'-dry_run' if record['dry_run'] else ''}-{record['date']}.json"
    partial = results / f".{name}.partial"
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.rename(results / name)
    return results / name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    parser.add_argument(
        "--only", action="append", default=[], choices=list(STEPS), help="run only this step (repeatable)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON record goes")
    args = parser.parse_args(argv)
    record = run_check(args.dry_run, args.only)
    path = write_record(record, args.results)
    print("\n".join(summary(record)))
    print(f"wrote {os.path.relpath(path)}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
