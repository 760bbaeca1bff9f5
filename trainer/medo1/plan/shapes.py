"""Model and GPU shapes the plan computes with: a local config.json when there is one, else a known architecture."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medo1.config import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer (Qwen2 / Llama: RMSNorm, SwiGLU MLP, grouped-query attention)."""

    name: str
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_parameters(self) -> int:
        h, kv, i = self.hidden_size, self.kv_size, self.intermediate_size
        attention = h * h * 2 + h * kv * 2 + ((h + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * i + 2 * h

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def parameters(self) -> int:
        head = 0 if self.tie_word_embeddings else self.embedding_parameters
        return self.layers * self.layer_parameters + self.embedding_parameters + head + self.hidden_size

    @property
    def largest_layer_parameters(self) -> int:
        """Parameters of the largest single module (DeepSpeed's `largest_layer_params`): the embedding here."""
        return max(self.embedding_parameters, self.hidden_size * self.intermediate_size)

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_size * dtype_bytes


# Values from each model's config.json on the Hugging Face Hub (hidden_size, num_hidden_layers,
# num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, tie_word_embeddings);
# Qwen2 projects q/k/v with a bias, Llama does not. Instruct variants share their base model's shape.
KNOWN_ARCHITECTURES = {
    shape.name: shape
    for shape in (
        ModelShape("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True, True),
        ModelShape("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True, True),
        ModelShape("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True, True),
        ModelShape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False, True),
        ModelShape("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, False, True),
        ModelShape("Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, False, False),
        ModelShape("Llama-3.1-70B", 8192, 80, 64, 8, 28672, 128256, False, False),
        ModelShape("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, True, False),
    )
}
# Published checkpoints named after neither: the HuatuoGPT-o1 verifier is a Qwen2.5-3B classifier,
# HuatuoGPT-o1-8B / -70B are Llama-3.1 fine-tunes, -7B / -72B Qwen2.5 ones.
ALIASES = {
    "medical_o1_verifier_3b": "Qwen2.5-3B",
    "huatuogpt-o1-7b": "Qwen2.5-7B",
    "huatuogpt-o1-8b": "Llama-3.1-8B",
    "huatuogpt-o1-70b": "Llama-3.1-70B",
    "huatuogpt-o1-72b": "Qwen2.5-72B",
}


def known_architecture(name: str) -> ModelShape | None:
    """The architecture a hub name or path names: `Qwen/Qwen2.5-7B-Instruct` -> Qwen2.5-7B."""
    base = Path(name.rstrip("/")).name.lower()
    if base in ALIASES:
        return KNOWN_ARCHITECTURES[ALIASES[base]]
    for key, shape in sorted(KNOWN_ARCHITECTURES.items(), key=lambda item: -len(item[0])):
        if re.match(re.escape(key.lower()) + r"(?![0-9.])", base):
            return shape
    return None


def shape_from_config(path: Path) -> ModelShape:
    config = json.loads(path.read_text())
    config = config.get("text_config", config)
    try:
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        return ModelShape(
            name=str(path.parent),
            hidden_size=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
        )
    except KeyError as exc:
        raise ConfigError(
            f"{path}: no {exc.args[0]!r}; the plan needs a decoder-only transformer's config.json"
        ) from None


def resolve_shape(name_or_path: str, architecture: str | None = None) -> ModelShape:
    """`architecture` (a known name) if given; else the local directory's config.json; else the hub name's table entry."""
    if architecture is not None:
        shape = KNOWN_ARCHITECTURES.get(architecture) or known_architecture(architecture)
        if shape is None:
            raise ConfigError(f"unknown architecture {architecture!r}; known: {', '.join(KNOWN_ARCHITECTURES)}")
        return shape
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return shape_from_config(config)
    shape = known_architecture(name_or_path)
    if shape is None:
        raise ConfigError(
            f"model {name_or_path!r}: no config.json there and not a known architecture "
            f"({', '.join(KNOWN_ARCHITECTURES)}); pass --architecture NAME"
        )
    return shape


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    """What the device reports as total memory (nvidia-smi), in GiB."""
    peak_bf16_flops: float
    """Dense bf16 tensor-core peak, FLOP/s (vendor datasheets, SXM parts)."""
    memory_bandwidth: float
    """HBM bandwidth, bytes/s: what bounds decoding speed."""
    device_names: tuple[str, ...]
    """Substrings of torch.cuda.get_device_name() that identify it."""


GPUS = {
    gpu.name: gpu
    for gpu in (
        GPU("h100-80gb", 79.6, 989e12, 3.35e12, ("H100 80GB HBM3", "H100 SXM", "H100")),
        GPU("h100-pcie-80gb", 79.6, 756e12, 2.0e12, ("H100 PCIe",)),
        GPU("h200-141gb", 139.8, 989e12, 4.8e12, ("H200",)),
        GPU("a100-80gb", 79.2, 312e12, 2.0e12, ("A100-SXM4-80GB", "A100 SXM4 80GB", "A100 80GB", "A100-80GB")),
        GPU("a100-40gb", 39.4, 312e12, 1.55e12, ("A100",)),
        GPU("l40s-48gb", 44.4, 362e12, 0.864e12, ("L40S",)),
    )
}


def gpu_by_device_name(device_name: str) -> GPU | None:
    """The table entry for a torch device name, the longest name matching first ('H100 PCIe' before 'H100')."""
    names = sorted(((name, gpu) for gpu in GPUS.values() for name in gpu.device_names), key=lambda pair: -len(pair[0]))
    return next((gpu for name, gpu in names if name in device_name), None)


def gpu_from_node_selector(product: str | None) -> GPU | None:
    """`nvidia.com/gpu.product` labels (e.g. NVIDIA-H100-80GB-HBM3) to a table entry."""
    return gpu_by_device_name(product.replace("-", " ")) if product else None


def resolve_gpu(name: str) -> GPU:
    if name in GPUS:
        return GPUS[name]
    raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
