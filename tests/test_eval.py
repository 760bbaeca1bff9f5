"""MCQ evaluation: answer extraction, the tiny real model end to end, an endpoint stand-in, invalid rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from medo1.cli import main
from medo1.eval.config import EvalConfig, EvalError
from medo1.eval.extraction import extract_answer
from medo1.eval.generators import Generation, HFGenerator
from medo1.eval.prompts import build_messages
from medo1.eval.run import run_eval
from medo1.eval.stats import wilson_interval
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
    header = table.index("| benchmark | n | unique | accuracy % (medo1) | strict % (medo1) | unparseable |")
    assert table[header + 1].startswith("|---")
    accuracy = f"{100 * result['accuracy']:.1f}"
    assert table[header + 2].startswith(f"| demo | 8 | 8 | {accuracy} | {accuracy} | {result['unparseable']} |")


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

    def generate(self, prompts, *, samples=1, seed=0):
        letters = [next(v for q, v in self.letters.items() if m[0]["content"].startswith(q)) for m in prompts]
        text = "## Thinking\n\nThe findings fit one option.\n\n## Final Response\n\nThe answer is {}."
        return [[Generation(text.format(x))] * samples for x in letters]


def test_comparison_scores_every_model_on_the_same_held_out_rows(tiny_model, demo_rows, tmp_path):
    out = tmp_path / "eval"
    config = EvalConfig(
        model="trained",
        benchmarks={"demo": str(DEMO_DATA)},
        start_row=140,
        limit=6,
        max_new_tokens=8,
        label="rl",
        compare_with={"base": str(tiny_model)},
        output_dir=str(out),
    )
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
    assert "| rl | 6/6 | n/a | n/a | 1.000 | 100.0 (61.0-100.0) |" in table
    assert "| base | 0/6 |" in table and "expected" in table


def test_comparison_labels_must_differ_and_start_row_must_exist(tmp_path):
    with pytest.raises(ValidationError, match="own label"):
        EvalConfig(model="m", label="base", compare_with={"base": "other"})
    config = EvalConfig(model="m", benchmarks={"demo": str(DEMO_DATA)}, start_row=150, output_dir=str(tmp_path))
    with pytest.raises(EvalError, match="start_row 150 but it has 150 row"):
        run_eval(config, generator=ReasoningAnswers([]))


def test_hf_prompt_uses_chat_template_and_options(tiny_model, demo_rows):
    from medo1.data.sources import PRESETS, parse_mcq

    item = parse_mcq(demo_rows[0], PRESETS["mcq"]["en"], None)
    generator = HFGenerator(str(tiny_model), max_new_tokens=2)
    assert generator.generation_config.do_sample is False
    text = generator.render(build_messages(item))
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")
    for letter, option in item.options.items():
        assert f"\n{letter}. {option}" in text
    assert "letter" in text
    # Sampling as the RL rollouts sample: temperature and top-p only, no top-k.
    sampling = HFGenerator(str(tiny_model), max_new_tokens=2, temperature=0.7, top_p=0.9).generation_config
    assert (sampling.do_sample, sampling.temperature, sampling.top_p, sampling.top_k) == (True, 0.7, 0.9, 0)


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
            server.base_url,
            tmp_path / "out",
            {"demo": str(DEMO_DATA)},
            limit=3,
            concurrency=1,
            timeout_s=0.5,
            max_retries=len(faults),  # one question meets every fault in turn
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

    code = main(
        [
            "eval",
            "--endpoint",
            closed,
            "--benchmark",
            f"demo={DEMO_DATA}",
            "--limit",
            "2",
            "--output-dir",
            str(out),
            "--set",
            "max_retries=1",
            "--set",
            "backoff_s=0.01",
        ]
    )
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
    caplog.set_level(logging.WARNING, logger="medo1.eval.scoring")
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


# --------------------------------------------------------------------------- sampled comparison


def test_sampling_settings_are_checked():
    with pytest.raises(ValidationError, match="need temperature > 0"):
        EvalConfig(model="m", samples_per_prompt=4)
    with pytest.raises(ValidationError, match="need temperature > 0"):
        EvalConfig(model="m", seeds=[0, 1])
    with pytest.raises(ValidationError, match="must all differ"):
        EvalConfig(model="m", temperature=1.0, seeds=[0], noise_seeds=[0], compare_with={"sft": "s"})
    with pytest.raises(ValidationError, match="baseline 'sfT' is none of the models' labels: sft, model"):
        EvalConfig(model="m", compare_with={"sft": "s"}, baseline="sfT")
    with pytest.raises(ValidationError, match="noise_seeds re-run the baseline"):
        EvalConfig(model="m", temperature=1.0, noise_seeds=[1])
    assert EvalConfig(model="m", compare_with={"base": "b", "sft": "s"}).baseline_label == "sft"
    assert EvalConfig(model="m", compare_with={"base": "b", "sft": "s"}, baseline="base").baseline_label == "base"
    assert EvalConfig(model="m").baseline_label is None


def test_verifiable_prompts_are_the_rl_stages(tmp_path):
    from medo1.data.sources import VerifiableProblem
    from medo1.rl.config import RLConfig
    from medo1.rl.rollout import load_problems

    system = "You are a careful physician."
    rl = RLConfig(
        model={"name_or_path": "m"},
        reward={"kind": "answer_match"},
        data={"path": str(DEMO_DATA), "format": "verifiable", "limit": 5, "system_prompt": system},
    )
    problems, _ = load_problems(rl, tmp_path, is_main=False)
    config = EvalConfig(model="m", format="verifiable", benchmarks={"d": str(DEMO_DATA)}, limit=5, system_prompt=system)
    from medo1.eval.prompts import reference_of
    from medo1.eval.scoring import load_benchmark

    loaded = load_benchmark(config, str(DEMO_DATA))
    items = [item for _, item in loaded.examples]
    assert all(isinstance(item, VerifiableProblem) for item in items)
    assert [build_messages(item, system) for item in items] == problems.prompts
    assert [reference_of(item) for item in items] == problems.references


def _responses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def test_sampled_comparison_mechanics_with_the_tiny_model(tiny_model, tmp_path):
    """Two copies of one model under the same seeds give the same responses (a zero gain with a zero-width
    interval), another seed gives other responses (the noise run), and every count adds up."""
    out = tmp_path / "eval"
    config = EvalConfig(
        model=str(tiny_model),
        label="rl",
        compare_with={"sft": str(tiny_model)},
        format="verifiable",
        benchmarks={"heldout": str(DEMO_DATA)},
        start_row=90,
        limit=4,
        temperature=1.0,
        samples_per_prompt=3,
        seeds=[5],
        noise_seeds=[6],
        max_new_tokens=4,
        batch_size=4,
        output_dir=str(out),
    )
    report = run_eval(config)

    responses = _responses(out)
    by_model = {label: [r for r in responses if r["model"] == label] for label in ("rl", "sft", "sft (noise seed 6)")}
    assert [len(rows) for rows in by_model.values()] == [12, 12, 12] and len(responses) == 36
    text = {label: [r["response"] for r in rows] for label, rows in by_model.items()}
    assert text["rl"] == text["sft"]  # the same model under the same seed draws the same samples
    assert text["sft (noise seed 6)"] != text["sft"]
    assert any(len(set(text["rl"][i : i + 3])) > 1 for i in range(0, 12, 3))  # a question's samples differ
    references = [row["Ground-True Answer"] for row in json.loads(DEMO_DATA.read_text())[90:94]]
    assert [r["reference"] for r in by_model["rl"]] == [ref for ref in references for _ in range(3)]
    assert [(r["row"], r["sample"], r["seed"]) for r in by_model["rl"][:4]] == [
        (90, 0, 5),
        (90, 1, 5),
        (90, 2, 5),
        (91, 0, 5),
    ]

    for label in ("rl", "sft"):
        result = report["comparison"][label]["heldout"]
        rows = by_model[label]
        assert (result["n"], result["unique_questions"], result["responses"]) == (4, 4, 12)
        assert all(0 <= r["tokens"] <= 4 for r in rows)
        assert result["hit_token_cap"] == sum(r["hit_cap"] for r in rows) == sum(r["tokens"] == 4 for r in rows)
        assert result["mean_response_tokens"] == pytest.approx(sum(r["tokens"] for r in rows) / 12)
        assert result["format_ok"] == 0 and result["correct_among_well_formed"] is None  # a random model
        assert result["reward_mean"] == 0.0 and result["chance"] is None
    paired = report["paired"]
    assert paired["baseline"] == "sft" and "bootstrap" in paired["method"]
    gains = paired["benchmarks"]["heldout"]["models"]["rl"]
    assert (
        gains["reward"]["difference"] == 0 and gains["reward"]["ci95"] == [0, 0] and gains["reward"]["questions"] == 4
    )
    assert [run["seed"] for run in paired["benchmarks"]["heldout"]["noise"]] == [6]
    table = (out / "report.md").read_text()
    assert "temperature 1.0, top-p 1.0, 3 sample(s) per question under seed(s) 5" in table
    assert "| rl | +0.000 (+0.000 to +0.000) |" in table and "| sft, seed 6 vs seed 5 (noise) |" in table
    assert "| rl | 0/12 |" in table


class Scripted:
    """A model whose answers are fixed per question: `answer(index, seed, sample) -> response text`."""

    def __init__(self, answer):
        self.answer = answer

    def generate(self, prompts, *, samples=1, seed=0):
        return [[Generation(self.answer(i, seed, s), 40, s == 1) for s in range(samples)] for i in range(len(prompts))]


def _reasoned(answer: str) -> str:
    return f"## Thinking\n\nShort reasoning.\n\n## Final Response\n\n{answer}"


def test_paired_gain_and_noise_band_on_scripted_models(tmp_path, monkeypatch, demo_rows):
    """Answers whose rewards are known exactly: the reported gains, intervals, rates and verdicts are those."""
    import medo1.eval.run as evaluation

    references = [row["Ground-True Answer"] for row in demo_rows[100:108]]
    # rl: every answer in the format; the even questions right (reward 1.0), the odd ones wrong (0.1).
    rl = Scripted(lambda i, seed, s: _reasoned(references[i]) if i % 2 == 0 else _reasoned("I am not sure."))
    # sft (the baseline): one sample in the format and wrong (0.1), one out of it (0.0): 0.05 per question; under
    # the noise seed, question 0's second sample is in the format too (a seed-to-seed difference of 0.05 / 8).
    sft = Scripted(lambda i, seed, s: _reasoned("I am not sure.") if s == 0 or (seed == 9 and i == 0) else "x")
    base = Scripted(lambda i, seed, s: "no headers")  # reward 0 everywhere
    models = {"sft-dir": sft, "base-dir": base}
    monkeypatch.setattr(evaluation, "make_generator", lambda config, model=None: models[model])
    out = tmp_path / "eval"
    config = EvalConfig(
        model="rl-dir",
        label="rl",
        compare_with={"base": "base-dir", "sft": "sft-dir"},
        format="verifiable",
        benchmarks={"heldout": str(DEMO_DATA)},
        start_row=100,
        limit=8,
        temperature=1.0,
        samples_per_prompt=2,
        seeds=[3],
        noise_seeds=[9],
        output_dir=str(out),
    )
    report = run_eval(config, generator=rl)

    summary = report["comparison"]
    assert summary["rl"]["heldout"]["format_ok_rate"] == 1.0
    assert summary["rl"]["heldout"]["correct_among_well_formed"] == 0.5
    assert summary["rl"]["heldout"]["reward_mean"] == pytest.approx((1.0 + 0.1) / 2)
    assert summary["sft"]["heldout"]["reward_mean"] == pytest.approx(0.05)
    assert summary["sft"]["heldout"]["hit_token_cap"] == 8 and summary["sft"]["heldout"]["mean_response_tokens"] == 40
    heldout = report["paired"]["benchmarks"]["heldout"]
    rl_gain = heldout["models"]["rl"]
    assert rl_gain["reward"]["difference"] == pytest.approx(0.55 - 0.05)
    assert rl_gain["format_ok"]["difference"] == pytest.approx(0.5)
    assert rl_gain["format_ok"]["ci95"] == pytest.approx([0.5, 0.5])  # the same gain on every question
    assert rl_gain["correct"]["difference"] == pytest.approx(0.5)
    low, high = rl_gain["reward"]["ci95"]
    assert 0 < low < 0.5 < high  # half the questions gain 0.95, half 0.05
    # The noise run: question 0 gains 0.1 / 2 samples = 0.05 reward; over 8 questions 0.00625.
    (noise,) = heldout["noise"]
    assert noise["seed"] == 9 and noise["reward"]["difference"] == pytest.approx(0.05 / 8)
    assert heldout["noise_band"]["reward"] == pytest.approx(0.05 / 8)
    assert rl_gain["reward"]["beyond_noise"] is True
    base_gain = heldout["models"]["base"]
    assert base_gain["reward"]["difference"] == pytest.approx(-0.05) and base_gain["reward"]["beyond_noise"] is True
    table = (out / "report.md").read_text()
    assert "Against sft, question by question" in table
    assert "| rl | +0.500 (" in table and "| gain beyond the noise |" in table and "| loss beyond the noise |" in table
    assert "| sft, seed 9 vs seed 3 (noise) | +0.006 (" in table


def test_endpoint_sampling_sends_top_p_and_a_seed_per_response(demo_rows, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDO1_TEST_KEY", "test-key")
    answers = {row["question"]: row["answer_idx"] for row in demo_rows[:3]}
    with StandIn(mcq_answers=answers) as server:
        config = endpoint_config(
            server.base_url,
            tmp_path / "out",
            {"demo": str(DEMO_DATA)},
            limit=3,
            temperature=0.7,
            top_p=0.9,
            samples_per_prompt=2,
            seeds=[4],
        )
        report = run_eval(config)
    assert report["benchmarks"]["demo"]["responses"] == 6 and report["benchmarks"]["demo"]["accuracy"] == 1.0
    assert sorted(body["seed"] for body in server.bodies) == [8, 8, 8, 9, 9, 9]
    assert all(body["top_p"] == 0.9 and body["temperature"] == 0.7 for body in server.bodies)
    assert report["benchmarks"]["demo"]["hit_token_cap"] == 0  # finish_reason "stop" from the stand-in


# --------------------------------------------------------------------------- engines: vLLM (a CPU stand-in) and HF


def _demo_prompts(n: int) -> list:
    rows = json.loads(DEMO_DATA.read_text())[90 : 90 + n]
    return [[{"role": "user", "content": row["Open-ended Verifiable Question"]}] for row in rows]


@pytest.mark.e2e
def test_vllm_engine_gives_the_hf_engines_greedy_answers(tiny_model, monkeypatch):
    from medo1.eval.config import EvalVLLMSettings
    from medo1.eval.generators import VLLMGenerator
    from tests import vllm_standin

    vllm_standin.install(monkeypatch)
    prompts = _demo_prompts(3)
    hf = HFGenerator(str(tiny_model), max_new_tokens=6).generate(prompts)
    engine = VLLMGenerator(str(tiny_model), EvalVLLMSettings(max_num_seqs=64), max_new_tokens=6)
    vllm = engine.generate(prompts)
    assert [[(g.text, g.tokens, g.hit_cap) for g in gens] for gens in vllm] == [
        [(g.text, g.tokens, g.hit_cap) for g in gens] for gens in hf
    ]
    (llm,) = vllm_standin.StandInLLM.instances
    assert llm.kwargs["max_num_seqs"] == 64 and llm.kwargs["gpu_memory_utilization"] == 0.8
    assert llm.requests == 3  # every prompt handed over in one call

    sampled = VLLMGenerator(str(tiny_model), EvalVLLMSettings(), max_new_tokens=3, temperature=1.0)
    first, again, other = (sampled.generate(prompts[:2], samples=3, seed=s) for s in (4, 4, 5))
    assert [len(gens) for gens in first] == [3, 3]
    assert first == again and first != other  # each prompt's seed alone decides its samples
    assert any(len({g.text for g in gens}) > 1 for gens in first)


def test_vllm_refusal_is_one_line(tiny_model, monkeypatch):
    from medo1.eval.config import EvalVLLMSettings
    from medo1.eval.generators import VLLMGenerator
    from tests import vllm_standin

    vllm_standin.install(monkeypatch)
    engine = VLLMGenerator(str(tiny_model), EvalVLLMSettings(max_model_len=8), max_new_tokens=4)
    with pytest.raises(
        EvalError,
        match=r"^vLLM refused a request: The decoder prompt \(length \d+\) is longer than "
        r"the maximum model length of 8\.",
    ) as error:
        engine.generate(_demo_prompts(1))
    assert "\n" not in str(error.value)


def test_auto_engine_is_vllm_where_it_runs_and_hf_elsewhere(tiny_model, tmp_path, monkeypatch):
    import torch

    from medo1.eval.generators import resolve_engine

    config = EvalConfig(
        model=str(tiny_model),
        format="verifiable",
        benchmarks={"d": str(DEMO_DATA)},
        start_row=90,
        limit=2,
        max_new_tokens=4,
        output_dir=str(tmp_path / "out"),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine(config) == "hf"  # the CPU: no GPU
    with pytest.raises(EvalError, match="engine=vllm cannot run here: no CUDA GPU is visible; use engine=hf"):
        resolve_engine(config.model_copy(update={"engine": "vllm"}))

    from tests import vllm_standin

    vllm_standin.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU where vLLM imports: the stand-in runs it
    report = run_eval(config)
    assert report["settings"]["engine"] == "vllm" and len(vllm_standin.StandInLLM.instances) == 1
    assert report["benchmarks"]["d"]["responses"] == 2
    assert resolve_engine(config.model_copy(update={"engine": "hf"})) == "hf"
