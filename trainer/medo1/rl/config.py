"""RL stage config: one recipe shape for PPO and GRPO, sharing model, data, reward and output sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medo1.config import ModelConfig, OutputConfig, ResumeConfig, Section, TrainingOptions
from medo1.data.sources import DataConfig
from medo1.rl.rewards.config import RewardConfig


class VLLMSettings(Section):
    """The colocated vLLM engine (`sampling.engine: vllm`): one per rank (or per tensor-parallel group)."""

    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """Share of each GPU vLLM may take for its weights and KV cache; it must be free when vLLM starts, after the
    training models are placed."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs each vLLM engine spans (tensor parallelism)."""
    sleep: bool = True
    """Release vLLM's weights and KV cache while training (sleep level 2); the policy is pushed again before each rollout."""
    max_model_len: int | None = None
    """Prompt + response tokens per sequence; default: the model's own limit."""
    importance_sampling: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "off"] = (
        "token_truncate"
    )
    """Correction for vLLM sampling from its own kernels' distribution, not exactly the trainer's: each token's
    policy loss is weighted by pi_trainer / pi_vllm of the sampled token (token_*) or of the whole response
    (sequence_*), clipped to [importance_sampling_min, importance_sampling_max] (*_truncate) or zeroed outside it
    (*_mask); off: none. TRL 1.16's `vllm_importance_sampling_mode` (trl/trainer/grpo_config.py): PPO and GRPO
    (passed to TRL); TRL's RLOOTrainer has no such correction."""
    importance_sampling_max: float = Field(3.0, gt=0.0)
    """Upper bound of the importance weights (TRL's `vllm_importance_sampling_clip_max`, default 3)."""
    importance_sampling_min: float | None = Field(None, ge=0.0)
    """Lower bound of the importance weights; None: none (TRL's `vllm_importance_sampling_clip_min`)."""
    max_logprob_gap: float = Field(0.5, gt=0.0)
    """The run stops when the mean |log pi_trainer - log pi_vllm| per sampled token of a rollout is above this
    (nats): vLLM then samples from other weights than the policy's (a weight push that failed or went stale, a
    wrong checkpoint), far beyond kernel rounding. PPO checks every rollout, GRPO every logged step (TRL's
    `sampling/sampling_logp_difference/mean`, logged while `importance_sampling` is not off). PPO logs the gap's
    mean and max every update (`sampler_logprob_gap_mean`, `sampler_logprob_gap_max`)."""

    @model_validator(mode="after")
    def _bounds_in_order(self) -> VLLMSettings:
        low, high = self.importance_sampling_min, self.importance_sampling_max
        if low is not None and low >= high:
            raise ValueError(f"importance_sampling_min ({low}) must be below importance_sampling_max ({high})")
        return self


class SamplingConfig(Section):
    """How responses are sampled from the policy during rollouts."""

    response_length: int = Field(1300, ge=1)
    """Most new tokens per response."""
    temperature: float = Field(0.5, gt=0.0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest token set holding this much probability; 1 keeps all."""
    engine: Literal["hf", "vllm"] = "hf"
    """hf: `generate` on the training policy; vllm: a colocated vLLM engine fed the policy's weights after each update."""
    gather_weights_for_generation: bool = True
    """hf engine with sharded training: gather the policy's full weights once per rollout instead of once per layer
    per generated token. Much faster; set false when one full (bf16) copy of the policy does not fit on a GPU."""
    vllm: VLLMSettings = VLLMSettings()
    """The colocated vLLM engine's settings (`engine: vllm`)."""


class PPOSettings(Section):
    """`algo: ppo`: medo1's PPO loop with a value model, as published."""

    value_model: str | None = None
    """A sequence-classification checkpoint; default: the policy checkpoint with a fresh scalar head."""
    kl_coef: float = Field(0.03, ge=0.0)
    """Weight of the per-token KL penalty against the reference (SFT) policy in the reward."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount factor."""
    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE lambda."""
    cliprange: float = Field(0.2, gt=0.0)
    """Policy ratio clip range."""
    cliprange_value: float = Field(0.2, gt=0.0)
    """Value prediction clip range."""
    vf_coef: float = Field(0.1, ge=0.0)
    """Weight of the value loss."""
    ppo_epochs: int = Field(3, ge=1)
    """Optimisation passes over each rollout batch."""
    num_mini_batches: int = Field(1, ge=1)
    """Mini-batches each rollout batch is split into per pass; must divide `train.gradient_accumulation_steps`."""
    whiten_rewards: bool = False
    """Normalise rewards to zero mean and unit variance per batch."""
    critic_warmup_updates: int = Field(0, ge=0)
    """Rollout batches, from the first, on which only the value model trains (verl's `critic_warmup`): a fresh
    value head knows nothing, and advantages computed from it move the policy at random. The policy's learning-rate
    schedule spans the updates after them."""
    value_head_init: Literal["default", "zero"] = "default"
    """A value head that is not in the checkpoint (the policy checkpoint, or a model without a trained score
    head): default: transformers' random initialisation; zero: all weights 0, so every value starts at 0 and the
    first advantages are the rewards' own (no random baseline)."""


class GRPOSettings(Section):
    """`algo: grpo`, through TRL's GRPOTrainer: advantages relative to the other completions of the same prompt."""

    num_generations: int = Field(8, ge=2)
    """Completions sampled per prompt (a group)."""
    beta: float = Field(0.001, ge=0.0)
    """KL coefficient against the reference model."""
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    """How TRL's GRPOTrainer aggregates token losses: grpo (per-sequence mean), dapo (TRL's default: over the active
    tokens of the whole accumulated batch), dr_grpo (over a constant, `sampling.response_length`), bnpo (over the
    active tokens of the local batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """How a completion's advantage (its reward minus its group's mean) is scaled, TRL's `scale_rewards`
    (trl/trainer/grpo_config.py): group (TRL's default: divided by the group's reward std), batch (by the whole
    batch's std), none (not scaled: Dr. GRPO's definition, which drops the per-group std because it weights
    questions by how uncertain the group is)."""


class RLOOSettings(Section):
    """`algo: rloo`, through TRL's RLOOTrainer: REINFORCE with each completion's baseline the mean reward of the
    other completions of its prompt."""

    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt (the leave-one-out baseline needs at least two)."""
    beta: float = Field(0.05, ge=0.0)
    """KL coefficient against the reference model (TRL's default)."""


class RLTrainConfig(TrainingOptions):
    """RL training options: the shared ones (RL's own defaults) plus the episode budget and the held-out share."""

    total_episodes: int = Field(20000, ge=1)
    """Sampled completions over the whole run (the run's length). An episode is one response to one prompt: PPO
    samples one per prompt, so it sees `total_episodes` prompt draws; GRPO and RLOO sample `num_generations` per
    prompt, so they see `total_episodes / num_generations` (the 7B recipes: PPO 20,000 problems, GRPO 2,500)."""
    learning_rate: float = Field(5e-7, gt=0.0)
    """Peak learning rate (AdamW)."""
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    """Learning-rate schedule after warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    per_device_batch_size: int = Field(1, ge=1)
    """Prompts per GPU (or CPU process) per micro-batch."""
    gradient_accumulation_steps: int = Field(16, ge=1)
    """Micro-batches per optimizer step."""
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the problems held out from training and scored during it (the RL report's held-out points)."""
    eval_steps: int = Field(0, ge=0)
    """Score the held-out problems every this many updates; 0: never. GRPO and RLOO also score them before the first
    update, sampling `num_generations` completions per problem at the rollout temperature."""


class RLConfig(Section):
    """`medo1 rl`: reinforcement learning against a verifier (PPO, GRPO or RLOO)."""

    algo: Literal["ppo", "grpo", "rloo"] = "ppo"
    """ppo: medo1's PPO loop (as published); grpo / rloo: TRL's GRPOTrainer / RLOOTrainer."""
    model: ModelConfig
    """The policy's starting point (usually the SFT export); also the reference model."""
    data: DataConfig
    """The verifiable problems (question and ground-truth answer) sampled for rollouts."""
    reward: RewardConfig
    """How a response is scored against its ground truth."""
    sampling: SamplingConfig = SamplingConfig()
    """Rollout sampling."""
    ppo: PPOSettings = PPOSettings()
    """PPO's settings (`algo: ppo`)."""
    grpo: GRPOSettings = GRPOSettings()
    """GRPO's settings (`algo: grpo`)."""
    rloo: RLOOSettings = RLOOSettings()
    """RLOO's settings (`algo: rloo`)."""
    train: RLTrainConfig = RLTrainConfig()
    """Optimizer, schedule, episode budget and placement."""
    output: OutputConfig = OutputConfig()
    """Checkpoints, metrics and the export."""
    resume: ResumeConfig = ResumeConfig()
    """Recipe changes a resumed run may make (`--resume auto` refuses any other)."""

    @model_validator(mode="after")
    def _mini_batches_split_evenly(self) -> RLConfig:
        # Every optimizer step then sees the same number of micro-batches, which DeepSpeed needs.
        accumulation, minis = self.train.gradient_accumulation_steps, self.ppo.num_mini_batches
        if self.algo == "ppo" and accumulation % minis:
            raise ValueError(
                f"ppo.num_mini_batches ({minis}) must divide train.gradient_accumulation_steps ({accumulation})"
            )
        return self
