"""What a model is asked: a multiple-choice question with its options and instruction, or an open-ended verifiable
problem exactly as the RL stage asks it, with the recipe's system prompt."""

from __future__ import annotations

from medo1.chat_client import Messages
from medo1.data.sources import MCQItem, VerifiableProblem
from medo1.eval.published import huatuo_prompt

INSTRUCTION = "Answer with the letter of the correct option."


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
