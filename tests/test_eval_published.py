"""The published HuatuoGPT-o1 evaluation in `medo1 eval`: its file read as published, its prompts byte for byte, its
scorer beside medo1's on realistic answers, the paper's table layouts and averages (from the paper's own cells)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medo1.data.sources import DataError, json_sets, load_examples
from medo1.eval.config import EvalConfig
from medo1.eval.extraction import extract_answer
from medo1.eval.generators import Generation
from medo1.eval.markdown import report_markdown
from medo1.eval.prompts import build_messages
from medo1.eval.published import (
    HUATUO_PRESET,
    TABLE1_COLUMNS,
    huatuo_answers,
    huatuo_set_score,
    paper_average,
    paper_cell,
)
from medo1.eval.run import run_eval
from tests.conftest import run_medo1

# --------------------------------------------------------------------------- both scorers on realistic answers

THINK = (
    "## Thinking\n\nThe patient is a 34-year-old woman with fatigue, pallor and a low MCV. Ferritin is low and the "
    "RDW is wide, which points away from thalassemia trait. Chronic disease would give a normal or high ferritin.\n\n"
)
MCQ4 = {
    "A": "Anemia of chronic disease",
    "B": "Beta-thalassemia minor",
    "C": "Iron deficiency anemia",
    "D": "Sideroblastic anemia",
}
MMLU10 = {
    "A": "Glycolysis",
    "B": "The Krebs cycle",
    "C": "Oxidative phosphorylation",
    "D": "Fermentation",
    "E": "Gluconeogenesis",
    "F": "Beta oxidation",
    "G": "The pentose phosphate pathway",
    "H": "Urea cycle",
    "I": "Glycogenolysis",
    "J": "Ketogenesis",
}
PUBMED = {"A": "yes", "B": "no", "C": "maybe"}

# (what, response, options, medo1 strict letter, published (first, last, kind)); the published reading was checked
# against the upstream scorer.py on each of these texts (and on 40,000 random ones) before it was written here.
SCORER_CASES = [
    (
        "answer by option text only, HuatuoGPT style",
        THINK + "## Final Response\n\nThe most likely diagnosis is iron deficiency anemia, given the microcytosis, low "
        "ferritin and raised RDW. Oral iron and a search for blood loss are the next steps.",
        MCQ4,
        "C",
        ("C", "C", 2),
    ),
    (
        "the answer is X",
        THINK + "## Final Response\n\nThe answer is C. Iron deficiency anemia.",
        MCQ4,
        "C",
        ("C", "C", 1),
    ),
    # A hedge: medo1 reads no answer; the published scorer reads B first and C last.
    (
        "hedge between two letters",
        THINK + "## Final Response\n\nIt is either B or C; the low ferritin makes me lean to C.",
        MCQ4,
        None,
        ("B", "C", 1),
    ),
    (
        "two stated letters, the last one kept",
        THINK + "## Final Response\n\nThe answer is B. On reflection the ferritin rules it out: the answer is C.",
        MCQ4,
        "C",
        ("B", "C", 1),
    ),
    # "answer is" and a capital: the published scorer reads the word's first letter as the option.
    (
        "answer is <word>",
        THINK + "## Final Response\n\nThe answer is Chronic blood loss leading to iron deficiency.",
        MCQ4,
        None,
        ("C", "C", 1),
    ),
    # Cut off at the token cap, no final response: the published scorer takes a letter from the reasoning ("Option A
    # would" is skipped: "A " reads as an article); medo1 finds no answer.
    (
        "cut off at the cap",
        THINK + "Option A would need a high ferritin. Option B needs HbA2 above 3.5%, and we",
        MCQ4,
        None,
        ("B", "B", 1),
    ),
    # `## Final Response` and one newline: medo1 still reads the final response; the published scorer, needing a
    # blank line after the header, reads the whole text and finds the reasoning's "answer is B" first.
    (
        "## Final Response with one newline",
        THINK.replace("thalassemia trait.", "thalassemia trait; at first the answer is B.")
        + "## Final Response\nThe answer is C.",
        MCQ4,
        "C",
        ("B", "C", 1),
    ),
    # PubMedQA prose: "no" occurs inside "not", later than "Yes": the published scorer reads B for a yes.
    (
        "PubMedQA yes/no/maybe prose",
        "## Thinking\n\nThe trial randomised 412 patients and found a lower relapse rate.\n\n## Final Response\n\nYes. "
        "Statin therapy was associated with fewer relapses, although the effect was not significant in the subgroup "
        "without diabetes.",
        PUBMED,
        "A",
        ("B", "B", 2),
    ),
    # Ten options A-J: a sentence's "I" is option I to the published scorer.
    (
        "10-option MMLU-Pro, a stray I",
        "## Thinking\n\nNADPH comes from one pathway.\n\n## Final Response\n\nI think the source of NADPH here is the "
        "pentose phosphate pathway, option (G).",
        MMLU10,
        "G",
        ("I", "G", 1),
    ),
    (
        "10-option MMLU-Pro, answer is G",
        "## Thinking\n\nNADPH comes from one pathway.\n\n## Final Response\n\nThe answer is G: the pentose phosphate pathway.",
        MMLU10,
        "G",
        ("G", "G", 1),
    ),
]


@pytest.mark.parametrize(
    ("what", "response", "options", "strict", "published"), SCORER_CASES, ids=[case[0] for case in SCORER_CASES]
)
def test_both_scorers_on_realistic_long_answers(what, response, options, strict, published):
    assert extract_answer(response, options) == strict
    answer = huatuo_answers(response, options)
    assert (answer.first, answer.last, answer.kind) == published


def test_a_set_scores_the_better_of_first_and_last_and_leaves_empty_answers_out():
    first_right = huatuo_answers("The answer is A. Or rather the answer is B.", MCQ4)  # first A, last B
    last_right = huatuo_answers("The answer is B. No: the answer is C.", MCQ4)  # first B, last C
    score = huatuo_set_score([(first_right, "A"), (last_right, "C"), (last_right, "C"), (None, "A")])
    assert (score.first_accuracy, score.last_accuracy) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert score.accuracy == pytest.approx(2 / 3) and score.pick == "last"
    assert (score.scored, score.dropped_empty) == (3, 1)
    tie = huatuo_set_score([(first_right, "A"), (last_right, "C")])
    assert tie.pick == "last" and tie.accuracy == 0.5  # as published: the last-found wins a tie
    assert huatuo_set_score([(None, "A")]).accuracy is None


def test_published_prompts_byte_for_byte():
    from medo1.data.sources import MCQItem

    item = MCQItem("A 34-year-old woman has a low MCV. Most likely?", MCQ4, "C", None)
    options = (
        "A. Anemia of chronic disease\nB. Beta-thalassemia minor\nC. Iron deficiency anemia\nD. Sideroblastic anemia"
    )
    assert build_messages(item, prompt="huatuo") == [
        {
            "role": "user",
            "content": f"Please answer the following multiple-choice question:\n{item.question}\n{options}",
        }
    ]
    strict = build_messages(item, prompt="huatuo_strict")[0]["content"]
    assert strict == (
        "Please answer the following multiple-choice questions. Please answer the following "
        "multiple-choice questions, ensuring your response concludes with the correct option in the "
        f"format: 'The answer is A.'.\n{item.question}\n{options}"
    )
    assert build_messages(item)[0]["content"].endswith("\n\nAnswer with the letter of the correct option.")


# --------------------------------------------------------------------------- the paper's table


# Table 1 of the paper (arXiv 2412.18925, `assets/paper.pdf` in FreedomIntelligence/HuatuoGPT-o1): MedQA, MedMCQA,
# PubMedQA, MMLU-Pro Health, Biology, GPQA Genetics, Molecular Biology, and the Avg it prints.
PAPER_ROWS = {
    "HuatuoGPT-o1-8B": ([72.6, 60.4, 79.2, 58.7, 68.2, 48.8, 59.7], "63.9"),
    "HuatuoGPT-o1-70B": ([83.3, 73.6, 80.6, 71.0, 82.8, 56.2, 66.5], "73.4"),
    "LLaMA-3.1-8B-Instruct": ([58.7, 56.0, 75.2, 52.7, 64.6, 33.8, 46.8], "55.4"),
}


def test_the_papers_own_cells_give_its_averages():
    for cells, average in PAPER_ROWS.values():
        assert paper_cell(paper_average(cells)) == average
    assert paper_average([72.6, 60.4, 79.2, None, None, 48.8, 59.7]) is None  # a column missing: no paper Avg
    # medo1's old average over the files given (MMLU-Pro and GPQA as one column each, row-weighted) is not it.
    cells = PAPER_ROWS["HuatuoGPT-o1-8B"][0]
    five = cells[:3] + [(818 * cells[3] + 717 * cells[4]) / 1535, (16 * cells[5] + 62 * cells[6]) / 78]
    assert paper_cell(sum(five) / 5) == "66.6"
    tables = {
        "scorer": "huatuo",
        "table1_columns": list(TABLE1_COLUMNS),
        "table2_columns": [],
        "notes": [],
        "models": {
            name: {"table1": dict(zip(TABLE1_COLUMNS, cells)), "average": paper_average(cells), "table2": {}}
            for name, (cells, _) in PAPER_ROWS.items()
        },
    }
    text = report_markdown(
        {
            "model": "m",
            "paper_table": tables,
            "settings": {
                "scorer": "huatuo",
                "temperature": 0.5,
                "top_p": 0.9,
                "samples_per_prompt": 1,
                "seeds": [0],
                "preset": "huatuo",
                "max_new_tokens": 2000,
                "prompt": "huatuo",
                "engine": "vllm",
            },
            "benchmarks": {},
            "comparison": {},
            "notes": [],
            "average_accuracy": 0.0,
            "reward": "answer_match_reward",
        }
    )
    assert "| model | MedQA | MedMCQA | PubMedQA | Health | Biology | Genetics | Molecular Biology | Avg |" in text
    assert "| HuatuoGPT-o1-8B | 72.6 | 60.4 | 79.2 | 58.7 | 68.2 | 48.8 | 59.7 | 63.9 |" in text
    assert "| HuatuoGPT-o1-70B | 83.3 | 73.6 | 80.6 | 71.0 | 82.8 | 56.2 | 66.5 | 73.4 |" in text
    assert "| LLaMA-3.1-8B-Instruct | 58.7 | 56.0 | 75.2 | 52.7 | 64.6 | 33.8 | 46.8 | 55.4 |" in text
    assert "published HuatuoGPT-o1 scorer" in text


# --------------------------------------------------------------------------- a file in the published shape


def _row(question: str, options: dict[str, str], answer: str) -> dict:
    return {"question": question, "options": options, "answer_idx": answer, "answer": options[answer]}


OPTIONS4 = {"A": "Cholestasis", "B": "Hemolysis", "C": "Gilbert syndrome", "D": "Hepatitis"}


def published_file(path: Path) -> Path:
    """The published eval file's shape: one object {set: [rows]}, GPQA's questions each written 5 times."""
    sets = {
        "MedQA_USLME_test": [
            _row(f"MedQA case {i}: unconjugated bilirubin is raised. Cause?", OPTIONS4, "C") for i in range(4)
        ],
        "MedMCQA_validation": [_row(f"MedMCQA item {i}: the cause?", OPTIONS4, "B") for i in range(2)],
        "PubMedQA_test": [_row(f"PubMedQA abstract {i}: does X reduce Y?", PUBMED, a) for i, a in enumerate("AB")],
        "MMLU-Pro_Medical_test": [
            _row(f"MMLU-Pro {subject} {i}: which pathway makes NADPH?", MMLU10, "G")
            for subject in ("health", "biology")
            for i in range(2)
        ],
        "GPQA_Medical_test": [
            _row(f"GPQA {subdomain} question: which gene?", OPTIONS4, "A")
            for subdomain in ("Genetics", "Molecular Biology")
            for _ in range(5)
        ],
    }
    path.write_text(json.dumps(sets, indent=1))
    return path


def subject_files(tmp_path: Path) -> dict[str, str]:
    """The original datasets' subject columns, as MMLU-Pro (question, category) and GPQA (Question, Subdomain) name
    them, with other rows around (matched by question text, whitespace and case aside)."""
    mmlu = [
        {"question": f"MMLU-Pro {s} {i}:  which pathway makes NADPH?".upper(), "category": s}
        for s in ("health", "biology")
        for i in range(2)
    ] + [{"question": "unrelated", "category": "law"}]
    gpqa = [{"Question": f"GPQA {d} question: which gene?", "Subdomain": d} for d in ("Genetics", "Molecular Biology")]
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmlu))
    (tmp_path / "gpqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gpqa))
    return {"MMLU-Pro_Medical_test": str(tmp_path / "mmlu.jsonl"), "GPQA_Medical_test": str(tmp_path / "gpqa.jsonl")}


def test_the_published_file_is_read_as_it_is(tmp_path):
    path = published_file(tmp_path / "eval_data.json")
    assert json_sets(path) == {
        "MedQA_USLME_test": 4,
        "MedMCQA_validation": 2,
        "PubMedQA_test": 2,
        "MMLU-Pro_Medical_test": 4,
        "GPQA_Medical_test": 10,
    }
    gpqa = load_examples(path, "mcq", key="GPQA_Medical_test")
    assert gpqa.path == f"{path}#GPQA_Medical_test" and gpqa.rows == 10
    assert gpqa.duplicates == [(1, 0), (2, 0), (3, 0), (4, 0), (6, 5), (7, 5), (8, 5), (9, 5)]
    with pytest.raises(
        DataError, match=r"an object of named sets \(MedQA_USLME_test, .*\), not a list of records; name one as .*#SET"
    ):
        load_examples(path, "mcq")
    with pytest.raises(DataError, match="no set 'GPQA'; its sets: MedQA_USLME_test, MedMCQA_validation"):
        load_examples(path, "mcq", key="GPQA")


class ScriptedAnswers:
    """Answers by question: each response written so that the expected cells are known exactly."""

    def __init__(self):
        self.prompts: list[str] = []

    @staticmethod
    def answer(question: str) -> str:
        final = {
            "MedQA case 0": "The answer is C.",
            "MedQA case 1": "The answer is C.",
            "MedQA case 2": "The answer is Cholestasis-free hemolysis.",  # published: C (right); medo1: none
            "MedQA case 3": "The answer is A. No: the answer is C.",  # first wrong, last right
            "MedMCQA item 0": "The answer is B.",
            "MedMCQA item 1": "The answer is D.",
            "PubMedQA abstract 0": "The answer is A.",
            "PubMedQA abstract 1": "The answer is A.",
            "MMLU-Pro health": "The answer is G.",
            "MMLU-Pro biology 0": "The answer is G.",
            "MMLU-Pro biology 1": "The answer is E.",
            "GPQA Genetics": "The answer is A.",
            "GPQA Molecular Biology": "The answer is B.",
        }
        text = next(v for k, v in final.items() if question.startswith(k))
        return f"## Thinking\n\nReasoning about the case.\n\n## Final Response\n\n{text}"

    def generate(self, prompts, *, samples=1, seed=0):
        self.prompts += [m[-1]["content"] for m in prompts]
        questions = [m[-1]["content"].split("\n")[1] for m in prompts]
        return [[Generation(self.answer(q), 30, False)] * samples for q in questions]


def test_published_file_scored_the_papers_way_in_its_table_layout(tmp_path, caplog):
    path = published_file(tmp_path / "eval_data.json")
    out = tmp_path / "eval"
    config = EvalConfig(
        model="m",
        label="medo1-rl",
        benchmarks={"huatuo": str(path)},
        preset="huatuo",
        subjects=subject_files(tmp_path),
        output_dir=str(out),
    )
    assert {k: getattr(config, k) for k in HUATUO_PRESET} == HUATUO_PRESET
    generator = ScriptedAnswers()
    report = run_eval(config, generator=generator)

    assert list(report["benchmarks"]) == [
        "MedQA_USLME_test",
        "MedMCQA_validation",
        "PubMedQA_test",
        "MMLU-Pro_Medical_test",
        "GPQA_Medical_test",
    ]
    assert generator.prompts[0] == (
        "Please answer the following multiple-choice question:\nMedQA case 0: unconjugated "
        "bilirubin is raised. Cause?\nA. Cholestasis\nB. Hemolysis\nC. Gilbert syndrome\n"
        "D. Hepatitis"
    )
    medqa = report["benchmarks"]["MedQA_USLME_test"]
    assert medqa["scorer"] == "huatuo" and medqa["accuracy"] == 1.0  # every last-found answer is right
    assert (medqa["huatuo"]["first_accuracy"], medqa["huatuo"]["pick"]) == (0.75, "last")
    assert medqa["strict_accuracy"] == 0.75 and medqa["unparseable"] == 1  # medo1 reads no answer in case 2
    gpqa = report["benchmarks"]["GPQA_Medical_test"]
    assert (gpqa["n"], gpqa["unique_questions"], gpqa["copies"]) == (10, 2, "2 unique x 5")
    assert gpqa["accuracy_ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-3)  # Wilson on 2 questions, not 10 rows

    table = report["paper_table"]["models"]["medo1-rl"]
    assert table["table1"] == {
        "MedQA": 100.0,
        "MedMCQA": 50.0,
        "PubMedQA": 50.0,
        "Health": 100.0,
        "Biology": 50.0,
        "Genetics": 100.0,
        "Molecular Biology": 0.0,
    }
    assert table["average"] == pytest.approx(450 / 7)
    assert table["table2"] == {
        "MedQA": 100.0,
        "MedMCQA": 50.0,
        "PubMedQA": 50.0,
        "MMLU-Pro (Med)": 75.0,
        "GPQA (Med)": 50.0,
    }
    text = (out / "report.md").read_text()
    assert "| medo1-rl | 100.0 | 50.0 | 50.0 | 100.0 | 50.0 | 100.0 | 0.0 | 64.3 |" in text
    assert "| medo1-rl | 100.0 | 50.0 | 50.0 | 75.0 | 50.0 |" in text
    assert "Scored by the published HuatuoGPT-o1 scorer" in text
    assert "| MedQA_USLME_test | 4 | 4 | 100.0 | 75.0 | 1 |" in text  # the published score beside medo1's strict one
    assert "GPQA_Medical_test: 2 unique x 5: intervals count each unique question once" in text
    assert "PQA-L" in text
    assert "MMLU-Pro_Medical_test: 4 of 4 rows matched a `category`" in text
    assert "preset huatuo; temperature 0.5, top-p 0.9" in text and "at most 2000 new tokens" in text


def test_unsplit_columns_say_why_and_greedy_copies_warn(tmp_path, caplog):
    path = published_file(tmp_path / "eval_data.json")
    config = EvalConfig(
        model="m", benchmarks={"huatuo": str(path)}, preset="huatuo", temperature=0.0, output_dir=str(tmp_path / "eval")
    )
    report = run_eval(config, generator=ScriptedAnswers())
    table = report["paper_table"]["models"]["model"]
    assert table["table1"]["Health"] is None and table["table1"]["Genetics"] is None and table["average"] is None
    assert table["table2"]["MMLU-Pro (Med)"] == 75.0  # the merged column needs no subjects
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "MMLU-Pro_Medical_test cannot be split into Health / Biology: its rows carry no `category`" in text
    assert "preset huatuo with these settings changed" in text and "temperature 0.0 (published: 0.5)" in text
    assert "the copies are one run, not several" in text
    assert any("decoded greedily: its copies are one run repeated" in r.getMessage() for r in caplog.records)


def test_one_set_of_the_file_and_a_missing_set(tmp_path):
    path = published_file(tmp_path / "eval_data.json")
    config = EvalConfig(
        model="m", benchmarks={"pubmedqa": f"{path}#PubMedQA_test"}, preset="huatuo", output_dir=str(tmp_path / "eval")
    )
    report = run_eval(config, generator=ScriptedAnswers())
    assert list(report["benchmarks"]) == ["pubmedqa"] and report["benchmarks"]["pubmedqa"]["n"] == 2
    notes = report["paper_table"]["notes"]
    assert any(note.startswith("MedQA_USLME_test not evaluated") for note in notes)
    from medo1.eval.config import EvalError

    config.benchmarks = {"x": f"{path}#NoSuchSet"}
    with pytest.raises(DataError, match="no set 'NoSuchSet'"):
        run_eval(config, generator=ScriptedAnswers())
    config.benchmarks = {"huatuo": str(path)}
    config.subjects = {"GPQA_Medical_test": str(tmp_path / "missing.csv")}
    with pytest.raises(EvalError, match="subjects.GPQA_Medical_test: .*missing.csv: file not found"):
        run_eval(config, generator=ScriptedAnswers())


@pytest.mark.e2e
def test_cli_published_file_with_the_preset_on_the_tiny_model(tiny_model, tmp_path):
    """The command the issue names, on a file in the published shape: the paper's layout printed."""
    path = published_file(tmp_path / "eval_data.json")
    done = run_medo1(
        [
            "eval",
            "--model",
            tiny_model,
            "--benchmark",
            f"huatuo={path}",
            "--preset",
            "huatuo",
            "--set",
            "max_new_tokens=4",
            "--output-dir",
            tmp_path / "eval",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "| model | MedQA | MedMCQA | PubMedQA | Health | Biology | Genetics | Molecular Biology | Avg |" in done.stdout
    )
    assert "Scored by the published HuatuoGPT-o1 scorer" in done.stdout
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["GPQA_Medical_test"]["n"] == 10
