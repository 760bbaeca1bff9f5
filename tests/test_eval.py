"""MCQ evaluation: answer extraction, the tiny real model end to end, an endpoint stand-in, invalid rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from medo1.cli import main
from medo1.eval import (
    EvalConfig,
    EvalError,
    HFGenerator,
    build_messages,
    extract_answer,
    run_eval,
    wilson_interval,
)
from pydantic import ValidationError

from pipelines.openai_standin import StandIn
from tests.conftest import DEMO_DATA, free_port

OPTS = {
    "A": "Benign genetic carrier condition",
    "B": "Folate deficiency",
    "C": "Iron deficiency",
    "D": "Parvovirus B19 infection",
    "E": "Vitamin B12 deficiency",
}
NESTED = {"A": "Anemia", "B": "Iron deficiency anemia", "C": "Sickle cell disease", "D": "Thalassemia"}

# Decision on lower case: an explicit "Answer: e" counts (letter alone at the end of its line),
# as does a response that is nothing but one letter; "the answer is a rare ..." and
# "a. text" do not (lower-case "a" is an English word).
CASES = [
    # explicit patterns; only the final response counts, the last occurrence wins
    ("## Thinking\n\nAt first the answer is B, but the smear shows ...\n\n## Final Response\n\nThe answer is D", "D"),
    ("The answer is (C).", "C"),
    ("Therefore, the correct answer is **E. Vitamin B12 deficiency**.", "E"),
    ("Answer: e", "E"),
    ("answer: B", "B"),
    ("The answer is A... no wait, re-reading the labs, the answer is C.", "C"),
    ("Options A and C are unlikely given the reticulocytes; the answer is option B", "B"),
    ("## Final Response\n\nThe answer is F", None),  # F is not an option, and nothing else matches
    ("## Thinking\n\nthe answer is B\n\n## Final Response\n\n", None),  # empty final response
    ("The answer is a rare complication of chronic hemolysis.", None),
    # lone letter
    ("## Final Response\n\n**C**", "C"),
    ("(A) Iron deficiency", "A"),  # the leading letter wins over the option text it carries
    ("D) Parvovirus B19 infection", "D"),
    ("B.", "B"),
    ("e", "E"),
    ("A patient like this most likely has a genetic carrier state", None),
    ("G.", None),  # a letter outside the options
    # option text
    ("Parvovirus B19 infection is the most likely cause of the aplastic crisis.", "D"),
    ("## Final Response\n\nThis picture fits iron deficiency.", "C"),
    ("It is either folate deficiency or iron deficiency.", None),  # two unrelated options: ambiguous
    # closest option by word overlap
    ("Parvovirus infection", "D"),
    ("Vitamin B12", "E"),  # {vitamin, b12} vs {vitamin, b12, deficiency}: 2/3
    # unparseable
    ("", None),
    ("   \n", None),
    ("None of the above", None),
    ("It could be A or B; I am not sure.", None),
    ("I would need more information about the patient.", None),
]


@pytest.mark.parametrize(("response", "expected"), CASES)
def test_extract_answer(response, expected):
    assert extract_answer(response, OPTS) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The diagnosis is iron deficiency anemia.", "B"),  # "anemia" is inside the longer option
        ("Anemia, probably from thalassemia.", None),  # two unrelated option texts
        ("Anemia", "A"),
    ],
)
def test_extract_answer_overlapping_option_texts(response, expected):
    assert extract_answer(response, NESTED) == expected


def test_config_needs_exactly_one_backend():
    with pytest.raises(ValidationError):
        EvalConfig(benchmarks={})
    with pytest.raises(ValidationError):
        EvalConfig(model="m", endpoint="http://127.0.0.1:1/v1")
    with pytest.raises(ValidationError):
        EvalConfig(model="m", api_key="secret")  # keys come from the environment, never the config
    assert EvalConfig(endpoint="http://127.0.0.1:1/v1").model is None


def _demo_mcq(demo_rows, n, path: Path) -> Path:
    keys = ("question", "options", "answer_idx", "answer")
    path.write_text("\n".join(json.dumps({k: row[k] for k in keys}) for row in demo_rows[:n]) + "\n")
    return path


def test_eval_tiny_model_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "eval"
    config = EvalConfig(
        model=str(tiny_model),
        benchmarks={"demo": str(DEMO_DATA)},
        limit=8,
        max_new_tokens=16,
        batch_size=4,
        output_dir=str(out),
    )
    report = run_eval(config)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    result = report["benchmarks"]["demo"]
    assert result["n"] == 8 and len(result["per_item"]) == 8
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["correct"] == sum(p["correct"] for p in result["per_item"])
    assert result["unparseable"] == sum(p["extracted"] is None for p in result["per_item"])
    assert result["invalid_rows"] == []
    assert report["average_accuracy"] == result["accuracy"]
    assert [p["row"] for p in result["per_item"]] == list(range(8))
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 8 and all(isinstance(r["response"], str) for r in responses)
    assert any(r["response"] for r in responses)  # 16 new tokens decoded, not an empty echo
    table = (out / "report.md").read_text().splitlines()
    header = table.index("| benchmark | n | accuracy % | unparseable |")
    assert table[header + 1].startswith("|---")
    assert table[header + 2].startswith(f"| demo | 8 | {100 * result['accuracy']:.1f} | {result['unparseable']} |")


def test_wilson_interval():
    low, high = wilson_interval(0, 12)
    assert low == 0.0 and high == pytest.approx(1.96**2 / (12 + 1.96**2))  # closed form at 0 successes
    low, high = wilson_interval(6, 12)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.2538, abs=1e-4)
    assert wilson_interval(12, 12)[1] == 1.0


class ReasoningAnswers:
    """Answers each demo MCQ in the trained format with the correct letter: the model a comparison should rank first."""

    def __init__(self, demo_rows):
        self.letters = {row["question"]: row["answer_idx"] for row in demo_rows}

    def generate(self, prompts):
        letters = [next(v for q, v in self.letters.items() if m[0]["content"].startswith(q)) for m in prompts]
        return [f"## Thinking\n\nThe findings fit one option.\n\n## Final Response\n\nThe answer is {x}." for x in letters]


def test_comparison_scores_every_model_on_the_same_held_out_rows(tiny_model, demo_rows, tmp_path):
    out = tmp_path / "eval"
    config = EvalConfig(model="trained", benchmarks={"demo": str(DEMO_DATA)}, start_row=140, limit=6,
                        max_new_tokens=8, label="rl", compare_with={"base": str(tiny_model)}, output_dir=str(out))
    report = run_eval(config, generator=ReasoningAnswers(demo_rows))

    assert list(report["comparison"]) == ["base", "rl"]
    trained, base = report["comparison"]["rl"]["demo"], report["comparison"]["base"]["demo"]
    assert [p["row"] for p in report["benchmarks"]["demo"]["per_item"]] == list(range(140, 146))
    assert trained["n"] == base["n"] == 6
    assert trained["format_ok"] == 6 and trained["accuracy"] == 1.0 and trained["reward_mean"] == 1.0
    assert trained["accuracy_ci95"] == pytest.approx(list(wilson_interval(6, 6)))
    assert trained["mean_response_tokens"] is None  # a generator without a tokenizer
    assert base["format_ok"] == 0 and base["reward_mean"] == 0.0  # a random model never writes the format
    assert base["mean_response_tokens"] > 0
    assert trained["chance"] == pytest.approx(sum(1 / len(r["options"]) for r in demo_rows[140:146]) / 6)
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert sorted({r["model"] for r in responses}) == ["base", "rl"] and len(responses) == 12
    table = (out / "report.md").read_text()
    assert "| rl | 6/6 | n/a | 100.0 (61.0-100.0) |" in table
    assert "| base | 0/6 |" in table and "expected" in table


def test_comparison_labels_must_differ_and_start_row_must_exist(tmp_path):
    with pytest.raises(ValidationError, match="own label"):
        EvalConfig(model="m", label="base", compare_with={"base": "other"})
    config = EvalConfig(model="m", benchmarks={"demo": str(DEMO_DATA)}, start_row=150, output_dir=str(tmp_path))
    with pytest.raises(EvalError, match="start_row 150 but it has 150 row"):
        run_eval(config, generator=ReasoningAnswers([]))


def test_hf_prompt_uses_chat_template_and_options(tiny_model, demo_rows):
    from medo1.data import PRESETS, parse_mcq

    item = parse_mcq(demo_rows[0], PRESETS["mcq"]["en"], None)
    generator = HFGenerator(str(tiny_model), max_new_tokens=2)
    text = generator.render(build_messages(item))
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")
    for letter, option in item.options.items():
        assert f"\n{letter}. {option}" in text
    assert "letter" in text


def test_invalid_rows_are_counted_not_fatal(tiny_model, demo_rows, tmp_path):
    data = _demo_mcq(demo_rows, 4, tmp_path / "mcq.jsonl")
    lines = data.read_text().splitlines()
    bad = json.loads(lines[1]) | {"answer_idx": "Z"}
    lines[1] = json.dumps(bad)
    lines.append(json.dumps({"question": "no options"}))
    data.write_text("\n".join(lines) + "\n")
    config = EvalConfig(
        model=str(tiny_model), benchmarks={"broken": str(data)}, max_new_tokens=4, output_dir=str(tmp_path / "out")
    )
    result = run_eval(config)["benchmarks"]["broken"]
    assert result["n"] == 3 and len(result["per_item"]) == 3
    assert [p["row"] for p in result["per_item"]] == [0, 2, 3]
    invalid = {(p["row"], p["field"]) for p in result["invalid_rows"]}
    assert invalid == {(1, "answer_idx"), (4, "options")}
    assert "Invalid rows skipped: 2" in (tmp_path / "out" / "report.md").read_text()


def test_endpoint_backend_with_retry(demo_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDO1_TEST_KEY", "test-key")
    answers = {row["question"]: row["answer_idx"] for row in demo_rows[:8]}
    # The stand-in plays a paid OpenAI-compatible API: it 429s the first request, then answers right.
    with StandIn(mcq_answers=answers, fail_first=1) as server:
        config = EvalConfig(
            endpoint=server.base_url,
            endpoint_model="stand-in",
            api_key_env="MEDO1_TEST_KEY",
            benchmarks={"demo": str(DEMO_DATA)},
            limit=8,
            max_new_tokens=64,
            concurrency=3,
            output_dir=str(tmp_path / "out"),
        )
        report = run_eval(config)
    result = report["benchmarks"]["demo"]
    assert result["n"] == 8 and result["accuracy"] == 1.0 and result["unparseable"] == 0
    assert report["model"] == "stand-in"
    assert len(server.bodies) == 9  # 8 questions + the one retried after the 429
    assert set(server.auth) == {"Bearer test-key"}
    retried = server.bodies[0]["messages"]
    assert sum(r["messages"] == retried for r in server.bodies) == 2
    assert all(r["model"] == "stand-in" and r["max_tokens"] == 64 and r["temperature"] == 0.0 for r in server.bodies)


def test_endpoint_without_key_fails_loudly(demo_rows, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDO1_TEST_KEY", raising=False)
    with StandIn(mcq_answers={}) as server:
        config = EvalConfig(
            endpoint=server.base_url,
            api_key_env="MEDO1_TEST_KEY",
            benchmarks={"demo": str(DEMO_DATA)},
            limit=1,
            output_dir=str(tmp_path / "out"),
        )
        with pytest.raises(EvalError, match="HTTP 401"):
            run_eval(config)
    assert server.auth == [None]


# --------------------------------------------------------------------------- faults and failed runs


def endpoint_config(base_url: str, out: Path, benchmarks: dict[str, str], **extra) -> EvalConfig:
    values = {
        "endpoint": base_url,
        "endpoint_model": "stand-in",
        "api_key_env": "MEDO1_TEST_KEY",
        "benchmarks": benchmarks,
        "max_new_tokens": 64,
        "output_dir": str(out),
        "backoff_s": 0.01,
    }
    return EvalConfig(**(values | extra))


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("responses.jsonl", "report.json", "report.md")}


def test_endpoint_faults_and_timeout_are_retried_through_the_shared_client(demo_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDO1_TEST_KEY", "test-key")
    answers = {row["question"]: row["answer_idx"] for row in demo_rows[:3]}
    faults = ["hang", "500", "malformed-json", "429-seconds"]
    with StandIn(mcq_answers=answers, faults=faults, retry_after_s=0.2, hang_s=5) as server:
        config = endpoint_config(
            server.base_url, tmp_path / "out", {"demo": str(DEMO_DATA)}, limit=3, concurrency=1, timeout_s=0.5
        )
        report = run_eval(config)
    assert report["benchmarks"]["demo"]["accuracy"] == 1.0
    assert [fault for _, fault in server.fault_log] == faults
    assert len(server.bodies) == 3 + len(faults)


def test_unreachable_endpoint_fails_in_one_line_and_keeps_the_previous_outputs(
    demo_rows, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MEDO1_TEST_KEY", "test-key")
    out = tmp_path / "out"
    answers = {row["question"]: row["answer_idx"] for row in demo_rows[:4]}
    with StandIn(mcq_answers=answers) as server:
        run_eval(endpoint_config(server.base_url, out, {"demo": str(DEMO_DATA)}, limit=4))
    before = outputs(out)
    assert len(before["responses.jsonl"].splitlines()) == 4

    closed = f"http://127.0.0.1:{free_port()}/v1"  # refused: nothing listens there
    with pytest.raises(EvalError) as error:
        run_eval(endpoint_config(closed, out, {"demo": str(DEMO_DATA)}, limit=4, max_retries=2))
    message = str(error.value)
    assert "ConnectError" in message and "after 3 attempt(s)" in message and "\n" not in message
    assert outputs(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "responses.jsonl"]

    code = main(["eval", "--endpoint", closed, "--benchmark", f"demo={DEMO_DATA}", "--limit", "2",
                 "--output-dir", str(out), "--set", "max_retries=1", "--set", "backoff_s=0.01"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("medo1: error:")][0].count("ConnectError") == 1
    assert outputs(out) == before


def test_a_benchmark_without_a_valid_row_fails_and_invalid_rows_are_shown(demo_rows, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MEDO1_TEST_KEY", "test-key")
    good = _demo_mcq(demo_rows, 5, tmp_path / "good.jsonl")
    lines = good.read_text().splitlines()
    lines[1] = json.dumps(json.loads(lines[1]) | {"answer_idx": "Z"})
    lines[3] = json.dumps({"question": "no options"})
    good.write_text("\n".join(lines) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(json.dumps({"question": f"q{i}", "answer_idx": "A"}) for i in range(3)) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("previous")
    answers = {row["question"]: row["answer_idx"] for row in demo_rows[:5]}
    caplog.set_level(logging.WARNING, logger="medo1.eval")
    with StandIn(mcq_answers=answers) as server:
        expected = rf"benchmark 'broken' \({broken}\): none of its 3 row\(s\) is a valid"
        with pytest.raises(EvalError, match=expected) as error:
            run_eval(endpoint_config(server.base_url, out, {"good": str(good), "broken": str(broken)}))
        assert f"first: {broken} row 0 (line 1): field 'options'" in str(error.value)
        assert server.bodies == []  # refused before anything was generated
        assert (out / "report.json").read_text() == "previous"

        report = run_eval(endpoint_config(server.base_url, out, {"good": str(good)}))
    assert report["benchmarks"]["good"]["n"] == 3
    shown = [r.getMessage() for r in caplog.records]
    assert f"benchmark 'good' ({good}): 2 of 5 row(s) invalid, skipped (all listed in report.json)" in shown
    assert any(m.strip().startswith(f"{good} row 1 (line 2): field 'answer_idx'") for m in shown)
    assert any(m.strip().startswith(f"{good} row 3 (line 4): field 'options'") for m in shown)
