"""Rewards for the RL stage: the published format rule plus a verifier model or a rule-based match.

Per response, as published for HuatuoGPT-o1:

1. Format (`medo1.data.final_response`, the parser the eval uses too): the text must contain `## Thinking` exactly
   once and `## Final Response\\n\\n` exactly once; otherwise it gets `reward_bad_format` (0.0) and is not
   scored further.
2. The answer is the text after `## Final Response`, stripped (an empty answer is still scored).
3. `VerifierReward`: a 2-class sequence classifier with its own tokenizer reads a prompt holding
   the answer and the reference; P("True") > threshold (0.4) gives `reward_correct` (1.0),
   otherwise `reward_wrong` (0.1).
   `AnswerMatchReward`: the same reward values from a match of one extracted final answer, for
   teams without a verifier checkpoint. `medo1.rl.judge.JudgeReward` (`reward.kind: judge`): the
   same values from a generative judge behind an OpenAI-compatible endpoint.

Every reward object is called as `reward(responses, references) -> RewardOutput`, so PPO, GRPO
and RLOO can use any; `trl_reward_funcs` adapts one to TRL's reward-function signature.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import torch

from medo1.config import ConfigError, check_model_reference
from medo1.data.final_response import parse_response
from medo1.errors import Medo1Error
from medo1.rl import answer_match
from medo1.rl.reward_config import (
    AnswerMatchRewardConfig,
    JudgeRewardConfig,
    RewardConfig,
    VerifierRewardConfig,
)
from medo1.rl.reward_output import RewardOutput, check_lengths

logger = logging.getLogger(__name__)


class RewardLoadError(Medo1Error, RuntimeError):
    """The reward model could not be set up; raised at start-up, never at the first scoring call."""


# --------------------------------------------------------------------------------------------
# Verifier


class VerifierReward:
    """Scores answers with a 2-class verifier model (the published RL reward)."""

    name = "verifier_reward"

    def __init__(self, config: VerifierRewardConfig, device: str | torch.device = "cpu"):
        from transformers import (
            AutoConfig,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        self.config = config
        self.device = torch.device(device)
        path = config.model
        tokenizer_path = config.tokenizer or path
        for what, where in (("model", path), ("tokenizer", tokenizer_path)):
            try:
                check_model_reference(where, f"verifier {what}")
            except ConfigError as exc:
                raise RewardLoadError(str(exc)) from None

        try:
            model_config = AutoConfig.from_pretrained(path)
        except Exception as exc:
            raise RewardLoadError(f"verifier model {path}: cannot read its config ({exc})") from exc
        if model_config.num_labels != 2:
            raise RewardLoadError(
                f"verifier model {path}: expected a 2-class sequence classifier (True/False), "
                f"but its config has num_labels={model_config.num_labels}"
            )
        architectures = getattr(model_config, "architectures", None) or []
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise RewardLoadError(
                f"verifier model {path}: checkpoint is a {', '.join(architectures)}, not a sequence "
                "classifier; its classification head would be random"
            )

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        except Exception as exc:
            raise RewardLoadError(f"verifier tokenizer {tokenizer_path}: cannot load ({exc})") from exc
        if tokenizer.eos_token is None:
            raise RewardLoadError(f"verifier tokenizer {tokenizer_path}: has no eos token to end the prompt with")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=self._dtype(config.dtype), output_loading_info=True
            )
        except Exception as exc:
            raise RewardLoadError(f"verifier model {path}: cannot load weights ({exc})") from exc
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise RewardLoadError(
                f"verifier model {path}: weights missing from the checkpoint ({', '.join(sorted(missing)[:5])}); "
                "a freshly initialised head would give random rewards"
            )
        self.model = model.to(self.device).eval()

        self.true_index = self._true_index(model.config.label2id)
        # The classifier pools the rightmost token that is not the pad id, so the pad id must not be
        # the eos that ends every prompt. A model without a pad id is scored one prompt at a time.
        eos_id = tokenizer.eos_token_id
        self._one_at_a_time = False
        if self.model.config.pad_token_id is None:
            if tokenizer.pad_token_id != eos_id:
                self.model.config.pad_token_id = tokenizer.pad_token_id
            else:
                self._one_at_a_time = True
                logger.warning(
                    "verifier %s has no pad token id and its tokenizer pads with eos: scoring one prompt at a time",
                    path,
                )
        logger.info("verifier %s loaded on %s (True = class %d)", path, self.device, self.true_index)

    def _dtype(self, name: str) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]

    @staticmethod
    def _true_index(label2id: dict[str, int] | None) -> int:
        for label, index in (label2id or {}).items():
            if str(label).strip().lower() == "true":
                return int(index)
        return 1

    def format_prompt(self, answer: str, reference: str) -> str:
        """The exact text the verifier reads, its eos token included."""
        return self.config.prompt_template.format(answer=answer, reference=reference, eos=self.tokenizer.eos_token)

    def _tokenize(self, text: str) -> list[int]:
        # As published: no special tokens added (a Llama-3 tokenizer would prepend <|begin_of_text|>).
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, answer: str, reference: str) -> list[int]:
        """Token ids of the prompt, at most max_length long and always ending with eos.

        An overlong prompt is made to fit by cutting the end of the answer, so the tags, the
        reference and the closing question are kept.
        """
        limit = self.config.max_length
        ids = self._tokenize(self.format_prompt(answer, reference))
        if len(ids) > limit:
            answer_ids = self._tokenize(answer)
            keep = max(0, len(answer_ids) - (len(ids) - limit) - 4)
            answer = self.tokenizer.decode(answer_ids[:keep], skip_special_tokens=True)
            ids = self._tokenize(self.format_prompt(answer, reference))
        if len(ids) > limit:  # the reference alone is too long: keep the head, end with eos
            ids = ids[: limit - 1] + [self.tokenizer.eos_token_id]
        return ids

    @torch.no_grad()
    def probabilities(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """P("True") for each (answer, reference) pair, in batches of `batch_size`."""
        check_lengths(answers, references)
        encoded = [self.encode(a, r) for a, r in zip(answers, references)]
        step = 1 if self._one_at_a_time else self.config.batch_size
        pad_id = self.model.config.pad_token_id
        probs: list[float] = []
        for start in range(0, len(encoded), step):
            chunk = encoded[start : start + step]
            batch = self.tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt")
            input_ids = batch["input_ids"]
            mask = batch["attention_mask"]
            if pad_id is not None:
                # Pad with the id the model itself skips when it pools the last token.
                input_ids = input_ids.masked_fill(mask == 0, pad_id)
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
            probs.extend(logits.float().softmax(dim=-1)[:, self.true_index].tolist())
        return probs

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        check_lengths(responses, references)
        parsed = [parse_response(text) for text in responses]
        todo = [i for i, p in enumerate(parsed) if p.format_ok]
        probs = self.probabilities([parsed[i].answer or "" for i in todo], [references[i] for i in todo])
        scores: list[float | None] = [None] * len(responses)
        for i, p in zip(todo, probs):
            scores[i] = p
        cfg = self.config
        correct = [s is not None and s > cfg.threshold for s in scores]
        rewards = [
            cfg.reward_bad_format if not p.format_ok else cfg.reward_correct if ok else cfg.reward_wrong
            for p, ok in zip(parsed, correct)
        ]
        return RewardOutput(rewards=rewards, format_ok=[p.format_ok for p in parsed], correct=correct, scores=scores)


# --------------------------------------------------------------------------------------------
# Rule-based match

_ARTICLES = {"a", "an", "the"}
_MCQ_LETTERS = "ABCDE"


def _strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)


def normalize_answer(text: str, drop_articles: bool = True) -> str:
    """Lowercase, NFKC, punctuation to spaces, articles a/an/the dropped, whitespace collapsed."""
    text = _strip_punctuation(unicodedata.normalize("NFKC", text).lower())
    words = text.split()
    if drop_articles:
        words = [w for w in words if w not in _ARTICLES]
    return " ".join(words)


def _mcq_letter(reference: str) -> str | None:
    """The option letter when the reference is a bare A-E ("B", "b", "(B)", "B."), else None."""
    letter = normalize_answer(reference, drop_articles=False)
    return letter.upper() if len(letter) == 1 and letter.upper() in _MCQ_LETTERS else None


# An option letter standing alone: not part of a word ("B12", "Bacterial") or an apostrophe form.
_LONE = r"(?<![\w'’])({L})(?![\w'’])"
# Between two option letters of a list: commas, slashes, "or", "and", "nor", brackets, "option".
_LIST_GAP = r"[\s,;/&()\[\]]*(?:(?:or|and|nor|then|vs\.?|versus|option|choice)s?[\s,;/&()\[\]]*)*"
_NAMED_OPTION = [
    # "(B)", "[B]", "(b)" anywhere.
    re.compile(r"[(\[]\s*([A-Ea-e])\s*[)\]]"),
    # "B) Folate deficiency" anywhere.
    re.compile(r"(?<![\w(\[])([A-E])\)"),
    # "The answer is B", "Answer: (C)", "the correct answer is option D", "options B", "choice E".
    re.compile(
        r"(?i:answer|option|choice)s?\s*(?:(?i:is|are|was|would be)\s*|:\s*)?(?:(?i:option|choice)s?\s*)?"
        r"[(\[]?([A-E])(?![\w'’])"
    ),
    # A line that starts with an option: "B. Folate", "C: Iron".
    re.compile(r"(?m)^[\s*_>-]*([A-E])\s*[.:]"),
]
_LEADING_OPTION = re.compile(r"[(\[]?\s*([A-Ea-e])\s*(?:[)\].:,;/]|$)")
# "B aspirin ...": an uppercase letter then a word; not "A", which reads as an article.
_LEADING_WORD_OPTION = re.compile(r"([B-E])\s")
_LETTERS_ONLY = re.compile(r"[\s(\[]*[A-Ea-e](?:" + _LIST_GAP + r"[A-Ea-e])*[\s)\].]*", flags=re.IGNORECASE)
_LETTER_RUN = re.compile(_LONE.format(L="[A-E]") + "(?=" + _LIST_GAP + _LONE.format(L="[A-E]") + ")")
_RUN_TAIL = re.compile(_LONE.format(L="[A-E]") + _LIST_GAP + r"$")


def named_options(answer: str) -> set[str]:
    """Every option letter (A-E) the answer names as its choice.

    Named: a leading option ("B", "b.", "(B) Aspirin", "B: Aspirin", "B aspirin"); a bracketed letter
    ("(C)", "[D]"); "C) Iron"; a statement ("The answer is B", "Answer: (C)", "option D"); a line
    starting "B." or "B:"; and every letter of a list of letters ("B or C", "A, B, C", "B/C", "options B
    and D", "b, c"). A letter inside prose ("Vitamin B deficiency", "B12", "A patient") is not named.
    """
    text = unicodedata.normalize("NFKC", answer).strip()
    if _LETTERS_ONLY.fullmatch(text):  # nothing but letters and separators: "b, c, d"
        return {ch.upper() for ch in re.findall(r"(?<![A-Za-z])[A-Ea-e](?![A-Za-z])", text)}
    named = {m.upper() for pattern in _NAMED_OPTION for m in pattern.findall(text)}
    for pattern in (_LEADING_OPTION, _LEADING_WORD_OPTION):
        if match := pattern.match(text):
            named.add(match.group(1).upper())
    # Each letter followed by a list gap and another letter, and the last letter of each such run.
    for match in _LETTER_RUN.finditer(text):
        named.add(match.group(1))
        tail = _LONE.format(L="[A-E]")
        if follower := re.match(_LIST_GAP + tail, text[match.end() :]):
            named.add(follower.group(1))
    return named


class AnswerMatchReward:
    """Rule-based reward with the verifier's reward values, for teams without a verifier model.

    Only one answer can score: a response that names several options or gives several different
    answers is wrong, even if one of them is the reference. A response with a bad format gets
    `reward_bad_format`; otherwise:

    * A multiple-choice reference, a single letter A-E (optionally bracketed or with a full stop),
      is judged by the option letters the answer names (`named_options`): correct when that is
      exactly the reference's letter. "vitamin B" names no option; "B or C" names two.
    * Any other reference: `medo1.rl.answer_match`: the reference must be the one answer the response states
      (its stated answer, "The answer is X", or else its first sentence), whole words, not negated ("Not X",
      "X is contraindicated", "Xではなく"), not among other candidates ("X and Y", "X, Y", "X/Y", lists), not
      hedged ("possibly X", "X or Y") and not followed by bare alternatives in other sentences; in the
      languages the translation stage produces too.

    An empty reference never matches. The honest and gaming answers this is tested on are in
    tests/test_answer_match.py and tests/test_reward_hacking.py; a verifier remains the stronger judge of
    free-text answers.
    """

    name = "answer_match_reward"

    def __init__(self, config: AnswerMatchRewardConfig | None = None):
        self.config = config or AnswerMatchRewardConfig()

    @staticmethod
    def matches(answer: str, reference: str) -> bool:
        letter = _mcq_letter(reference)
        if letter is not None:
            return named_options(answer) == {letter}
        return answer_match.matches(answer, reference)

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        check_lengths(responses, references)
        cfg = self.config
        parsed = [parse_response(text) for text in responses]
        correct = [p.format_ok and self.matches(p.answer or "", ref) for p, ref in zip(parsed, references)]
        rewards = [
            cfg.reward_bad_format if not p.format_ok else cfg.reward_correct if ok else cfg.reward_wrong
            for p, ok in zip(parsed, correct)
        ]
        return RewardOutput(
            rewards=rewards, format_ok=[p.format_ok for p in parsed], correct=correct, scores=[None] * len(parsed)
        )


# --------------------------------------------------------------------------------------------
# Factory and TRL adapter

Reward = Callable[[Sequence[str], Sequence[str]], RewardOutput]


def build_reward(
    config: VerifierRewardConfig | AnswerMatchRewardConfig | JudgeRewardConfig, device: str | torch.device = "cpu"
) -> Reward:
    if isinstance(config, VerifierRewardConfig):
        return VerifierReward(config, device=device)
    if isinstance(config, AnswerMatchRewardConfig):
        return AnswerMatchReward(config)
    if isinstance(config, JudgeRewardConfig):
        from medo1.rl.judge import JudgeReward

        return JudgeReward(config)
    raise TypeError(f"unknown reward config {type(config).__name__}")


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content or ""
    if isinstance(completion, dict):
        return completion.get("content", "") or ""
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def trl_reward_funcs(reward: Reward) -> list[Callable[..., list[float]]]:
    """Reward functions for TRL's GRPOTrainer (the dataset needs a `reference` column).

    The first returns the reward; the others return the format-ok, correct and (judge) failed flags
    as 0/1 so that, weighted 0, TRL logs their rates. All share one scoring per batch. A completion
    without a reward is None in all four (so a skipped judge verdict is not in `reward_failed`'s rate
    under TRL: the judge's own warnings count those).
    """
    last: dict[str, Any] = {"key": None, "output": None}

    def score(completions: list[Any], reference: list[str]) -> RewardOutput:
        texts = [_completion_text(c) for c in completions]
        key = (tuple(texts), tuple(reference))
        if last["key"] != key:
            last["key"], last["output"] = key, reward(texts, list(reference))
        return last["output"]

    def column(values: list, output: RewardOutput) -> list[float | None]:
        # A completion without a reward is None in every column: TRL then counts it unscorable (advantage 0, left
        # out of the group baseline and of the logged means; grpo_trainer.py / rloo_trainer.py).
        return [None if r is None else float(v) for r, v in zip(output.rewards, values)]

    def reward_func(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.rewards, output)

    def format_ok(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.format_ok, output)

    def correct(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.correct, output)

    def failed(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list:
        output = score(completions, reference)
        return column(output.failed or [False] * len(output), output)

    funcs = [reward_func, format_ok, correct, failed]
    for func, name in zip(funcs, (reward.name, "format_ok", "verifier_true", "reward_failed")):
        func.__name__ = func.__qualname__ = name
    return funcs


__all__ = [
    "AnswerMatchReward",
    "AnswerMatchRewardConfig",
    "JudgeRewardConfig",
    "RewardConfig",
    "RewardLoadError",
    "RewardOutput",
    "VerifierReward",
    "VerifierRewardConfig",
    "build_reward",
    "normalize_answer",
    "trl_reward_funcs",
]
