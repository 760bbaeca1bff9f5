"""The rule-based reward (`reward.kind: answer_match`): the published reward values from a match of one extracted
final answer, for teams without a verifier checkpoint. A multiple-choice reference is judged by the option letters the
answer names; any other by the strict free-text match (`free_text`)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from medo1.data.final_response import parse_response
from medo1.rl.rewards import free_text
from medo1.rl.rewards.base import RewardOutput, check_lengths, published_rewards
from medo1.rl.rewards.config import AnswerMatchRewardConfig

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
    * Any other reference: `medo1.rl.rewards.free_text`: the reference must be the one answer the response states
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
        return free_text.matches(answer, reference)

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        check_lengths(responses, references)
        parsed = [parse_response(text) for text in responses]
        format_ok = [p.format_ok for p in parsed]
        correct = [p.format_ok and self.matches(p.answer or "", ref) for p, ref in zip(parsed, references)]
        rewards = published_rewards(self.config, format_ok, correct)
        return RewardOutput(rewards=rewards, format_ok=format_ok, correct=correct, scores=[None] * len(parsed))
