"""The strict `answer_match` reward on a table of honest and gaming final responses written from real medical-o1
rows (examples/data/medical_o1_demo.json: each entry names its row; English entries use the row's `Ground-True
Answer` as it is, other languages its translation, as the translation stage would give it). Every entry goes
through the whole reward, the format rule included. Honest answers score `reward_correct`; gaming ones, which try
to collect the reward without committing to the reference as their one answer (negated, contraindicated, among
other candidates, hedged, split over sentences), score `reward_wrong`."""

from __future__ import annotations

import pytest

from medo1.data.final_response import answer_text, parse_response
from medo1.data.sources import reasoning_target
from medo1.eval.extraction import extract_answer
from medo1.rl.rewards.answer_match import AnswerMatchReward
from medo1.rl.rewards.free_text import answer_verdict

COT = "I weigh the findings against each candidate."

# (row, reference or None for the row's English `Ground-True Answer`, final response)
HONEST = [
    (0, None, "Parvovirus B19 infection"),
    (0, None, "The most likely cause is parvovirus B19 infection, which halts red cell production."),
    (1, None, "Rheumatic fever."),
    (2, None, "Cefaclor"),
    (5, None, "Caustic ingestion is the most likely cause."),
    (6, None, "Pyrimethamine, given with leucovorin to protect the marrow."),
    (7, None, "Morphine."),
    (9, None, "Cavernous sinus thrombosis"),
    (9, None, "The answer is cavernous sinus thrombosis."),
    (10, None, "The piriformis muscle."),
    (13, None, "Answer: haloperidol"),
    (14, None, "Orchiectomy is the treatment of choice here."),
    (21, None, "Decreased cardiac filling, from the raised intrathoracic pressure."),
    (24, None, "Intravenous ampicillin-sulbactam administration"),
    (31, None, "Hypermagnesemia explains the loss of deep tendon reflexes."),
    (34, None, "Right-sided heart failure"),
    (36, None, "Spectrin. The defect weakens the red cell membrane skeleton."),
    (39, None, "Induce labour now."),
    (42, None, "The triad is apnea, hypoglycemia, and hypoxia."),
    (43, None, "Megaloblastic anemia due to folate deficiency."),
    (46, None, "A platelet transfusion before the procedure."),
    (53, None, "Alkaline phosphatase is the enzyme that rises."),
    (56, None, "MRI of the brain is the next step."),
    (63, None, "Continue valproate with monitoring of drug level."),
    (70, None, "Measles."),
    (71, None, "The organism is Mycobacterium tuberculosis."),
    (74, None, "Nephrotic syndrome, most likely minimal change disease."),
    (76, None, "Carcinoma of the gall bladder"),
    (78, None, "High-output cardiac failure, as in wet beriberi."),
    (87, None, "CT chest"),
    (92, None, "Serum tryptase, drawn within a few hours."),
    (101, None, "Staph aureus"),
    (115, None, "It cannot be commented on from these findings."),
    (116, None, "Chloroquine toxicity is the most likely diagnosis."),
    (124, None, "A case-control study."),
    (129, None, "Acute pancreatitis"),
    (0, "Infección por parvovirus B19", "La causa más probable es una infección por parvovirus B19."),
    (7, "Morfina", "Morfina."),
    (13, "Haloperidol", "La respuesta es haloperidol."),
    (31, "Hipermagnesemia", "Hipermagnesemia, que explica la arreflexia."),
    (70, "Sarampión", "El diagnóstico es sarampión."),
    (129, "Pancreatitis aguda", "Pancreatitis aguda, por cálculos biliares."),
    (0, "パルボウイルスB19感染症", "最も可能性の高い原因はパルボウイルスB19感染症です。"),
    (13, "ハロペリドール", "答えはハロペリドールです。"),
    (34, "右心不全", "右心不全と考えられる。"),
    (56, "脳のMRI", "脳のMRIを行う。"),
    (70, "麻疹", "麻疹です。"),
    (129, "急性膵炎", "診断は急性膵炎である。"),
    (0, "细小病毒B19感染", "最可能的原因是细小病毒B19感染。"),
    (13, "氟哌啶醇", "答案是氟哌啶醇。"),
    (31, "高镁血症", "高镁血症，导致腱反射消失。"),
    (34, "右心衰竭", "该患者为右心衰竭。"),
    (70, "麻疹", "诊断为麻疹。"),
    (129, "急性胰腺炎", "急性胰腺炎"),
    (70, "Rougeole", "Le diagnostic est la rougeole."),
    (129, "Akute Pankreatitis", "Es handelt sich um eine akute Pankreatitis."),
]

GAMING = [
    (7, None, "Not morphine."),
    (7, None, "Morphine is contraindicated here; give naloxone."),
    (7, None, "Morphine and naloxone"),
    (7, None, "Morphine or fentanyl"),
    (7, None, "Avoid morphine."),
    (7, None, "Fentanyl rather than morphine."),
    (7, None, "Fentanyl, not morphine."),
    (7, None, "Anything except morphine."),
    (0, None, "Parvovirus B19 infection, aplastic crisis, or iron deficiency"),
    (0, None, "Possibly parvovirus B19 infection."),
    (0, None, "Parvovirus B19 infection is unlikely; consider lead poisoning."),
    (0, None, "Iron deficiency. Parvovirus B19 infection."),
    (0, None, "Parvovirus B19 infection. Iron deficiency. Lead poisoning."),
    (9, None, "Cavernous sinus thrombosis/orbital cellulitis"),
    (9, None, "Either cavernous sinus thrombosis or meningitis"),
    (9, None, "We can rule out cavernous sinus thrombosis."),
    (13, None, "Haloperidol should not be used."),
    (13, None, "Haloperidol, risperidone, olanzapine"),
    (13, None, "- Haloperidol\n- Lorazepam"),
    (13, None, "1. Haloperidol\n2. Lorazepam\n3. Ketamine"),
    (31, None, "Hypermagnesemia vs hypocalcemia"),
    (31, None, "It might be hypermagnesemia."),
    (34, None, "Left-sided or right-sided heart failure"),
    (34, None, "Right-sided heart failure and pulmonary hypertension"),
    (46, None, "Platelet transfusion is not indicated."),
    (46, None, "Fresh frozen plasma and platelet transfusion"),
    (58, None, "Acetylcholine & norepinephrine"),
    (70, None, "Measles, rubella"),
    (70, None, "Rubella, measles"),
    (70, None, "The answer is rubella. Measles is also possible."),
    (70, None, "Answer: measles\nAnswer: rubella"),
    (70, None, "Measles. Alternatively, rubella."),
    (129, None, "Acute pancreatitis is ruled out."),
    (129, None, "Acute pancreatitis? Perforated ulcer?"),
    (129, None, "Acute pancreatitis as well as cholecystitis"),
    (87, None, "CT chest plus bronchoscopy"),
    (82, None, "Hypomagnesemia; or hypokalemia"),
    (92, None, "Not tryptase but histamine."),
    (124, None, "A cohort study or a case-control study"),
    (7, "Morfina", "No morfina."),
    (7, "Morfina", "La morfina está contraindicada."),
    (7, "Morfina", "Morfina o fentanilo"),
    (7, "Morfina", "Morfina y naloxona"),
    (7, "Morfina", "En lugar de morfina, fentanilo."),
    (70, "Sarampión", "Quizás sarampión."),
    (129, "Pancreatitis aguda", "Se descarta pancreatitis aguda."),
    (7, "モルヒネ", "モルヒネではなくフェンタニル"),
    (7, "モルヒネ", "モルヒネは禁忌です。"),
    (7, "モルヒネ", "モルヒネとフェンタニル"),
    (7, "モルヒネ", "モルヒネまたはフェンタニル"),
    (70, "麻疹", "麻疹かもしれない。"),
    (70, "麻疹", "麻疹、風疹"),
    (129, "急性膵炎", "急性膵炎以外の疾患"),
    (129, "急性膵炎", "急性膵炎や胆嚢炎"),
    (7, "吗啡", "不是吗啡。"),
    (7, "吗啡", "吗啡禁用。"),
    (7, "吗啡", "吗啡和芬太尼"),
    (7, "吗啡", "吗啡或芬太尼"),
    (7, "吗啡", "用芬太尼而不是吗啡。"),
    (7, "吗啡", "也许是吗啡。"),
    (7, "吗啡", "吗啡、芬太尼"),
    (129, "急性胰腺炎", "排除急性胰腺炎。"),
    (70, "Rougeole", "Pas la rougeole."),
    (70, "Rougeole", "Rougeole ou rubéole"),
    (129, "Akute Pankreatitis", "Keine akute Pankreatitis."),
    (129, "Akute Pankreatitis", "Akute Pankreatitis oder Cholezystitis"),
]

# Honest answers the rule calls wrong: it errs on the strict side. A question asking for the exception ("which drug
# cannot be used") answered with its negation restated, an answer that adds a second action with "and", and a
# conclusion after a first sentence that does not state it as "the answer". The reward cannot see the question; a
# verifier or judge scores these right.
STRICT_LIMITS = [
    (2, None, "Cefaclor cannot be used against MRSA."),
    (1, None, "Rheumatic fever is not a cause of constrictive pericarditis."),
    (46, None, "Give a platelet transfusion and proceed with the biopsy."),
    (0, None, "The reticulocyte count is low. The most likely cause is parvovirus B19 infection."),
]


def _ids(table):
    return [f"row{row}-{answer[:40]}" for row, _, answer in table]


def _reference(demo_rows, row, reference):
    return reference if reference is not None else demo_rows[row]["Ground-True Answer"]


def _reward(demo_rows, table):
    responses = [reasoning_target(COT, answer) for _, _, answer in table]
    references = [_reference(demo_rows, row, reference) for row, reference, _ in table]
    return AnswerMatchReward()(responses, references)


def test_tables_are_large_and_from_real_rows(demo_rows):
    assert len(HONEST) >= 40 and len(GAMING) >= 40
    languages = {"es": "Morfina", "ja": "モルヒネ", "zh": "吗啡"}
    for reference in languages.values():
        assert any(ref == reference for _, ref, _ in GAMING)
    for row, reference, _ in HONEST + GAMING + STRICT_LIMITS:
        assert demo_rows[row]["Ground-True Answer"].strip()
        if reference is None:  # English entries quote the row: the reference occurs in the question's answer
            assert demo_rows[row]["Open-ended Verifiable Question"].strip()


@pytest.mark.parametrize("row, reference, answer", HONEST, ids=_ids(HONEST))
def test_honest_answers_score_correct(demo_rows, row, reference, answer):
    assert answer_verdict(answer, _reference(demo_rows, row, reference)) is None


@pytest.mark.parametrize("row, reference, answer", GAMING, ids=_ids(GAMING))
def test_gaming_answers_score_wrong(demo_rows, row, reference, answer):
    assert answer_verdict(answer, _reference(demo_rows, row, reference)) is not None


@pytest.mark.parametrize("row, reference, answer", STRICT_LIMITS, ids=_ids(STRICT_LIMITS))
def test_the_rule_errs_on_the_strict_side(demo_rows, row, reference, answer):
    assert answer_verdict(answer, _reference(demo_rows, row, reference)) is not None


def test_the_whole_reward_on_the_tables(demo_rows):
    honest, gaming = _reward(demo_rows, HONEST), _reward(demo_rows, GAMING)
    assert honest.rewards == [1.0] * len(HONEST) and all(honest.format_ok)
    assert gaming.rewards == [0.1] * len(GAMING) and all(gaming.format_ok)


@pytest.mark.parametrize(
    "answer, reference",
    [
        ("Not metformin.", "metformin"),
        ("Metformin is contraindicated here; give insulin.", "metformin"),
        ("metformin and insulin", "metformin"),
    ],
)
def test_the_issue_examples_are_wrong(answer, reference):
    out = AnswerMatchReward()([reasoning_target(COT, answer)], [reference])
    assert out.correct == [False] and out.rewards == [0.1]


def test_eval_and_reward_read_the_same_final_response():
    # Well formed (one `## Final Response` followed by a blank line), with a later header-like line: both read the
    # final response after the marker. The old eval read the text after the last header, ": C".
    response = "## Thinking\n\nB fits.\n\n## Final Response\n\nB.\n\n## Final Response: C"
    parsed = parse_response(response)
    assert parsed.format_ok and parsed.answer == "B.\n\n## Final Response: C" == answer_text(response)
    options = {letter: f"option {letter}" for letter in "ABCDE"}
    assert extract_answer(response, options) == "B"
    assert AnswerMatchReward()([response], ["B"]).correct == [True]
    # Malformed (two markers): no final response for the reward; eval reads the last one for accuracy.
    twice = "## Thinking\n\nx\n\n## Final Response\n\nB\n\n## Final Response\n\nC"
    assert parse_response(twice).format_ok is False and answer_text(twice) == "C"
    assert extract_answer(twice, options) == "C"
