"""Rollouts: the RL problems and their seeded order, prompt encoding, log-probs and values (sampling: `engines`).

Log-probabilities on GPU come from TRL's fused LM head (`add_fused_lm_head`): the head is applied in
tiles to response positions only, so no full-vocabulary fp32 logits are kept for a rollout. On the CPU
the model's own head projects the response positions (see `response_logprobs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medo1.data.sources import (
    DataError,
    VerifiableProblem,
    enforce_policy,
    load_from_config,
    write_rejects,
)
from medo1.data.tokenization import render_prompt
from medo1.models import fused_head_is_compact


@dataclass
class ProblemSet:
    prompts: list[list[dict[str, str]]]
    references: list[str]
    train: list[int]
    eval: list[int]


def load_problems(config, output_dir: Path, is_main: bool) -> tuple[ProblemSet, dict]:
    """Verifiable problems, validated like any dataset; the train/eval split depends only on the seed."""
    data = config.data
    loaded = load_from_config(data)
    enforce_policy(loaded.problems, data.on_invalid)
    problems = [ex for _, ex in loaded.examples if isinstance(ex, VerifiableProblem)]
    if not problems:
        raise DataError(f"{data.path}: no usable verifiable problems (format {data.format!r})")
    prompts = [
        ([{"role": "system", "content": data.system_prompt}] if data.system_prompt else [])
        + [{"role": "user", "content": p.question}]
        for p in problems
    ]
    order = torch.randperm(len(problems), generator=torch.Generator().manual_seed(config.train.seed)).tolist()
    n_eval = int(len(problems) * config.train.eval_fraction)
    report = {
        "path": data.path,
        "rows": loaded.rows,
        "valid": len(problems),
        "invalid": len(loaded.problems),
        "train": len(order) - n_eval,
        "eval": n_eval,
    }
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if loaded.problems:
            write_rejects(output_dir / "rejects.jsonl", loaded.problems, loaded.raw)
            report["rejects_file"] = str(output_dir / "rejects.jsonl")
        (output_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    return ProblemSet(prompts, [p.answer for p in problems], order[n_eval:], order[:n_eval]), report


def episode_indices(train: list[int], seed: int, start: int, count: int) -> list[int]:
    """Problems for global episodes [start, start + count): a fresh seeded shuffle each pass over the data."""
    out, cache = [], {}
    for episode in range(start, start + count):
        epoch, position = divmod(episode, len(train))
        if epoch not in cache:
            cache[epoch] = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(train[cache[epoch][position]])
    return out


def encode_prompts(tokenizer, prompts: list[list[dict[str, str]]], device) -> dict[str, torch.Tensor]:
    texts = [render_prompt(tokenizer, messages) for messages in prompts]
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous
    return {k: v.to(device) for k, v in batch.items()}


def pad_right_for_export(tokenizer) -> None:
    """Leave the tokenizer padding on the right, as users of the export expect. Setting `padding_side` is not
    enough: a fast tokenizer's backend keeps the padding of its last batch call (the rollouts pad prompts on the
    left), `save_pretrained` writes it into tokenizer.json, and `from_pretrained` reads it back as left padding."""
    tokenizer.padding_side = "right"
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and getattr(backend, "padding", None) is not None:
        backend.no_padding()


def full_sequence(
    prompt: dict[str, torch.Tensor], responses: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    attention = torch.cat([prompt["attention_mask"], mask], dim=1)
    return {
        "input_ids": torch.cat([prompt["input_ids"], responses], dim=1),
        "attention_mask": attention,
        "position_ids": (attention.cumsum(dim=1) - 1).clamp(min=0),
    }


def response_logprobs(
    model,
    sequence: dict[str, torch.Tensor],
    prompt_len: int,
    mask: torch.Tensor,
    temperature: float,
    compact: bool | None = None,
):
    """Per-token log-probs at the sampling temperature, and entropies, of the response (0 where `mask` is 0).

    Where TRL's fused LM head has Triton kernels (CUDA) it projects the response positions in tiles, with
    no full-vocabulary logits kept. Elsewhere (the CPU) it would project every position, prompt included,
    so the `compact` path projects the response positions only, through the model's own head.
    """
    if compact is None:
        compact = not fused_head_is_compact(sequence["input_ids"].device)
    if compact:
        # Hidden state t predicts token t + 1: positions prompt_len - 1 .. L - 2 predict the response.
        keep = sequence["input_ids"].size(1) - prompt_len + 1
        logits = model(**sequence, logits_to_keep=keep, use_cache=False).logits[:, :-1].float() / temperature
        log_softmax = torch.log_softmax(logits, dim=-1)
        response = sequence["input_ids"][:, prompt_len:]
        logprobs = log_softmax.gather(-1, response.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        off = mask == 0
        return logprobs.masked_fill(off, 0.0), entropy.masked_fill(off, 0.0)
    labels = sequence["input_ids"].clone()
    labels[:, :prompt_len] = -100
    labels[:, prompt_len:] = labels[:, prompt_len:].masked_fill(mask == 0, -100)
    out = model(**sequence, labels=labels, fused_lm_head=True)
    # Fused outputs are aligned with labels[:, 1:]: response token t sits at index prompt_len + t - 1.
    logprobs = out.log_probs[:, prompt_len - 1 :]
    entropy = out.entropy[:, prompt_len - 1 :] if out.entropy is not None else None
    return logprobs, entropy


class TokenValueModel(nn.Module):
    """A sequence-classification model read as a per-token value head: score(hidden state at every token)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids, attention_mask, position_ids):
        backbone = getattr(self.classifier, self.classifier.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.classifier.score(hidden).squeeze(-1)

    def save_pretrained(self, path, state_dict=None, **kwargs):
        if state_dict is not None:
            prefix = "classifier."
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        self.classifier.save_pretrained(path, state_dict=state_dict, **kwargs)


def response_values(value_model, sequence: dict[str, torch.Tensor], prompt_len: int) -> torch.Tensor:
    """V(s_t): the value read at the token just before each response token."""
    values = value_model(**sequence)
    return values[:, prompt_len - 1 : -1]
