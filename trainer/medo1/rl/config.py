"""RL stage config: one recipe shape for PPO and GRPO, sharing model, data, reward and output sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medo1.config import OutputConfig, Section
from medo1.data import DataConfig
from medo1.models import ModelConfig
from medo1.rl.rewards import RewardConfig


class VLLMSettings(Section):
    """The colocated vLLM engine (`sampling.engine: vllm`): one per rank (or per tensor-parallel group)."""

    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """Share of each GPU vLLM may take for its weights and KV cache; it must be free when vLLM starts, after the
    training models are placed."""
    tensor_parallel_size: int = Field(1, ge=1)
    sleep: bool = True
    """Release vLLM's weights and KV cache while training (sleep level 2); the policy is pushed again before each rollout."""
    max_model_len: int | None = None
    """Prompt + response tokens per sequence; default: the model's own limit."""


class SamplingConfig(Section):
    response_length: int = 1300
    temperature: float = Field(0.5, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    engine: Literal["hf", "vllm"] = "hf"
    """hf: `generate` on the training policy; vllm: a colocated vLLM engine fed the policy's weights after each update."""
    gather_weights_for_generation: bool = True
    """hf engine with sharded training: gather the policy's full weights once per rollout instead of once per layer
    per generated token. Much faster; set false when one full (bf16) copy of the policy does not fit on a GPU."""
    vllm: VLLMSettings = VLLMSettings()


class PPOSettings(Section):
    value_model: str | None = None
    """A sequence-classification checkpoint; default: the policy checkpoint with a fresh scalar head."""
    kl_coef: float = 0.03
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 3
    num_mini_batches: int = 1
    whiten_rewards: bool = False


class GRPOSettings(Section):
    num_generations: int = 8
    beta: float = 0.001


class RLTrainConfig(Section):
    total_episodes: int = 20000
    learning_rate: float = 5e-7
    warmup_ratio: float = 0.05
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 16
    seed: int = 42
    eval_fraction: float = 0.0
    eval_steps: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    distributed: Literal["ddp", "deepspeed_zero3", "fsdp"] = "ddp"
    """ddp: a full copy of every model on each rank; deepspeed_zero3 / fsdp: policy, value and reference sharded."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON config for deepspeed_zero3; default: medo1's ZeRO-3 config ("auto" entries filled in)."""


class RLConfig(Section):
    algo: Literal["ppo", "grpo"] = "ppo"
    model: ModelConfig
    data: DataConfig
    reward: RewardConfig
    sampling: SamplingConfig = SamplingConfig()
    ppo: PPOSettings = PPOSettings()
    grpo: GRPOSettings = GRPOSettings()
    train: RLTrainConfig = RLTrainConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _mini_batches_split_evenly(self) -> RLConfig:
        # Every optimizer step then sees the same number of micro-batches, which DeepSpeed needs.
        accumulation, minis = self.train.gradient_accumulation_steps, self.ppo.num_mini_batches
        if self.algo == "ppo" and accumulation % minis:
            raise ValueError(
                f"ppo.num_mini_batches ({minis}) must divide train.gradient_accumulation_steps ({accumulation})"
            )
        return self
