"""Reward hacking against the rule-based `answer_match` reward: answers that name several options or give
several different answers, hoping one of them is the reference, must score as wrong (0.1), while honest
single answers still score 1.0. Everything runs through the full reward (format rule included)."""

from __future__ import annotations

import pytest

from medo1.data.sources import reasoning_target
from medo1.rl.rewards.answer_match import AnswerMatchReward, named_options

COT = "Macrocytic anaemia with hypersegmented neutrophils in a patient on methotrexate."

# (final response, reference): each one tries to collect the reward without committing to one answer.
GAMING = [
    ("A, B, C, D", "B"),
    ("B or C", "B"),
    ("Answer: A\nAnswer: B", "B"),
    ("The answer is B. The answer is C.", "B"),
    ("(A) (B) (C) (D) (E)", "B"),
    ("A. Iron deficiency\nB. Folate deficiency\nC. Vitamin B12 deficiency", "B"),
    ("B/C", "B"),
    ("Either B or D", "B"),
    ("Options B and C are both correct.", "B"),
    ("B) folate deficiency or C) iron deficiency", "B"),
    ("b, c, d", "B"),
    ("The answer is B\n\nAnswer: D", "B"),
    ("Metformin or insulin", "Metformin"),
    ("metformin, insulin, glipizide, acarbose, pioglitazone", "Metformin"),
    ("Answer: insulin\nAnswer: metformin", "Metformin"),
    ("Metformin/insulin", "Metformin"),
    ("- Metformin\n- Insulin\n- Sulfonylurea", "Metformin"),
    ("1. Metformin\n2. Insulin\n3. Diet", "Metformin"),
    ("Possibly metformin, possibly insulin.", "Metformin"),
    ("The final answer is insulin. Metformin is also reasonable.", "Metformin"),
    ("Either metformin or a sulfonylurea", "Metformin"),
    ("Metformin versus insulin", "Metformin"),
    ("acute pancreatitis, cholecystitis, peptic ulcer disease", "Acute pancreatitis"),
    ("Metformin or lifestyle changes, or insulin", "metformin or lifestyle changes"),
]

HONEST = [
    ("B", "B"),
    ("(B) Folate deficiency", "B"),
    ("B. Folate deficiency", "B"),
    ("B: Vitamin B deficiency", "B"),
    ("The answer is B.", "B"),
    ("The answer is B. The answer is B.", "B"),
    ("The correct answer is option (B), folate deficiency.", "B"),
    ("Metformin", "Metformin"),
    ("Answer: metformin", "Metformin"),
    ("Final answer: Metformin 500 mg twice daily", "Metformin"),
    ("The most appropriate therapy is metformin, started at 500 mg daily with meals.", "Metformin"),
    ("The most likely cause is acute pancreatitis from gallstones.", "Acute pancreatitis"),
    ("The next step is to start metformin, given his HbA1c of 8%, BMI of 32, and normal renal function.", "metformin"),
    # A reference that itself names alternatives or a list.
    ("Give metformin or lifestyle changes first.", "metformin or lifestyle changes"),
    ("Fever, cough and dyspnea are the classic triad.", "Fever, cough and dyspnea"),
]


def score(rows):
    reward = AnswerMatchReward()
    return reward([reasoning_target(COT, answer) for answer, _ in rows], [ref for _, ref in rows])


def test_gaming_attempts_score_as_wrong():
    assert len(GAMING) >= 10
    out = score(GAMING)
    assert all(out.format_ok)
    wrongly_rewarded = [answer for (answer, _), r in zip(GAMING, out.rewards) if r != 0.1]
    assert wrongly_rewarded == []


def test_honest_answers_still_score_as_right():
    out = score(HONEST)
    assert [answer for (answer, _), r in zip(HONEST, out.rewards) if r != 1.0] == []


@pytest.mark.parametrize(
    "answer, named",
    [
        ("A, B, C, D", {"A", "B", "C", "D"}),
        ("Options B and C are both correct.", {"B", "C"}),
        ("The correct answer is option (B), folate deficiency.", {"B"}),
        ("Vitamin B12 deficiency", set()),
        ("Vitamin B deficiency", set()),  # a letter in prose is not an option
        ("A patient like this needs surgery", set()),
        ("The answer is C, not B", {"C"}),
    ],
)
def test_named_options(answer, named):
    assert named_options(answer) == named
