"""Unit tests for medo1.data.tokenization and medo1.data.validate with the real Qwen tokenizer and demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medo1.data.sources import ChatExample, load_examples
from medo1.data.tokenization import (
    IGNORE_INDEX,
    encode_sft,
    end_of_turn_ids,
    length_stats,
    render_prompt,
)
from medo1.data.validate import validation_report
from medo1.models import bundled_qwen_tokenizer_dir, load_tokenizer

DEMO = Path(__file__).parent.parent / "examples/data/medical_o1_demo.json"
BIG = 10**9


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_qwen_tokenizer_dir())


@pytest.fixture(scope="module")
def im_end(tok) -> int:
    ids = tok("<|im_end|>", add_special_tokens=False).input_ids
    assert len(ids) == 1
    return ids[0]


@pytest.fixture(scope="module")
def demo_rows() -> list[dict]:
    return json.loads(DEMO.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def first_five():
    loaded = load_examples(DEMO, "medical_o1", preset="en", limit=5)
    assert len(loaded.examples) == 5
    return loaded.examples


@pytest.fixture(scope="module")
def full_lengths(tok, first_five) -> list[int]:
    return encode_sft(tok, first_five, max_length=BIG).lengths


def prompt_len(tok, example: ChatExample) -> int:
    return len(tok(render_prompt(tok, example.messages), add_special_tokens=False).input_ids)


# --------------------------------------------------------------------------- end of turn


def test_end_of_turn_ids_is_im_end(tok, im_end):
    assert end_of_turn_ids(tok) == [im_end]
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)) == ["<|im_end|>"]


def test_render_prompt_is_chatml_with_assistant_header(tok):
    assert render_prompt(tok, [{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------- label masking


def test_demo_rows_masked_token_by_token(tok, im_end, first_five, demo_rows):
    enc = encode_sft(tok, first_five, max_length=BIG, source=str(DEMO))
    assert enc.rows == [0, 1, 2, 3, 4]
    assert enc.dropped == [] and enc.truncated == 0
    assert len(enc.input_ids) == len(enc.labels) == 5
    for (row, example), ids, labels, length in zip(first_five, enc.input_ids, enc.labels, enc.lengths):
        raw = demo_rows[row]
        target = f"## Thinking\n\n{raw['Complex_CoT']}\n\n## Final Response\n\n{raw['Response']}"
        expected = f"<|im_start|>user\n{raw['Question']}<|im_end|>\n<|im_start|>assistant\n{target}<|im_end|>"
        assert tok.decode(ids) == expected
        assert len(ids) == len(labels) == length

        n_prompt = prompt_len(tok, example)
        assert 0 < n_prompt < len(ids)
        for i, (tok_id, label) in enumerate(zip(ids, labels)):
            if i < n_prompt:
                assert label == IGNORE_INDEX, f"row {row} position {i} (prompt) is labelled"
            else:
                assert label == tok_id, f"row {row} position {i} (completion) label {label} != id {tok_id}"

        labelled = [label for label in labels if label != IGNORE_INDEX]
        assert tok.decode(labelled) == target + "<|im_end|>"
        assert labels[-1] == im_end
        assert ids[-1] == im_end
        # exactly one supervised end-of-turn, at the very end
        assert labelled.count(im_end) == 1


def test_system_prompt_goes_into_masked_prompt(tok, im_end, demo_rows):
    loaded = load_examples(DEMO, "medical_o1", system_prompt="You are a careful doctor.", limit=1)
    enc = encode_sft(tok, loaded.examples, max_length=BIG)
    text = tok.decode(enc.input_ids[0])
    assert text.startswith("<|im_start|>system\nYou are a careful doctor.<|im_end|>\n<|im_start|>user\n")
    n_prompt = prompt_len(tok, loaded.examples[0][1])
    assert all(label == IGNORE_INDEX for label in enc.labels[0][:n_prompt])
    assert enc.labels[0][n_prompt:] == enc.input_ids[0][n_prompt:]


def test_sharegpt_multi_turn_labels_only_last_assistant(tok, im_end, tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "First question?"},
            {"from": "gpt", "value": "First answer, not trained."},
            {"from": "human", "value": "Second question?"},
            {"from": "gpt", "value": "Second answer, trained."},
        ]
    }
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    loaded = load_examples(path, "sharegpt")
    enc = encode_sft(tok, loaded.examples, max_length=BIG)
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert tok.decode(ids) == (
        "<|im_start|>user\nFirst question?<|im_end|>\n"
        "<|im_start|>assistant\nFirst answer, not trained.<|im_end|>\n"
        "<|im_start|>user\nSecond question?<|im_end|>\n"
        "<|im_start|>assistant\nSecond answer, trained.<|im_end|>"
    )
    labelled = [label for label in labels if label != IGNORE_INDEX]
    assert tok.decode(labelled) == "Second answer, trained.<|im_end|>"
    first_len = len(labels) - len(labelled)
    assert first_len == prompt_len(tok, loaded.examples[0][1])
    assert all(label == IGNORE_INDEX for label in labels[:first_len])
    assert labels[first_len:] == ids[first_len:]
    # the earlier <|im_end|> tokens (after turns 1-3) are in the input but not labelled
    assert ids.count(im_end) == 4
    assert labelled.count(im_end) == 1


def test_empty_examples(tok):
    enc = encode_sft(tok, [], max_length=10)
    assert enc.input_ids == [] and enc.labels == [] and enc.lengths == [] and enc.dropped == []


# --------------------------------------------------------------------------- over-long rows


def test_overlong_drop(tok, first_five, full_lengths):
    max_length = sorted(full_lengths)[2]  # the median row fits exactly; the two longest do not
    enc = encode_sft(tok, first_five, max_length=max_length, overlong="drop", source="demo.json")
    too_long = [row for (row, _), n in zip(first_five, full_lengths) if n > max_length]
    assert len(too_long) == 2
    assert enc.rows == [row for row, _ in first_five if row not in too_long]
    assert all(len(ids) <= max_length for ids in enc.input_ids)
    assert enc.truncated == 0
    assert enc.lengths == full_lengths  # every example, dropped ones included, untruncated
    assert [p.row for p in enc.dropped] == too_long
    for p in enc.dropped:
        assert p.file == "demo.json"
        assert "too long" in p.message
        assert f"{full_lengths[p.row]} tokens" in p.message
        assert f"max_length {max_length}" in p.message
        assert "prompt alone" not in p.message


def test_length_equal_to_max_is_kept(tok, first_five, full_lengths):
    n = full_lengths[0]
    enc = encode_sft(tok, first_five[:1], max_length=n, overlong="drop")
    assert enc.rows == [0] and enc.dropped == [] and enc.truncated == 0
    assert len(enc.input_ids[0]) == n


def test_overlong_truncate(tok, im_end, first_five, full_lengths):
    full = encode_sft(tok, first_five, max_length=BIG)
    max_length = sorted(full_lengths)[2]
    enc = encode_sft(tok, first_five, max_length=max_length, overlong="truncate")
    cut = [i for i, n in enumerate(full_lengths) if n > max_length]
    assert enc.truncated == len(cut) == 2
    assert enc.dropped == []
    assert enc.rows == [0, 1, 2, 3, 4]
    assert enc.lengths == full_lengths
    for i in range(5):
        ids, labels = enc.input_ids[i], enc.labels[i]
        if i in cut:
            assert len(ids) == len(labels) == max_length
            assert ids == full.input_ids[i][:max_length]
            assert labels == full.labels[i][:max_length]
            assert im_end not in labels  # never taught to stop mid-answer
            assert labels[-1] != IGNORE_INDEX
        else:
            assert ids == full.input_ids[i]
            assert labels[-1] == im_end


def test_prompt_alone_too_long_dropped_even_with_truncate(tok, first_five):
    example = first_five[0][1]
    n_prompt = prompt_len(tok, example)
    for max_length in (n_prompt, n_prompt - 1):
        enc = encode_sft(tok, first_five[:1], max_length=max_length, overlong="truncate")
        assert enc.input_ids == [] and enc.rows == []
        assert enc.truncated == 0
        assert len(enc.dropped) == 1
        p = enc.dropped[0]
        assert p.row == 0
        assert "too long" in p.message
        assert f"the prompt alone is {n_prompt}" in p.message
    # one token of room for the answer: truncated, not dropped
    enc = encode_sft(tok, first_five[:1], max_length=n_prompt + 1, overlong="truncate")
    assert enc.truncated == 1 and enc.dropped == []
    assert len(enc.input_ids[0]) == n_prompt + 1
    assert sum(label != IGNORE_INDEX for label in enc.labels[0]) == 1


def test_a_huge_row_is_capped_before_tokenizing_and_still_counts_as_over_long(tok, first_five):
    """12 M characters of answer: only (max_length + 1) x longest-token characters are tokenized."""
    _, example = first_five[0]
    huge = ChatExample(example.messages, example.completion + " fever" * 2_000_000)
    dropped = encode_sft(tok, [(0, huge)], max_length=256, overlong="drop")
    assert 256 < dropped.lengths[0] < 2_000_000  # " fever" is at least one token each: the whole is over 2 M
    assert len(dropped.dropped) == 1 and "too long" in dropped.dropped[0].message
    cut = encode_sft(tok, [(0, huge)], max_length=256, overlong="truncate")
    moderate = ChatExample(example.messages, example.completion + " fever" * 1000)
    exact = encode_sft(tok, [(0, moderate)], max_length=256, overlong="truncate")
    assert cut.input_ids == exact.input_ids and cut.labels == exact.labels  # the same first 256 tokens


# --------------------------------------------------------------------------- length stats


def test_length_stats_known_values():
    lengths = list(range(10, 1020, 10))  # 10, 20, ..., 1010: percentiles fall on exact elements
    stats = length_stats(lengths, max_length=955)
    assert stats == {
        "count": 101,
        "mean": 510.0,
        "p50": 510,
        "p95": 960,
        "max": 1010,
        "total_tokens": 51510,
        "max_length": 955,
        "over_max_length": 6,  # 960 .. 1010
    }


def test_length_stats_small_list():
    stats = length_stats([300, 100, 1000, 200, 400], max_length=350)
    assert stats["count"] == 5
    assert stats["mean"] == 400.0
    assert stats["p50"] == 300
    assert stats["max"] == 1000
    assert stats["total_tokens"] == 2000
    assert stats["over_max_length"] == 2
    assert 879 <= stats["p95"] <= 880


def test_length_stats_p95_not_truncated_by_float_error():
    assert length_stats([100, 200, 300, 400, 1000])["p95"] == 880


def test_length_stats_boundary_and_no_max():
    assert length_stats([5, 10, 10], max_length=10)["over_max_length"] == 0
    stats = length_stats([7])
    assert stats["p50"] == stats["p95"] == stats["max"] == 7
    assert "over_max_length" not in stats and "max_length" not in stats
    assert length_stats([]) == {"count": 0}


# --------------------------------------------------------------------------- validation report


@pytest.fixture(scope="module")
def demo_loaded():
    return load_examples(DEMO, "medical_o1", preset="en")


def test_validation_report_on_demo(tok, demo_loaded):
    lengths = encode_sft(tok, demo_loaded.examples, max_length=BIG).lengths
    report = validation_report(demo_loaded, tok, max_length=1024)
    assert report["path"] == str(DEMO)
    assert report["format"] == "medical_o1"
    assert (report["rows"], report["valid"], report["invalid"]) == (150, 150, 0)
    assert report["problems"] == []
    tokens = report["tokens"]
    assert tokens["count"] == 150
    assert 690 <= tokens["mean"] <= 705  # RECIPE.md: mean ~696 with the ChatML template
    assert tokens["max"] == max(lengths)
    assert tokens["total_tokens"] == sum(lengths)
    assert tokens["max_length"] == 1024
    assert tokens["over_max_length"] == sum(n > 1024 for n in lengths)
    assert tokens["over_max_length"] > 0


def test_validation_report_over_max_tracks_max_length(tok, demo_loaded):
    longest = validation_report(demo_loaded, tok)["tokens"]["max"]
    assert validation_report(demo_loaded, tok, max_length=longest)["tokens"]["over_max_length"] == 0
    assert validation_report(demo_loaded, tok, max_length=longest - 1)["tokens"]["over_max_length"] == 1
    assert validation_report(demo_loaded, tok, max_length=8192)["tokens"]["over_max_length"] == 0
    # Without a max length, the SFT default bounds how much of a row is tokenized (and is reported).
    assert validation_report(demo_loaded, tok)["tokens"]["max_length"] == 8192


def test_validation_report_without_tokenizer_and_with_problems(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"Question": "q", "Complex_CoT": "c", "Response": "r"}) + "\n" + json.dumps({"Question": "q"}) + "\n"
    )
    report = validation_report(load_examples(path, "medical_o1"))
    assert "tokens" not in report
    assert (report["rows"], report["valid"], report["invalid"]) == (2, 1, 1)
    assert report["problems"] == [
        {
            "file": str(path),
            "row": 1,
            "line": 2,
            "field": "Complex_CoT",
            "problem": "missing (the row's columns: Question)",
        }
    ]


def test_validation_report_mcq_counts_prompt_tokens(tok):
    loaded = load_examples(DEMO, "mcq", limit=3)
    report = validation_report(loaded, tok)
    assert report["valid"] == 3
    expected = []
    for _, item in loaded.examples:
        text = item.question + "\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items())
        expected.append(
            len(tok(render_prompt(tok, [{"role": "user", "content": text}]), add_special_tokens=False).input_ids)
        )
    assert report["tokens"]["total_tokens"] == sum(expected)
    assert report["tokens"]["max"] == max(expected)
