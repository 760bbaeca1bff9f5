"""What a reasoning answer's final response is: one parser for the RL rewards and the eval.

The format rule is the published HuatuoGPT-o1 reward's (FreedomIntelligence/HuatuoGPT-o1, the RL stage's reward
function): a response is well formed when `## Thinking` occurs exactly once and `## Final Response` followed by a
blank line (`## Final Response\\n\\n`) occurs exactly once, both plain substring counts, in any order. Its final
response is the text after that one marker, surrounding whitespace stripped; it may be empty. A response that
breaks the rule has no final response: every reward gives it `reward_bad_format`, and the eval counts it as not
format-ok.

The eval still reads an option letter from a malformed response (accuracy is its own column, and the published
eval reads every response): `answer_text` is the final response of a well-formed response, and of a malformed
one the text after its last `## Final Response` header, or all of it without one. A well-formed response is read
the same way by both, so "## Final Response\\n\\nB" followed by a later "## Final Response: C" line is B's answer
text "B\\n...C" to both, never C alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from medo1.data.sources import FINAL_RESPONSE_HEADER, THINKING_HEADER

FINAL_RESPONSE_MARKER = FINAL_RESPONSE_HEADER + "\n\n"


@dataclass(frozen=True)
class ParsedResponse:
    format_ok: bool
    answer: str | None
    """The final response (stripped) of a well-formed response; None for a malformed one."""


def parse_response(text: str) -> ParsedResponse:
    """The published format rule, and the final response of a well-formed response."""
    if text.count(THINKING_HEADER) != 1 or text.count(FINAL_RESPONSE_MARKER) != 1:
        return ParsedResponse(format_ok=False, answer=None)
    # `## Final Response` may also occur without the blank line after it ("## Final Responses", "## Final
    # Response:"); the answer starts after the one occurrence that has it.
    return ParsedResponse(format_ok=True, answer=text.split(FINAL_RESPONSE_MARKER, 1)[1].strip())


def answer_text(text: str) -> str:
    """The text an answer is read from: the final response when the response is well formed; otherwise the text
    after the last `## Final Response` header, or the whole response without one."""
    parsed = parse_response(text)
    if parsed.answer is not None:
        return parsed.answer
    index = text.rfind(FINAL_RESPONSE_HEADER)
    return (text[index + len(FINAL_RESPONSE_HEADER) :] if index >= 0 else text).strip()
