"""The option letter a multiple-choice response chose (`extract_answer`), read from its final response."""

from __future__ import annotations

import re
import string

from medo1.data.final_response import answer_text

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

    Order: the answer text (`medo1.data.final_response.answer_text`: the RL reward's final response of a well-formed
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
