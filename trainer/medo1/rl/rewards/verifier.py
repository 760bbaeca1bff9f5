"""The published RL reward: a 2-class verifier model (medical_o1_verifier_3B) reads a prompt holding the final answer
and the reference; P("True") > threshold (0.4) gives `reward_correct`, otherwise `reward_wrong`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from medo1.config import ConfigError, check_model_reference
from medo1.data.final_response import parse_response
from medo1.errors import Medo1Error
from medo1.rl.rewards.base import RewardOutput, check_lengths, published_rewards
from medo1.rl.rewards.config import VerifierRewardConfig

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
        correct = [s is not None and s > self.config.threshold for s in scores]
        format_ok = [p.format_ok for p in parsed]
        rewards = published_rewards(self.config, format_ok, correct)
        return RewardOutput(rewards=rewards, format_ok=format_ok, correct=correct, scores=scores)
