"""A stand-in for vLLM's offline API on the CPU (`vllm.LLM`, `vllm.SamplingParams`), backed by a transformers model.

It has the call shapes medo1's eval uses (`LLM(model=..., **engine_args)`, `LLM.generate(prompts, sampling_params,
use_tqdm=...)` with token-id prompts and one SamplingParams per prompt, `RequestOutput.outputs[i].token_ids /
.text / .finish_reason`) and refuses what vLLM refuses there, with vLLM's messages: an unknown engine argument or
sampling parameter, out-of-range sampling values, prompt and parameter lists of different lengths, and a prompt
longer than `max_model_len`. As vLLM does, a stopped response keeps its stop token, `n` responses come from one
request, and a request's `seed` alone decides its samples (whatever else is in the batch).

`install(monkeypatch)` puts it in `sys.modules` as `vllm`; `StandInLLM.instances` records every engine made.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field

SAMPLING_DEFAULTS = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "max_tokens": 16,
    "stop_token_ids": None,
    "repetition_penalty": 1.0,
    "seed": None,
}
ENGINE_ARGS = {
    "tokenizer",
    "dtype",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "seed",
    "enforce_eager",
    "trust_remote_code",
}


class SamplingParams:
    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(SAMPLING_DEFAULTS))
        if unknown:
            raise TypeError(f"SamplingParams.__init__() got an unexpected keyword argument '{unknown[0]}'")
        values = SAMPLING_DEFAULTS | kwargs
        if values["n"] < 1:
            raise ValueError(f"n must be at least 1, got {values['n']}.")
        if values["temperature"] < 0:
            raise ValueError(f"temperature must be non-negative, got {values['temperature']}.")
        if not 0 < values["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {values['top_p']}.")
        if values["max_tokens"] < 1:
            raise ValueError(f"max_tokens must be at least 1, got {values['max_tokens']}.")
        if values["repetition_penalty"] <= 0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {values['repetition_penalty']}.")
        self.__dict__.update(values)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class StandInLLM:
    instances: list[StandInLLM] = []

    def __init__(self, model: str, **kwargs):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        unknown = sorted(set(kwargs) - ENGINE_ARGS)
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'")
        self.torch = torch
        self.kwargs = kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.max_model_len = kwargs.get("max_model_len") or self.model.config.max_position_embeddings
        self.requests = 0
        StandInLLM.instances.append(self)

    def _complete(self, ids: list[int], params: SamplingParams) -> list[CompletionOutput]:
        from transformers import GenerationConfig

        torch = self.torch
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of "
                "text tokens."
            )
        stop = list(params.stop_token_ids or [self.tokenizer.eos_token_id])
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
            if params.temperature > 0
            else {"do_sample": False}
        )
        config = GenerationConfig(
            max_new_tokens=min(params.max_tokens, self.max_model_len - len(ids)),
            eos_token_id=stop,
            pad_token_id=stop[0],
            repetition_penalty=params.repetition_penalty,
            **sampling,
        )
        if params.seed is not None:
            torch.manual_seed(params.seed)
        outputs = []
        for index in range(params.n):
            with torch.no_grad():
                new = self.model.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    generation_config=config,
                )[0, len(ids) :].tolist()
            stopped = next((i for i, t in enumerate(new) if t in stop), None)
            tokens = new if stopped is None else new[: stopped + 1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            outputs.append(CompletionOutput(index, text, tokens, "length" if stopped is None else "stop"))
        return outputs

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        results = []
        for prompt, p in zip(prompts, params):
            ids = list(prompt["prompt_token_ids"])
            self.requests += 1
            results.append(RequestOutput(ids, self._complete(ids, p)))
        return results


def install(monkeypatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # importlib.util.find_spec finds it
    module.LLM = StandInLLM
    module.SamplingParams = SamplingParams
    StandInLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module
