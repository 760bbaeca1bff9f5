"""Rewards for the RL stage: the published format rule plus a verifier model or a rule-based match.

Per response, as published for HuatuoGPT-o1:

1. Format: the text must contain `## Thinking` exactly once and `## Final Response\\n\\n` exactly
   once; otherwise it gets `reward_bad_format` (0.0) and is not scored further.
2. The answer is the text after `## Final Response`, stripped (an empty answer is still scored).
3. `VerifierReward`: a 2-class sequence classifier with its own tokenizer reads a prompt holding
   the answer and the reference; P("True") > threshold (0.4) gives `reward_correct` (1.0),
   otherwise `reward_wrong` (0.1).
   `AnswerMatchReward`: the same reward values from a normalised string match, for teams
   without a verifier checkpoint.

Both reward objects are called as `reward(responses, references) -> RewardOutput`, so PPO and
GRPO can use either; `trl_reward_funcs` adapts one to TRL's reward-function signature.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from medo1.config import Section
from medo1.data import FINAL_RESPONSE_HEADER, THINKING_HEADER

logger = logging.getLogger(__name__)

FINAL_RESPONSE_MARKER = FINAL_RESPONSE_HEADER + "\n\n"

DEFAULT_VERIFIER_PROMPT = (
    "You are checking a medical answer against a reference answer.\n\n"
    "<Model Response>\n{response}\n</Model Response>\n\n"
    "<Reference Answer>\n{reference}\n</Reference Answer>\n\n"
    "Is the model response correct, and does it agree with the reference answer? "
    "Answer with True or False."
)


# --------------------------------------------------------------------------------------------
# Format rule


@dataclass(frozen=True)
class ParsedResponse:
    format_ok: bool
    answer: str | None


def parse_reasoning(text: str) -> ParsedResponse:
    """Apply the published format rule and pull out the final answer.

    Well formed means `## Thinking` occurs exactly once and `## Final Response\\n\\n` occurs
    exactly once (plain substring counts). The answer is everything after `## Final Response`,
    with surrounding whitespace stripped; it may be empty.
    """
    if text.count(THINKING_HEADER) != 1 or text.count(FINAL_RESPONSE_MARKER) != 1:
        return ParsedResponse(format_ok=False, answer=None)
    # `## Final Response` may also occur without the blank line after it (e.g. "## Final Responses"
    # or "## Final Response:"); the answer starts after the one occurrence that has it.
    answer = text.split(FINAL_RESPONSE_MARKER, 1)[1].strip()
    return ParsedResponse(format_ok=True, answer=answer)


@dataclass
class RewardOutput:
    rewards: list[float]
    format_ok: list[bool]
    correct: list[bool]
    scores: list[float | None] = field(default_factory=list)
    """Verifier P("True") per response; None where the model was not asked (bad format, or a rule)."""

    def __len__(self) -> int:
        return len(self.rewards)


class RewardLoadError(RuntimeError):
    """The reward model could not be set up; raised at start-up, never at the first scoring call."""


# --------------------------------------------------------------------------------------------
# Configs


class _RewardValues(Section):
    reward_correct: float = 1.0
    reward_wrong: float = 0.1
    reward_bad_format: float = 0.0


class VerifierRewardConfig(_RewardValues):
    kind: Literal["verifier"] = "verifier"
    model: str
    """Directory (or hub id) of a 2-class sequence classifier, e.g. medical_o1_verifier_3B."""
    tokenizer: str | None = None
    """The verifier's own tokenizer; default: the `model` path."""
    threshold: float = 0.4
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(2048, ge=16)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 on a CUDA device, float32 elsewhere."""
    prompt_template: str = DEFAULT_VERIFIER_PROMPT
    """Must hold `{response}` and `{reference}`; the verifier's eos token is appended after formatting."""


class AnswerMatchRewardConfig(_RewardValues):
    kind: Literal["answer_match"] = "answer_match"


RewardConfig = Annotated[VerifierRewardConfig | AnswerMatchRewardConfig, Field(discriminator="kind")]


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` (or a bare `name`): something from_pretrained may fetch rather than a local path."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith(".")


def _check_lengths(responses: Sequence[str], references: Sequence[str]) -> None:
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")


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
        for placeholder in ("{response}", "{reference}"):
            if placeholder not in config.prompt_template:
                raise RewardLoadError(f"verifier prompt_template has no {placeholder} placeholder")
        path = config.model
        tokenizer_path = config.tokenizer or path
        for what, where in (("model", path), ("tokenizer", tokenizer_path)):
            if not Path(where).exists() and not _looks_like_hub_id(where):
                raise RewardLoadError(f"verifier {what} {where}: directory does not exist")

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
        return self.config.prompt_template.format(response=answer, reference=reference) + self.tokenizer.eos_token

    def encode(self, answer: str, reference: str) -> list[int]:
        """Token ids of the prompt, at most max_length long and always ending with eos.

        An overlong prompt is made to fit by cutting the end of the answer, so the tags, the
        reference and the closing question are kept.
        """
        limit = self.config.max_length
        ids = self.tokenizer(self.format_prompt(answer, reference))["input_ids"]
        if len(ids) > limit:
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            keep = max(0, len(answer_ids) - (len(ids) - limit) - 4)
            answer = self.tokenizer.decode(answer_ids[:keep], skip_special_tokens=True)
            ids = self.tokenizer(self.format_prompt(answer, reference))["input_ids"]
        if len(ids) > limit:  # the reference alone is too long: keep the head, end with eos
            ids = ids[: limit - 1] + [self.tokenizer.eos_token_id]
        return ids

    @torch.no_grad()
    def probabilities(self, answers: Sequence[str], references: Sequence[str]) -> list[float]:
        """P("True") for each (answer, reference) pair, in batches of `batch_size`."""
        _check_lengths(answers, references)
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
        _check_lengths(responses, references)
        parsed = [parse_reasoning(text) for text in responses]
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


def _answers_letter(answer: str, letter: str) -> bool:
    text = unicodedata.normalize("NFKC", answer).strip()
    # Leading option: "B", "B.", "B)", "(B) ...", "[B]", "B: ...", "b".
    if re.match(rf"[(\[]?\s*{letter}\s*(?:[)\].:,;]|$)", text, flags=re.IGNORECASE):
        return True
    # "B aspirin ...": uppercase letter followed by a word; not for "A", which reads as an article.
    if letter != "A" and re.match(rf"{letter}\s", text):
        return True
    # "The answer is B", "Answer: (C)", "the correct answer is option D".
    pattern = rf"(?i:answer)\s*(?:(?i:is)\s*|:\s*)?(?:(?i:option|choice)\s*)?[(\[]?{letter}(?![\w])"
    return re.search(pattern, text) is not None


class AnswerMatchReward:
    """Rule-based reward with the verifier's reward values, for teams without a verifier model.

    A response with a bad format gets `reward_bad_format`. Otherwise the answer and the
    reference are normalised (Unicode NFKC, lowercase, punctuation turned into spaces, the
    articles a/an/the dropped, whitespace collapsed) and the answer is correct when:

    * the normalised reference equals the normalised answer, or
    * the normalised reference occurs inside the normalised answer as a whole-word span
      ("metformin" matches "Start metformin, 500 mg daily." but not "metforminum").

    A multiple-choice reference, a single letter A-E (optionally bracketed or with a full stop),
    is judged by the letter alone instead (so "vitamin B" is not a hit for option B). The answer
    must either start with the letter as a standalone option: "B", "B.", "(B) Aspirin",
    "B: Aspirin", "B aspirin" (for "A" the letter must be bracketed, punctuated or alone, since
    "A patient ..." starts with an article); or state it: "The answer is B", "Answer: (B)",
    "the correct answer is option B" (letter in upper case).

    An empty reference never matches. The containment rule can be gamed by answers that list
    many candidates; use a verifier for RL runs where that matters.
    """

    name = "answer_match_reward"

    def __init__(self, config: AnswerMatchRewardConfig | None = None):
        self.config = config or AnswerMatchRewardConfig()

    @staticmethod
    def matches(answer: str, reference: str) -> bool:
        letter = _mcq_letter(reference)
        if letter is not None:
            return _answers_letter(answer, letter)
        ref = normalize_answer(reference)
        if not ref:
            return False
        ans = normalize_answer(answer)
        return ans == ref or f" {ref} " in f" {ans} "

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        _check_lengths(responses, references)
        cfg = self.config
        parsed = [parse_reasoning(text) for text in responses]
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

Reward = VerifierReward | AnswerMatchReward


def build_reward(config: VerifierRewardConfig | AnswerMatchRewardConfig, device: str | torch.device = "cpu") -> Reward:
    if isinstance(config, VerifierRewardConfig):
        return VerifierReward(config, device=device)
    if isinstance(config, AnswerMatchRewardConfig):
        return AnswerMatchReward(config)
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

    The first returns the reward; the second and third return the format-ok and correct flags as
    0/1 so that, weighted 0, TRL logs their rates. All three share one scoring per batch.
    """
    last: dict[str, Any] = {"key": None, "output": None}

    def score(completions: list[Any], reference: list[str]) -> RewardOutput:
        texts = [_completion_text(c) for c in completions]
        key = (tuple(texts), tuple(reference))
        if last["key"] != key:
            last["key"], last["output"] = key, reward(texts, list(reference))
        return last["output"]

    def reward_func(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list[float]:
        return [float(r) for r in score(completions, reference).rewards]

    def format_ok(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list[float]:
        return [float(ok) for ok in score(completions, reference).format_ok]

    def correct(prompts: list[Any], completions: list[Any], reference: list[str], **kwargs: Any) -> list[float]:
        return [float(ok) for ok in score(completions, reference).correct]

    for func, name in ((reward_func, reward.name), (format_ok, "format_ok"), (correct, "verifier_true")):
        func.__name__ = func.__qualname__ = name
    return [reward_func, format_ok, correct]


__all__ = [
    "DEFAULT_VERIFIER_PROMPT",
    "AnswerMatchReward",
    "AnswerMatchRewardConfig",
    "ParsedResponse",
    "RewardConfig",
    "RewardLoadError",
    "RewardOutput",
    "VerifierReward",
    "VerifierRewardConfig",
    "build_reward",
    "normalize_answer",
    "parse_reasoning",
    "trl_reward_funcs",
]
