"""`medo1 data validate`: rows, valid, invalid (with row and field), duplicates and token-length statistics."""

from __future__ import annotations

from typing import Any

from medo1.data.sources import ChatExample, DataConfig, LoadResult, MCQItem, VerifiableProblem
from medo1.data.tokenization import cap_text, encode_sft, length_stats, longest_token_chars, render_prompt

DEFAULT_MAX_LENGTH = DataConfig.model_fields["max_length"].default
SHOWN_DUPLICATES = 20


def _prompt_of(example: VerifiableProblem | MCQItem) -> list[dict[str, str]]:
    text = example.question
    if isinstance(example, MCQItem):
        text += "\n" + "\n".join(f"{k}. {v}" for k, v in example.options.items())
    return [{"role": "user", "content": text}]


def token_lengths(loaded: LoadResult, tokenizer, max_length: int) -> list[int]:
    """Full training sequence for chat formats; the prompt for RL problems and MCQ items. A length over
    `max_length` is exact up to the cap of `cap_text` (a 50 MB row is not tokenized whole)."""
    chat = [(row, ex) for row, ex in loaded.examples if isinstance(ex, ChatExample)]
    if chat:
        return encode_sft(tokenizer, chat, max_length=max_length).lengths
    token_chars = longest_token_chars(tokenizer)
    prompts = [cap_text(render_prompt(tokenizer, _prompt_of(ex)), max_length, token_chars) for _, ex in loaded.examples]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []


def validation_report(loaded: LoadResult, tokenizer=None, max_length: int | None = None) -> dict[str, Any]:
    """Counts and problems; token statistics (with `max_length`, default the SFT default) given a tokenizer."""
    report: dict[str, Any] = {
        "path": loaded.path,
        "format": loaded.format,
        "rows": loaded.rows,
        "valid": len(loaded.examples),
        "invalid": len(loaded.problems),
        "duplicates": len(loaded.duplicates),
        "duplicate_rows": [{"row": row, "duplicate_of": first} for row, first in loaded.duplicates[:SHOWN_DUPLICATES]],
        "problems": [p.to_dict() for p in loaded.problems],
    }
    if tokenizer is not None:
        max_length = max_length or DEFAULT_MAX_LENGTH
        report["tokens"] = length_stats(token_lengths(loaded, tokenizer, max_length), max_length)
    return report
