"""Evaluation: prompt, generate (local HF model or OpenAI-compatible endpoint), extract, score, compare.

Two kinds of benchmark (`format`): multiple choice (`mcq`: question, options, answer letter; one option letter is
extracted per response and scored, as described at `extract_answer`) and the RL stage's open-ended verifiable
problems (`verifiable`: the `Open-ended Verifiable Question` / `Ground-True Answer` rows, asked exactly as the RL
stage asks them). Every response of either kind is also scored the way the RL stage scores it: the
`## Thinking` / `## Final Response` format rule and the reward (`reward`: answer_match, verifier or judge, against
the correct option letter or the ground-truth answer), with its length in tokens and whether it hit the token cap.

Decoding is greedy by default; with `temperature` > 0 each model answers every question `samples_per_prompt`
times under each of `seeds` (the same seeds for every model). `compare_with` asks other models (the base model,
the SFT export) the same questions, and each model is compared with `baseline` question by question: the mean
gain in reward, format-ok rate and correctness with a paired bootstrap 95% interval, beside the seed-to-seed
noise of the baseline itself (`noise_seeds`). The statistics are in `medo1.eval.stats`.

The HuatuoGPT-o1 paper's evaluation (`preset: huatuo`, `medo1.eval.published`): its eval file read as published
(one benchmark per set), its prompt and decoding, its scorer reported beside medo1's strict one, and report.md in
the paper's table layouts. Local models generate with HF `generate` or, on a GPU, an offline vLLM engine (`engine`).

Invalid benchmark rows are reported, not fatal: they are counted in the report and the first few are logged; a
benchmark without a valid row stops the run before anything is generated. An endpoint is asked through
`medo1.chat_client` (retries, timeouts, progress). Outputs under `output_dir`: report.json, report.md,
responses.jsonl, all three written aside and renamed into place at the end, so a failed run leaves the previous
ones whole.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from medo1.chat_client import ChatClientConfig, ChatError, Messages, RetryOptions, run_chat
from medo1.config import Section, StageError
from medo1.data.final_response import answer_text, parse_response
from medo1.data.sources import (
    DataError,
    LoadResult,
    MCQItem,
    VerifiableProblem,
    iter_records,
    json_sets,
    load_examples,
    split_set,
)
from medo1.eval.published import (
    HUATUO_PRESET,
    PAPER_SETS,
    TABLE1_COLUMNS,
    TABLE2_COLUMNS,
    HuatuoAnswer,
    HuatuoScore,
    PaperSet,
    huatuo_answers,
    huatuo_prompt,
    huatuo_set_score,
    normalise_question,
    paper_average,
    paper_cell,
    paper_set,
    postprocess,
)
from medo1.eval.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    PairedDifference,
    beyond_noise,
    noise_band,
    paired_bootstrap,
    wilson_interval,
)
from medo1.rl.rewards.config import AnswerMatchRewardConfig, JudgeRewardConfig, VerifierRewardConfig

INSTRUCTION = "Answer with the letter of the correct option."
INVALID_ROWS_SHOWN = 5

log = logging.getLogger(__name__)


class EvalError(StageError):
    """An evaluation that cannot go on (the endpoint keeps failing, a benchmark without a valid row)."""


class EvalVLLMSettings(Section):
    """The offline vLLM engine of `medo1 eval` (one per model evaluated, released before the next loads)."""

    gpu_memory_utilization: float = Field(0.8, gt=0.0, le=1.0)
    """Share of each GPU vLLM may take for the weights and the KV cache (0.8 leaves `medo1 plan`'s 10% headroom
    and allocator slack free on the GPU)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs the model is split over."""
    max_model_len: int | None = None
    """Prompt + answer tokens per sequence; default: the model's own limit. A prompt that leaves no room for
    `max_new_tokens` is refused by vLLM, with this number in the message."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Most sequences decoded together (vLLM's continuous batch); None: vLLM's default (1024 for offline use on an
    80 GB-class GPU), fewer where the KV cache holds fewer."""


class EvalConfig(RetryOptions):
    model: str | None = None
    """Local Hugging Face model directory (or hub id)."""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://host:8000/v1."""
    endpoint_model: str | None = None
    """Model name sent to the endpoint; None leaves it out (a server that serves one model)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (never passed as an argument)."""
    benchmarks: dict[str, str] = Field(default_factory=dict)
    """Benchmark name -> a data source of `format` rows (JSON / JSONL / Parquet / CSV file, hf://...); `FILE#SET`
    for one set of a JSON file of named sets ({set name: [rows]}, as the published HuatuoGPT-o1 eval_data.json); such
    a file given whole is one benchmark per set, each named by its set."""
    format: Literal["mcq", "verifiable"] = "mcq"
    """The benchmarks' rows: mcq (question, options, answer letter: MCQ accuracy, and the reward against the letter)
    or verifiable (the RL stage's open-ended problems with their ground-true answers, asked as the RL stage asks
    them and scored by the reward)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field name -> column, overriding the format's default names (mcq: question, options, answer_idx, answer;
    verifiable: question `Open-ended Verifiable Question`, answer `Ground-True Answer`)."""
    preset: Literal["huatuo"] | None = None
    """A published evaluation protocol; huatuo: HuatuoGPT-o1's (prompt huatuo, temperature 0.5, top_p 0.9,
    max_new_tokens 2000, one sample, scorer huatuo, table paper). Any of those settings given explicitly wins."""
    prompt: Literal["medo1", "huatuo", "huatuo_strict"] = "medo1"
    """MCQ user turn: medo1 (question, options, "Answer with the letter of the correct option."), or the published
    HuatuoGPT-o1 prompts byte for byte: huatuo, huatuo_strict (asks for "The answer is A.")."""
    scorer: Literal["medo1", "huatuo"] = "medo1"
    """How an MCQ answer is read for the headline accuracy: medo1 (one strict extraction; an unparsed answer is
    wrong) or huatuo (the published scorer: always some option, the better of first-found and last-found per set,
    empty responses left out). Both are always reported."""
    table: Literal["benchmarks", "paper"] = "benchmarks"
    """report.md's first table: one row per benchmark, or the paper's Table 1 layout (MedQA | MedMCQA | PubMedQA |
    Health | Biology | Genetics | Molecular Biology | Avg) and Table 2 layout, one row per model."""
    subjects: dict[str, str] = Field(default_factory=dict)
    """Published set (key or benchmark name) -> the original dataset with each question's subject, for the paper's
    split columns: MMLU-Pro (`category`: health, biology; e.g. hf://TIGER-Lab/MMLU-Pro?split=test) and GPQA
    (`Subdomain`: Genetics, Molecular Biology; e.g. a gpqa_extended.csv). Matched by question text."""
    system_prompt: str | None = None
    """A system message before each question (set it to the RL recipe's `data.system_prompt` to ask the RL
    stage's prompts)."""
    max_new_tokens: int = Field(2048, ge=1)
    """Most tokens generated per answer; answers cut off here are counted per model (`hit_token_cap`)."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (temperature > 0): sample from the smallest token set holding this much probability; 1
    keeps all. Local models sample as the RL rollouts do: no top-k, none of the checkpoint's own decoding
    defaults."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses per question per seed (temperature > 0); a question's scores are averaged over them."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Sampling seeds: every model answers every question once per seed (`samples_per_prompt` responses each),
    the same seeds for every model, so that their draws are paired."""
    noise_seeds: list[int] = Field(default_factory=list)
    """More seeds the `baseline` model alone is run under, one run each: its difference from its own run under
    the first of `seeds` is the seed-to-seed noise a gain must exceed."""
    baseline: str | None = None
    """The label every other model is compared with, question by question (a `compare_with` label or `label`);
    None: the last `compare_with` entry (the pipeline's `sft`, the model RL starts from)."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Local models: transformers' repetition penalty (1 is none; above 1 discourages tokens already in the
    prompt or answer). Small models fall into loops under greedy decoding; 1.1-1.2 breaks most of them."""
    batch_size: int = Field(8, ge=1)
    """Questions generated together with a local model by HF generate (each with its `samples_per_prompt`
    responses); vLLM schedules its own batches."""
    engine: Literal["auto", "hf", "vllm"] = "auto"
    """Local models: hf (transformers generate) or vllm (offline batched generation with continuous batching, the
    GPU image's vLLM); auto: vllm where a CUDA GPU is visible and vLLM imports, else hf."""
    vllm: EvalVLLMSettings = Field(default_factory=lambda: EvalVLLMSettings())
    """The vLLM engine's settings (`engine: vllm`, or auto on a GPU)."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N rows of each benchmark (counted from `start_row`)."""
    start_row: int = Field(0, ge=0)
    """First row scored (0-based), e.g. past the demo rows the SFT and RL recipes train on."""
    label: str = Field("model", min_length=1)
    """The name of `model` (or the endpoint) in the comparison table."""
    compare_with: dict[str, str] = Field(default_factory=dict)
    """Label -> local model directory (or hub id) asked the same questions with the same settings, one after
    another, e.g. {base: the pretrained model, sft: the SFT export}; report.md compares them with `model`."""
    reward: AnswerMatchRewardConfig | VerifierRewardConfig | JudgeRewardConfig = Field(
        default_factory=AnswerMatchRewardConfig, discriminator="kind"
    )
    """The RL reward each response gets against the correct option letter or the ground-true answer
    (`kind: answer_match`, `kind: verifier` with a verifier model, or `kind: judge` with a judge endpoint); its
    mean is reported per model."""
    output_dir: str = Field("runs/eval", min_length=1)
    """Where responses.jsonl, report.json and report.md go."""
    concurrency: int = Field(8, ge=1)
    """Endpoint requests in flight at once."""
    timeout_s: float = Field(300.0, gt=0)
    """Seconds one endpoint request may take (a long reasoning answer from a busy server) before it is retried."""
    max_retries: int = Field(2, ge=0)
    """Retries of one endpoint request (timeouts, 429 / 5xx, broken connections): at most 3 x 300 s per question,
    and the run stops once no request has been answered for `give_up_after_s` (300 s)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "huatuo":
            data = HUATUO_PRESET | data
        return data

    @model_validator(mode="after")
    def _one_backend(self) -> EvalConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of `model` (local model dir) or `endpoint` (OpenAI-compatible URL)")
        if self.label in self.compare_with:
            raise ValueError(f"compare_with: label {self.label!r} is `model`'s own label; pick another")
        if self.temperature == 0 and (self.samples_per_prompt > 1 or len(self.seeds) > 1 or self.noise_seeds):
            raise ValueError(
                "samples_per_prompt > 1, several seeds and noise_seeds need temperature > 0: greedy "
                "decoding gives the same answer every time"
            )
        if len(set(self.seeds)) != len(self.seeds) or set(self.noise_seeds) & set(self.seeds):
            raise ValueError(f"seeds {self.seeds} and noise_seeds {self.noise_seeds} must all differ")
        labels = [*self.compare_with, self.label]
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is none of the models' labels: {', '.join(labels)}")
        if self.noise_seeds and self.baseline_label is None:
            raise ValueError("noise_seeds re-run the baseline: set compare_with (and baseline)")
        return self

    @property
    def baseline_label(self) -> str | None:
        """The model the others are compared with: `baseline`, else the last `compare_with` entry."""
        if self.baseline is not None:
            return self.baseline
        return next(reversed(self.compare_with), None)


# --------------------------------------------------------------------------- prompt


def build_prompt(item: MCQItem) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return f"{item.question}\n\n{options}\n\n{INSTRUCTION}"


def _with_system(system_prompt: str | None, content: str) -> Messages:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}
    ]


def build_messages(
    item: MCQItem | VerifiableProblem, system_prompt: str | None = None, prompt: str = "medo1"
) -> Messages:
    """The chat turn one benchmark row asks: an MCQ item with its options in the `prompt` style (medo1's, or a
    published one: `medo1.eval.published.HUATUO_PROMPTS`), or a verifiable problem's question alone, as the RL
    stage's rollouts ask it (`medo1.rl.rollout.load_problems`)."""
    if isinstance(item, VerifiableProblem):
        return _with_system(system_prompt, item.question)
    if prompt == "medo1":
        return _with_system(system_prompt, build_prompt(item))
    return _with_system(system_prompt, huatuo_prompt(prompt, item.question, item.options))


def reference_of(item: MCQItem | VerifiableProblem) -> str:
    """What the reward compares a response with: the correct option letter, or the ground-true answer."""
    return item.answer if isinstance(item, VerifiableProblem) else item.answer_idx


# --------------------------------------------------------------------------- extraction

# "answer is X", "answer: X", "answer is (X)", "answer is **X**", "answer is option X".
# An upper-case letter must not run on into a word; a lower-case one ("Answer: e") counts only
# when nothing but punctuation follows it on its line, so "the answer is a rare ..." is no answer.
_EXPLICIT = re.compile(
    r"(?i:answer)\s*(?:(?i:is)\s*:?|:)\s*(?:(?i:option)\s*)?[\s(\[*_\"']*"
    r"(?:([A-Z])(?![A-Za-z0-9])|([a-z])(?=[).\]*_\"']*[ \t]*(?:\n|$)))"
)
_LEADING_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.)](?![A-Za-z0-9]))")
_LEADING_MARKUP = re.compile(r"^[\s*_#>`\"']+")
_NON_ALNUM = re.compile(r"[^0-9a-zA-Z]+")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _explicit_letter(text: str, options: dict[str, str]) -> str | None:
    found = None
    for match in _EXPLICIT.finditer(text):
        letter = (match.group(1) or match.group(2)).upper()
        if letter in options:
            found = letter
    return found


def _lone_letter(text: str, options: dict[str, str]) -> str | None:
    bare = _NON_ALNUM.sub("", text)
    if len(bare) == 1 and bare.isalpha():
        return bare.upper() if bare.upper() in options else None
    match = _LEADING_LETTER.match(_LEADING_MARKUP.sub("", text))
    if match:
        letter = match.group(1) or match.group(2)
        return letter if letter in options else None
    return None


def _text_match(text: str, options: dict[str, str]) -> tuple[str | None, bool]:
    """(letter, matched_any): the option whose text appears in the answer.

    Several matches resolve to the longest only when it contains all the others (e.g. "anemia"
    inside "iron deficiency anemia"); unrelated options both named are ambiguous.
    """
    padded = f" {_normalise(text)} "
    hits = {}
    for letter, option in options.items():
        norm = _normalise(option)
        if norm and f" {norm} " in padded:
            hits[letter] = norm
    if not hits:
        return None, False
    best = max(hits, key=lambda k: len(hits[k]))
    longest = f" {hits[best]} "
    for letter, norm in hits.items():
        if letter != best and (norm == hits[best] or f" {norm} " not in longest):
            return None, True
    return best, True


def _closest(text: str, options: dict[str, str]) -> str | None:
    words = set(_normalise(text).split())
    if not words:
        return None
    scores = []
    for letter, option in options.items():
        option_words = set(_normalise(option).split())
        union = words | option_words
        scores.append((len(words & option_words) / len(union) if union else 0.0, letter))
    scores.sort(reverse=True)
    best_score, best = scores[0]
    second = scores[1][0] if len(scores) > 1 else -1.0
    return best if best_score >= 0.5 and best_score > second else None


def extract_answer(response: str, options: dict[str, str]) -> str | None:
    """One option letter per response, or None when it cannot be parsed.

    Order: the answer text (`medo1.data.final_response.answer_text`: the RL reward's final response of a well-formed
    response; of a malformed one, the text after its last `## Final Response`, else all of it); an explicit "answer is X" /
    "answer: X" (last occurrence; a lower-case letter counts only at the end of its line); a lone
    option letter ("C", "**C**", "C. text", "(C) text", "C) text"; upper-case only unless the
    whole answer is that one letter); the option text contained in the answer; the closest option
    by word-set Jaccard (>= 0.5 and strictly better than the runner-up). Letters must be options.
    """
    if not response or not response.strip():
        return None
    text = answer_text(response)
    if not text:
        return None
    for step in (_explicit_letter, _lone_letter):
        letter = step(text, options)
        if letter is not None:
            return letter
    letter, matched = _text_match(text, options)
    if matched:
        return letter
    return _closest(text, options)


# --------------------------------------------------------------------------- generation


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


# --------------------------------------------------------------------------- scoring


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def benchmark_sources(benchmarks: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Benchmark name -> (source, set): a JSON file of named sets given whole (no `#SET`) becomes one benchmark per
    set, each named by its set (the published eval_data.json: MedQA_USLME_test, ..., GPQA_Medical_test)."""
    sources: dict[str, tuple[str, str | None]] = {}
    for name, text in benchmarks.items():
        path, key = split_set(text)
        sets = json_sets(path) if key is None else None
        if not sets:
            expanded = {name: (path, key)}
        else:
            expanded = {set_name: (path, set_name) for set_name in sets}
            log.info(
                "benchmark %r (%s): %d sets: %s",
                name,
                path,
                len(sets),
                ", ".join(f"{set_name} ({rows} rows)" for set_name, rows in sets.items()),
            )
        for new_name, source in expanded.items():
            if new_name in sources:
                raise EvalError(f"benchmarks: {new_name!r} named twice ({benchmarks[name]} and an earlier benchmark)")
            sources[new_name] = source
    return sources


def _load_benchmark(config: EvalConfig, path: str, key: str | None = None) -> LoadResult:
    """The benchmark's rows from `start_row` on, at most `limit` of them."""
    end = None if config.limit is None else config.start_row + config.limit
    result = load_examples(path, config.format, None, config.fields, limit=end, key=key)
    if config.start_row == 0:
        return result
    if result.rows <= config.start_row:
        raise EvalError(f"benchmark {result.path}: start_row {config.start_row} but it has {result.rows} row(s)")
    return replace(
        result,
        rows=result.rows - config.start_row,
        examples=[(row, ex) for row, ex in result.examples if row >= config.start_row],
        problems=[p for p in result.problems if p.row >= config.start_row],
        duplicates=[(row, first) for row, first in result.duplicates if row >= config.start_row],
    )


def _check_rows(name: str, result: LoadResult, format: str) -> None:
    """Log a benchmark's invalid rows (how many, the first few); EvalError when none is valid."""
    if not result.problems and result.examples:
        return
    if not result.examples:
        first = f"; first: {result.problems[0]}" if result.problems else ""
        what = "a valid MCQ item" if format == "mcq" else "a valid verifiable problem"
        raise EvalError(f"benchmark {name!r} ({result.path}): none of its {result.rows} row(s) is {what}{first}")
    log.warning(
        "benchmark %r (%s): %d of %d row(s) invalid, skipped (all listed in report.json)",
        name,
        result.path,
        len(result.problems),
        result.rows,
    )
    for problem in result.problems[:INVALID_ROWS_SHOWN]:
        log.warning("  %s", problem)
    if len(result.problems) > INVALID_ROWS_SHOWN:
        log.warning("  ... and %d more", len(result.problems) - INVALID_ROWS_SHOWN)


def _replace_outputs(out_dir: Path, contents: dict[str, str]) -> None:
    """Write every file aside first, then rename them all into place: a failure leaves the old set whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, text in contents.items():
        aside = out_dir / f".{name}.tmp-{os.getpid()}"
        aside.write_text(text, encoding="utf-8")
        staged.append((aside, out_dir / name))
    for aside, final in staged:
        os.replace(aside, final)


@dataclass
class Benchmark:
    """One benchmark's valid rows, which earlier row each repeated question copies (its unit), and its notes."""

    name: str
    loaded: LoadResult
    items: list[tuple[int, MCQItem | VerifiableProblem]]
    unit_of: dict[int, int]
    """Row -> the first row of the same question: the unit every interval counts once."""
    notes: list[str]

    @classmethod
    def of(cls, name: str, loaded: LoadResult, config: EvalConfig) -> Benchmark:
        items: list[tuple[int, MCQItem | VerifiableProblem]] = list(loaded.examples)  # type: ignore[arg-type]
        first = dict(loaded.duplicates)
        benchmark = cls(name, loaded, items, {row: first.get(row, row) for row, _ in items}, [])
        benchmark.notes = benchmark._notes(config)
        return benchmark

    @property
    def is_mcq(self) -> bool:
        return self.loaded.format == "mcq"

    @property
    def copies(self) -> str | None:
        """How the rows repeat questions ("78 unique x 5"), or None when every question is asked once."""
        counts = Counter(self.unit_of.values())
        if len(counts) == len(self.unit_of):
            return None
        if len(set(counts.values())) == 1:
            return f"{len(counts)} unique x {next(iter(counts.values()))}"
        return f"{len(self.unit_of)} rows, {len(counts)} unique questions"

    def _notes(self, config: EvalConfig) -> list[str]:
        notes = []
        published = paper_set(self.name)
        if published is not None:
            notes.append(published.note)
        if self.copies:
            notes.append(f"{self.copies}: intervals count each unique question once")
            if config.temperature == 0:
                notes.append(
                    "greedy decoding answers every copy of a question alike: the copies are one run, not "
                    "several (the paper sampled 5 runs at temperature 0.5; set temperature > 0)"
                )
        return notes


def _mcq_record(generation: Generation, item: MCQItem) -> dict[str, Any]:
    """Both scorers' reading of an MCQ response: medo1's strict extraction and the published one."""
    extracted = extract_answer(generation.text, item.options)
    empty = not postprocess(generation.text)  # the published evaluation leaves empty responses out
    answer = None if empty else huatuo_answers(generation.text, item.options)
    return {
        "extracted": extracted,
        "strict_correct": extracted == item.answer_idx,
        "huatuo_first": answer and answer.first,
        "huatuo_last": answer and answer.last,
        "huatuo_kind": answer and answer.kind,
    }


def _score(
    generator: Generator, reward: Any, benchmark: Benchmark, config: EvalConfig, label: str, seed: int
) -> list[dict[str, Any]]:
    """One model's responses to one benchmark under one seed, each scored: the per-response records (MCQ:
    `correct` is set by `apply_scorer` once all of a model's responses to the benchmark are in)."""
    items = benchmark.items
    generations = generator.generate(
        [build_messages(item, config.system_prompt, config.prompt) for _, item in items],
        samples=config.samples_per_prompt,
        seed=seed,
    )
    flat = [(row, item, sample, g) for (row, item), gens in zip(items, generations) for sample, g in enumerate(gens)]
    rewards = reward([g.text for *_, g in flat], [reference_of(item) for _, item, _, _ in flat])
    records = []
    for (row, item, sample, generation), value, judged_correct in zip(flat, rewards.rewards, rewards.correct):
        format_ok = parse_response(generation.text).format_ok
        record: dict[str, Any] = {"row": row, "seed": seed, "sample": sample, "reference": reference_of(item)}
        if isinstance(item, MCQItem):
            record |= _mcq_record(generation, item)
        else:
            record |= {"extracted": None, "correct": bool(judged_correct)}
        record |= {
            "format_ok": format_ok,
            "reward": value,
            "tokens": generation.tokens,
            "hit_cap": generation.hit_cap,
            "response": generation.text,
        }
        records.append(record)
    log.info(
        "eval: %s on %s, seed %d: mean reward %.3f",
        label,
        benchmark.name,
        seed,
        sum(rewards.rewards) / max(1, len(rewards.rewards)),
    )
    return records


def huatuo_score(records: list[dict[str, Any]]) -> HuatuoScore:
    """The published score of a set of MCQ responses (the better of every first-found and every last-found)."""
    return huatuo_set_score(
        (
            None if r["huatuo_first"] is None else HuatuoAnswer(r["huatuo_first"], r["huatuo_last"], r["huatuo_kind"]),
            r["reference"],
        )
        for r in records
    )


def apply_scorer(benchmark: Benchmark, records: list[dict[str, Any]], scorer: str) -> None:
    """Set each MCQ record's `correct` by the headline scorer: medo1's strict reading, or the published one (the
    set's pick of first- or last-found; an empty response counts as wrong here, and is left out of its score)."""
    if not benchmark.is_mcq:
        return
    pick = huatuo_score(records).pick if scorer == "huatuo" else None
    for record in records:
        if scorer == "medo1":
            record["correct"] = record["strict_correct"]
        else:
            record["correct"] = (
                pick is not None and (record[f"huatuo_{pick}"] or "").lower() == record["reference"].lower()
            )


def unit_means(records: list[dict[str, Any]], unit_of: dict[int, int], key: str) -> dict[int, float]:
    """Per question (unit), the mean of `key` over its responses (its copies, samples and seeds)."""
    sums: dict[int, list[float]] = {}
    for record in records:
        sums.setdefault(unit_of[record["row"]], []).append(float(record[key]))
    return {unit: sum(values) / len(values) for unit, values in sums.items()}


def summarise(benchmark: Benchmark, records: list[dict[str, Any]], scorer: str) -> dict[str, Any]:
    """One model's scores on one benchmark from its response records."""
    n_responses = len(records)
    units = len(set(benchmark.unit_of.values()))
    format_ok = sum(r["format_ok"] for r in records)
    well_formed_correct = sum(r["correct"] for r in records if r["format_ok"])
    lengths = [r["tokens"] for r in records if r["tokens"] is not None]
    capped = [r["hit_cap"] for r in records if r["hit_cap"] is not None]
    unit_accuracy = unit_means(records, benchmark.unit_of, "correct")
    items = dict(benchmark.items)
    result: dict[str, Any] = {
        "path": benchmark.loaded.path,
        "format": benchmark.loaded.format,
        "n": len(benchmark.items),
        "unique_questions": units,
        "copies": benchmark.copies,
        "responses": n_responses,
    }
    if benchmark.is_mcq:
        published = huatuo_score(records)
        strict = sum(r["strict_correct"] for r in records)
        headline = published.accuracy if scorer == "huatuo" else strict / n_responses
        result |= {
            "scorer": scorer,
            "correct": sum(r["correct"] for r in records),
            "accuracy": headline if headline is not None else 0.0,
            "strict_accuracy": strict / n_responses,
            "unparseable": sum(r["extracted"] is None for r in records),
            "huatuo": {
                "accuracy": published.accuracy,
                "first_accuracy": published.first_accuracy,
                "last_accuracy": published.last_accuracy,
                "pick": published.pick,
                "scored": published.scored,
                "dropped_empty": published.dropped_empty,
            },
            "chance": sum(1 / len(items[row].options) for row in benchmark.unit_of) / len(benchmark.unit_of),  # type: ignore[union-attr]
        }
    else:
        correct = sum(r["correct"] for r in records)
        result |= {
            "scorer": "reward",
            "correct": correct,
            "accuracy": correct / n_responses,
            "chance": None,
            # No final answer to read: the response is out of the format.
            "unparseable": n_responses - format_ok,
        }
    result |= {
        # Intervals count each unique question once (`medo1.eval.stats`).
        "accuracy_ci95": list(wilson_interval(sum(unit_accuracy.values()), units)),
        "format_ok": format_ok,
        "format_ok_rate": format_ok / n_responses,
        "correct_among_well_formed": well_formed_correct / format_ok if format_ok else None,
        "mean_response_tokens": sum(lengths) / len(lengths) if lengths else None,
        "hit_token_cap": sum(capped) if capped else None,
        "reward_mean": sum(r["reward"] for r in records) / n_responses,
        "notes": benchmark.notes,
        "invalid_rows": [p.to_dict() for p in benchmark.loaded.problems],
    }
    return result


def load_subjects(benchmark: Benchmark, published: PaperSet, source: str | None) -> tuple[dict[int, str], str]:
    """Row -> subject (MMLU-Pro `category`, GPQA `Subdomain`) for a published set the paper splits, from the rows'
    own field or else from `source` (the original dataset, matched by question text); and a note on the match."""
    field = published.subject_field
    assert field is not None and published.question_field is not None
    raw = benchmark.loaded.raw
    own = {
        row: raw[row][field]
        for row, _ in benchmark.items
        if isinstance(raw.get(row), dict) and isinstance(raw[row].get(field), str)
    }
    if len(own) == len(benchmark.items):
        return own, f"{benchmark.name}: subjects from its rows' own `{field}`"
    if source is None:
        return {}, (
            f"{benchmark.name} cannot be split into {' / '.join(c for c, _ in published.split)}: its rows carry "
            f"no `{field}`; set subjects.{published.key}=<the original dataset> (a file or hf://...)"
        )
    path, key = split_set(source)
    by_question: dict[str, str] = {}
    try:
        for _, _, record, _ in iter_records(path, key):
            if isinstance(record, dict):
                question, subject = record.get(published.question_field), record.get(field)
                if isinstance(question, str) and isinstance(subject, str):
                    by_question.setdefault(normalise_question(question), subject)
    except DataError as exc:
        raise EvalError(f"subjects.{published.key}: {exc}") from None
    subjects = {
        row: by_question[q] for row, item in benchmark.items if (q := normalise_question(item.question)) in by_question
    }
    wanted = {value for _, value in published.split}
    others = sum(subject not in wanted for subject in subjects.values())
    note = (
        f"{benchmark.name}: {len(subjects)} of {len(benchmark.items)} rows matched a `{field}` in {source}"
        + (f"; {len(benchmark.items) - len(subjects)} unmatched" if len(subjects) < len(benchmark.items) else "")
        + (f"; {others} of another {field}" if others else "")
        + (", left out of the split columns" if len(subjects) < len(benchmark.items) or others else "")
    )
    if not by_question:
        raise EvalError(
            f"subjects.{published.key}: {source} has no rows with `{published.question_field}` and `{field}`"
        )
    return subjects, note


def _set_score(records: list[dict[str, Any]], scorer: str) -> float | None:
    """A column's score in percent: the published score, or medo1's strict accuracy."""
    if not records:
        return None
    if scorer == "huatuo":
        accuracy = huatuo_score(records).accuracy
        return None if accuracy is None else 100 * accuracy
    return 100 * sum(r["strict_correct"] for r in records) / len(records)


def paper_tables(
    benchmarks: dict[str, Benchmark],
    records: dict[str, dict[str, list[dict[str, Any]]]],
    subjects: dict[str, dict[int, str]],
    scorer: str,
) -> dict[str, Any]:
    """Each model's cells in the paper's Table 1 layout (with its Avg) and Table 2 layout, and why any is missing.
    A split column is scored as a set of its own (the published scorer's first/last pick per column)."""
    by_set = {published.key: name for name in benchmarks if (published := paper_set(name)) is not None}
    models: dict[str, Any] = {}
    missing: list[str] = []
    for label, by_name in records.items():
        table1: dict[str, float | None] = dict.fromkeys(TABLE1_COLUMNS)
        table2: dict[str, float | None] = dict.fromkeys(TABLE2_COLUMNS)
        for published in PAPER_SETS:
            name = by_set.get(published.key)
            if name is None:
                continue
            rows = by_name[name]
            table2[published.column] = _set_score(rows, scorer)
            if not published.split:
                table1[published.column] = table2[published.column]
            elif name in subjects:
                for column, value in published.split:
                    table1[column] = _set_score([r for r in rows if subjects[name].get(r["row"]) == value], scorer)
        models[label] = {
            "table1": table1,
            "average": paper_average([table1[c] for c in TABLE1_COLUMNS]),
            "table2": table2,
        }
    for published in PAPER_SETS:
        if published.key not in by_set:
            missing.append(
                f"{published.key} not evaluated: {' / '.join(c for c, _ in published.split) or published.column} "
                f"n/a (give the published file, or {published.aliases[0]}=FILE)"
            )
    return {
        "scorer": scorer,
        "table1_columns": list(TABLE1_COLUMNS),
        "table2_columns": list(TABLE2_COLUMNS),
        "models": models,
        "notes": missing,
    }


PAIRED_METRICS = {"reward": "reward", "format_ok": "format_ok", "correct": "correct"}
"""Report key -> response-record key of the per-question values compared between models."""


def _paired(benchmark: Benchmark, model: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, key in PAIRED_METRICS.items():
        a, b = unit_means(model, benchmark.unit_of, key), unit_means(baseline, benchmark.unit_of, key)
        units = sorted(b)
        out[name] = paired_bootstrap([a[u] for u in units], [b[u] for u in units]).to_dict()
    return out


def compare_to_baseline(
    benchmarks: dict[str, Benchmark],
    records: dict[str, dict[str, list[dict[str, Any]]]],
    noise: dict[int, dict[str, list[dict[str, Any]]]],
    baseline: str,
    first_seed: int,
) -> dict[str, Any]:
    """Every model against `baseline`, question by question, and the baseline's seed-to-seed noise.

    `records`: label -> benchmark -> response records (all seeds); `noise`: noise seed -> benchmark -> the
    baseline's records under that seed, compared with its records under `first_seed`.
    """
    result: dict[str, Any] = {
        "baseline": baseline,
        "method": f"paired percentile bootstrap over unique questions, {BOOTSTRAP_RESAMPLES} resamples, "
        f"generator seed {BOOTSTRAP_SEED}; a question's value is the mean over its responses",
        "benchmarks": {},
    }
    for name, benchmark in benchmarks.items():
        base = records[baseline][name]
        first_run = [r for r in base if r["seed"] == first_seed]
        seed_to_seed = [{"seed": seed, **_paired(benchmark, runs[name], first_run)} for seed, runs in noise.items()]
        band = {
            metric: noise_band(
                [
                    PairedDifference(d[metric]["difference"], *d[metric]["ci95"], d[metric]["questions"])
                    for d in seed_to_seed
                ]
            )
            for metric in PAIRED_METRICS
        }
        models = {}
        for label, runs in records.items():
            if label == baseline:
                continue
            gains = _paired(benchmark, runs[name], base)
            for metric, gain in gains.items():
                low, high = gain["ci95"]
                gain["beyond_noise"] = beyond_noise(
                    PairedDifference(gain["difference"], low, high, gain["questions"]), band[metric]
                )
            models[label] = gains
        result["benchmarks"][name] = {"models": models, "noise": seed_to_seed, "noise_band": band}
    return result


# --------------------------------------------------------------------------- report


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _difference_cell(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"{_signed(d['difference'])} ({_signed(low)} to {_signed(high)})"


def _verdict(gains: dict[str, Any]) -> str:
    """What the reward difference shows: a gain (or loss) beyond the seed-to-seed noise, or not."""
    reward = gains["reward"]
    direction = "gain" if reward["difference"] > 0 else "loss"
    if reward["beyond_noise"] is True:
        return f"{direction} beyond the noise"
    if reward["beyond_noise"] is False and reward["excludes_zero"]:
        return f"{direction}: interval excludes 0, within the seed-to-seed noise"
    if reward["excludes_zero"]:
        return f"{direction}: interval excludes 0 (no seed-to-seed runs)"
    return "not distinguishable from 0"


def _paper_markdown(report: dict[str, Any]) -> list[str]:
    tables = report["paper_table"]
    scorer = (
        "the published HuatuoGPT-o1 scorer (`huatuo`: the better of first- and last-found answers per column, "
        "empty answers left out)"
        if tables["scorer"] == "huatuo"
        else "medo1's strict scorer (`medo1`: one extracted answer, an unparsed one wrong)"
    )
    columns1, columns2 = tables["table1_columns"], tables["table2_columns"]
    lines = [
        "## The paper's Table 1 layout",
        "",
        f"Scored by {scorer}; percent, one decimal. Avg: the plain mean of the seven columns (n/a unless all seven "
        "are scored).",
        "",
        "| model | " + " | ".join(columns1) + " | Avg |",
        "|---|" + "---:|" * (len(columns1) + 1),
    ]
    for label, model in tables["models"].items():
        cells = [paper_cell(model["table1"][c]) for c in columns1]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {paper_cell(model['average'])} |")
    lines += [
        "",
        "Table 2 layout (MMLU-Pro and GPQA each over all their questions):",
        "",
        "| model | " + " | ".join(columns2) + " |",
        "|---|" + "---:|" * len(columns2),
    ]
    for label, model in tables["models"].items():
        lines.append(f"| {label} | " + " | ".join(paper_cell(model["table2"][c]) for c in columns2) + " |")
    notes = tables["notes"]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return lines + [""]


def _markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"# Evaluation: {report['model']}", ""]
    if report.get("paper_table"):
        lines += _paper_markdown(report)
    mcq_any = any(result["format"] == "mcq" for result in report["benchmarks"].values())
    scorer = settings["scorer"] if mcq_any else "reward"
    lines += [
        f"| benchmark | n | unique | accuracy % ({scorer}) | strict % (medo1) | unparseable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["benchmarks"].items():
        strict = _pct(result.get("strict_accuracy"))
        lines.append(
            f"| {name} | {result['n']} | {result['unique_questions']} | {_pct(result['accuracy'])} | {strict} "
            f"| {result['unparseable']} |"
        )
    lines += ["", f"Average accuracy over these benchmarks: {_pct(report['average_accuracy'])}%"]
    invalid = sum(len(r["invalid_rows"]) for r in report["benchmarks"].values())
    if invalid:
        lines.append(f"Invalid rows skipped: {invalid} (listed in report.json).")
    decoding = (
        "greedy decoding"
        if settings["temperature"] == 0
        else f"temperature {settings['temperature']}, top-p {settings['top_p']}, "
        f"{settings['samples_per_prompt']} sample(s) per question under seed(s) "
        f"{', '.join(map(str, settings['seeds']))}"
    )
    protocol = f"preset {settings['preset']}; " if settings["preset"] else ""
    lines += [
        "",
        f"Decoding: {protocol}{decoding}; at most {settings['max_new_tokens']} new tokens; "
        f"prompt {settings['prompt']}; engine {settings['engine']}.",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    for name, result in report["benchmarks"].items():
        lines += [f"- {name}: {note}" for note in result["notes"] if not note.startswith(name)]
    for name in report["benchmarks"]:
        mcq = report["benchmarks"][name]["format"] == "mcq"
        correct_header = "MCQ accuracy % (95% CI) | chance %" if mcq else "correct % (95% CI)"
        lines += [
            "",
            f"## {name}: the same questions to each model",
            "",
            f"| model | format ok | mean response tokens | hit token cap | mean {report['reward']} | {correct_header} "
            "| correct among well-formed % |",
            "|---|---:|---:|---:|---:|---:|" + ("---:|" if mcq else "") + "---:|",
        ]
        for label, benchmarks in report["comparison"].items():
            r = benchmarks[name]
            tokens = "n/a" if r["mean_response_tokens"] is None else f"{r['mean_response_tokens']:.0f}"
            capped = "n/a" if r["hit_token_cap"] is None else f"{r['hit_token_cap']}/{r['responses']}"
            low, high = r["accuracy_ci95"]
            correct = f"{_pct(r['accuracy'])} ({_pct(low)}-{_pct(high)})" + (f" | {_pct(r['chance'])}" if mcq else "")
            lines.append(
                f"| {label} | {r['format_ok']}/{r['responses']} | {tokens} | {capped} | {r['reward_mean']:.3f} "
                f"| {correct} | {_pct(r['correct_among_well_formed'])} |"
            )
        paired = report.get("paired")
        if paired:
            p = paired["benchmarks"][name]
            lines += [
                "",
                f"Against {paired['baseline']}, question by question (95% intervals: {paired['method']}):",
                "",
                f"| model | {report['reward']} gain | format-ok rate gain | correct rate gain | reward verdict |",
                "|---|---:|---:|---:|---|",
            ]
            for label, gains in p["models"].items():
                lines.append(
                    f"| {label} | {_difference_cell(gains['reward'])} | {_difference_cell(gains['format_ok'])} "
                    f"| {_difference_cell(gains['correct'])} | {_verdict(gains)} |"
                )
            for run in p["noise"]:
                lines.append(
                    f"| {paired['baseline']}, seed {run['seed']} vs seed {settings['seeds'][0]} (noise) "
                    f"| {_difference_cell(run['reward'])} | {_difference_cell(run['format_ok'])} "
                    f"| {_difference_cell(run['correct'])} | seed-to-seed |"
                )
    lines += [
        "",
        "Format ok: `## Thinking` and `## Final Response` each exactly once, the RL reward's format rule. "
        "Hit token cap: responses cut off at the new-token limit. Correct among well-formed: of the responses in the "
        "format, the share with the right answer. Intervals count each unique question once.",
    ]
    if mcq_any:
        lines.append(
            "Accuracy: by the scorer named in the header; strict (medo1): one answer extracted per response, an "
            "unparseable one counted wrong; huatuo (published): some option always read, the better of every "
            "first-found and every last-found answer per set. Chance: the accuracy of guessing one option at random. A "
            "95% interval that contains chance means the model's answers are not distinguishable from guessing on "
            "these questions; a small model (the 135M demo model) is expected there: its training teaches the answer "
            "format and style, not medical knowledge."
        )
    if report.get("paired"):
        lines.append(
            "A gain is beyond the noise when its 95% interval excludes 0 and it is larger than the baseline's own "
            "difference between sampling seeds (the noise rows)."
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run


def _protocol_notes(config: EvalConfig) -> list[str]:
    """Where a run that names a published protocol departs from it."""
    if config.preset != "huatuo":
        return []
    changed = [
        f"{key} {getattr(config, key)} (published: {value})"
        for key, value in HUATUO_PRESET.items()
        if getattr(config, key) != value
    ]
    if not changed:
        return []
    note = "preset huatuo with these settings changed, so the numbers are not the published protocol's: " + ", ".join(
        changed
    )
    log.warning("eval: %s", note)
    return [note]


def run_eval(config: EvalConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Evaluate every benchmark with `model` and each `compare_with` model; write report.json, report.md and
    responses.jsonl; return the report (`benchmarks`: `model`'s results with its responses in `per_item`;
    `comparison`: every model's, without; `paired`: the paired comparison with the baseline, when there are
    several models; `paper_table` with `table: paper`)."""
    if not config.benchmarks:
        raise EvalError("no benchmarks to score: set benchmarks.NAME=PATH (medo1 eval --benchmark NAME=PATH)")
    out_dir = Path(config.output_dir)
    sources = benchmark_sources(config.benchmarks)
    loaded = {name: _load_benchmark(config, path, key) for name, (path, key) in sources.items()}
    for name, result in loaded.items():
        _check_rows(name, result, config.format)
    benchmarks = {name: Benchmark.of(name, result, config) for name, result in loaded.items()}
    for benchmark in benchmarks.values():
        if benchmark.copies and config.temperature == 0:
            log.warning(
                "benchmark %r: %s decoded greedily: its copies are one run repeated", benchmark.name, benchmark.copies
            )
    engine = resolve_engine(config) if config.model is not None or config.compare_with else "endpoint"
    notes = _protocol_notes(config)
    subjects: dict[str, dict[int, str]] = {}
    if config.table == "paper" and config.format == "mcq":
        for name, benchmark in benchmarks.items():
            published = paper_set(name)
            if published is not None and published.split:
                source = config.subjects.get(published.key, config.subjects.get(name))
                rows, note = load_subjects(benchmark, published, source)
                notes.append(note)
                if rows:
                    subjects[name] = rows
    from medo1.rl.rewards.factory import build_reward  # torch: only once the benchmarks are known to be usable

    reward = build_reward(config.reward)
    report: dict[str, Any] = {
        "model": config.model if config.model is not None else (config.endpoint_model or config.endpoint),
        "reward": reward.name,
        "settings": {
            key: getattr(config, key)
            for key in (
                "format",
                "preset",
                "prompt",
                "scorer",
                "temperature",
                "top_p",
                "samples_per_prompt",
                "seeds",
                "noise_seeds",
                "max_new_tokens",
            )
        }
        | {"engine": engine},
        "notes": notes,
        "benchmarks": {},
        "comparison": {},
    }
    baseline = config.baseline_label
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    noise: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for label, model in [*config.compare_with.items(), (config.label, None)]:
        log.info("eval: %s (%s)", label, model or report["model"])
        if model is not None:
            model_generator = make_generator(config, model)
        else:
            model_generator = generator if generator is not None else make_generator(config)
        records[label] = {name: [] for name in benchmarks}
        for seed in config.seeds:
            for name, benchmark in benchmarks.items():
                records[label][name] += _score(model_generator, reward, benchmark, config, label, seed)
        if label == baseline:
            for seed in config.noise_seeds:
                noise[seed] = {
                    name: _score(model_generator, reward, benchmark, config, f"{label} (noise)", seed)
                    for name, benchmark in benchmarks.items()
                }
        del model_generator  # one model in memory at a time
        for name, benchmark in benchmarks.items():
            apply_scorer(benchmark, records[label][name], config.scorer)
            for by_name in noise.values() if label == baseline else ():
                apply_scorer(benchmark, by_name[name], config.scorer)
        report["comparison"][label] = {
            name: summarise(benchmarks[name], records[label][name], config.scorer) for name in benchmarks
        }
    report["benchmarks"] = {
        name: report["comparison"][config.label][name] | {"per_item": records[config.label][name]}
        for name in benchmarks
    }
    for label in report["comparison"]:
        for result in report["comparison"][label].values():
            del result["invalid_rows"]
    if baseline is not None:
        report["paired"] = compare_to_baseline(benchmarks, records, noise, baseline, config.seeds[0])
    if config.table == "paper" and config.format == "mcq":
        report["paper_table"] = paper_tables(benchmarks, records, subjects, config.scorer)
    scored = [r["accuracy"] for r in report["benchmarks"].values()]
    report["average_accuracy"] = sum(scored) / len(scored)
    response_lines = [
        json.dumps({"model": label, "benchmark": name, **record}, ensure_ascii=False) + "\n"
        for label, by_name in records.items()
        for name, rows in by_name.items()
        for record in rows
    ] + [
        json.dumps({"model": f"{baseline} (noise seed {seed})", "benchmark": name, **record}, ensure_ascii=False) + "\n"
        for seed, by_name in noise.items()
        for name, rows in by_name.items()
        for record in rows
    ]
    _replace_outputs(
        out_dir,
        {
            "responses.jsonl": "".join(response_lines),
            "report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
            "report.md": _markdown(report),
        },
    )
    return report
