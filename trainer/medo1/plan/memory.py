"""Per-GPU memory of a training or inference step, part by part.

Every figure is bytes on one device. Model states (weights, gradients, optimizer) use DeepSpeed's
own per-parameter bytes (its `estimate_zero2/3_model_states_mem_needs`): bf16 mixed precision keeps
a 16-bit copy of the weights (2), fp32 gradients (4) and fp32 master weights, Adam m and v (12), and
ZeRO-3 gathers the largest layer's 16-bit weights and gradients (4 x its parameters). Activations are
the tensors a decoder layer saves for its backward pass (see `activation_bytes_per_token`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medo1.plan.shapes import ModelShape

GIB = 2**30
CUDA_CONTEXT_BYTES = 1 * GIB
"""CUDA context, cuBLAS / NCCL workspaces and kernels: about 1 GiB per process on H100 with CUDA 12 (not tensors)."""
ALLOCATOR_SLACK = 0.05
"""PyTorch's caching allocator keeps freed blocks that do not fit later requests: 5% on top of the tensors."""
DEFAULT_HEADROOM = 0.10
"""Share of a GPU's memory the plan leaves free (fragmentation spikes, NCCL buffers it cannot see)."""
TOKENIZER_BYTES_PER_TOKEN = 730
"""Host memory of a loaded fast (Rust) tokenizer per vocabulary entry: Qwen2.5's 151,665-entry tokenizer holds
~105 MiB resident (measured here with `medo1.models.load_tokenizer`). Counted in CPU plans, where it shares the
memory the training uses; on a GPU it is host memory."""
DDP_BUCKET_BYTES = 2 * 25 * 2**20
"""torch DDP's gradient buckets: 25 MiB, two in flight."""
FUSED_HEAD_TOKEN_TILE = 4096
FUSED_HEAD_VOCAB_TILE = 8192
"""TRL's chunked LM head projects [4096 tokens x a vocabulary tile] at a time (trl.kernels.chunked_logprob)."""

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")


@dataclass
class Breakdown:
    """Named parts in bytes; `phases` name the parts that are alive only in one phase (the peak is the larger phase)."""

    resident: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str | None:
        return max(self.phases, key=lambda name: sum(self.phases[name].values())) if self.phases else None

    @property
    def tensors(self) -> float:
        peak = self.peak_phase
        return sum(self.resident.values()) + (sum(self.phases[peak].values()) if peak else 0.0)

    def total(self, cuda: bool) -> float:
        """Tensors, allocator slack and (on a GPU) the CUDA context."""
        return self.tensors * (1 + ALLOCATOR_SLACK) + (CUDA_CONTEXT_BYTES if cuda else 0)

    def as_dict(self, cuda: bool) -> dict:
        peak = self.peak_phase
        return {
            "resident": {name: round(value) for name, value in self.resident.items()},
            "phases": {name: {k: round(v) for k, v in parts.items()} for name, parts in self.phases.items()},
            "peak_phase": peak,
            "tensors": round(self.tensors),
            "allocator_slack": round(self.tensors * ALLOCATOR_SLACK),
            "cuda_context": CUDA_CONTEXT_BYTES if cuda else 0,
            "total": round(self.total(cuda)),
            "notes": self.notes,
        }


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """LoRA A and B on every linear of every layer (target_modules all-linear: q, k, v, o, gate, up, down)."""
    h, kv, i = shape.hidden_size, shape.kv_size, shape.intermediate_size
    per_layer = rank * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    return shape.layers * per_layer


@dataclass(frozen=True)
class Precision:
    """How a trained model's numbers are stored and computed."""

    compute_bytes: int
    """Bytes per activation element of the linear layers' inputs and outputs: 2 under bf16, 4 in fp32."""
    residual_bytes: int
    """Bytes per element of the residual stream: 4 when fp32 weights run under autocast, else compute_bytes."""


def model_states(
    params: float,
    trainable: float,
    world: int,
    strategy: str,
    *,
    bf16: bool,
    weight_bytes: int,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    largest_layer: float = 0.0,
) -> dict[str, float]:
    """Weights, gradients and optimizer state of one trained model on one GPU.

    Full fine-tuning (`trainable == params`): ZeRO / FSDP with bf16 keep 2 (16-bit weights) + 4 (fp32
    gradients) + 12 (fp32 master weights, Adam m, v) bytes a parameter, split over `world` as each stage
    splits them (ZeRO-1: optimizer; ZeRO-2: + gradients, with a 16-bit gradient buffer per rank; ZeRO-3 /
    FSDP: everything, plus the gathered largest layer). DDP keeps the model as loaded (`weight_bytes`),
    same-dtype gradients and AdamW m, v. LoRA (`trainable < params`): the frozen base as loaded, the
    adapters in fp32 with their gradients and Adam state.
    """
    frozen = params - trainable
    if trainable < params:  # LoRA: adapters are small; only the frozen base is sharded under ZeRO-3 / FSDP
        split = world if strategy in ("zero3", "fsdp") else 1
        return {
            "weights": frozen * weight_bytes / split + trainable * 4,
            "gradients": trainable * 4,
            "optimizer": trainable * 8,
            "gathered_layer": 2 * largest_layer if split > 1 else 0.0,
        }
    if strategy == "ddp":
        return {
            "weights": params * weight_bytes,
            "gradients": params * weight_bytes,
            "optimizer": params * 2 * weight_bytes,
            "gathered_layer": 0.0,
            # Parameters under autocast are cast to bf16 once per forward and the copies cached until it ends.
            "autocast_weight_copies": params * 2 if bf16 and weight_bytes == 4 else 0.0,
        }
    sixteen = 2 if bf16 else 4  # the weights the forward pass reads
    grads32 = 4  # fp32 gradient partitions
    master = 12  # fp32 master weights, Adam m and v: DeepSpeed keeps its own flat fp32 copy even when training in fp32
    sharded = strategy in ("zero3", "fsdp")
    states = {
        "weights": 0.0 if offload_params else params * sixteen / (world if sharded else 1),
        # ZeRO-1 reduces full 16-bit gradients; ZeRO-2 and up keep only the rank's partition.
        "gradients": params * (sixteen if strategy == "zero1" else 0)
        + params * (grads32 + (sixteen if strategy == "zero2" else 0)) / world,
        "optimizer": params * master / world,
        "gathered_layer": (2 * sixteen) * largest_layer if sharded else 0.0,
    }
    if offload_optimizer:
        states["gradients"] = states["optimizer"] = 0.0
    return states


def activation_bytes_per_token(shape: ModelShape, precision: Precision) -> float:
    """Bytes one decoder layer saves for backward per token (flash / memory-efficient attention: no seq x seq scores).

    Linear inputs and outputs in compute precision: q/k/v input (h), q, k, v (h + 2 kv), attention output (h),
    MLP input (h), gate, up, silu(gate), silu(gate) * up (4 i); each of the two RMSNorms keeps its input
    (residual precision) and its fp32 normalised output.
    """
    h, kv, i = shape.hidden_size, shape.kv_size, shape.intermediate_size
    c, r = precision.compute_bytes, precision.residual_bytes
    return c * (4 * h + 2 * kv + 4 * i) + 2 * (r + 4) * h


def lora_dropout_bytes_per_token(shape: ModelShape, precision: Precision) -> float:
    """LoRA with dropout > 0 keeps a dropped-out copy of each adapted linear's input (7 per layer)."""
    h, i = shape.hidden_size, shape.intermediate_size
    return precision.compute_bytes * (6 * h + i)


def activations(
    shape: ModelShape, tokens: float, precision: Precision, *, checkpointing: bool, lora_dropout: bool = False
) -> dict[str, float]:
    """Saved activations of a micro-batch of `tokens` tokens.

    Without checkpointing every layer keeps its tensors; with it (per decoder layer) only each layer's input
    stays, and the backward pass recomputes one layer at a time, so one layer's tensors are live again.
    The backward pass of a layer holds about as much in gradients as the layer saved: one layer's worth more.
    """
    per_layer = activation_bytes_per_token(shape, precision)
    if lora_dropout:
        per_layer += lora_dropout_bytes_per_token(shape, precision)
    layer = per_layer * tokens
    if checkpointing:
        return {"activations": shape.layers * precision.residual_bytes * shape.hidden_size * tokens + 2 * layer}
    return {"activations": (shape.layers + 1) * layer}


def head_bytes(
    shape: ModelShape, tokens: float, trained_tokens: float, mode: str, precision: Precision, backward: bool = True
) -> dict[str, float]:
    """The LM head's logits and loss for one micro-batch.

    fused: TRL's chunked head on CUDA: one [4096 x 8192] tile, fp32 gradients for the hidden states and the head;
    compact: medo1's CPU SFT loss, the head on trained positions only: fp32 logits, log-softmax and its gradient
    (measured: 3.0 such tensors at the peak of cross-entropy's backward);
    compact_rl: medo1's CPU RL log-probs on response positions: logits / temperature, log-softmax, its exp and
    their product for the entropy are live together (4 tensors), with or without gradients;
    full: the model's own loss over every position: logits in compute precision, an fp32 copy, log-softmax, gradient.
    """
    v, h = shape.vocab_size, shape.hidden_size
    if mode == "fused":
        tile = min(tokens, FUSED_HEAD_TOKEN_TILE) * FUSED_HEAD_VOCAB_TILE * precision.compute_bytes
        return {"lm_head": tile + (4 * tokens * h + 4 * v * h if backward else 0)}
    if mode == "compact":
        return {"lm_head": 3 * 4 * trained_tokens * v}
    if mode == "compact_rl":
        return {"lm_head": 4 * 4 * trained_tokens * v}
    return {"lm_head": (precision.compute_bytes + 3 * 4) * tokens * v}


def kv_cache(shape: ModelShape, sequences: float, tokens_each: float, dtype_bytes: int) -> float:
    return shape.kv_cache_bytes_per_token(dtype_bytes) * sequences * tokens_each
