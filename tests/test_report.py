"""`report.html` from real short runs: the tiny CPU SFT and PPO stages write it at the end; `medo1 report` rewrites it."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
from matplotlib.image import imread

from medo1.config import load_config
from medo1.rl import run_rl
from medo1.rl.config import RLConfig
from medo1.sft.trainer import SFTConfig, run_sft
from medo1.training.metrics import read_metrics
from medo1.training.run_report import FIGURES, ReportError, build_figures, write_report, write_report_safely
from tests.conftest import NO_TORCH_LAUNCHER, REPO, TINY_RECIPE, run_medo1, sft_overrides, write_short_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SFT_FIGURES = {"loss", "token_accuracy", "learning_rate", "grad_norm", "throughput"}
PPO_FIGURES = {
    "reward",
    "format_and_correctness",
    "kl",
    "entropy",
    "clip_fraction",
    "policy_loss",
    "value_loss",
    "response_length",
    "learning_rate",
    "grad_norm",
    "throughput",
}


@pytest.fixture(scope="module")
def sft_run(tiny_model, demo_rows, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report-sft")
    data = write_short_rows(demo_rows, tmp / "rows.json", 8)
    overrides = sft_overrides(tiny_model, data, tmp / "run", **{"train.max_steps": 6, "output.save_steps": 1000})
    return run_sft(load_config(SFTConfig, TINY_RECIPE, overrides)).output_dir


@pytest.fixture(scope="module")
def ppo_run(tiny_model, tmp_path_factory):
    """Two PPO updates of the tiny random policy on the demo set's verifiable problems."""
    out = tmp_path_factory.mktemp("report-ppo") / "run"
    overrides = [
        f"model.name_or_path={tiny_model}",
        f"data.path={REPO / 'examples/data/medical_o1_demo.json'}",
        f"output.dir={out}",
        "sampling.response_length=16",
        "output.logging_steps=1",
        "output.save_steps=1000",
    ]
    return run_rl(load_config(RLConfig, REPO / "recipes" / "rl-ppo-tiny-cpu.yaml", overrides)).output_dir


def check_report(run_dir, expected: set[str]) -> None:
    """Every expected plot is a readable PNG with pixels drawn, named and embedded byte for byte in report.html;
    every plotted line has one point per metrics row that logged its key."""
    html = (run_dir / "report.html").read_text()
    pngs = {p.stem: p for p in (run_dir / "report").glob("*.png")}
    assert set(pngs) == expected
    for name, path in pngs.items():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        pixels = imread(path)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400, name
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"
        assert f'href="report/{name}.png"' in html
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
    metrics = read_metrics(run_dir / "metrics.jsonl")
    keys = {s.key for spec in FIGURES for s in spec.series}
    for spec, figure in build_figures(metrics):
        lines = [line for line in figure.axes[0].get_lines() if line.get_gid() in keys]
        assert lines, spec.name
        for line in lines:
            logged = [row for row in metrics if isinstance(row.get(line.get_gid()), (int, float))]
            assert len(line.get_xdata()) == len(logged) > 0, (spec.name, line.get_gid())
    assert "<h2>Config</h2>" in html and "<h2>Data</h2>" in html


@pytest.mark.e2e
def test_sft_run_writes_a_report_with_its_curves(sft_run):
    check_report(sft_run, SFT_FIGURES)
    loss_rows = [row for row in read_metrics(sft_run / "metrics.jsonl") if "loss" in row]
    assert len(loss_rows) == 6  # logging_steps 1: one point per step
    html = (sft_run / "report.html").read_text()
    assert "trained_examples" in html  # the data report
    assert "train_runtime" in html  # the end-of-run summary row


@pytest.mark.e2e
def test_ppo_run_writes_a_report_with_the_rl_curves(ppo_run):
    check_report(ppo_run, PPO_FIGURES)
    assert [row["step"] for row in read_metrics(ppo_run / "metrics.jsonl")] == [1, 2]


@pytest.mark.e2e
def test_cli_report_adds_the_eval_comparison(sft_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("metrics.jsonl", "data_report.json", "config.yaml"):
        (run_dir / name).write_text((sft_run / name).read_text())
    (run_dir / "report").mkdir()
    (run_dir / "report" / "kl.png").write_bytes(PNG_SIGNATURE)  # an earlier report's figure this run does not draw
    (run_dir / "report" / "holiday.png").write_bytes(PNG_SIGNATURE + b"mine")  # not medo1's: never deleted
    # The shape medo1.eval.run.run_eval writes, for the base model and the trained one.
    for where, accuracy in (("base", 0.25), ("trained", 0.5)):
        report = {
            "model": f"runs/{where}",
            "benchmarks": {
                "medqa": {
                    "path": "medqa.jsonl",
                    "n": 4,
                    "correct": int(4 * accuracy),
                    "accuracy": accuracy,
                    "unparseable": 0,
                    "invalid_rows": [],
                    "per_item": [{"row": 1, "answer_idx": "A", "extracted": "A", "correct": True}],
                }
            },
            "average_accuracy": accuracy,
        }
        (run_dir / "eval" / where).mkdir(parents=True)
        (run_dir / "eval" / where / "report.json").write_text(json.dumps(report))
    result = run_medo1(["report", str(run_dir)], launcher=NO_TORCH_LAUNCHER)
    assert result.returncode == 0, result.stderr
    assert "torch not imported" in result.stdout  # plots from metrics.jsonl need neither torch nor transformers
    assert (run_dir / "report" / "holiday.png").read_bytes() == PNG_SIGNATURE + b"mine"
    (run_dir / "report" / "holiday.png").unlink()
    check_report(run_dir, SFT_FIGURES | {"eval_accuracy"})
    html = (run_dir / "report.html").read_text()
    assert "eval/base/report.json" in html and "eval/trained/report.json" in html
    assert '"per_item"' not in html


def test_report_of_a_missing_directory_fails_in_one_line(tmp_path):
    result = run_medo1(["report", str(tmp_path / "nope")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"medo1: error: {tmp_path / 'nope'}: no such run directory"


def test_a_broken_metrics_file_only_warns_at_the_end_of_training(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    with caplog.at_level(logging.WARNING, logger="medo1.training.run_report"):
        assert write_report_safely(tmp_path) is None
    assert re.search(
        r"could not write the run report in .*: ReportError: .*metrics\.jsonl line 2: not JSON", caplog.text
    )
    with pytest.raises(ReportError, match=r"metrics\.jsonl line 2: not JSON \(at column 13: Unterminated string\)"):
        write_report(tmp_path)


def test_an_empty_metrics_file_is_named_empty_not_missing(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING, logger="medo1.training.run_report"):
        html = write_report(tmp_path).read_text()
    assert "metrics.jsonl is empty: the run has logged no step yet." in html and "missing" not in html
    assert "is empty" in caplog.text


def test_the_data_report_warnings_head_the_data_section(tmp_path):
    (tmp_path / "data_report.json").write_text(json.dumps({"rows": 4, "warnings": ["3 of 4 valid row(s) (75%) ..."]}))
    html = write_report(tmp_path).read_text()
    assert '<p class="warning">Warning: 3 of 4 valid row(s) (75%) ...</p>' in html
