"""MCQ evaluation: prompt, generate (local HF model or OpenAI-compatible endpoint), extract, score.

One answer is extracted per response (the published scorer keeps the better of the first and
last extracted answer, which is optimistic; we do not). Invalid benchmark rows are reported,
not fatal. Outputs under `output_dir`: report.json, report.md, responses.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import string
from pathlib import Path
from typing import Any, ClassVar, Protocol

import httpx
from pydantic import Field, model_validator

from medo1.config import Section, StageError
from medo1.data import FINAL_RESPONSE_HEADER, MCQItem, load_examples

Messages = list[dict[str, str]]

INSTRUCTION = "Answer with the letter of the correct option."


class EvalError(StageError):
    """An evaluation that cannot go on (e.g. the endpoint keeps failing)."""


class EvalConfig(Section):
    model: str | None = None
    """Local Hugging Face model directory (or hub id)."""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://host:8000/v1."""
    endpoint_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (never passed as an argument)."""
    benchmarks: dict[str, str] = Field(default_factory=dict)
    """Benchmark name -> path of an MCQ JSON / JSONL file."""
    preset: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    max_new_tokens: int = 2048
    temperature: float = 0.0
    batch_size: int = 8
    limit: int | None = None
    output_dir: str = "runs/eval"
    concurrency: int = 8

    @model_validator(mode="after")
    def _one_backend(self) -> EvalConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of `model` (local model dir) or `endpoint` (OpenAI-compatible URL)")
        if self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        return self


# --------------------------------------------------------------------------- prompt


def build_prompt(item: MCQItem) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return f"{item.question}\n\n{options}\n\n{INSTRUCTION}"


def build_messages(item: MCQItem) -> Messages:
    return [{"role": "user", "content": build_prompt(item)}]


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


def final_response(response: str) -> str:
    """The text after the last `## Final Response` header, or the whole response without one."""
    index = response.rfind(FINAL_RESPONSE_HEADER)
    return response[index + len(FINAL_RESPONSE_HEADER) :] if index >= 0 else response


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

    Order: text after the last `## Final Response` (else all of it); an explicit "answer is X" /
    "answer: X" (last occurrence; a lower-case letter counts only at the end of its line); a lone
    option letter ("C", "**C**", "C. text", "(C) text", "C) text"; upper-case only unless the
    whole answer is that one letter); the option text contained in the answer; the closest option
    by word-set Jaccard (>= 0.5 and strictly better than the runner-up). Letters must be options.
    """
    if not response or not response.strip():
        return None
    text = final_response(response).strip()
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


class Generator(Protocol):
    def generate(self, prompts: list[Messages]) -> list[str]: ...


class HFGenerator:
    """Local transformers model: chat template, left padding, batches, greedy at temperature 0."""

    def __init__(self, model_path: str, *, max_new_tokens: int = 2048, temperature: float = 0.0, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM

        from medo1.models import generation_config_for, load_tokenizer, resolve_dtype

        self.torch = torch
        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype("auto")).to(self.device)
        self.model.eval()
        config = generation_config_for(self.tokenizer)
        config.max_new_tokens = max_new_tokens
        if temperature > 0:
            config.do_sample = True
            config.temperature = temperature
        else:
            config.do_sample = False
        self.generation_config = config
        self.batch_size = batch_size

    def render(self, messages: Messages) -> str:
        from medo1.tokenize import render_prompt

        return render_prompt(self.tokenizer, messages)

    def generate(self, prompts: list[Messages]) -> list[str]:
        texts = [self.render(m) for m in prompts]
        # Similar lengths share a batch (less padding); results go back in the callers' order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with self.torch.no_grad():
                output = self.model.generate(**inputs, generation_config=self.generation_config)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for i, decoded in zip(chunk, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                out[i] = decoded
        return out


class EndpointGenerator:
    """OpenAI-compatible /chat/completions, `concurrency` requests in flight, retries on 429/5xx/timeouts."""

    RETRY_STATUS: ClassVar[frozenset[int]] = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        endpoint: str,
        model: str | None,
        *,
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        concurrency: int = 8,
        api_key_env: str = "OPENAI_API_KEY",
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 600.0,
    ):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        key = os.environ.get(api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.attempts = 0
        self.retried = 0

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 60.0)
            except ValueError:
                pass
        return self.backoff * (2**attempt) * (1 + random.random() * 0.1)

    async def _one(self, client, semaphore: asyncio.Semaphore, messages: Messages) -> str:
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.model is not None:
            body["model"] = self.model
        async with semaphore:
            last = ""
            for attempt in range(self.retries + 1):
                self.attempts += 1
                retry_after = None
                try:
                    response = await client.post(self.url, json=body, headers=self.headers)
                except httpx.TimeoutException as exc:
                    last = f"timeout ({type(exc).__name__})"
                else:
                    if response.status_code == 200:
                        try:
                            return response.json()["choices"][0]["message"]["content"] or ""
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            raise EvalError(f"{self.url}: unexpected response body: {response.text[:300]}") from exc
                    if response.status_code not in self.RETRY_STATUS:
                        raise EvalError(f"{self.url}: HTTP {response.status_code}: {response.text[:300]}")
                    last = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("retry-after")
                if attempt < self.retries:
                    self.retried += 1
                    await asyncio.sleep(self._delay(attempt, retry_after))
            raise EvalError(f"{self.url}: giving up after {self.retries + 1} attempts (last: {last})")

    async def _all(self, prompts: list[Messages]) -> list[str]:
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, semaphore, m) for m in prompts)))

    def generate(self, prompts: list[Messages]) -> list[str]:
        return asyncio.run(self._all(prompts))


def make_generator(config: EvalConfig) -> Generator:
    if config.endpoint is not None:
        return EndpointGenerator(
            config.endpoint,
            config.endpoint_model,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            concurrency=config.concurrency,
            api_key_env=config.api_key_env,
        )
    assert config.model is not None
    return HFGenerator(
        config.model,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        batch_size=config.batch_size,
    )


# --------------------------------------------------------------------------- run


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {report['model']}",
        "",
        "| benchmark | n | accuracy % | unparseable |",
        "|---|---:|---:|---:|",
    ]
    for name, result in report["benchmarks"].items():
        acc = "n/a" if result["accuracy"] is None else f"{100 * result['accuracy']:.1f}"
        lines.append(f"| {name} | {result['n']} | {acc} | {result['unparseable']} |")
    avg = report["average_accuracy"]
    lines += ["", f"Average accuracy: {'n/a' if avg is None else f'{100 * avg:.1f}%'}"]
    invalid = sum(len(r["invalid_rows"]) for r in report["benchmarks"].values())
    if invalid:
        lines.append(f"Invalid rows skipped: {invalid} (listed in report.json).")
    return "\n".join(lines) + "\n"


def run_eval(config: EvalConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Evaluate every benchmark; write report.json, report.md and responses.jsonl; return the report."""
    out_dir = Path(config.output_dir)
    loaded = {
        name: load_examples(path, "mcq", config.preset, config.fields, limit=config.limit)
        for name, path in config.benchmarks.items()
    }
    if generator is None:
        generator = make_generator(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "model": config.model if config.model is not None else (config.endpoint_model or config.endpoint),
        "benchmarks": {},
    }
    with (out_dir / "responses.jsonl").open("w", encoding="utf-8") as responses_file:
        for name, result in loaded.items():
            items: list[tuple[int, MCQItem]] = [(row, ex) for row, ex in result.examples]  # type: ignore[misc]
            responses = generator.generate([build_messages(item) for _, item in items]) if items else []
            per_item, correct, unparseable = [], 0, 0
            for (row, item), response in zip(items, responses):
                extracted = extract_answer(response, item.options)
                hit = extracted == item.answer_idx
                correct += hit
                unparseable += extracted is None
                per_item.append({"row": row, "answer_idx": item.answer_idx, "extracted": extracted, "correct": hit})
                record = {"benchmark": name, "row": row, "answer_idx": item.answer_idx, "extracted": extracted}
                responses_file.write(json.dumps(record | {"response": response}, ensure_ascii=False) + "\n")
            n = len(items)
            report["benchmarks"][name] = {
                "path": result.path,
                "n": n,
                "correct": correct,
                "accuracy": correct / n if n else None,
                "unparseable": unparseable,
                "invalid_rows": [p.to_dict() for p in result.problems],
                "per_item": per_item,
            }
    scored = [r["accuracy"] for r in report["benchmarks"].values() if r["accuracy"] is not None]
    report["average_accuracy"] = sum(scored) / len(scored) if scored else None
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    return report
