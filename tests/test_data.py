"""Unit tests for medo1.data.sources: formats, presets, field mapping, and every bad-input path."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from medo1.data import sources as data
from medo1.data.sources import (
    ChatExample,
    DataConfig,
    DataError,
    MCQItem,
    Problem,
    VerifiableProblem,
    enforce_policy,
    load_examples,
    load_from_config,
    reasoning_target,
    write_rejects,
)

DEMO = Path(__file__).parent.parent / "examples/data/medical_o1_demo.json"


def write_json(tmp_path: Path, rows, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_o1(i: int = 0) -> dict:
    return {"Question": f"Q{i}?", "Complex_CoT": f"think {i}", "Response": f"answer {i}"}


# --------------------------------------------------------------------------- medical_o1


def test_medical_o1_en_on_demo(demo_rows):
    result = load_examples(DEMO, "medical_o1", preset="en")
    assert len(demo_rows) == 150
    assert result.rows == 150
    assert result.problems == []
    assert [row for row, _ in result.examples] == list(range(150))
    assert result.format == "medical_o1"
    assert result.path == str(DEMO)
    for (row, ex), raw in zip(result.examples, demo_rows):
        assert isinstance(ex, ChatExample)
        assert ex.messages == [{"role": "user", "content": raw["Question"]}]
        assert ex.completion == f"## Thinking\n\n{raw['Complex_CoT']}\n\n## Final Response\n\n{raw['Response']}"


def test_medical_o1_default_preset_is_en(demo_rows):
    result = load_examples(DEMO, "medical_o1", limit=3)
    assert len(result.examples) == 3
    assert result.examples[0][1].messages[0]["content"] == demo_rows[0]["Question"]


def test_reasoning_target_exact():
    assert reasoning_target("c", "r") == "## Thinking\n\nc\n\n## Final Response\n\nr"


def test_medical_o1_system_prompt(tmp_path):
    path = write_json(tmp_path, [good_o1()])
    result = load_examples(path, "medical_o1", system_prompt="You are a doctor.")
    assert result.examples[0][1].messages == [
        {"role": "system", "content": "You are a doctor."},
        {"role": "user", "content": "Q0?"},
    ]


def test_medical_o1_es_preset(tmp_path):
    rows = [
        {"Pregunta": "¿Qué es?", "Razonamiento_Complejo": "Pienso", "Respuesta": "Es esto", "Archivo_fuente": "a.pdf"},
        {"Pregunta": "¿Dos?", "Razonamiento_Complejo": "Razono", "Respuesta": "Dos"},
    ]
    result = load_examples(write_json(tmp_path, rows), "medical_o1", preset="es")
    assert result.problems == []
    assert len(result.examples) == 2
    ex = result.examples[0][1]
    assert ex.messages == [{"role": "user", "content": "¿Qué es?"}]
    assert ex.completion == "## Thinking\n\nPienso\n\n## Final Response\n\nEs esto"
    assert "a.pdf" not in ex.completion and all("a.pdf" not in m["content"] for m in ex.messages)
    assert result.examples[1][1].completion == "## Thinking\n\nRazono\n\n## Final Response\n\nDos"


def test_es_preset_on_english_rows_reports_spanish_field(tmp_path):
    result = load_examples(write_json(tmp_path, [good_o1()]), "medical_o1", preset="es")
    assert result.examples == []
    columns = "missing (the row's columns: Question, Complex_CoT, Response)"
    assert [(p.row, p.field, p.message) for p in result.problems] == [(0, "Pregunta", columns)]


def test_fields_override(tmp_path):
    rows = [{"Prompt": "P?", "Complex_CoT": "c", "Response": "r", "Question": "ignored"}]
    result = load_examples(write_json(tmp_path, rows), "medical_o1", preset="en", fields={"question": "Prompt"})
    assert result.problems == []
    assert result.examples[0][1].messages == [{"role": "user", "content": "P?"}]


def test_fields_override_missing_column_reported_by_new_name(tmp_path):
    result = load_examples(write_json(tmp_path, [good_o1()]), "medical_o1", fields={"question": "Prompt"})
    columns = "missing (the row's columns: Question, Complex_CoT, Response)"
    assert [(p.field, p.message) for p in result.problems] == [("Prompt", columns)]


def test_unknown_preset_raises(tmp_path):
    with pytest.raises(DataError) as err:
        load_examples(write_json(tmp_path, [good_o1()]), "medical_o1", preset="fr")
    assert "'fr'" in str(err.value)
    assert "en" in str(err.value) and "es" in str(err.value)


def test_unknown_field_override_raises(tmp_path):
    with pytest.raises(DataError) as err:
        load_examples(write_json(tmp_path, [good_o1()]), "medical_o1", fields={"answer": "A"})
    assert "answer" in str(err.value)
    assert "question" in str(err.value)  # lists the format's fields


def test_unknown_format_raises(tmp_path):
    with pytest.raises(DataError) as err:
        load_examples(write_json(tmp_path, [good_o1()]), "csv")
    assert "'csv'" in str(err.value)


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture
def bad_jsonl(tmp_path) -> Path:
    lines = [
        json.dumps(good_o1(0)),  # line 1, row 0: ok
        json.dumps({"Question": "q", "Complex_CoT": "c"}),  # line 2, row 1: missing Response
        "",  # line 3: blank, skipped
        json.dumps({"Question": "   \n", "Complex_CoT": "c", "Response": "r"}),  # line 4, row 2: whitespace
        json.dumps({"Question": "q", "Complex_CoT": 5, "Response": "r"}),  # line 5, row 3: int
        json.dumps({"Question": "q", "Complex_CoT": "c", "Response": ["r"]}),  # line 6, row 4: list
        '{"Question": "q", "Complex_CoT": ',  # line 7, row 5: invalid JSON
        json.dumps(["not", "an", "object"]),  # line 8, row 6: not an object
        "   ",  # line 9: whitespace only, skipped
        json.dumps({"Question": "q", "Complex_CoT": "c", "Response": None}),  # line 10, row 7: null
        json.dumps({"Question": "q", "Complex_CoT": "", "Response": "r"}),  # line 11, row 8: empty
        json.dumps(good_o1(9)),  # line 12, row 9: ok
    ]
    return write_jsonl(tmp_path, lines)


def test_jsonl_bad_rows_give_problems(bad_jsonl):
    result = load_examples(bad_jsonl, "medical_o1")
    assert result.rows == 10  # blank lines are not rows
    assert [row for row, _ in result.examples] == [0, 9]
    got = [(p.file, p.row, p.line, p.field) for p in result.problems]
    f = str(bad_jsonl)
    assert got == [
        (f, 1, 2, "Response"),
        (f, 2, 4, "Question"),
        (f, 3, 5, "Complex_CoT"),
        (f, 4, 6, "Response"),
        (f, 5, 7, None),
        (f, 6, 8, None),
        (f, 7, 10, "Response"),
        (f, 8, 11, "Complex_CoT"),
    ]
    messages = [p.message for p in result.problems]
    assert messages[0] == "missing (the row's columns: Question, Complex_CoT)"
    assert messages[1] == "empty"
    assert messages[2] == "expected a string, got int"
    assert messages[3] == "expected a string, got list"
    assert messages[4].startswith("invalid JSON at column ")
    assert "column" in messages[4]
    assert messages[5] == "expected a JSON object, got list"
    assert messages[6] == "missing (null)"
    assert messages[7] == "empty"


def test_problem_str_format(bad_jsonl):
    problems = load_examples(bad_jsonl, "medical_o1").problems
    missing = "missing (the row's columns: Question, Complex_CoT)"
    assert str(problems[0]) == f"{bad_jsonl} row 1 (line 2): field 'Response': {missing}"
    assert str(problems[2]) == f"{bad_jsonl} row 3 (line 5): field 'Complex_CoT': expected a string, got int"
    # no field: the field part is left out
    assert str(problems[4]).startswith(f"{bad_jsonl} row 5 (line 7): invalid JSON at column ")


def test_problem_str_without_line():
    assert str(Problem("f.json", 3, "Question", "empty")) == "f.json row 3: field 'Question': empty"
    assert str(Problem("f.json", 0, None, "boom")) == "f.json row 0: boom"


def test_problem_to_dict():
    p = Problem("f.jsonl", 2, "Response", "missing", 5)
    assert p.to_dict() == {"file": "f.jsonl", "row": 2, "line": 5, "field": "Response", "problem": "missing"}


def test_json_list_problems_have_no_line(tmp_path):
    rows = [good_o1(0), {"Question": "q", "Complex_CoT": "c"}, "a string", 7]
    path = write_json(tmp_path, rows)
    result = load_examples(path, "medical_o1")
    assert result.rows == 4
    assert [row for row, _ in result.examples] == [0]
    assert [(p.row, p.line, p.field, p.message) for p in result.problems] == [
        (1, None, "Response", "missing (the row's columns: Question, Complex_CoT)"),
        (2, None, None, "expected a JSON object, got str"),
        (3, None, None, "expected a JSON object, got int"),
    ]


def test_invalid_json_file_raises_with_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"Question": "q"},\n  {oops}\n]\n')
    with pytest.raises(DataError) as err:
        load_examples(path, "medical_o1")
    msg = str(err.value)
    assert str(path) in msg
    assert "line 3" in msg


def test_jsonl_content_in_json_file_raises(tmp_path):
    path = tmp_path / "actually_lines.json"
    path.write_text(json.dumps(good_o1(0)) + "\n" + json.dumps(good_o1(1)) + "\n")
    with pytest.raises(DataError) as err:
        load_examples(path, "medical_o1")
    assert str(path) in str(err.value)
    assert "line 2" in str(err.value)


def test_json_dict_not_list_raises(tmp_path):
    path = write_json(tmp_path, {"data": [good_o1()]})
    with pytest.raises(DataError) as err:
        load_examples(path, "medical_o1")
    assert str(path) in str(err.value)
    assert "dict" in str(err.value)


def test_file_not_found_raises(tmp_path):
    path = tmp_path / "missing.jsonl"
    with pytest.raises(DataError) as err:
        load_examples(path, "medical_o1")
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)


# --------------------------------------------------------------------------- JSON lists, streamed

# Values cut at every byte by a tiny read size: numbers (`1.` and `1e+` are not yet numbers), literals, escapes
# (\\uXXXX and surrogate pairs), multi-byte UTF-8 characters split between reads, a BOM, whitespace everywhere.
TRICKY_JSON_LISTS = [
    '[1, 23, 4.5, -6e+2, 1.25E-3, 12345678901234567890, true, false, null, "x", [], {}]',
    " \n [ \n ] \n",
    '[{"Question": "caf\u00e9 \\u00e9 \\ud83d\\ude00 \\" \\\\ \\n", "n": -0.0}, {"a": [1, {"b": "\u6f22\u5b57 \U0001f600"}]}]',
    '\ufeff[{"Question": "q"}]',
    "[" + ", ".join(json.dumps({"Question": "q" * i, "x": i / 7}) for i in range(40)) + "]",
]


@pytest.mark.parametrize("text", TRICKY_JSON_LISTS)
def test_a_json_list_read_a_few_bytes_at_a_time_equals_json_loads(tmp_path, monkeypatch, text):
    path = tmp_path / "rows.json"
    path.write_text(text, encoding="utf-8")
    expected = json.loads(text.removeprefix("\ufeff"))
    for chunk in [1, 2, 3, 5, 8, 13, 1 << 20]:
        monkeypatch.setattr(data, "JSON_CHUNK_BYTES", chunk)
        records = list(data.iter_records(path))
        assert [(row, line, error) for row, line, _, error in records] == [
            (i, None, None) for i in range(len(expected))
        ]
        assert [record for _, _, record, _ in records] == expected, chunk


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            '[\n  {"Question": "q"},\n  {oops}\n]\n',
            " row 1: invalid JSON at line 3 column 4: Expecting property name enclosed in double quotes",
        ),
        ('[{"a": 1}, {"b": "unterminated]', " row 1: invalid JSON at line 1 column 18: Unterminated string"),
        ('[{"a": 1} {"b": 2}]', " row 0: invalid JSON at line 1 column 11: Expecting ',' delimiter"),
        ("[1, 2,]", " row 2: invalid JSON at line 1 column 7: Expecting value"),
        ("[1, 2", " row 1: invalid JSON at line 1 column 6: Expecting ',' delimiter"),
        ('[{"a": tru}]', " row 0: invalid JSON at line 1 column 8: Expecting value"),
        ("[1]\n[2]\n", ": invalid JSON at line 2 column 1: Extra data"),
    ],
)
def test_broken_json_list_names_row_line_and_column_as_json_does(tmp_path, monkeypatch, text, where):
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(text)
    assert f"line {parsed.value.lineno} column {parsed.value.colno}: {data.json_error_text(parsed.value)}" in where
    for chunk in [1, 4, 1 << 20]:
        monkeypatch.setattr(data, "JSON_CHUNK_BYTES", chunk)
        with pytest.raises(DataError) as err:
            load_examples(path, "medical_o1")
        assert str(err.value) == f"{path}{where}", chunk


def test_latin1_bytes_in_a_json_list_name_their_line_whatever_the_read_size(tmp_path, monkeypatch):
    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n{"Question": "a"},\n{"Question": "caf\xe9"}\n]\n')
    for chunk in [1, 3, 1 << 20]:
        monkeypatch.setattr(data, "JSON_CHUNK_BYTES", chunk)
        with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at line 3\)"):
            list(data.iter_records(path))


def test_a_50_mb_json_list_is_read_in_bounded_memory_with_the_rows_of_the_jsonl_path(tmp_path):
    rows = (
        {"Question": f"Q{i}? " + "fever " * 40, "Complex_CoT": "think " * 100, "Response": f"answer {i}"}
        for i in range(52_000)
    )
    listed, lines = tmp_path / "rows.json", tmp_path / "rows.jsonl"
    with listed.open("w") as as_list, lines.open("w") as as_lines:
        as_list.write("[")
        for i, row in enumerate(rows):
            text = json.dumps(row)
            as_list.write(("," if i else "") + text)
            as_lines.write(text + "\n")
        as_list.write("]")
    size = listed.stat().st_size
    assert size > 45_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in data.iter_records(listed))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 52_000
    assert peak < size / 5, f"peak {peak / 1e6:.1f} MB reading a {size / 1e6:.1f} MB JSON list"
    pairs = zip(data.iter_records(listed), data.iter_records(lines), strict=True)
    assert all((a[0], a[2]) == (b[0], b[2]) for a, b in pairs)


def test_limit_reads_first_n_rows():
    result = load_examples(DEMO, "medical_o1", limit=5)
    assert result.rows == 5
    assert [row for row, _ in result.examples] == [0, 1, 2, 3, 4]
    assert sorted(result.raw) == [0, 1, 2, 3, 4]


def test_limit_counts_invalid_rows_and_skips_blank_lines(bad_jsonl):
    result = load_examples(bad_jsonl, "medical_o1", limit=3)
    assert result.rows == 3
    assert [row for row, _ in result.examples] == [0]
    assert [p.row for p in result.problems] == [1, 2]


def test_load_from_config(tmp_path):
    path = write_json(tmp_path, [{"Pregunta": "p", "Razonamiento_Complejo": "r", "Respuesta": "s"}] * 3)
    cfg = DataConfig(path=str(path), preset="es", limit=2, system_prompt="sys")
    result = load_from_config(cfg)
    assert result.rows == 2
    assert result.examples[0][1].messages[0] == {"role": "system", "content": "sys"}


# --------------------------------------------------------------------------- sharegpt


def test_sharegpt_from_value(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    result = load_examples(write_jsonl(tmp_path, [json.dumps(row)]), "sharegpt")
    assert result.problems == []
    ex = result.examples[0][1]
    assert ex.messages == [{"role": "user", "content": "Q"}]
    assert ex.completion == "A"


def test_sharegpt_role_content(tmp_path):
    row = {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    result = load_examples(write_json(tmp_path, [row]), "sharegpt")
    assert result.problems == []
    assert result.examples[0][1].messages == [{"role": "user", "content": "Q"}]
    assert result.examples[0][1].completion == "A"


def test_sharegpt_system_turn(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    path = write_json(tmp_path, [row])
    ex = load_examples(path, "sharegpt").examples[0][1]
    assert ex.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    # a configured system prompt does not replace the row's own system turn
    ex2 = load_examples(path, "sharegpt", system_prompt="other").examples[0][1]
    assert ex2.messages == ex.messages


def test_sharegpt_system_prompt_inserted_when_no_system_turn(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    ex = load_examples(write_json(tmp_path, [row]), "sharegpt", system_prompt="SP").examples[0][1]
    assert ex.messages == [{"role": "system", "content": "SP"}, {"role": "user", "content": "Q"}]


def test_sharegpt_multi_turn(tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"},
            {"from": "gpt", "value": "A2"},
        ]
    }
    ex = load_examples(write_json(tmp_path, [row]), "sharegpt").examples[0][1]
    assert ex.messages == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    assert ex.completion == "A2"


def test_sharegpt_unknown_role(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}]}
    path = write_jsonl(tmp_path, [json.dumps(good_o1()), json.dumps(row)])
    result = load_examples(path, "sharegpt")
    problems = [p for p in result.problems if p.row == 1]
    assert len(problems) == 1
    p = problems[0]
    assert (p.row, p.line, p.field) == (1, 2, "conversations[1].from")
    assert "unknown role 'bot'" in p.message


def test_sharegpt_unknown_role_role_style(tmp_path):
    row = {"conversations": [{"role": "narrator", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    p = load_examples(write_json(tmp_path, [row]), "sharegpt").problems[0]
    assert p.field == "conversations[0].role"
    assert "narrator" in p.message


def test_sharegpt_last_turn_not_assistant(tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
            {"from": "human", "value": "Q2"},
        ]
    }
    result = load_examples(write_json(tmp_path, [row]), "sharegpt")
    assert result.examples == []
    p = result.problems[0]
    assert p.field == "conversations"
    assert "last turn" in p.message and "assistant" in p.message


@pytest.mark.parametrize(
    "row, field, fragment",
    [
        ({}, "conversations", "missing"),
        ({"conversations": []}, "conversations", "non-empty list"),
        ({"conversations": "hi"}, "conversations", "non-empty list"),
        ({"conversations": ["hi", {"from": "gpt", "value": "A"}]}, "conversations[0]", "expected an object, got str"),
    ],
)
def test_sharegpt_structural_problems(tmp_path, row, field, fragment):
    p = load_examples(write_json(tmp_path, [row]), "sharegpt").problems[0]
    assert p.field == field
    assert fragment in p.message


def test_sharegpt_empty_turn_content_names_turn(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}]}
    p = load_examples(write_json(tmp_path, [row]), "sharegpt").problems[0]
    assert p.field == "conversations[1].value"
    assert p.message == "empty"


def test_sharegpt_empty_turn_content_is_a_problem(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}]}
    result = load_examples(write_json(tmp_path, [row]), "sharegpt")
    assert result.examples == []
    assert len(result.problems) == 1
    assert result.problems[0].message == "empty"


# --------------------------------------------------------------------------- alpaca


def test_alpaca_without_input(tmp_path):
    ex = load_examples(write_json(tmp_path, [{"instruction": "Do X", "output": "Done"}]), "alpaca").examples[0][1]
    assert ex.messages == [{"role": "user", "content": "Do X"}]
    assert ex.completion == "Done"


def test_alpaca_with_input(tmp_path):
    rows = [{"instruction": "Do X", "input": "on this", "output": "Done"}]
    ex = load_examples(write_json(tmp_path, rows), "alpaca").examples[0][1]
    assert ex.messages == [{"role": "user", "content": "Do X\n\non this"}]


def test_alpaca_blank_input_ignored(tmp_path):
    rows = [
        {"instruction": "Do X", "input": "  ", "output": "Done"},
        {"instruction": "Y", "input": None, "output": "o"},
    ]
    result = load_examples(write_json(tmp_path, rows), "alpaca")
    assert result.problems == []
    assert result.examples[0][1].messages == [{"role": "user", "content": "Do X"}]
    assert result.examples[1][1].messages == [{"role": "user", "content": "Y"}]


def test_alpaca_system_field(tmp_path):
    rows = [
        {"instruction": "I", "output": "O", "system": "Row system"},
        {"instruction": "I", "output": "O"},
    ]
    result = load_examples(write_json(tmp_path, rows), "alpaca", system_prompt="Default system")
    assert result.examples[0][1].messages == [
        {"role": "system", "content": "Row system"},
        {"role": "user", "content": "I"},
    ]
    assert result.examples[1][1].messages == [
        {"role": "system", "content": "Default system"},
        {"role": "user", "content": "I"},
    ]


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"instruction": "I"}, "output", "missing (the row's columns: instruction)"),
        ({"output": "O"}, "instruction", "missing (the row's columns: output)"),
        ({"instruction": "I", "output": "O", "input": 3}, "input", "expected a string, got int"),
        ({"instruction": "", "output": "O"}, "instruction", "empty"),
    ],
)
def test_alpaca_problems(tmp_path, row, field, message):
    p = load_examples(write_json(tmp_path, [row]), "alpaca").problems[0]
    assert (p.row, p.field, p.message) == (0, field, message)


# --------------------------------------------------------------------------- verifiable


def test_verifiable_on_demo(demo_rows):
    result = load_examples(DEMO, "verifiable", preset="en")
    assert result.rows == 150
    assert result.problems == []
    assert len(result.examples) == 150
    for (row, ex), raw in zip(result.examples, demo_rows):
        assert isinstance(ex, VerifiableProblem)
        assert ex.question == raw["Open-ended Verifiable Question"]
        assert ex.answer == raw["Ground-True Answer"]


def test_verifiable_empty_answer_is_problem(tmp_path):
    rows = [
        {"Open-ended Verifiable Question": "Q", "Ground-True Answer": "A"},
        {"Open-ended Verifiable Question": "Q", "Ground-True Answer": ""},
        {"Open-ended Verifiable Question": " ", "Ground-True Answer": "A"},
    ]
    result = load_examples(write_json(tmp_path, rows), "verifiable")
    assert [row for row, _ in result.examples] == [0]
    assert [(p.row, p.field, p.message) for p in result.problems] == [
        (1, "Ground-True Answer", "empty"),
        (2, "Open-ended Verifiable Question", "empty"),
    ]


# --------------------------------------------------------------------------- mcq


def test_mcq_on_demo(demo_rows):
    result = load_examples(DEMO, "mcq")
    assert result.rows == 150
    assert result.problems == []
    assert len(result.examples) == 150
    letters = set()
    for (row, item), raw in zip(result.examples, demo_rows):
        assert isinstance(item, MCQItem)
        assert item.question == raw["question"]
        assert item.options == raw["options"]
        assert set(item.options) <= set("ABCDE")
        assert len(item.options) >= 4
        assert item.answer_idx in item.options
        assert item.answer_idx == raw["answer_idx"]
        assert item.answer == raw["answer"]
        letters |= set(item.options)
    assert letters == set("ABCDE")


def mcq_row(**over) -> dict:
    row = {"question": "Which?", "options": {"A": "a", "B": "b", "C": "c"}, "answer_idx": "B", "answer": "b"}
    row.update(over)
    return row


def test_mcq_answer_idx_trimmed_and_answer_optional(tmp_path):
    rows = [mcq_row(answer_idx=" C "), {k: v for k, v in mcq_row().items() if k != "answer"}]
    result = load_examples(write_json(tmp_path, rows), "mcq")
    assert result.problems == []
    assert result.examples[0][1].answer_idx == "C"
    assert result.examples[1][1].answer is None


@pytest.mark.parametrize(
    "row, field, fragment",
    [
        (mcq_row(answer_idx="F"), "answer_idx", "'F' is not one of the options ['A', 'B', 'C']"),
        (mcq_row(options=["a", "b"]), "options", "expected a non-empty object"),
        (mcq_row(options="A. a"), "options", "expected a non-empty object"),
        (mcq_row(options={}), "options", "expected a non-empty object"),
        (mcq_row(options=None), "options", "missing"),
        (mcq_row(options={"A": "a", "B": ""}), "options.B", "non-empty string"),
        (mcq_row(options={"A": "a", "B": 2}), "options.B", "non-empty string"),
        (mcq_row(question=""), "question", "empty"),
    ],
)
def test_mcq_problems(tmp_path, row, field, fragment):
    result = load_examples(write_json(tmp_path, [row]), "mcq")
    assert result.examples == []
    p = result.problems[0]
    assert (p.row, p.field) == (0, field)
    assert fragment in p.message


# --------------------------------------------------------------------------- policy and rejects


def test_enforce_policy_fail_raises_with_count_and_first_problems(bad_jsonl):
    problems = load_examples(bad_jsonl, "medical_o1").problems
    with pytest.raises(DataError) as err:
        enforce_policy(problems, "fail")
    msg = str(err.value)
    assert msg.startswith("8 invalid row(s)")
    assert f"{bad_jsonl} row 1 (line 2): field 'Response': missing (the row's columns: Question, Complex_CoT)" in msg
    assert f"{bad_jsonl} row 3 (line 5): field 'Complex_CoT'" in msg
    assert "on_invalid=skip" in msg
    assert f"{bad_jsonl} row 8 (line 11): field 'Complex_CoT': empty" in msg  # 8 <= 10: all shown
    assert "... and" not in msg


def test_enforce_policy_fail_truncates_long_list():
    problems = [Problem("f.json", i, "Question", "missing") for i in range(13)]
    with pytest.raises(DataError) as err:
        enforce_policy(problems, "fail")
    msg = str(err.value)
    assert "13 invalid row(s)" in msg
    assert "f.json row 0: field 'Question': missing" in msg
    assert "f.json row 9:" in msg
    assert "f.json row 10:" not in msg
    assert "... and 3 more" in msg


def test_enforce_policy_skip_and_clean():
    problems = [Problem("f.json", 0, "Question", "missing")]
    assert enforce_policy(problems, "skip") is None
    assert enforce_policy([], "fail") is None


def test_write_rejects(bad_jsonl, tmp_path):
    result = load_examples(bad_jsonl, "medical_o1")
    out = tmp_path / "nested" / "rejects.jsonl"
    write_rejects(out, result.problems, result.raw)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(result.problems) == 8
    entries = [json.loads(line) for line in lines]
    original = bad_jsonl.read_text(encoding="utf-8").split("\n")
    for entry, problem in zip(entries, result.problems):
        assert set(entry) == {"file", "row", "line", "field", "problem", "record"}
        assert entry["file"] == str(bad_jsonl)
        assert (entry["row"], entry["line"], entry["field"], entry["problem"]) == (
            problem.row,
            problem.line,
            problem.field,
            problem.message,
        )
        source_line = original[entry["line"] - 1]
        if problem.message.startswith("invalid JSON"):
            assert entry["record"] == source_line  # unparseable: the raw text is kept
        else:
            assert entry["record"] == json.loads(source_line)
    assert entries[0]["record"] == {"Question": "q", "Complex_CoT": "c"}


def test_write_rejects_keeps_unicode(tmp_path):
    path = write_json(tmp_path, [{"Pregunta": "¿Qué?", "Razonamiento_Complejo": "", "Respuesta": "sí"}])
    result = load_examples(path, "medical_o1", preset="es")
    out = tmp_path / "rej.jsonl"
    write_rejects(out, result.problems, result.raw)
    text = out.read_text(encoding="utf-8")
    assert "¿Qué?" in text
    entry = json.loads(text)
    assert entry["field"] == "Razonamiento_Complejo"
    assert entry["line"] is None
    assert entry["record"] == {"Pregunta": "¿Qué?", "Razonamiento_Complejo": "", "Respuesta": "sí"}
