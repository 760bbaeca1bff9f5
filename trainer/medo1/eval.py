"""MCQ evaluation: prompt, generate (local HF model or OpenAI-compatible endpoint), extract, score.

One answer is extracted per response (the published scorer keeps the better of the first and
last extracted answer, which is optimistic; we do not). Invalid benchmark rows are reported,
not fatal: they are counted in the report and the first few are logged; a benchmark without a valid
row stops the run before anything is generated. An endpoint is asked through `medo1.chat_client`
(retries, timeouts, progress). Outputs under `output_dir`: report.json, report.md, responses.jsonl,
all three written aside and renamed into place at the end, so a failed run leaves the previous ones whole.

Besides accuracy, each model's answers are scored the way the RL stage scores them: the `## Thinking` /
`## Final Response` format rule and the reward (`medo1.rl.rewards`, against the correct option letter), with the
mean response length in tokens. `compare_with` asks other models (the base model, the SFT export) the same questions,
and report.md puts them side by side, each accuracy with its chance level and 95% Wilson interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, model_validator

from medo1.chat_client import ChatClientConfig, ChatError, Messages, RetryOptions, run_chat
from medo1.config import StageError
from medo1.data import LoadResult, MCQItem, load_examples
from medo1.final_response import answer_text, parse_response
from medo1.rl.reward_config import AnswerMatchRewardConfig, VerifierRewardConfig

INSTRUCTION = "Answer with the letter of the correct option."
INVALID_ROWS_SHOWN = 5
WILSON_Z = 1.96  # two-sided 95%

log = logging.getLogger(__name__)


class EvalError(StageError):
    """An evaluation that cannot go on (the endpoint keeps failing, a benchmark without a valid row)."""


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
    """Benchmark name -> path of an MCQ JSON / JSONL file."""
    preset: str | None = None
    """Field-name preset of the MCQ files (see `medo1 data validate --format mcq`)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field name -> column, overriding the preset's (question, options, answer)."""
    max_new_tokens: int = Field(2048, ge=1)
    """Most tokens generated per answer."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature; 0 is greedy."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Local models: transformers' repetition penalty (1 is none; above 1 discourages tokens already in the
    prompt or answer). Small models fall into loops under greedy decoding; 1.1-1.2 breaks most of them."""
    batch_size: int = Field(8, ge=1)
    """Questions generated together with a local model."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N rows of each benchmark (counted from `start_row`)."""
    start_row: int = Field(0, ge=0)
    """First row scored (0-based), e.g. past the demo rows the SFT and RL recipes train on."""
    label: str = Field("model", min_length=1)
    """The name of `model` (or the endpoint) in the comparison table."""
    compare_with: dict[str, str] = Field(default_factory=dict)
    """Label -> local model directory (or hub id) asked the same questions with the same settings, one after
    another, e.g. {base: the pretrained model, sft: the SFT export}; report.md compares them with `model`."""
    reward: AnswerMatchRewardConfig | VerifierRewardConfig = Field(
        default_factory=AnswerMatchRewardConfig, discriminator="kind"
    )
    """The RL reward each response gets against the correct option letter (`kind: answer_match`, or
    `kind: verifier` with a verifier model); its mean is reported per model."""
    output_dir: str = Field("runs/eval", min_length=1)
    """Where responses.jsonl, report.json and report.md go."""
    concurrency: int = Field(8, ge=1)
    """Endpoint requests in flight at once."""
    timeout_s: float = Field(600.0, gt=0)
    """Seconds one endpoint request may take (a long reasoning answer from a busy server) before it is retried."""

    @model_validator(mode="after")
    def _one_backend(self) -> EvalConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of `model` (local model dir) or `endpoint` (OpenAI-compatible URL)")
        if self.label in self.compare_with:
            raise ValueError(f"compare_with: label {self.label!r} is `model`'s own label; pick another")
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

    Order: the answer text (`medo1.final_response.answer_text`: the RL reward's final response of a well-formed
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


class Generator(Protocol):
    def generate(self, prompts: list[Messages]) -> list[str]: ...


class HFGenerator:
    """Local transformers model: chat template, left padding, batches, greedy at temperature 0."""

    def __init__(self, model_path: str, *, max_new_tokens: int = 2048, temperature: float = 0.0, batch_size: int = 8,
                 repetition_penalty: float = 1.0):
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
        config.repetition_penalty = repetition_penalty
        if temperature > 0:
            config.do_sample = True
            config.temperature = temperature
        else:
            config.do_sample = False
        self.generation_config = config
        self.batch_size = batch_size

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

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
    """An OpenAI-compatible endpoint, asked through `medo1.chat_client` (retries, timeouts, progress)."""

    def __init__(self, client_config: ChatClientConfig, *, max_new_tokens: int = 2048, temperature: float = 0.0):
        self.client_config = client_config
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def generate(self, prompts: list[Messages]) -> list[str]:
        try:
            answers = run_chat(
                self.client_config, prompts, max_tokens=self.max_new_tokens, temperature=self.temperature
            )
        except ChatError as exc:
            raise EvalError(str(exc)) from None
        return [answer.text for answer in answers]


def make_generator(config: EvalConfig, model: str | None = None) -> Generator:
    """The generator for `config`'s backend; `model` asks that local model instead (a `compare_with` entry)."""
    if model is not None:
        return HFGenerator(
            model, max_new_tokens=config.max_new_tokens, temperature=config.temperature, batch_size=config.batch_size,
            repetition_penalty=config.repetition_penalty,
        )
    if config.endpoint is not None:
        client_config = config.chat_client_config(
            config.endpoint, config.endpoint_model, config.api_key_env, config.concurrency
        )
        return EndpointGenerator(client_config, max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    assert config.model is not None
    return HFGenerator(
        config.model,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        batch_size=config.batch_size,
        repetition_penalty=config.repetition_penalty,
    )


# --------------------------------------------------------------------------- run


def wilson_interval(correct: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927): sound at small n and at 0 or n successes."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {report['model']}",
        "",
        "| benchmark | n | accuracy % | unparseable |",
        "|---|---:|---:|---:|",
    ]
    for name, result in report["benchmarks"].items():
        lines.append(f"| {name} | {result['n']} | {_pct(result['accuracy'])} | {result['unparseable']} |")
    lines += ["", f"Average accuracy: {_pct(report['average_accuracy'])}%"]
    invalid = sum(len(r["invalid_rows"]) for r in report["benchmarks"].values())
    if invalid:
        lines.append(f"Invalid rows skipped: {invalid} (listed in report.json).")
    for name in report["benchmarks"]:
        lines += [
            "",
            f"## {name}: the same questions to each model",
            "",
            f"| model | format ok | mean response tokens | MCQ accuracy % (95% CI) | chance % | mean {report['reward']} |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, benchmarks in report["comparison"].items():
            r = benchmarks[name]
            tokens = "n/a" if r["mean_response_tokens"] is None else f"{r['mean_response_tokens']:.0f}"
            low, high = r["accuracy_ci95"]
            lines.append(
                f"| {label} | {r['format_ok']}/{r['n']} | {tokens} | {_pct(r['accuracy'])} ({_pct(low)}-{_pct(high)}) "
                f"| {_pct(r['chance'])} | {r['reward_mean']:.3f} |"
            )
    lines += [
        "",
        "Format ok: `## Thinking` and `## Final Response` each exactly once, the RL reward's format rule. "
        "Chance: the accuracy of guessing one option at random. A 95% interval that contains chance means the "
        "model's answers are not distinguishable from guessing on these questions; a small model (the 135M demo "
        "model) is expected there: its training teaches the answer format and style, not medical knowledge.",
    ]
    return "\n".join(lines) + "\n"


def _load_benchmark(config: EvalConfig, path: str) -> LoadResult:
    """The benchmark's rows from `start_row` on, at most `limit` of them."""
    end = None if config.limit is None else config.start_row + config.limit
    result = load_examples(path, "mcq", config.preset, config.fields, limit=end)
    if config.start_row == 0:
        return result
    if result.rows <= config.start_row:
        raise EvalError(f"benchmark {path}: start_row {config.start_row} but it has {result.rows} row(s)")
    return replace(
        result,
        rows=result.rows - config.start_row,
        examples=[(row, ex) for row, ex in result.examples if row >= config.start_row],
        problems=[p for p in result.problems if p.row >= config.start_row],
    )


def _check_rows(name: str, result: LoadResult) -> None:
    """Log a benchmark's invalid rows (how many, the first few); EvalError when none is valid."""
    if not result.problems and result.examples:
        return
    if not result.examples:
        first = f"; first: {result.problems[0]}" if result.problems else ""
        raise EvalError(
            f"benchmark {name!r} ({result.path}): none of its {result.rows} row(s) is a valid MCQ item{first}"
        )
    log.warning(
        "benchmark %r (%s): %d of %d row(s) invalid, skipped (all listed in report.json)",
        name, result.path, len(result.problems), result.rows,
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


def _score(
    generator: Generator, reward: Any, name: str, loaded: LoadResult, label: str
) -> tuple[dict[str, Any], list[str]]:
    """One model on one benchmark: (result, responses.jsonl lines)."""
    items: list[tuple[int, MCQItem]] = [(row, ex) for row, ex in loaded.examples]  # type: ignore[misc]
    responses = generator.generate([build_messages(item) for _, item in items])
    rewards = reward(responses, [item.answer_idx for _, item in items])
    count_tokens = getattr(generator, "count_tokens", None)
    per_item, lines, lengths = [], [], []
    for (row, item), response, value in zip(items, responses, rewards.rewards):
        extracted = extract_answer(response, item.options)
        format_ok = parse_response(response).format_ok
        record = {"row": row, "answer_idx": item.answer_idx, "extracted": extracted,
                  "correct": extracted == item.answer_idx, "format_ok": format_ok, "reward": value}
        if count_tokens is not None:
            lengths.append(count_tokens(response))
        per_item.append(record)
        line = {"model": label, "benchmark": name, **record, "response": response}
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    n = len(items)
    correct = sum(p["correct"] for p in per_item)
    result = {
        "path": loaded.path,
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "chance": sum(1 / len(item.options) for _, item in items) / n,
        "unparseable": sum(p["extracted"] is None for p in per_item),
        "format_ok": sum(p["format_ok"] for p in per_item),
        "mean_response_tokens": sum(lengths) / n if lengths else None,
        "reward_mean": sum(rewards.rewards) / n,
        "invalid_rows": [p.to_dict() for p in loaded.problems],
        "per_item": per_item,
    }
    return result, lines


def run_eval(config: EvalConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Evaluate every benchmark with `model` and each `compare_with` model; write report.json, report.md and
    responses.jsonl; return the report (`benchmarks`: `model`'s results; `comparison`: every model's, no per-item)."""
    if not config.benchmarks:
        raise EvalError("no benchmarks to score: set benchmarks.NAME=PATH (medo1 eval --benchmark NAME=PATH)")
    out_dir = Path(config.output_dir)
    loaded = {name: _load_benchmark(config, path) for name, path in config.benchmarks.items()}
    for name, result in loaded.items():
        _check_rows(name, result)
    from medo1.rl.rewards import build_reward  # torch: only once the benchmarks are known to be usable

    reward = build_reward(config.reward)
    report: dict[str, Any] = {
        "model": config.model if config.model is not None else (config.endpoint_model or config.endpoint),
        "reward": reward.name,
        "benchmarks": {},
        "comparison": {},
    }
    response_lines: list[str] = []
    for label, model in [*config.compare_with.items(), (config.label, None)]:
        log.info("eval: %s (%s)", label, model or report["model"])
        if model is not None:
            model_generator = make_generator(config, model)
        else:
            model_generator = generator if generator is not None else make_generator(config)
        results = {}
        for name, result in loaded.items():
            results[name], lines = _score(model_generator, reward, name, result, label)
            response_lines += lines
        del model_generator  # one model in memory at a time
        report["comparison"][label] = {
            name: {k: v for k, v in r.items() if k not in ("per_item", "invalid_rows")} for name, r in results.items()
        }
        if model is None:
            report["benchmarks"] = results
    scored = [r["accuracy"] for r in report["benchmarks"].values()]
    report["average_accuracy"] = sum(scored) / len(scored)
    _replace_outputs(
        out_dir,
        {
            "responses.jsonl": "".join(response_lines),
            "report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
            "report.md": _markdown(report),
        },
    )
    return report
