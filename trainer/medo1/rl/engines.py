"""Rollout engines (`sampling.engine`): how a batch of encoded prompts becomes sampled responses.

Both engines sample with the same settings (temperature, top-p, no top-k, `response_length` new
tokens at most), stop each response at the chat template's end-of-turn token or eos, and return
`Samples`: right-padded responses, a 0/1 mask covering each response up to and including its stop
token, and, from vLLM, the sampler's own log-prob of each sampled token.

- `HFEngine`: `generate` on the training policy itself. Under sharded training every rank keeps
  stepping until all ranks are done (`synced_gpus`): each forward gathers weights from all ranks,
  so a rank that stopped early must still take part. `sampling.gather_weights_for_generation`
  gathers the policy once per rollout instead.
- `VLLMEngine`: a vLLM engine in the same process (per rank, or per tensor-parallel group), loaded
  from the policy checkpoint and sent the policy's weights again after every PPO update; with
  `sampling.vllm.sleep` it hands its GPU memory back while the models train. Its kernels (bf16) are
  not the trainer's, so the tokens it samples come from a slightly different distribution than the
  one PPO's ratio assumes, and a weight push that failed or went stale would make it a very different
  one: it returns its log-probs (after temperature and top-p, vLLM's `processed_logprobs`, as TRL's
  colocated engine asks for) for PPO to measure the gap and correct it (`medo1.rl.ppo_math.importance_weights`).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Protocol

import torch
import torch.distributed as dist
from transformers import GenerationConfig

from medo1.config import StageError
from medo1.models import generation_config_for
from medo1.rl.sharding import Placement, Ranks, TrainedModel

log = logging.getLogger(__name__)


def vllm_install_command() -> str:
    """The vLLM release the trainer image locks (medo1's `gpu` extra in pyproject.toml), as a pip command."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        pins = [r.split(";")[0].strip() for r in requires("medo1") or [] if r.replace(" ", "").startswith("vllm==")]
    except PackageNotFoundError:
        pins = []
    return f"pip install '{pins[0] if pins else 'vllm'}'"


class Samples(NamedTuple):
    responses: torch.Tensor
    """(batch, length) token ids, right-padded with the pad id."""
    mask: torch.Tensor
    """(batch, length) 1 for each response token up to and including its stop token."""
    logprobs: torch.Tensor | None = None
    """(batch, length) the sampler's log-prob of each sampled token (0 outside `mask`); None where the sampler is
    the training policy itself (hf)."""
    weights_pushed: bool = False
    """The sampler was sent the policy's weights just before this rollout."""


class SamplerGapError(StageError):
    """vLLM's log-probs of the tokens it sampled are far from the trainer's: it samples from other weights."""

    def __init__(self, gap: float, limit: float, step: int, pushed: bool | None = None):
        pushed_note = {True: " right after a weight push", False: " without a weight push", None: ""}[pushed]
        super().__init__(
            f"vLLM's log-probs differ from the trainer's by {gap:.3f} nats per sampled token (mean) at update "
            f"{step}{pushed_note}, above sampling.vllm.max_logprob_gap={limit:g}: the rollout engine does not sample "
            "from the policy being trained (a failed or stale weight push, or another checkpoint); stopping rather "
            "than training on those samples"
        )


class RolloutEngine(Protocol):
    def generate(self, prompt: dict[str, torch.Tensor]) -> Samples:
        """Left-padded prompts (input_ids, attention_mask) -> the sampled responses."""
        ...

    def policy_updated(self) -> None:
        """Called after each PPO update (the optimizer steps of one rollout batch)."""
        ...


def stop_token_ids(tokenizer) -> list[int]:
    return list(generation_config_for(tokenizer).eos_token_id)


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 for each token up to and including the first stop token; 0 after it."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (stops_before == 0).long()


def require_vllm() -> None:
    """Fail at start-up, before any model is loaded, when vLLM rollouts cannot run here."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise StageError(
            f"sampling.engine=vllm needs vLLM, which cannot be imported here ({exc}). "
            f"Install it on a CUDA machine with: {vllm_install_command()}  (or set sampling.engine=hf)"
        ) from None
    if not torch.cuda.is_available():
        raise StageError("sampling.engine=vllm needs a CUDA GPU; on this machine use sampling.engine=hf")


class HFEngine:
    def __init__(self, policy: TrainedModel, tokenizer, sampling, placement: Placement, ranks: Ranks):
        self.policy, self.tokenizer, self.sampling, self.placement = policy, tokenizer, sampling, placement
        self.stop_ids = stop_token_ids(tokenizer)
        self.synced = placement.sharded and ranks.world > 1
        self.gather = placement.sharded and sampling.gather_weights_for_generation

    def generation_config(self) -> GenerationConfig:
        """Plain temperature (and top-p) sampling, the distribution PPO's log-probs assume."""
        return GenerationConfig(
            do_sample=True,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            top_k=0,
            max_new_tokens=self.sampling.response_length,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    @contextmanager
    def _without_checkpoint_generation_defaults(self):
        # `generate` fills whatever the passed config leaves unset from `model.generation_config`, i.e. the
        # checkpoint's generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20), which would
        # bias the importance ratio and KL. An empty one in its place for the call leaves nothing to inherit.
        model = self.policy.model
        kept, model.generation_config = model.generation_config, GenerationConfig()
        try:
            yield
        finally:
            model.generation_config = kept

    @torch.no_grad()
    def sample(self, prompt: dict[str, torch.Tensor], **outputs):
        """`generate` with `generation_config()` only; `outputs` (e.g. output_scores) are passed through."""
        gathered = self.policy.gathered_for_generation() if self.gather else nullcontext()
        with gathered, self.placement.autocast(), self._without_checkpoint_generation_defaults():
            return self.policy.model.generate(
                **prompt, generation_config=self.generation_config(), synced_gpus=self.synced, **outputs
            )

    def generate(self, prompt: dict[str, torch.Tensor]) -> Samples:
        output = self.sample(prompt)
        responses = output[:, prompt["input_ids"].shape[1] :]
        mask = response_mask(responses, self.stop_ids)
        return Samples(responses.masked_fill(mask == 0, self.tokenizer.pad_token_id), mask)

    def policy_updated(self) -> None:
        """Nothing to do: generation reads the live policy."""


class VLLMEngine:
    def __init__(
        self,
        policy: TrainedModel,
        tokenizer,
        sampling,
        ranks: Ranks,
        model_path: str,
        tokenizer_path: str | None,
        seed: int,
        max_batch: int,
    ):
        from vllm import LLM, SamplingParams

        settings = sampling.vllm
        self.policy, self.tokenizer, self.ranks, self.sleep = policy, tokenizer, ranks, settings.sleep
        self.stop_ids = stop_token_ids(tokenizer)
        tp = settings.tensor_parallel_size
        if ranks.world % tp:
            raise StageError(
                f"sampling.vllm.tensor_parallel_size ({tp}) must divide the number of ranks ({ranks.world})"
            )
        self.tp_size, self.tp_group = tp, None
        if tp > 1:
            # Consecutive ranks share one vLLM engine: [0..tp-1], [tp..2tp-1], ...
            self.tp_group, _ = dist.new_subgroups_by_enumeration(
                [list(range(start, start + tp)) for start in range(0, ranks.world, tp)]
            )
        # The engine must run in this process: its model receives the policy's weights in place.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.llm = LLM(
            model=model_path,
            tokenizer=tokenizer_path or model_path,
            tensor_parallel_size=tp,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            max_num_seqs=max_batch * tp,
            enable_sleep_mode=settings.sleep,
            distributed_executor_backend="external_launcher",
            seed=seed + ranks.rank // tp,  # the ranks of one engine must sample alike
            # Log-probs after temperature and top-p, the distribution the tokens were drawn from (TRL's colocated
            # engine asks for the same, trl/generation/vllm_generation.py); the default is the raw model's.
            logprobs_mode="processed_logprobs",
        )
        self.params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.response_length,
            stop_token_ids=self.stop_ids,
            logprobs=0,  # the sampled token's log-prob only
        )
        self.weights_stale = False
        if settings.sleep:
            self.llm.sleep(level=2)  # discards the weights: the first rollout pushes the policy's
            self.weights_stale = True
        ranks.barrier()

    def _wake_up(self, tag: str) -> None:
        # Blocks the training passes freed are still held by torch's caching allocator; vLLM allocates outside it.
        torch.cuda.empty_cache()
        self.llm.wake_up(tags=[tag])

    def _push_weights(self) -> None:
        if self.sleep:
            self._wake_up("weights")
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in self.policy.named_full_parameters():
            model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self.weights_stale = False

    def policy_updated(self) -> None:
        self.weights_stale = True

    @torch.no_grad()
    def generate(self, prompt: dict[str, torch.Tensor]) -> Samples:
        ids = [row[keep.bool()].tolist() for row, keep in zip(prompt["input_ids"], prompt["attention_mask"])]
        if self.tp_group is not None:
            groups: list[list[list[int]]] = [[] for _ in range(self.tp_size)]
            dist.all_gather_object(groups, ids, group=self.tp_group)
            share = dist.get_rank(group=self.tp_group)
            ids_all = [p for group in groups for p in group]
        else:
            share, ids_all = 0, ids
        pushed = self.weights_stale
        if pushed:
            self._push_weights()
        if self.sleep:
            self._wake_up("kv_cache")
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in ids_all], sampling_params=self.params, use_tqdm=False
        )
        if self.sleep:
            self.llm.sleep(level=2)
            self.weights_stale = True
        mine = outputs[share * len(ids) : (share + 1) * len(ids)]
        # vLLM keeps the stop token at the end of a stopped response, as HF generate does.
        tokens = [list(out.outputs[0].token_ids) for out in mine]
        width = max(1, max(len(t) for t in tokens))
        responses = torch.full((len(tokens), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(tokens), width), dtype=torch.long)
        logprobs = torch.zeros((len(tokens), width), dtype=torch.float32)
        for row, (t, out) in enumerate(zip(tokens, mine)):
            responses[row, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[row, : len(t)] = 1
            logprobs[row, : len(t)] = torch.tensor(sampled_logprobs(t, out.outputs[0].logprobs), dtype=torch.float32)
        device = prompt["input_ids"].device
        return Samples(responses.to(device), mask.to(device), logprobs.to(device), pushed)


def sampled_logprobs(tokens: list[int], per_token: list | None) -> list[float]:
    """The log-prob vLLM reports for each sampled token (with `logprobs=0`, a {token id: Logprob} per position
    holding the sampled token). A NaN, which vLLM gives where it could not score a token, is read as NaN, and the
    trainer then takes its own log-prob there (no correction, no gap)."""
    if per_token is None:
        raise StageError("vLLM returned no log-probs although they were requested (SamplingParams.logprobs=0)")
    return [float(position[token].logprob) for token, position in zip(tokens, per_token)]


def build_engine(
    config, policy: TrainedModel, tokenizer, placement: Placement, ranks: Ranks, policy_path: str, max_batch: int
) -> RolloutEngine:
    sampling = config.sampling
    if sampling.engine == "vllm":
        return VLLMEngine(
            policy, tokenizer, sampling, ranks, policy_path, config.model.tokenizer, config.train.seed, max_batch
        )
    return HFEngine(policy, tokenizer, sampling, placement, ranks)
