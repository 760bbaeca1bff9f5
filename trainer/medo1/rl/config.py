"""RL stage config: one recipe shape for PPO and GRPO, sharing model, data, reward and output sections."""

from __future__ import annotations

from typing import Literal

from medo1.config import OutputConfig, Section
from medo1.data import DataConfig
from medo1.models import ModelConfig
from medo1.rl.rewards import RewardConfig


class SamplingConfig(Section):
    response_length: int = 1300
    temperature: float = 0.5
    top_p: float = 1.0
    engine: Literal["hf"] = "hf"


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
    use_vllm: bool = False


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
