"""`medo1 data validate`: rows, valid, invalid (with row and field) and token-length statistics."""

from __future__ import annotations

from typing import Any

from medo1.data import ChatExample, LoadResult, MCQItem, VerifiableProblem
from medo1.tokenize import encode_sft, length_stats, render_prompt


def _prompt_of(example: VerifiableProblem | MCQItem) -> list[dict[str, str]]:
    text = example.question
    if isinstance(example, MCQItem):
        text += "\n" + "\n".join(f"{k}. {v}" for k, v in example.options.items())
    return [{"role": "user", "content": text}]


def token_lengths(loaded: LoadResult, tokenizer) -> list[int]:
    """Full training sequence for chat formats; the prompt for RL problems and MCQ items."""
    chat = [(row, ex) for row, ex in loaded.examples if isinstance(ex, ChatExample)]
    if chat:
        return encode_sft(tokenizer, chat, max_length=10**9).lengths
    prompts = [render_prompt(tokenizer, _prompt_of(ex)) for _, ex in loaded.examples]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []


def validation_report(loaded: LoadResult, tokenizer=None, max_length: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "path": loaded.path,
        "format": loaded.format,
        "rows": loaded.rows,
        "valid": len(loaded.examples),
        "invalid": len(loaded.problems),
        "problems": [p.to_dict() for p in loaded.problems],
    }
    if tokenizer is not None:
        report["tokens"] = length_stats(token_lengths(loaded, tokenizer), max_length)
    return report
