"""The published HuatuoGPT-o1 evaluation, so that `medo1 eval` numbers can stand beside the paper's table.

Facts from FreedomIntelligence/HuatuoGPT-o1 (no license; nothing copied, the behaviour written anew):
`evaluation/eval.py` (prompts, decoding, the data file's shape), `evaluation/scorer.py` (how an answer is read and
a set scored), `evaluation/data/eval_data.json` (one JSON object {set name: [rows]}), and the paper
(arXiv 2412.18925, `assets/paper.pdf` in that repository): Table 1's columns and cells, Table 2's merged columns.

- Prompts: `huatuo` and `huatuo_strict` are the published user turns byte for byte (eval.py `query_prompt`, plain
  and with `--strict_prompt`), options one per line as "A. text".
- Decoding (eval.py `call_model`): temperature 0.5, top-p 0.9, at most 2,000 new tokens, one sample; responses that
  are empty (after dropping "</s>" and one leading space) are left out of the scores.
- Scorer (scorer.py `match_choice`, `score`): see `huatuo_answers` and `huatuo_set_score`. Each response gives a
  first-found and a last-found option; a set scores the better of "every first" and "every last".
- Table 1: MedQA | MedMCQA | PubMedQA | MMLU-Pro Health | Biology | GPQA Genetics | Molecular Biology | Avg, the Avg
  the plain mean of the seven cells, one decimal. The MMLU-Pro and GPQA columns split those sets by each question's
  MMLU-Pro `category` and GPQA `Subdomain`, which the published file does not carry: `subjects` reads them from
  the original datasets. Table 2 merges each of those pairs back into one column (all its questions).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HUATUO_PROMPTS = {
    "huatuo": "Please answer the following multiple-choice question:\n{question}\n{option_str}",
    # As published, with its sentence written twice.
    "huatuo_strict": (
        "Please answer the following multiple-choice questions. Please answer the following multiple-choice "
        "questions, ensuring your response concludes with the correct option in the format: 'The answer is A.'.\n"
        "{question}\n{option_str}"
    ),
}

HUATUO_PRESET = {
    "prompt": "huatuo",
    "temperature": 0.5,
    "top_p": 0.9,
    "max_new_tokens": 2000,
    "samples_per_prompt": 1,
    "scorer": "huatuo",
    "table": "paper",
}
"""`preset: huatuo`: the published protocol; any of these a recipe or `--set` gives explicitly wins."""


def huatuo_prompt(style: str, question: str, options: dict[str, str]) -> str:
    option_str = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return HUATUO_PROMPTS[style].format(question=question, option_str=option_str)


# --------------------------------------------------------------------------- the published scorer

_FINAL_MARKER = "## Final Response\n\n"
_OPTION_LETTERS = "ABCDEFGHIJKLMN"
_CJK = "\u4e00-\u9fff"
# "answer is", any whitespace, then a capital A-N: no check that the letter is an option, or that it ends a word
# ("the answer is Cochlea" reads as C).
_STATED = re.compile(r"answer is\s*([A-N])")


def _standalone_letter_pattern(count: int) -> re.Pattern[str]:
    """One of the first `count` option letters standing alone: after the start, "is ", a character that is not a
    word character, or a CJK character; before the end, a non-word or a CJK character (both consumed, so two
    letters one character apart are one match). "A " is not read as option A (an article)."""
    letters = _OPTION_LETTERS[:count]
    return re.compile(rf"(?:^|is |[\W{_CJK}])(?!A )([{letters}])(?:[\W{_CJK}]|$)")


def postprocess(response: str) -> str:
    """The published clean-up before scoring: "</s>" removed, then one leading space."""
    text = response.replace("</s>", "")
    return text[1:] if text.startswith(" ") else text


@dataclass(frozen=True)
class HuatuoAnswer:
    first: str
    last: str
    kind: int
    """1: a stated or standalone letter; 2: an option's text in the response; 3: the most similar option text."""


def huatuo_answers(response: str, options: dict[str, str]) -> HuatuoAnswer:
    """The published scorer's reading of one response: always an option (or a letter A-N), never None.

    1. Only the text after the last `## Final Response` followed by a blank line counts, when there is one.
    2. "answer is X" (X a capital A-N): the first and the last such X.
    3. Else a standalone option letter (`_standalone_letter_pattern`): the first and the last.
    4. Else, lower-cased, the options whose text occurs in the response: "last" is the option whose last
       occurrence is latest; "first" is the option whose first occurrence is latest (as published).
    5. Else the option most similar to the whole response (difflib ratio, a later option winning ties).
    """
    text = response.split(_FINAL_MARKER)[-1] if _FINAL_MARKER in response else response
    stated = _STATED.findall(text)
    if stated:
        return HuatuoAnswer(stated[0], stated[-1], 1)
    standalone = _standalone_letter_pattern(len(options)).findall(text)
    if standalone:
        return HuatuoAnswer(standalone[0], standalone[-1], 1)
    lowered = text.lower()
    found = [(letter, option.lower()) for letter, option in options.items() if option.lower() in lowered]
    if found:
        # max() keeps the first of equal keys: the earlier option, as a stable sort in reverse order does.
        last = max(found, key=lambda item: lowered.rindex(item[1]))[0]
        first = max(found, key=lambda item: lowered.index(item[1]))[0]
        return HuatuoAnswer(first, last, 2)
    best, best_ratio = next(iter(options)), -1.0
    for letter, option in options.items():
        ratio = difflib.SequenceMatcher(None, option.lower(), lowered).ratio()
        if ratio >= best_ratio:
            best, best_ratio = letter, ratio
    return HuatuoAnswer(best, best, 3)


@dataclass(frozen=True)
class HuatuoScore:
    accuracy: float | None
    """The better of `first_accuracy` and `last_accuracy` (None: no scored response)."""
    first_accuracy: float | None
    last_accuracy: float | None
    pick: str | None
    """"first" or "last": which one the set's score took (last where they tie)."""
    scored: int
    dropped_empty: int


def huatuo_set_score(answers: Iterable[tuple[HuatuoAnswer | None, str]]) -> HuatuoScore:
    """A set's published score from (answer, correct letter) pairs; None answers are empty responses, left out."""
    first = last = scored = dropped = 0
    for answer, correct in answers:
        if answer is None:
            dropped += 1
            continue
        scored += 1
        first += answer.first.lower() == correct.lower()
        last += answer.last.lower() == correct.lower()
    if not scored:
        return HuatuoScore(None, None, None, None, 0, dropped)
    pick = "first" if first > last else "last"
    return HuatuoScore(max(first, last) / scored, first / scored, last / scored, pick, scored, dropped)


# --------------------------------------------------------------------------- the paper's tables


@dataclass(frozen=True)
class PaperSet:
    """One published eval set: its names, and how the paper splits it into columns (None: one column)."""

    key: str
    """Its key in the published eval_data.json."""
    aliases: tuple[str, ...]
    """Other benchmark names medo1 recipes give it (recipes/eval-mcq.yaml)."""
    column: str
    """Its Table 2 column (and its Table 1 column when not split)."""
    subject_field: str | None = None
    """The original dataset's column naming each question's subject."""
    question_field: str | None = None
    """The original dataset's question column, matched against the question text."""
    split: tuple[tuple[str, str], ...] = ()
    """(Table 1 column, subject value) for each column it splits into."""
    rows: int = 0
    """Rows in the published file."""
    note: str = ""


PAPER_SETS = (
    PaperSet("MedQA_USLME_test", ("medqa",), "MedQA", rows=1273, note="MedQA (USMLE test set, 4 options)"),
    PaperSet("MedMCQA_validation", ("medmcqa",), "MedMCQA", rows=4183, note="MedMCQA (validation set)"),
    PaperSet(
        "PubMedQA_test",
        ("pubmedqa",),
        "PubMedQA",
        rows=1000,
        note="PubMedQA test set: PQA-L, the 1,000 expert-labelled questions (answers yes / no / maybe)",
    ),
    PaperSet(
        "MMLU-Pro_Medical_test",
        ("mmlu_pro_medical", "mmlu_pro"),
        "MMLU-Pro (Med)",
        "category",
        "question",
        (("Health", "health"), ("Biology", "biology")),
        rows=1535,
        note="MMLU-Pro health and biology questions (up to 10 options, A-J)",
    ),
    PaperSet(
        "GPQA_Medical_test",
        ("gpqa_medical", "gpqa"),
        "GPQA (Med)",
        "Subdomain",
        "Question",
        (("Genetics", "Genetics"), ("Molecular Biology", "Molecular Biology")),
        rows=390,
        note="GPQA genetics and molecular biology questions, each written 5 times (the paper's 5 runs, sampled "
        "at temperature 0.5)",
    ),
)
TABLE1_COLUMNS = ("MedQA", "MedMCQA", "PubMedQA", "Health", "Biology", "Genetics", "Molecular Biology")
TABLE2_COLUMNS = ("MedQA", "MedMCQA", "PubMedQA", "MMLU-Pro (Med)", "GPQA (Med)")
PUBLISHED_ROWS = sum(s.rows for s in PAPER_SETS)  # 8,381
PUBLISHED_EVAL_FILE = "eval_data.json"


def paper_set(benchmark: str) -> PaperSet | None:
    """The published set a benchmark name stands for (its key or a medo1 alias, any case), or None."""
    name = benchmark.lower()
    return next((s for s in PAPER_SETS if name == s.key.lower() or name in s.aliases), None)


def paper_average(cells: Sequence[float | None]) -> float | None:
    """Table 1's Avg: the plain mean of its seven cells (None when any is missing)."""
    if len(cells) != len(TABLE1_COLUMNS) or any(c is None for c in cells):
        return None
    return sum(cells) / len(cells)  # type: ignore[arg-type]


def paper_cell(value: float | None) -> str:
    """A percentage as the paper prints it: one decimal."""
    return "n/a" if value is None else f"{value:.1f}"


def normalise_question(text: str) -> str:
    """Question text compared across datasets: case and whitespace ignored."""
    return " ".join(text.lower().split())
