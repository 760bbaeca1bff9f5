"""A plan per stage: the recipe as the stage reads it, the cluster it runs on, memory, time and checkpoint size."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medo1.config import ConfigError, load_config, read_yaml_mapping
from medo1.plan import memory as mem
from medo1.plan.shapes import GPU, ModelShape, gpu_from_node_selector, resolve_gpu, resolve_shape
from medo1.training.arguments import use_bf16

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "bench" / "results"

ASSUMED_UTILISATION = 0.35
"""Share of the GPUs' dense bf16 peak a training step uses when nothing here measured it: well-tuned 7B training on
H100 reaches 40-46% MFU, the published HuatuoGPT-o1 padded loop ~10% (/work/shared/RECIPE.md); ZeRO-3's gathers cost some."""
DECODE_EFFICIENCY = {"hf": 0.25, "vllm": 0.6}
"""Share of HBM bandwidth a decoding step reaches (each step reads every weight once): HF `generate` loses most of it to
Python and kernel launches, vLLM far less. Assumptions, replaced by `make gpu-check`'s figures."""
PROMPT_TOKENS = 256
"""Prompt tokens assumed per RL problem when the problems are not on this machine (the verifiable questions are short)."""
# Published data sets by file name, for machines without the data (/work/shared/RECIPE.md): rows and mean
# tokens per example with the Qwen chat template (measured on the demo rows: mean 696). Their longest row is
# not known here, so micro-batches are sized at data.max_length (the worst case the stage admits).
PUBLISHED_DATA = {"medical_o1_sft.json": {"rows": 19_700, "mean_tokens": 696}}


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu: GPU | None
    """None: a CPU run (`cpu_procs_per_node` processes sharing `host_memory_gib`)."""
    cpu_procs_per_node: int = 1
    host_memory_gib: float | None = None

    @property
    def world(self) -> int:
        return self.nodes * (self.gpus_per_node if self.gpu else self.cpu_procs_per_node)

    @property
    def capacity(self) -> float | None:
        """Bytes one process may use: a GPU's memory, or its share of the pod's memory on the CPU."""
        if self.gpu:
            return self.gpu.memory_gib * mem.GIB
        if self.host_memory_gib:
            return self.host_memory_gib * mem.GIB / self.cpu_procs_per_node
        return None

    def describe(self) -> str:
        if self.gpu:
            return f"{self.nodes} node(s) x {self.gpus_per_node} {self.gpu.name}"
        return f"{self.nodes} node(s) x {self.cpu_procs_per_node} CPU process(es)"


def parse_memory(quantity: str | int | float) -> float:
    """A Kubernetes memory quantity (`16Gi`, `1000Gi`, `512Mi`) in GiB."""
    text = str(quantity)
    for suffix, gib in (("Ti", 1024), ("Gi", 1), ("Mi", 1 / 1024), ("T", 1e12 / 2**30), ("G", 1e9 / 2**30)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * gib
    return float(text) / 2**30


class NothingToSize(ConfigError):
    """A recipe that runs nothing of ours on a GPU (translate, upload, eval of an endpoint)."""


def gpu_from_values(values: dict[str, Any], gpu_name: str | None = None) -> GPU:
    """`gpu_name` if given; else the kind cluster.nodeSelector's nvidia.com/gpu.product names; else an H100 80GB."""
    product = (values["cluster"].get("nodeSelector") or {}).get("nvidia.com/gpu.product")
    return resolve_gpu(gpu_name) if gpu_name else gpu_from_node_selector(product) or resolve_gpu("h100-80gb")


def cluster_from_values(values: dict[str, Any], gpu_name: str | None = None) -> Cluster:
    cluster = values["cluster"]
    for key, least in (("nodes", 1), ("gpusPerNode", 0), ("cpuProcsPerNode", 1)):
        value = cluster.get(key, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"cluster.{key}: {value!r} is not a whole number of at least {least}")
    gpus = int(cluster.get("gpusPerNode", 0))
    gpu = gpu_from_values(values, gpu_name) if gpus else None
    return Cluster(
        int(cluster.get("nodes", 1)),
        gpus,
        gpu,
        int(cluster.get("cpuProcsPerNode", 1)),
        parse_memory(cluster["memory"]) if cluster.get("memory") else None,
    )


def detect_stage(recipe: dict[str, Any], path: str) -> str:
    if "benchmarks" in recipe or "endpoint" in recipe:
        return "eval"
    if "reward" in recipe or "algo" in recipe:
        return "rl"
    if "model" in recipe and "data" in recipe:
        return "sft"
    raise NothingToSize(
        f"recipe {path}: not an sft, rl or eval recipe (no model/data, reward or benchmarks); nothing to size"
    )


def local_recipe(path: str) -> Path:
    """A chart recipe path (/opt/medo1/recipes/X in the image) as this checkout's recipes/X when the image path is absent."""
    candidate = Path(path)
    if not candidate.exists() and (REPO / "recipes" / candidate.name).exists():
        return REPO / "recipes" / candidate.name
    return candidate


# ---- data ---------------------------------------------------------------------------------------


def sft_data(config, shape: ModelShape, tokenize: bool = True) -> dict[str, Any]:
    """Examples and tokens the SFT stage trains on, from the best source here: the data tokenized as the stage
    tokenizes it (which also gives the share of trained tokens; not when `tokenize` is false), the run's
    data_report.json, or the published data set's size."""
    if tokenize and Path(config.data.path).is_file():
        tokenizer = local_tokenizer(config.model.tokenizer or config.model.name_or_path, shape)
        if tokenizer is not None:
            from medo1.data.sources import load_from_config
            from medo1.data.tokenization import encode_sft

            loaded = load_from_config(config.data)
            encoded = encode_sft(
                tokenizer, loaded.examples, config.data.max_length, config.data.overlong, source=config.data.path
            )
            total = sum(encoded.lengths)
            trained = sum(sum(1 for label in labels if label != -100) for labels in encoded.labels)
            return {
                "source": f"{config.data.path} tokenized ({tokenizer.name_or_path})",
                "examples": len(encoded.lengths),
                "total_tokens": total,
                "max_tokens": max(encoded.lengths, default=0),
                "trained_share": trained / max(total, 1),
            }
    report_path = Path(config.output.dir) / "data_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        tokens = report["tokens"]
        return {
            "source": str(report_path),
            "examples": report["trained_examples"],
            "total_tokens": tokens["total_tokens"],
            "max_tokens": tokens["max"],
            "trained_share": None,
        }
    published = PUBLISHED_DATA.get(Path(config.data.path).name)
    if published:
        rows = min(published["rows"], config.data.limit or published["rows"])
        return {
            "source": f"published size of {Path(config.data.path).name} (not on this machine)",
            "examples": rows,
            "total_tokens": rows * published["mean_tokens"],
            "max_tokens": None,
            "trained_share": None,
        }
    where = "here, but no tokenizer for its model is" if Path(config.data.path).is_file() else "not"
    return {
        "source": f"{config.data.path} is {where} on this machine and it is not a published set: no time estimate",
        "examples": None,
        "total_tokens": None,
        "max_tokens": None,
        "trained_share": None,
    }


def local_tokenizer(name_or_path: str, shape: ModelShape):
    """The recipe's own tokenizer when it is on this machine; Qwen's bundled one for a Qwen model; else None."""
    from medo1.models import bundled_qwen_tokenizer_dir, load_tokenizer

    if (Path(name_or_path) / "tokenizer_config.json").is_file():
        return load_tokenizer(name_or_path)
    if shape.name.startswith("Qwen"):
        try:
            return load_tokenizer(bundled_qwen_tokenizer_dir())
        except RuntimeError:
            return None
    return None


def measured_utilisation(gpu: GPU | None) -> tuple[float, str]:
    """MFU of medo1's SFT measured by `make bench` / `make gpu-check` on this GPU kind, else the assumption."""
    if gpu is not None and RESULTS.is_dir():
        from medo1.plan.shapes import gpu_by_device_name

        paths = [*RESULTS.glob("sft_gpu-*.json"), *RESULTS.glob("gpu_check-2*.json")]  # not the dry runs
        for path in sorted(paths, key=lambda p: p.name.rsplit("-", 1)[-1], reverse=True):
            try:
                record = json.loads(path.read_text())
                record = record["steps"]["sft_benchmark"] if "steps" in record else record
                figures = record["contenders"]["medo1_padding_free"]
                if figures.get("mfu") and gpu_by_device_name(record.get("device_name", "")) == gpu:
                    return figures[
                        "mfu"
                    ], f"utilisation {figures['mfu']:.0%} measured ({path.relative_to(REPO)}, 0.5B shape)"
            except (KeyError, TypeError, json.JSONDecodeError):
                continue
    return (
        ASSUMED_UTILISATION,
        f"utilisation {ASSUMED_UTILISATION:.0%} of bf16 peak assumed (none measured for this GPU in bench/results)",
    )


# ---- memory ------------------------------------------------------------------------------------


def strategy_of(distributed: str, deepspeed_config: str | None) -> tuple[str, bool, bool]:
    """(strategy, offload optimizer, offload parameters) from `train.distributed` and its DeepSpeed JSON."""
    if distributed == "ddp":
        return "ddp", False, False
    if distributed == "fsdp":
        return "fsdp", False, False
    offload_optimizer = offload_params = False
    stage = 3
    if deepspeed_config and Path(deepspeed_config).is_file():
        zero = json.loads(Path(deepspeed_config).read_text()).get("zero_optimization", {})
        stage = int(zero.get("stage", 3))
        offload_optimizer = (zero.get("offload_optimizer") or {}).get("device") == "cpu"
        offload_params = (zero.get("offload_param") or {}).get("device") == "cpu"
    return f"zero{stage}", offload_optimizer, offload_params


@dataclass(frozen=True)
class ModelFootprint:
    """What the memory model needs about one model being trained: its shape, parameter counts and bytes."""

    shape: ModelShape
    params: float
    trainable: float
    weight_bytes: int
    precision: mem.Precision
    lora_dropout: bool = False


def model_footprint(
    shape: ModelShape, *, cuda: bool, bf16: bool, strategy: str, lora=None, params: float | None = None
) -> ModelFootprint:
    params = shape.parameters if params is None else params
    if lora is not None and lora.enabled:
        weight_bytes = 2 if cuda else 4  # dtype auto: bf16 on a GPU
        return ModelFootprint(
            shape,
            params,
            mem.lora_parameters(shape, lora.r),
            weight_bytes,
            mem.Precision(weight_bytes, weight_bytes),
            lora.dropout > 0,
        )
    # Full fine-tuning loads fp32 weights; DeepSpeed keeps 16-bit copies, DDP / FSDP compute under autocast.
    compute = 2 if bf16 else 4
    residual = 2 if bf16 and strategy.startswith("zero") else 4
    return ModelFootprint(shape, params, params, 4, mem.Precision(compute, residual))


def train_states(
    model: ModelFootprint, world: int, strategy: str, bf16: bool, offload: tuple[bool, bool]
) -> dict[str, float]:
    return mem.model_states(
        model.params,
        model.trainable,
        world,
        strategy,
        bf16=bf16,
        weight_bytes=model.weight_bytes,
        offload_optimizer=offload[0],
        offload_params=offload[1],
        largest_layer=model.shape.largest_layer_parameters,
    )


def step_parts(
    model: ModelFootprint, tokens: float, trained_tokens: float, *, checkpointing: bool, head: str
) -> dict[str, float]:
    parts = mem.activations(
        model.shape, tokens, model.precision, checkpointing=checkpointing, lora_dropout=model.lora_dropout
    )
    parts.update(mem.head_bytes(model.shape, tokens, trained_tokens, head, model.precision))
    return parts


def prefixed(prefix: str, parts: dict[str, float]) -> dict[str, float]:
    return {f"{prefix} {name}": value for name, value in parts.items()}


def sft_breakdown(
    config, shape: ModelShape, cluster: Cluster, data: dict, micro_batch: int | None = None
) -> mem.Breakdown:
    cuda = cluster.gpu is not None
    train = config.train
    bf16 = use_bf16(train.precision, cuda)
    strategy, *offload = strategy_of(train.distributed, train.deepspeed_config)
    model = model_footprint(shape, cuda=cuda, bf16=bf16, strategy=strategy, lora=config.lora)
    longest = (
        config.data.max_length
        if train.batching == "packed"
        else min(config.data.max_length, data["max_tokens"] or config.data.max_length)
    )
    tokens = (micro_batch or train.per_device_batch_size) * longest
    trained = tokens * (data["trained_share"] or 1.0)
    breakdown = mem.Breakdown(resident=train_states(model, cluster.world, strategy, bf16, tuple(offload)))
    breakdown.resident.update(host_parts(shape, cuda))
    breakdown.phases["training"] = step_parts(
        model, tokens, trained, checkpointing=config.model.gradient_checkpointing, head="fused" if cuda else "compact"
    )
    breakdown.phases["training"].update(comm_buffers(shape, strategy, cluster.world))
    if strategy.startswith("zero") and config.output.save_steps:
        # stage3_gather_16bit_weights_on_model_save: each parameter gathered whole, one module at a time.
        breakdown.phases["checkpoint save"] = {"gathered 16-bit module": 2 * shape.largest_layer_parameters}
    breakdown.notes.append(
        f"micro-batch: {tokens:,.0f} tokens ({micro_batch or train.per_device_batch_size} x {longest}, "
        f"{train.batching}); activation checkpointing {'on' if config.model.gradient_checkpointing else 'off'}"
    )
    return breakdown


def host_parts(shape: ModelShape, cuda: bool) -> dict[str, float]:
    """What a CPU run holds besides tensors: the loaded tokenizer (on a GPU machine it is host memory, not the GPU's)."""
    return {} if cuda else {"tokenizer (host memory)": shape.vocab_size * mem.TOKENIZER_BYTES_PER_TOKEN}


def comm_buffers(shape: ModelShape, strategy: str, world: int) -> dict[str, float]:
    if world == 1:
        return {}
    if strategy == "ddp":
        return {"gradient buckets": mem.DDP_BUCKET_BYTES}
    # medo1's ZeRO-3 config leaves reduce_bucket_size "auto": hidden^2 elements (transformers' DeepSpeed integration).
    return {"reduce bucket": 4 * shape.hidden_size**2}


def rl_breakdown(
    config,
    shape: ModelShape,
    verifier: ModelShape | None,
    cluster: Cluster,
    prompt_tokens: int,
    micro_batch: int | None = None,
) -> mem.Breakdown:
    cuda = cluster.gpu is not None
    train, sampling = config.train, config.sampling
    bf16 = use_bf16(train.precision, cuda)
    strategy, *offload = strategy_of(train.distributed, train.deepspeed_config)
    sharded = strategy != "ddp"
    world = cluster.world
    policy = model_footprint(shape, cuda=cuda, bf16=bf16, strategy=strategy)
    resident = prefixed("policy", train_states(policy, world, strategy, bf16, tuple(offload)))
    reference_bytes = (2 if bf16 else 4) if sharded else 4  # DeepSpeed / FSDP keep the frozen copy in 16 bits
    resident["reference weights"] = shape.parameters * reference_bytes / (world if sharded else 1)
    if config.algo == "ppo":
        value_params = (
            shape.parameters - (0 if shape.tie_word_embeddings else shape.embedding_parameters) + shape.hidden_size
        )
        value = model_footprint(shape, cuda=cuda, bf16=bf16, strategy=strategy, params=value_params)
        resident.update(prefixed("value", train_states(value, world, strategy, bf16, tuple(offload))))
    if verifier is not None:
        resident["verifier weights (whole)"] = verifier.parameters * (2 if cuda else 4)
    resident.update(host_parts(shape, cuda))
    per_rank = (micro_batch or train.per_device_batch_size) * train.gradient_accumulation_steps
    if config.algo == "grpo":
        per_rank = micro_batch or train.per_device_batch_size
    sequence = prompt_tokens + sampling.response_length
    rollout: dict[str, float] = {}
    vllm_share = 0.0
    if sampling.engine == "vllm" and cluster.capacity:
        vllm_share = sampling.vllm.gpu_memory_utilization * cluster.capacity
        rollout["vLLM (gpu_memory_utilization)"] = vllm_share
    else:
        if sharded and sampling.gather_weights_for_generation:
            rollout["policy gathered for generation"] = shape.parameters * (2 if bf16 else 4)
        rollout["KV cache"] = mem.kv_cache(shape, per_rank, sequence, 2 if bf16 else 4)
    micro_tokens = (micro_batch or train.per_device_batch_size) * sequence
    head = "fused" if cuda else "compact_rl"
    # Scoring (vLLM asleep): the policy's and reference's log-probs of the whole rollout batch at once, no gradients.
    scoring = mem.head_bytes(
        shape, per_rank * sequence, per_rank * (sampling.response_length + 1), head, policy.precision, backward=False
    )
    training = step_parts(
        policy,
        micro_tokens,
        (micro_batch or train.per_device_batch_size) * (sampling.response_length + 1),
        checkpointing=config.model.gradient_checkpointing,
        head=head,
    )
    training.update(comm_buffers(shape, strategy, world))
    breakdown = mem.Breakdown(resident=resident, phases={"rollout": rollout, "scoring": scoring, "training": training})
    if sampling.engine == "vllm" and not sampling.vllm.sleep:
        breakdown.resident["vLLM (awake while training)"] = vllm_share
        del breakdown.phases["rollout"]["vLLM (gpu_memory_utilization)"]
    breakdown.notes.append(
        f"rollout: {per_rank} sequences of {prompt_tokens} + {sampling.response_length} tokens per rank; "
        f"training micro-batch {micro_tokens:,} tokens"
    )
    return breakdown


def eval_breakdown(config, shape: ModelShape, cluster: Cluster) -> mem.Breakdown:
    """HF generate: the weights and the KV cache of `batch_size` questions (times their samples); vLLM (the engine on
    a GPU unless `engine: hf`): the share of the GPU it is given for both (`vllm.gpu_memory_utilization`)."""
    cuda = cluster.gpu is not None
    if cuda and config.engine != "hf" and cluster.capacity:
        breakdown = mem.Breakdown(resident={})
        breakdown.phases["generation"] = {
            "vLLM (gpu_memory_utilization)": config.vllm.gpu_memory_utilization * cluster.capacity
        }
        return breakdown
    dtype = 2 if cuda else 4
    breakdown = mem.Breakdown(resident={"weights": shape.parameters * dtype})
    sequences = config.batch_size * config.samples_per_prompt
    breakdown.phases["generation"] = {
        "KV cache": mem.kv_cache(shape, sequences, PROMPT_TOKENS + config.max_new_tokens, dtype)
    }
    return breakdown


# ---- the plan ----------------------------------------------------------------------------------


@dataclass
class StagePlan:
    stage: str
    recipe: str
    cluster: Cluster
    model: ModelShape
    breakdown: mem.Breakdown
    headroom: float
    largest_micro_batch: int | None
    micro_batch: int | None
    suggestions: list[dict[str, Any]]
    time: dict[str, Any]
    checkpoint: dict[str, Any]
    strategies: dict[str, float]
    export_dir: str | None = None
    """Where the stage writes its export: a later stage that starts from it has this stage's architecture."""

    @property
    def cuda(self) -> bool:
        return self.cluster.gpu is not None

    @property
    def total(self) -> float:
        return self.breakdown.total(self.cuda)

    @property
    def usable(self) -> float | None:
        capacity = self.cluster.capacity
        return None if capacity is None else capacity * (1 - self.headroom)

    @property
    def fits(self) -> bool | None:
        return None if self.usable is None else self.total <= self.usable

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "recipe": self.recipe,
            "cluster": {
                "nodes": self.cluster.nodes,
                "gpus_per_node": self.cluster.gpus_per_node,
                "gpu": self.cluster.gpu.name if self.cluster.gpu else None,
                "processes": self.cluster.world,
            },
            "model": {"architecture": self.model.name, "parameters": self.model.parameters},
            "memory": {
                **self.breakdown.as_dict(self.cuda),
                "capacity": self.cluster.capacity,
                "headroom": self.headroom,
                "usable": self.usable,
                "fits": self.fits,
                "micro_batch": self.micro_batch,
                "largest_micro_batch": self.largest_micro_batch,
                "model_states_by_strategy": {name: round(value) for name, value in self.strategies.items()},
                "suggestions": self.suggestions,
            },
            "time": self.time,
            "checkpoint": self.checkpoint,
        }


def largest_micro_batch(total_for, usable: float | None, limit: int = 256) -> int | None:
    """The largest micro-batch whose plan fits (0: not even 1); None when there is no capacity to compare with."""
    if usable is None:
        return None
    if total_for(1) > usable:
        return 0
    low, high = 1, limit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if total_for(middle) <= usable else (low, middle - 1)
    return low


def model_states_by_strategy(shape: ModelShape, world: int, bf16: bool) -> dict[str, float]:
    """Full fine-tuning's model states per GPU under each sharding, for comparison (DeepSpeed's bytes per parameter)."""
    result = {}
    for strategy in mem.STRATEGIES:
        weight_bytes = 2 if strategy.startswith("zero") else 4
        states = mem.model_states(
            shape.parameters,
            shape.parameters,
            world,
            strategy,
            bf16=bf16,
            weight_bytes=weight_bytes,
            largest_layer=shape.largest_layer_parameters,
        )
        result[strategy] = sum(states.values())
    states = mem.model_states(
        shape.parameters,
        shape.parameters,
        world,
        "zero3",
        bf16=bf16,
        weight_bytes=2,
        offload_optimizer=True,
        largest_layer=shape.largest_layer_parameters,
    )
    result["zero3 + optimizer offload"] = sum(states.values())
    return result


SFT_FIXES = (
    ("turn on activation checkpointing", ["model.gradient_checkpointing=true"]),
    ("shard with ZeRO-3", ["train.distributed=deepspeed_zero3"]),
    (
        "ZeRO-3 with activation checkpointing",
        ["train.distributed=deepspeed_zero3", "model.gradient_checkpointing=true"],
    ),
    (
        "LoRA (r=16) on ZeRO-3 with activation checkpointing",
        ["lora.enabled=true", "train.distributed=deepspeed_zero3", "model.gradient_checkpointing=true"],
    ),
)


def suggestions(stage: str, plan: StagePlan, rebuild, overrides: list[str], config) -> list[dict[str, Any]]:
    """Changes that make a plan that does not fit fit, the least intrusive first, each checked by planning it again."""
    if plan.fits is not False:
        return []
    found: list[dict[str, Any]] = []
    if plan.largest_micro_batch:
        train = config.train
        accumulation = train.gradient_accumulation_steps * train.per_device_batch_size // plan.largest_micro_batch
        found.append(
            {
                "change": f"micro-batch {plan.largest_micro_batch} (gradient accumulation {accumulation}: same examples per step)",
                "set": [
                    f"train.per_device_batch_size={plan.largest_micro_batch}",
                    f"train.gradient_accumulation_steps={accumulation}",
                ],
            }
        )
    fixes = (
        SFT_FIXES
        if stage == "sft"
        else SFT_FIXES[:3]
        + (("generate without gathering the policy", ["sampling.gather_weights_for_generation=false"]),)
    )
    if plan.cluster.gpu is None:  # accelerate runs no DeepSpeed on the CPU: only what runs there
        fixes = (
            *(fix for fix in fixes if "train.distributed=deepspeed_zero3" not in fix[1]),
            ("LoRA (r=16) with activation checkpointing", ["lora.enabled=true", "model.gradient_checkpointing=true"]),
        )
    for change, extra in fixes:
        if all(item in overrides for item in extra):
            continue
        candidate = rebuild(overrides + extra)
        if candidate is not None and candidate.fits:
            found.append({"change": change, "set": extra, "total": round(candidate.total)})
    if plan.strategies and plan.cluster.gpu:
        offloaded = plan.strategies["zero3 + optimizer offload"]
        others = plan.total - sum(
            v for k, v in plan.breakdown.resident.items() if not k.startswith(("reference", "verifier", "vLLM"))
        )
        host_needed = plan.model.parameters * 16 * 1.5 / plan.cluster.nodes  # DeepSpeed's cold estimate, per node
        host = plan.cluster.host_memory_gib * mem.GIB if plan.cluster.host_memory_gib else None
        if offloaded + others <= plan.usable:
            fits_host = host is None or host_needed <= host
            found.append(
                {
                    "change": "ZeRO-3 with the optimizer offloaded to CPU memory (a deepspeed_config with "
                    "zero_optimization.offload_optimizer.device: cpu)"
                    + (
                        ""
                        if fits_host
                        else f"; needs {host_needed / mem.GIB:,.0f} GiB of host memory per node, "
                        f"the node has {host / mem.GIB:,.0f}"
                    ),
                    "set": ["train.distributed=deepspeed_zero3", "train.deepspeed_config=PATH"],
                    "host_memory_fits": fits_host,
                }
            )
        per_gpu_states = plan.strategies["zero3"] * plan.cluster.world
        for nodes in range(plan.cluster.nodes + 1, 65):
            world = nodes * plan.cluster.gpus_per_node
            if per_gpu_states / world + others <= plan.usable:
                found.append(
                    {
                        "change": f"{nodes} nodes ({world} GPUs) with ZeRO-3",
                        "set": ["train.distributed=deepspeed_zero3"],
                        "nodes": nodes,
                    }
                )
                break
    return found


def plan_stage(
    recipe: str,
    *,
    cluster: Cluster,
    overrides: list[str] | None = None,
    stage: str | None = None,
    architecture: str | None = None,
    verifier_architecture: str | None = None,
    headroom: float = mem.DEFAULT_HEADROOM,
    utilisation: float | None = None,
    exports: dict[str, str] | None = None,
    check_fixes: bool = True,
    memory_only: bool = False,
) -> StagePlan:
    """Memory, time and checkpoint size of one stage's recipe (with `--set` overrides) on `cluster`.

    `exports` maps earlier stages' export directories to their architectures (a pipeline's RL starts from
    the SFT export, which does not exist yet when planning). `memory_only`: no time estimate and no data
    tokenized (the SFT micro-batch is sized from data_report.json, else at data.max_length), in well under
    a second: the launcher's pre-flight."""
    overrides = list(overrides or [])
    exports = exports or {}

    def shape_of(name_or_path: str, named: str | None) -> ModelShape:
        exported = exports.get(name_or_path.rstrip("/"))
        if named is None and exported is not None:
            return resolve_shape(
                exported
            )  # an architecture, or the local model directory the earlier stage starts from
        return resolve_shape(name_or_path, named)

    raw = read_yaml_mapping(recipe, "recipe")
    stage = stage or detect_stage(raw, recipe)

    def rebuild(changed: list[str]) -> StagePlan | None:
        try:
            return plan_stage(
                recipe,
                cluster=cluster,
                overrides=changed,
                stage=stage,
                architecture=architecture,
                verifier_architecture=verifier_architecture,
                headroom=headroom,
                utilisation=utilisation,
                exports=exports,
                check_fixes=False,
                memory_only=memory_only,
            )
        except (ConfigError, ValueError):
            return None

    if stage == "sft":
        from medo1.sft.config import SFTConfig

        config = load_config(SFTConfig, recipe, overrides)
        shape = shape_of(config.model.name_or_path, architecture)
        data = sft_data(config, shape, tokenize=not memory_only)
        build = lambda b=None: sft_breakdown(config, shape, cluster, data, b)  # noqa: E731
        time = {} if memory_only else sft_time(config, shape, cluster, data, utilisation)
        checkpoint = sft_checkpoint(config, shape)
        micro = config.train.per_device_batch_size
    elif stage == "rl":
        from medo1.rl.config import RLConfig

        config = load_config(RLConfig, recipe, overrides)
        shape = shape_of(config.model.name_or_path, architecture)
        verifier = None
        if config.reward.kind == "verifier":
            verifier = shape_of(config.reward.model, verifier_architecture)
        build = lambda b=None: rl_breakdown(config, shape, verifier, cluster, PROMPT_TOKENS, b)  # noqa: E731
        time = {} if memory_only else rl_time(config, shape, verifier, cluster, utilisation)
        checkpoint = rl_checkpoint(config, shape)
        micro = config.train.per_device_batch_size
    elif stage == "eval":
        from medo1.eval.config import EvalConfig

        config = load_config(EvalConfig, recipe, overrides)
        if config.model is None:
            raise NothingToSize(f"recipe {recipe}: evaluates an endpoint; nothing runs on our GPUs to size")
        shape = shape_of(config.model, architecture)
        build = lambda b=None: eval_breakdown(config, shape, cluster)  # noqa: E731
        time, checkpoint, micro = {} if memory_only else eval_time(config, shape, cluster), {}, None
    else:
        raise ConfigError(f"unknown stage {stage!r}: sft, rl or eval")
    breakdown = build()
    strategies = {}
    if stage in ("sft", "rl"):
        strategies = model_states_by_strategy(
            shape, cluster.world, use_bf16(config.train.precision, cluster.gpu is not None)
        )
    export_dir = f"{config.output.dir.rstrip('/')}/export" if stage in ("sft", "rl") else None
    plan = StagePlan(
        stage,
        str(recipe),
        cluster,
        shape,
        breakdown,
        headroom,
        None,
        micro,
        [],
        time,
        checkpoint,
        strategies,
        export_dir,
    )
    if micro is not None and plan.usable is not None:
        plan.largest_micro_batch = largest_micro_batch(lambda b: build(b).total(plan.cuda), plan.usable)
    if check_fixes:
        plan.suggestions = suggestions(stage, plan, rebuild, overrides, config)
    return plan


# ---- time and checkpoints -------------------------------------------------------------------------


def seconds_at(flops: float, cluster: Cluster, utilisation: float) -> float:
    return flops / (cluster.world * cluster.gpu.peak_bf16_flops * utilisation)


def sft_time(config, shape: ModelShape, cluster: Cluster, data: dict, utilisation: float | None) -> dict[str, Any]:
    train = config.train
    result: dict[str, Any] = {"data": data}
    if data["total_tokens"] is None:
        return result
    examples_per_step = train.per_device_batch_size * train.gradient_accumulation_steps * cluster.world
    steps_per_epoch = math.ceil(data["examples"] / examples_per_step)
    if train.max_steps > 0:
        steps = train.max_steps
        tokens = (
            data["total_tokens"] * min(1.0, steps * examples_per_step / data["examples"] / train.epochs) * train.epochs
        )
    else:
        steps = math.ceil(steps_per_epoch * train.epochs)
        tokens = data["total_tokens"] * train.epochs
    mean_length = data["total_tokens"] / max(data["examples"], 1)
    recompute = 4 / 3 if config.model.gradient_checkpointing else 1.0
    flops_per_token = (6 * shape.parameters + 6 * shape.layers * shape.hidden_size * mean_length) * recompute
    result.update(
        {
            "tokens": round(tokens),
            "optimizer_steps": steps,
            "flops_per_token": flops_per_token,
            "flops_per_token_formula": "(6 N + 6 layers hidden mean_length) x 4/3 with activation checkpointing",
        }
    )
    if cluster.gpu is None:
        result["note"] = "CPU run: no time estimate (see `make bench` for this machine's figures)"
        return result
    measured, source = measured_utilisation(cluster.gpu)
    mfu = utilisation or measured
    hours = seconds_at(tokens * flops_per_token, cluster, mfu) / 3600
    result.update(
        {
            "utilisation": mfu,
            "utilisation_source": f"utilisation {mfu:.0%} (--mfu)" if utilisation else source,
            "hours": round(hours, 2),
            "gpu_hours": round(hours * cluster.world, 1),
        }
    )
    return result


def decode_tokens_per_second(shape: ModelShape, gpu: GPU, sequences: int, context: int, engine: str) -> float:
    """Decoding is bandwidth-bound: every step reads the 16-bit weights and the sequences' KV cache once."""
    step_bytes = 2 * shape.parameters + mem.kv_cache(shape, sequences, context / 2, 2)
    return sequences * gpu.memory_bandwidth * DECODE_EFFICIENCY[engine] / step_bytes


def rl_time(
    config, shape: ModelShape, verifier: ModelShape | None, cluster: Cluster, utilisation: float | None
) -> dict[str, Any]:
    train, sampling = config.train, config.sampling
    episodes = train.total_episodes
    sequence = PROMPT_TOKENS + sampling.response_length
    result: dict[str, Any] = {
        "episodes": episodes,
        "prompt_tokens_assumed": PROMPT_TOKENS,
        "response_tokens": f"{sampling.response_length} each (upper bound: every response runs to length)",
    }
    if cluster.gpu is None:
        result["note"] = "CPU run: no time estimate (see `make bench` for this machine's figures)"
        return result
    batch = train.per_device_batch_size * (train.gradient_accumulation_steps if config.algo == "ppo" else 1)
    per_gpu = decode_tokens_per_second(shape, cluster.gpu, batch, sequence, sampling.engine)
    rollout_s = episodes * sampling.response_length / (per_gpu * cluster.world)
    epochs = config.ppo.ppo_epochs if config.algo == "ppo" else 1
    trained_models = 2 if config.algo == "ppo" else 1
    recompute = 4 / 3 if config.model.gradient_checkpointing else 1.0
    train_flops = episodes * sequence * epochs * trained_models * 6 * shape.parameters * recompute
    score_flops = episodes * sequence * 2 * shape.parameters * (1 + trained_models)  # reference, old log-probs, values
    if verifier is not None:
        score_flops += episodes * sampling.response_length * 2 * verifier.parameters
    measured, source = measured_utilisation(cluster.gpu)
    mfu = utilisation or measured
    compute_s = seconds_at(train_flops + score_flops, cluster, mfu)
    hours = (rollout_s + compute_s) / 3600
    result.update(
        {
            "rollout_tokens_per_second_per_gpu": round(per_gpu),
            "rollout_source": f"bandwidth bound: {DECODE_EFFICIENCY[sampling.engine]:.0%} of {cluster.gpu.memory_bandwidth / 1e12:.2f} TB/s "
            f"({sampling.engine}, {batch} sequences), assumed",
            "rollout_hours": round(rollout_s / 3600, 2),
            "training_and_scoring_hours": round(compute_s / 3600, 2),
            "utilisation": mfu,
            "utilisation_source": f"utilisation {mfu:.0%} (--mfu)" if utilisation else source,
            "hours": round(hours, 2),
            "gpu_hours": round(hours * cluster.world, 1),
        }
    )
    return result


def eval_rows(config) -> tuple[int, list[str]]:
    """Rows the eval recipe scores (each benchmark's, cut by `limit`) and where each count comes from: the file when
    it is on this machine (a file of named sets counted per set), else the published size by name."""
    from medo1.data.sources import json_sets, load_examples, split_set
    from medo1.eval.published import PAPER_SETS, PUBLISHED_EVAL_FILE, paper_set

    rows, sources = 0, []
    for name, text in config.benchmarks.items():
        path, key = split_set(text)
        sets = json_sets(path) if key is None else None
        if sets:
            counts = sets
        elif Path(path).is_file():
            counts = {name: len(load_examples(path, config.format, None, config.fields, key=key).examples)}
        elif key is None and Path(path).name == PUBLISHED_EVAL_FILE:
            counts = {s.key: s.rows for s in PAPER_SETS}
        else:
            published = paper_set(key or name)
            counts = {name: published.rows if published else 0}
        for set_name, count in counts.items():
            where = path if Path(path).is_file() else ("published size" if count else "not on this machine, left out")
            sources.append(f"{set_name}: {count} rows ({where})")
            rows += max(0, min(count - config.start_row, config.limit or count))
    return rows, sources


EVAL_KV_SHARE = 0.9
"""Of the GPU memory vLLM is given (`vllm.gpu_memory_utilization`), the share left to the KV cache once the weights
are in is taken as this much of the remainder (activations and CUDA graphs take the rest)."""
VLLM_DEFAULT_MAX_SEQS = 1024
"""vLLM's own default number of sequences in flight for offline `LLM` use on an 80 GB-class GPU."""


def eval_time(config, shape: ModelShape, cluster: Cluster) -> dict[str, Any]:
    """Upper bound of the eval's time: every response runs to `max_new_tokens`. Decoding reads the weights and the
    KV cache once per step (bandwidth bound) and does 2 x parameters FLOPs per sequence (compute bound); a step takes
    the longer of the two. vLLM keeps as many sequences in flight as its KV cache holds (up to `vllm.max_num_seqs`);
    HF generate runs `batch_size` questions (times their samples) at a time."""
    rows, sources = eval_rows(config)
    models = 1 + len(config.compare_with)
    responses = rows * config.samples_per_prompt * (models * len(config.seeds) + len(config.noise_seeds))
    # On the GPU image vLLM imports: `engine: auto` is vLLM there.
    engine = "hf" if config.engine == "hf" else "vllm"
    result: dict[str, Any] = {
        "rows": rows,
        "sources": sources,
        "models": models,
        "responses": responses,
        "engine": engine,
        "new_tokens": f"{config.max_new_tokens} each (upper bound)",
    }
    if cluster.gpu is None:
        result["note"] = "CPU run: no time estimate"
        return result
    context = PROMPT_TOKENS + config.max_new_tokens
    gpus = config.vllm.tensor_parallel_size if engine == "vllm" else 1
    if engine == "vllm":
        budget = cluster.gpu.memory_gib * 2**30 * gpus * config.vllm.gpu_memory_utilization - 2 * shape.parameters
        kv_tokens = max(0.0, budget * EVAL_KV_SHARE) / shape.kv_cache_bytes_per_token(2)
        sequences = max(
            1, min(config.vllm.max_num_seqs or VLLM_DEFAULT_MAX_SEQS, int(kv_tokens / (context / 2)), responses or 1)
        )
    else:
        sequences = max(1, min(config.batch_size * config.samples_per_prompt, responses or 1))
    memory_bound = decode_tokens_per_second(shape, cluster.gpu, sequences, context, engine) * gpus
    measured, source = measured_utilisation(cluster.gpu)
    compute_bound = gpus * cluster.gpu.peak_bf16_flops * measured / (2 * shape.parameters)
    per_second = min(memory_bound, compute_bound)
    seconds = responses * config.max_new_tokens / per_second
    result.update(
        {
            "sequences_in_flight": sequences,
            "tokens_per_second": round(per_second),
            "bound": "memory bandwidth" if memory_bound <= compute_bound else "compute",
            "utilisation": measured,
            "utilisation_source": source,
            "minutes": round(seconds / 60, 1),
            "hours": round(seconds / 3600, 2),
            "gpu_hours": round(seconds * gpus / 3600, 2),
        }
    )
    return result


def sft_checkpoint(config, shape: ModelShape) -> dict[str, Any]:
    """Bytes on the checkpoint volume: `output.keep` checkpoints plus the export."""
    n = shape.parameters
    if config.lora.enabled:
        adapters = mem.lora_parameters(shape, config.lora.r)
        each, export = adapters * 16, n * 4  # adapters with Adam state; the merged export is written in fp32
    elif config.train.distributed == "deepspeed_zero3":
        each, export = n * 16, n * 2  # 16-bit model + fp32 master, m, v partitions; the export gathered in 16 bits
    else:
        each, export = n * 16, n * 4  # fp32 model, AdamW m, v (DDP, FSDP full state dict)
    return {
        "per_checkpoint": each,
        "kept": config.output.keep,
        "export": export if config.output.export else 0,
        "total": each * config.output.keep + (export if config.output.export else 0),
    }


def rl_checkpoint(config, shape: ModelShape) -> dict[str, Any]:
    models = 2 if config.algo == "ppo" else 1
    each = shape.parameters * 16 * models
    export = shape.parameters * 4
    return {
        "per_checkpoint": each,
        "kept": config.output.keep,
        "export": export,
        "total": each * config.output.keep + export,
    }
