"""Who answers: a local model through HF `generate` (`HFGenerator`), an offline vLLM engine on a GPU
(`VLLMGenerator`), or an OpenAI-compatible endpoint (`EndpointGenerator`); `make_generator` picks one."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from medo1.chat_client import ChatClientConfig, ChatError, Messages, run_chat
from medo1.eval.config import EvalConfig, EvalError, EvalVLLMSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One response: its text, its length in new tokens, and whether it was cut off at `max_new_tokens`."""

    text: str
    tokens: int | None = None
    """New tokens before the stop token (None where the backend does not say: an endpoint)."""
    hit_cap: bool | None = None
    """Stopped by `max_new_tokens` rather than by a stop token (None where the backend does not say)."""


class Generator(Protocol):
    def generate(self, prompts: list[Messages], *, samples: int = 1, seed: int = 0) -> list[list[Generation]]:
        """`samples` responses to each prompt, in the prompts' order, drawn under `seed`."""
        ...


class HFGenerator:
    """Local transformers model: chat template, left padding, batches of similar lengths.

    Greedy at temperature 0; otherwise plain temperature / top-p sampling (no top-k), the distribution the RL
    rollouts sample from (`medo1.rl.engines.HFEngine`), with the checkpoint's generation_config.json ignored so
    that every model compared decodes alike. The global torch generator is seeded with `seed` before the first
    batch; with the same prompts and batch size two models draw from the same random stream. The `samples`
    responses of a prompt share one pass over the prompt (its KV cache is computed once and copied).
    """

    def __init__(
        self,
        model_path: str,
        *,
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        repetition_penalty: float = 1.0,
    ):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        from medo1.models import generation_config_for, load_tokenizer, resolve_dtype

        self.torch = torch
        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype("auto")).to(self.device)
        self.model.eval()
        self.stop_ids = list(generation_config_for(self.tokenizer).eos_token_id)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def render(self, messages: Messages) -> str:
        from medo1.data.tokenization import render_prompt

        return render_prompt(self.tokenizer, messages)

    def _generation(self, ids: list[int]) -> Generation:
        stops = [i for i, token in enumerate(ids) if token in self.stop_ids]
        length = stops[0] if stops else len(ids)
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        return Generation(text, length, not stops and len(ids) >= self.max_new_tokens)

    def _generate_batch(self, inputs, samples: int):
        """`samples` continuations of each prompt of the batch (rows prompt-major): the new tokens only."""
        from transformers import DynamicCache, GenerationConfig

        model = self.model
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        kwargs = {}
        if samples > 1 and ids.shape[1] > 1:
            # The prompt's KV cache once per prompt, copied for its samples: generate then runs the last prompt
            # token and the new ones only.
            # transformers 5.25 names the cache argument `cache`, 5.19 (the GPU image's) `past_key_values`.
            name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            cache = DynamicCache(config=model.config)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, :-1],
                use_cache=True,
                logits_to_keep=1,
                **{name: cache},
            )
            cache.batch_repeat_interleave(samples)
            kwargs[name] = cache
        ids, mask = ids.repeat_interleave(samples, dim=0), mask.repeat_interleave(samples, dim=0)
        # `generate` fills whatever the passed config leaves unset from the checkpoint's generation_config.json
        # (e.g. a top_k or repetition_penalty of its own); an empty one in its place leaves nothing to inherit.
        kept, model.generation_config = model.generation_config, GenerationConfig()
        try:
            output = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=self.generation_config, **kwargs
            )
        finally:
            model.generation_config = kept
        return output[:, ids.shape[1] :]

    def generate(self, prompts: list[Messages], *, samples: int = 1, seed: int = 0) -> list[list[Generation]]:
        torch = self.torch
        texts = [self.render(m) for m in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        # Similar lengths share a batch (less padding); results go back in the callers' order.
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[list[Generation]] = [[] for _ in texts]
        torch.manual_seed(seed)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.no_grad():
                new_tokens = self._generate_batch(inputs, samples).tolist()
            for k, i in enumerate(chunk):
                out[i] = [self._generation(ids) for ids in new_tokens[k * samples : (k + 1) * samples]]
            log.info("eval: %d of %d question(s) answered", min(start + self.batch_size, len(order)), len(order))
        return out


class EndpointGenerator:
    """An OpenAI-compatible endpoint, asked through `medo1.chat_client` (retries, timeouts, progress).

    When sampling (temperature > 0) each request carries `top_p` and a `seed` (seed x samples + sample index,
    so every response of a run has its own; vLLM and OpenAI honour it, best effort)."""

    def __init__(
        self,
        client_config: ChatClientConfig,
        *,
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
        self.client_config = client_config
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p

    def generate(self, prompts: list[Messages], *, samples: int = 1, seed: int = 0) -> list[list[Generation]]:
        out: list[list[Generation]] = [[] for _ in prompts]
        for sample in range(samples):
            params: dict[str, Any] = {"max_tokens": self.max_new_tokens, "temperature": self.temperature}
            if self.temperature > 0:
                params |= {"top_p": self.top_p, "seed": seed * samples + sample}
            try:
                answers = run_chat(self.client_config, prompts, **params)
            except ChatError as exc:
                raise EvalError(str(exc)) from None
            for responses, answer in zip(out, answers):
                responses.append(Generation(answer.text, None, answer.finish_reason == "length"))
        return out


class VLLMGenerator:
    """A local model in an offline vLLM engine (continuous batching, paged KV cache): every prompt of a run is
    handed to vLLM at once. The prompt is the same chat-template text the HF path renders, as token ids; decoding
    uses the same stop tokens, temperature, top-p (no top-k) and repetition penalty. Each prompt gets its own
    sampling seed (seed x 1,000,003 + its index), so runs are reproducible and every model compared draws with the
    same seeds; its `samples` responses come from one request (vLLM's `n`)."""

    def __init__(
        self,
        model_path: str,
        settings: EvalVLLMSettings,
        *,
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ):
        from vllm import LLM

        from medo1.models import generation_config_for, load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = list(generation_config_for(self.tokenizer).eos_token_id)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.repetition_penalty = repetition_penalty
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype="auto",
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            seed=0,
            **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
        )

    def render(self, messages: Messages) -> str:
        from medo1.data.tokenization import render_prompt

        return render_prompt(self.tokenizer, messages)

    def _params(self, samples: int, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=samples,
            temperature=self.temperature,
            top_p=self.top_p if self.temperature > 0 else 1.0,
            max_tokens=self.max_new_tokens,
            stop_token_ids=self.stop_ids,
            repetition_penalty=self.repetition_penalty,
            seed=seed,
        )

    def generate(self, prompts: list[Messages], *, samples: int = 1, seed: int = 0) -> list[list[Generation]]:
        ids = [self.tokenizer(self.render(m), add_special_tokens=False)["input_ids"] for m in prompts]
        params = [self._params(samples, seed * 1_000_003 + index) for index in range(len(prompts))]
        try:
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], sampling_params=params, use_tqdm=False)
        except ValueError as exc:  # vLLM's refusal of a request (a prompt longer than max_model_len, ...)
            raise EvalError(f"vLLM refused a request: {str(exc).splitlines()[0]}") from None
        out = []
        for output in outputs:
            responses = []
            for completion in output.outputs:
                # vLLM keeps the stop token at the end of a stopped response.
                tokens = list(completion.token_ids)
                if tokens and tokens[-1] in self.stop_ids:
                    tokens = tokens[:-1]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                responses.append(Generation(text, len(tokens), completion.finish_reason == "length"))
            out.append(responses)
        log.info("eval: %d question(s) answered by vLLM", len(prompts))
        return out


def vllm_available() -> str | None:
    """Why vLLM cannot generate here (None: it can): it needs a CUDA GPU and a `vllm` that imports."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if importlib.util.find_spec("vllm") is None:
        from medo1.rl.engines import vllm_install_command

        return f"vLLM is not installed ({vllm_install_command()})"
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways (CUDA libraries, versions)
        return f"vLLM does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def resolve_engine(config: EvalConfig) -> str:
    """The engine a local model runs on: `engine`, with auto resolved (vllm where it can run, else hf); EvalError
    when `engine: vllm` cannot run here."""
    if config.engine == "hf":
        return "hf"
    reason = vllm_available()
    if reason is None:
        return "vllm"
    if config.engine == "vllm":
        raise EvalError(f"engine=vllm cannot run here: {reason}; use engine=hf (or auto)")
    return "hf"


def make_generator(config: EvalConfig, model: str | None = None) -> Generator:
    """The generator for `config`'s backend; `model` asks that local model instead (a `compare_with` entry)."""
    if model is None and config.endpoint is not None:
        client_config = config.chat_client_config(
            config.endpoint, config.endpoint_model, config.api_key_env, config.concurrency
        )
        return EndpointGenerator(
            client_config, max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
        )
    path = model if model is not None else config.model
    assert path is not None
    if resolve_engine(config) == "vllm":
        return VLLMGenerator(
            path,
            config.vllm,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
        )
    return HFGenerator(
        path,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        repetition_penalty=config.repetition_penalty,
    )
