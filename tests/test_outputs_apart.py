"""Issue 28, data loss: an output path is never one of the stage's inputs (or a folder holding one), and a folder
medo1 replaces whole (an export, an imported or tiny model) is one it wrote (`medo1.atomic` marker)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from medo1.atomic import DIR_MARKER, NotMedo1Dir, check_replaceable, new_dir, replace_dir
from medo1.config import ConfigError, check_outputs_apart
from tests.conftest import REPO


def test_outputs_that_are_inputs_under_any_name_are_refused(tmp_path):
    data = tmp_path / "data" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    for output in (
        data,
        tmp_path / "link.jsonl",
        tmp_path / "hard.jsonl",
        tmp_path / "data" / ".." / "data" / "rows.jsonl",
    ):
        with pytest.raises(ConfigError, match=r"is the data itself"):
            check_outputs_apart({"--out": output}, {"the data": data})
    for folder in (tmp_path, tmp_path / "data"):
        with pytest.raises(ConfigError, match=r"holds the data"):
            check_outputs_apart({"--out": folder}, {"the data": data})
    with pytest.raises(ConfigError, match=r"--b: .* is also --a"):
        check_outputs_apart({"--a": tmp_path / "x", "--b": tmp_path / "x"}, {})
    check_outputs_apart({"--out": tmp_path / "elsewhere"}, {"the data": data, "hub": "hf://o/n", "none": None})


def test_only_folders_medo1_wrote_are_replaced(tmp_path):
    mine = tmp_path / "export"
    staging = new_dir(tmp_path / "export.partial", "export")
    (staging / "model.safetensors").write_bytes(b"new")
    replace_dir(staging, mine)
    assert (mine / "model.safetensors").read_bytes() == b"new" and (mine / DIR_MARKER).is_file()
    again = new_dir(tmp_path / "export.partial", "export")
    (again / "model.safetensors").write_bytes(b"newer")
    replace_dir(again, mine)  # its own earlier export: replaced
    assert (mine / "model.safetensors").read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing aside is left

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "labels.jsonl").write_text("{}\n")
    with pytest.raises(NotMedo1Dir, match=r"theirs is a folder medo1 did not write \(no \.medo1 marker in it\)"):
        replace_dir(new_dir(tmp_path / "theirs.partial", "export"), theirs)
    with pytest.raises(NotMedo1Dir):
        new_dir(theirs, "export")
    assert (theirs / "labels.jsonl").read_text() == "{}\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotMedo1Dir, match="is not a folder medo1 wrote"):
        check_replaceable(tmp_path / "file", "out")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "out")  # an empty folder loses nothing


def test_import_gguf_into_the_current_folder_is_refused_and_leaves_it_whole(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "X.gguf").write_bytes(b"GGUF" + bytes(60))
    done = subprocess.run(
        [sys.executable, "-m", "medo1", "model", "import-gguf", "X.gguf", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "trainer"))},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "medo1: error: out: . holds source (X.gguf); outputs go to a path that holds no input: give another one"
    )
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.gguf", "notes.txt"]


def test_a_folder_the_file_system_refuses_is_one_line(monkeypatch, capsys):
    from medo1 import cli
    from medo1.training import run_report

    def refuse(run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{run_dir}/report.html")

    monkeypatch.setattr(run_report, "write_report", refuse)
    assert cli.main(["report", "/runs/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "medo1: error: /runs/x/report.html: Permission denied (check the path's owner, permissions and free space)"
    ]


def test_a_hub_id_is_no_local_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_outputs_apart({"output.dir": "Qwen"}, {"model.name_or_path": "Qwen/Qwen2.5-7B-Instruct"})
