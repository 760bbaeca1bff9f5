"""Where users keep data (issue 18): every source `medo1.data.sources.iter_records` reads, and the bad inputs
`data validate` must answer with one line (a directory, Latin-1 bytes, a corrupt file, an empty file).

Local Parquet, CSV and Arrow files and `save_to_disk` folders are real files written here with the
`datasets` library. The Hub cannot be reached from the tests: `hf://` sources are read from a local
`datasets` cache built in the test, laid out as `load_dataset` leaves a downloaded Hub dataset
(HF_DATASETS_CACHE/OWNER___NAME/CONFIG/VERSION/HASH), with HF_HUB_OFFLINE=1, so `load_dataset`
takes its real offline path to it.
"""

from __future__ import annotations

import codecs
import json
import shutil
import time
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, SplitDict, SplitInfo, disable_progress_bars

from medo1.cli import main
from medo1.config import load_config
from medo1.data.sources import DataError, HubSource, load_examples, parse_hub_source
from medo1.data.validate import validation_report
from tests.conftest import TINY_RECIPE, sft_overrides

FORMATS = ("json", "jsonl", "parquet", "csv", "saved")

disable_progress_bars()


def o1(i: int, **over) -> dict:
    return {"Question": f"Q{i}?", "Complex_CoT": f"think {i}", "Response": f"answer {i}"} | over


# Two invalid rows (an empty field each), one duplicate of row 0, and a row over max_length 64.
ROWS = [o1(i) for i in range(8)] + [
    o1(8, Response=""),
    o1(9, Question="  "),
    o1(0),
    o1(11, Complex_CoT="long " * 200),
]


def write_rows(rows: list[dict], directory: Path, kind: str) -> Path:
    """The same rows as a file (or folder) of one kind."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "json":
        path = directory / "rows.json"
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif kind == "jsonl":
        path = directory / "rows.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "parquet":
        path = directory / "rows.parquet"
        Dataset.from_list(rows).to_parquet(path)
    elif kind == "csv":
        path = directory / "rows.csv"
        Dataset.from_list(rows).to_csv(path, index=False)
    elif kind == "arrow":
        saved = write_rows(rows, directory / "tmp-saved", "saved")
        path = directory / "rows.arrow"
        shutil.move(next(saved.glob("*.arrow")), path)
        shutil.rmtree(saved)
    else:
        path = directory / "saved"
        Dataset.from_list(rows).save_to_disk(path)
    return path


def report_counts(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("path", "problems", "rejects_file")} | {
        "problems": [(p["row"], p["field"], p["problem"]) for p in report.get("problems", [])]
    }


# --------------------------------------------------------------------------- every local kind


@pytest.mark.parametrize("kind", FORMATS + ("arrow",))
def test_every_local_kind_gives_the_same_rows_problems_and_duplicates(tmp_path, kind):
    path = write_rows(ROWS, tmp_path, kind)
    loaded = load_examples(path, "medical_o1")
    reference = load_examples(write_rows(ROWS, tmp_path / "ref", "json"), "medical_o1")
    assert loaded.rows == 12
    assert [(row, ex) for row, ex in loaded.examples] == [(row, ex) for row, ex in reference.examples]
    assert [(p.file, p.row, p.field, p.message) for p in loaded.problems] == [
        (str(path), 8, "Response", "empty"),
        (str(path), 9, "Question", "empty"),
    ]
    assert loaded.duplicates == [(10, 0)]


def test_csv_reads_every_cell_as_text(tmp_path):
    """A numeric-looking answer stays a string, and "NA" is an answer, not a missing value."""
    path = tmp_path / "rows.csv"
    path.write_text("Question,Complex_CoT,Response\nHow many?,count,2\nLevel?,look,NA\n", encoding="utf-8")
    loaded = load_examples(path, "medical_o1")
    assert loaded.problems == []
    assert [ex.completion.rsplit("\n", 1)[-1] for _, ex in loaded.examples] == ["2", "NA"]


def test_parquet_with_mixed_shape_options_reads_each_row_as_written(tmp_path):
    """Arrow gives every row every struct field (null where a row has none): those nulls are not options."""
    rows = [
        {"question": "Which?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "A"},
        {"question": "Which?", "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "answer_idx": "E"},
    ]
    loaded = load_examples(write_rows(rows, tmp_path, "parquet"), "mcq")
    assert loaded.problems == []
    assert [sorted(ex.options) for _, ex in loaded.examples] == [list("ABCD"), list("ABCDE")]


def test_sharegpt_turns_in_parquet(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    loaded = load_examples(write_rows(rows, tmp_path, "parquet"), "sharegpt")
    assert loaded.problems == []
    assert loaded.examples[0][1].completion == "A"


@pytest.mark.parametrize("name", ["rows.JSONL", "rows.Jsonl"])
def test_upper_case_jsonl_suffix_is_jsonl(tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps(o1(0)) + "\n" + json.dumps(o1(1)) + "\n")
    loaded = load_examples(path, "medical_o1")
    assert (loaded.rows, len(loaded.examples)) == (2, 2)
    assert loaded.examples[1][0] == 1


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv"])
def test_a_utf8_bom_is_read(tmp_path, kind):
    path = write_rows([o1(0, Question="¿Qué?"), o1(1)], tmp_path, kind)
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    loaded = load_examples(path, "medical_o1")
    assert loaded.problems == [] and loaded.rows == 2
    assert loaded.examples[0][1].messages[0]["content"] == "¿Qué?"


def test_a_save_to_disk_folder_with_splits_names_them(tmp_path):
    folder = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list([o1(0)]), "test": Dataset.from_list([o1(1)])}).save_to_disk(folder)
    expected = r"a DatasetDict with splits train, test; give one split's folder, e\.g\. .*dd/train"
    with pytest.raises(DataError, match=expected):
        load_examples(folder, "medical_o1")
    assert load_examples(folder / "test", "medical_o1").examples[0][1].messages[0]["content"] == "Q1?"


# --------------------------------------------------------------------------- duplicates


def test_duplicates_are_counted_and_warned_about(tmp_path, capsys):
    path = write_rows([o1(0), o1(1), o1(0), o1(0)], tmp_path, "jsonl")
    loaded = load_examples(path, "medical_o1")
    assert loaded.duplicates == [(2, 0), (3, 0)]
    assert len(loaded.examples) == 4 and loaded.problems == []
    report = validation_report(loaded)
    assert report["duplicates"] == 2
    assert report["duplicate_rows"] == [{"row": 2, "duplicate_of": 0}, {"row": 3, "duplicate_of": 0}]
    assert main(["data", "validate", str(path), "--format", "medical_o1"]) == 0
    assert "warning: 2 duplicate row(s) (row 2 = row 0, row 3 = row 0)" in capsys.readouterr().out


def test_duplicates_reject_makes_them_invalid_rows(tmp_path, capsys):
    path = write_rows([o1(0), o1(1), o1(0)], tmp_path, "jsonl")
    loaded = load_examples(path, "medical_o1", duplicates="reject")
    assert [row for row, _ in loaded.examples] == [0, 1]
    assert [str(p) for p in loaded.problems] == [f"{path} row 2 (line 3): duplicate of row 0"]
    assert main(["data", "validate", str(path), "--format", "medical_o1", "--duplicates", "reject"]) == 1
    assert "row 2 (line 3): duplicate of row 0" in capsys.readouterr().out


def test_rows_differing_only_in_unmapped_columns_are_duplicates(tmp_path):
    rows = [o1(0) | {"id": "a"}, o1(0) | {"id": "b"}]
    assert load_examples(write_rows(rows, tmp_path, "json"), "medical_o1").duplicates == [(1, 0)]


# --------------------------------------------------------------------------- bad inputs: one line each


def validate_error(capsys, path) -> str:
    capsys.readouterr()  # drop what writing the test's files printed
    code = main(["data", "validate", str(path), "--format", "medical_o1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("medo1: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_a_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "rows.json").write_text("[]")
    assert "a directory, not a dataset written by save_to_disk (no state.json)" in validate_error(capsys, tmp_path)


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv"])
def test_latin1_bytes_are_one_line(tmp_path, capsys, kind):
    path = write_rows([o1(0), o1(1, Question="café?")], tmp_path, kind)
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    err = validate_error(capsys, path)
    assert f"{path}: not UTF-8 text" in err and "iconv -f latin1 -t utf-8" in err
    if kind == "jsonl":
        assert "(byte 0xe9 at line 2)" in err


def test_a_parquet_file_is_read_and_a_corrupt_one_is_one_line(tmp_path, capsys):
    good = write_rows([o1(0), o1(1)], tmp_path, "parquet")
    assert main(["data", "validate", str(good), "--format", "medical_o1"]) == 0
    assert f"{good} (medical_o1): 2 rows, 2 valid, 0 invalid" in capsys.readouterr().out
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(good.read_bytes()[:-40])
    assert f"{bad}: cannot be read (ArrowInvalid: " in validate_error(capsys, bad)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]"])
def test_an_empty_file_has_no_rows(tmp_path, capsys, content):
    path = tmp_path / ("rows.json" if content == "[]" else "rows.jsonl")
    path.write_text(content)
    assert f"{path}: no rows" in validate_error(capsys, path)


def test_an_unsupported_suffix_lists_what_is_read(tmp_path, capsys):
    path = tmp_path / "rows.txt"
    path.write_text("Q?\n")
    expected = "unsupported file type '.txt'; supported: .json (a list of records), .jsonl, .parquet"
    assert expected in validate_error(capsys, path)


# --------------------------------------------------------------------------- token statistics on a huge row


def test_token_statistics_on_a_50_mb_row_are_bounded(tmp_path, tiny_model):
    from medo1.models import load_tokenizer

    path = tmp_path / "big.jsonl"
    huge = "the patient presents with fever and chills. " * (50_000_000 // 44)
    path.write_text(json.dumps(o1(0, Complex_CoT=huge)) + "\n" + json.dumps(o1(1)) + "\n")
    tokenizer = load_tokenizer(tiny_model)
    loaded = load_examples(path, "medical_o1")
    del huge
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM)
    before = _resident_kib("VmRSS")
    started = time.perf_counter()
    report = validation_report(loaded, tokenizer, max_length=1024)
    elapsed = time.perf_counter() - started
    peak_growth_mib = (_resident_kib("VmHWM") - before) / 1024
    # Before: 58 s and 7 GB for the whole row; now at most (1024 + 1) x 128 characters are tokenized.
    assert elapsed < 10, elapsed
    assert peak_growth_mib < 500, peak_growth_mib
    tokens = report["tokens"]
    assert tokens["count"] == 2 and tokens["over_max_length"] == 1
    assert tokens["max"] > 1024


def _resident_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


# --------------------------------------------------------------------------- the Hub, through a local datasets cache


def make_hub_cache(cache: Path, repo_id: str, config: str, splits: dict[str, list[dict]]) -> None:
    """What `load_dataset(repo_id, config)` leaves in HF_DATASETS_CACHE once it has downloaded a dataset."""
    name = repo_id.split("/")[1]
    target = cache / repo_id.replace("/", "___") / config / "0.0.0" / "0123456789abcdef"
    info = None
    for split, rows in splits.items():
        dataset = Dataset.from_list(rows)
        dataset.save_to_disk(target / "staging")
        shutil.move(next((target / "staging").glob("*.arrow")), target / f"{name}-{split}.arrow")
        shutil.rmtree(target / "staging")
        info = info or dataset.info
    info.config_name, info.dataset_name = config, name
    info.splits = SplitDict({s: SplitInfo(s, num_examples=len(r), dataset_name=name) for s, r in splits.items()})
    info.write_to_directory(target)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    import datasets.config

    cache = tmp_path / "hf-datasets-cache"
    make_hub_cache(cache, "medo1-test/tiny-o1", "en", {"train": ROWS, "test": [o1(100)]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    # datasets reads both when it is imported: set them on its config for this test too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_a_hub_dataset_is_read_through_the_datasets_cache(offline_hub):
    source = "hf://medo1-test/tiny-o1?config=en&split=train&revision=main"
    loaded = load_examples(source, "medical_o1")
    assert loaded.rows == 12
    assert [(p.file, p.row, p.field) for p in loaded.problems] == [(source, 8, "Response"), (source, 9, "Question")]
    assert loaded.duplicates == [(10, 0)]
    test_split = load_examples("hf://medo1-test/tiny-o1?config=en&split=test", "medical_o1")
    assert test_split.examples[0][1].messages[0]["content"] == "Q100?"


def test_a_hub_dataset_that_is_not_there_is_one_line(offline_hub, capsys):
    err = validate_error(capsys, "hf://medo1-test/absent?split=train")
    assert err.startswith("medo1: error: hf://medo1-test/absent?split=train: cannot be read (")
    err = validate_error(capsys, "hf://medo1-test/tiny-o1?config=en&split=validation")
    assert "hf://medo1-test/tiny-o1?config=en&split=validation: cannot be read (" in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hf://org/name", HubSource("org/name")),
        ("hf://org/name?config=en&split=train&revision=v1.0", HubSource("org/name", "en", "train", "v1.0")),
        ("hf://org/name?split=test", HubSource("org/name", None, "test", None)),
    ],
)
def test_hub_source_syntax(text, expected):
    assert parse_hub_source(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("hf://name-only", "a Hub dataset is hf://OWNER/NAME"),
        ("hf://a/b/c", "a Hub dataset is hf://OWNER/NAME"),
        ("hf://a/b?conf=en", "unknown parameter(s) conf; known: config, split, revision"),
        ("hf://a/b?split=", "empty parameter value"),
    ],
)
def test_bad_hub_sources_are_refused(text, fragment):
    with pytest.raises(DataError) as info:
        parse_hub_source(text)
    assert fragment in str(info.value) and str(info.value).startswith(text)


# --------------------------------------------------------------------------- validate and sft agree on every kind


@pytest.mark.e2e
def test_validate_and_sft_report_the_same_counts_for_every_kind(tmp_path, tiny_model, capsys):
    from medo1.sft.trainer import SFTConfig, run_sft

    validate_reports, sft_reports = {}, {}
    for kind in FORMATS:
        path = write_rows(ROWS, tmp_path / kind, kind)
        capsys.readouterr()  # drop what the previous kind's training printed
        assert (
            main(
                [
                    "data",
                    "validate",
                    str(path),
                    "--format",
                    "medical_o1",
                    "--tokenizer",
                    str(tiny_model),
                    "--max-length",
                    "64",
                    "--json",
                ]
            )
            == 1
        )  # two invalid rows
        validate_reports[kind] = report_counts(json.loads(capsys.readouterr().out))
        overrides = sft_overrides(
            tiny_model,
            path,
            tmp_path / kind / "run",
            **{"data.max_length": 64, "data.on_invalid": "skip", "train.max_steps": 1, "output.export": False},
        )
        run_sft(load_config(SFTConfig, TINY_RECIPE, overrides))
        sft_reports[kind] = report_counts(json.loads((tmp_path / kind / "run" / "data_report.json").read_text()))
    for kind in FORMATS:
        assert validate_reports[kind] == validate_reports["json"], kind
        assert sft_reports[kind] == sft_reports["json"], kind
    counts = validate_reports["json"]
    assert (counts["rows"], counts["valid"], counts["invalid"], counts["duplicates"]) == (12, 10, 2, 1)
    assert counts["tokens"]["over_max_length"] == 1
    sft = sft_reports["json"]
    counted = (sft["rows"], sft["valid"], sft["invalid"], sft["dropped_overlong"], sft["trained_examples"])
    assert counted == (12, 10, 2, 1, 9)
