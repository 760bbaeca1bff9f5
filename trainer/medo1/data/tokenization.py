"""SFT tokenization: chat-template prompt, supervised completion, loss mask, length limits.

The prompt is the model's own chat template applied to the prompt messages with the assistant
header (`add_generation_prompt=True`), exactly what inference will feed the model. The completion
is the assistant text followed by the template's end-of-turn token(s); only those tokens carry
labels. We build sequences ourselves rather than let TRL render whole conversations because some
templates (Qwen3's, for one) render a final assistant turn differently from a generation prompt,
which would train on a prefix the model never sees at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medo1.data.sources import ChatExample, Problem

IGNORE_INDEX = -100
_PROBE = "\x00medo1-probe\x00"


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids the chat template puts right after an assistant message (e.g. `<|im_end|>`)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}], tokenize=False
    )
    suffix = rendered[rendered.rindex(_PROBE) + len(_PROBE) :].strip()
    if not suffix:
        if tokenizer.eos_token is None:
            raise ValueError("the chat template ends assistant turns with nothing and the tokenizer has no eos token")
        suffix = tokenizer.eos_token
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    # Keep through the last special token: trailing plain text (newlines) is formatting, not a stop signal.
    last_special = max((i for i, tok in enumerate(ids) if tok in special), default=len(ids) - 1)
    return ids[: last_special + 1]


def longest_token_chars(tokenizer) -> int:
    """Characters in the tokenizer's longest vocabulary entry: no token covers more text than that."""
    return max(len(token) for token in tokenizer.get_vocab())


def cap_text(text: str, max_tokens: int, token_chars: int) -> str:
    """`text`, or a prefix of it still certain to tokenize to more than `max_tokens` tokens.

    Every token covers at most `token_chars` characters (byte-level BPE and SentencePiece keep every
    character), so (max_tokens + 1) * token_chars characters make at least max_tokens + 1 tokens.
    Tokenizing the prefix instead of the whole bounds the time and memory one huge row costs, and
    its row still counts as over-long.
    """
    budget = (max_tokens + 1) * token_chars
    return text if len(text) <= budget else text[:budget]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class EncodedSFT:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    """Full (untruncated) length of every valid example, dropped ones included; for a text too long to be
    worth tokenizing whole (`cap_text`), the length of its capped prefix, still over `max_length`."""
    dropped: list[Problem] = field(default_factory=list)
    truncated: int = 0


def encode_sft(
    tokenizer,
    examples: Sequence[tuple[int, ChatExample]],
    max_length: int,
    overlong: str = "drop",
    source: str = "",
) -> EncodedSFT:
    """Tokenize prompt + completion + end-of-turn; labels are -100 on the prompt.

    Over-long rows are dropped (and reported; `overlong="fail"` reports them the same way, for the caller to stop
    on) or cut to `max_length`. A cut row keeps no end-of-turn label, so the model is never taught to stop mid-answer.
    """
    eot = end_of_turn_ids(tokenizer)
    token_chars = longest_token_chars(tokenizer)
    prompts = [cap_text(render_prompt(tokenizer, ex.messages), max_length, token_chars) for _, ex in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    completions = [cap_text(ex.completion, max_length, token_chars) for _, ex in examples]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
    out = EncodedSFT()
    for (row, _), p_ids, c_ids in zip(examples, prompt_ids, completion_ids):
        ids = p_ids + c_ids + eot
        labels = [IGNORE_INDEX] * len(p_ids) + c_ids + eot
        out.lengths.append(len(ids))
        if len(ids) > max_length:
            if overlong != "truncate" or len(p_ids) >= max_length:
                detail = f" (the prompt alone is {len(p_ids)})" if len(p_ids) >= max_length else ""
                out.dropped.append(
                    Problem(source, row, None, f"too long: {len(ids)} tokens{detail} > max_length {max_length}")
                )
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            out.truncated += 1
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.rows.append(row)
    return out


def length_stats(lengths: Sequence[int], max_length: int | None = None) -> dict[str, float | int]:
    if not lengths:
        return {"count": 0}
    arr = np.asarray(lengths)
    stats: dict[str, float | int] = {
        "count": int(arr.size),
        "mean": round(float(arr.mean()), 1),
        "p50": round(float(np.percentile(arr, 50))),
        "p95": round(float(np.percentile(arr, 95))),
        "max": int(arr.max()),
        "total_tokens": int(arr.sum()),
    }
    if max_length is not None:
        stats["max_length"] = max_length
        stats["over_max_length"] = int((arr > max_length).sum())
    return stats
