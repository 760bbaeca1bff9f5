"""The SFT stage's config: read and checked without importing torch, so a bad value fails in well under a second."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medo1.config import ModelConfig, OutputConfig, ResumeConfig, Section, TrainingOptions
from medo1.data.sources import DataConfig


class LoraConfig(Section):
    """Train LoRA adapters instead of every weight (PEFT); the export merges them into the base model."""

    enabled: bool = False
    """Train LoRA adapters; false trains every weight."""
    r: int = Field(16, ge=1)
    """Rank of each adapter."""
    alpha: int = Field(32, ge=1)
    """Adapter scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapters' input."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or `all-linear` (every linear layer but the LM head)."""


class TrainConfig(TrainingOptions):
    """SFT training options: the shared ones plus the epoch count, the schedule and the batching."""

    epochs: float = Field(3.0, gt=0.0)
    """Passes over the training data (a fraction stops part way)."""
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps; -1 (or 0): run `epochs`."""
    lr_scheduler: str = Field("cosine", min_length=1)
    """transformers' learning-rate schedule name (cosine, linear, constant, constant_with_warmup, ...)."""
    batching: Literal["padding_free", "packed", "padded"] = "padding_free"
    """padding_free: each micro-batch's examples laid end to end (same examples per step as padded); packed: best-fit
    packing into rows of `data.max_length` tokens; padded: the classic padded loop."""
    dataloader_workers: int = Field(0, ge=0)
    """Data-loader worker processes per rank; 0 loads in the training process."""


class SFTConfig(Section):
    """`medo1 sft`: supervised fine-tuning on chain-of-thought data."""

    model: ModelConfig
    """The model fine-tuned."""
    data: DataConfig
    """The training data and how it is read, validated and cut to length."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters instead of full fine-tuning."""
    train: TrainConfig = TrainConfig()
    """Optimizer, schedule, batching and placement."""
    output: OutputConfig = OutputConfig()
    """Checkpoints, metrics and the export."""
    resume: ResumeConfig = ResumeConfig()
    """Recipe changes a resumed run may make (`--resume auto` refuses any other)."""
