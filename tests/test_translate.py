"""Translation stage against a local stand-in for the OpenAI API (pipelines/openai_standin.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medo1.cli import main
from medo1.data.translate import (
    TranslateConfig,
    TranslateError,
    run_translate,
)
from medo1.data.translation_checks import TranslationChecks, numbers_in
from pipelines.openai_standin import StandIn, fake_translate
from tests.conftest import DEMO_DATA, REPO, free_port

KEY = "test-key"


@pytest.fixture
def standin_factory():
    started: list[StandIn] = []

    def make(**kwargs) -> StandIn:
        server = StandIn(api_key=KEY, max_lifetime_s=60, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo() -> list[dict]:
    return json.loads(DEMO_DATA.read_text(encoding="utf-8"))


def config(tmp_path: Path, server: StandIn, data: Path, **extra) -> TranslateConfig:
    values = {
        "input": str(data),
        "output": str(tmp_path / "out" / "translated.jsonl"),
        "format": "medical_o1",
        "target_language": "Japanese",
        "base_url": server.base_url,
        "concurrency": 4,
        "backoff_s": 0.01,
    }
    return TranslateConfig(**(values | extra))


# ------------------------------------------------------------------------------- validation


def test_validation_catches_lost_numbers_markers_keys_and_empty_fields():
    validate_translation = TranslationChecks("Japanese").problems
    numbers = [str(q) for q in numbers_in("platelets 197,000/mm^3, Hb 6 g/dL, retic 0.4%, 37.8°C")]
    assert numbers == ["197000", "3", "6 g/dL", "0.4 %", "37.8 °C"]
    assert [str(q) for q in numbers_in("体温３７.８度", "ja")] == ["37.8"]  # full-width digits count
    src = {"Complex_CoT": "Hb 6 g/dL, platelets 197,000.", "Response": "## Thinking\nx\n## Final Response\ny 0.4"}
    good = {"Complex_CoT": "Hb 6 g/dL、血小板 197000。", "Response": "## Thinking\nx\n## Final Response\ny 0.4"}
    assert validate_translation(src, good) == []
    lost = validate_translation(src, good | {"Complex_CoT": "Hb 6 g/dL、血小板 19,700。"})
    assert any("197000" in p for p in lost)
    # 37.8 in the source is not satisfied by 137.8 in the translation
    assert validate_translation({"q": "37.8"}, {"q": "137.8"})
    assert any(
        "## Final Response" in p for p in validate_translation(src, good | {"Response": "## Thinking\nx\ny 0.4"})
    )
    assert any(
        "## Thinking" in p
        for p in validate_translation(src, good | {"Response": "## Thinking ## Thinking\n## Final Response 0.4"})
    )
    assert any("missing key" in p for p in validate_translation(src, {"Complex_CoT": good["Complex_CoT"]}))
    assert any("unexpected key" in p for p in validate_translation(src, good | {"extra": "x"}))
    assert any("empty" in p for p in validate_translation(src, good | {"Response": "  "}))
    options = {"question": "q", "options": {"A": "a", "B": "b"}}
    assert validate_translation(options, {"question": "Q", "options": {"A": "A", "B": "B"}}) == []
    assert any(
        "option keys" in p for p in validate_translation(options, {"question": "Q", "options": {"A": "A", "C": "B"}})
    )
    assert validate_translation(src, ["not", "an", "object"])


# ------------------------------------------------------------------------------- medical_o1


def test_medical_o1_with_latency_429_malformed_and_rejects(tmp_path, standin_factory, demo):
    rows = [dict(r) for r in demo[:12]]
    rows[2]["Response"] = f"## Thinking\n{rows[2]['Complex_CoT'][:80]}\n\n## Final Response\n\n{rows[2]['Response']}"
    rows[8]["Complex_CoT"] = "## Thinking\n" + rows[8]["Complex_CoT"]
    rows[6]["Question"] = rows[6]["Question"] + " (asked of 1,250 students, 37.5% answered)"
    data = write_rows(tmp_path / "in.json", rows)
    ids = [r["Question"] for r in rows]
    server = standin_factory(
        latency_s=0.05, fail_first=3, malformed={ids[4]: 1}, drop_number={ids[6]}, drop_marker={ids[8]}
    )
    cfg = config(tmp_path, server, data, validation_retries=2, max_failure_ratio=0.2)
    summary = run_translate(cfg, progress=False)

    assert summary["records"] == 12
    assert summary["translated"] == 10 and summary["rejected"] == 2
    assert summary["translated"] + summary["rejected"] == summary["records"]
    assert summary["from_cache"] == 0
    assert summary["retries"] == 3  # the three 429s
    assert summary["validation_retries"] == 1 + 2 + 2
    assert summary["requests"] == server.total == 12 + 3 + 5
    assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
    assert summary["retried_by_reason"] == {"json": 1, "number": 1, "marker": 1}
    assert summary["rejected_by_reason"] == {"number": 1, "marker": 1}
    assert summary["warnings"] == [
        "2 of 12 translation(s) rejected, more than reject_warning_ratio=0.1 (marker: 1, number: 1): "
        "check the prompt, the model and the target_language"
    ]
    assert not server.bad_requests

    out = read_jsonl(Path(cfg.output))
    kept = [r for i, r in enumerate(rows) if i not in (6, 8)]
    assert [o["Question"] for o in out] == [fake_translate(r["Question"]) for r in kept]  # input order
    for o, r in zip(out, kept):
        assert o["Complex_CoT"] == fake_translate(r["Complex_CoT"]) and o["Response"] == fake_translate(r["Response"])
        for column in (
            "question",
            "options",
            "answer_idx",
            "answer",
            "Open-ended Verifiable Question",
            "Ground-True Answer",
        ):
            assert o[column] == r[column]  # not this format's fields: copied unchanged
    assert out[2]["Response"].count("## Thinking") == 1 and out[2]["Response"].count("## Final Response") == 1
    assert server.requests[ids[4]] == 2  # malformed once, then good

    rejects = read_jsonl(Path(cfg.output).with_suffix(".rejects.jsonl"))
    assert [r["row"] for r in rejects] == [6, 8]
    assert "1250" in rejects[0]["problem"] and "37.5" in rejects[0]["problem"]
    assert "missing from the translation" in rejects[0]["problem"]
    assert "## Thinking" in rejects[1]["problem"]
    assert rejects[0]["record"] == rows[6] and rejects[1]["record"] == rows[8]
    assert server.requests[ids[6]] == server.requests[ids[8]] == 3

    # Second run: translations come from the cache; only the rejected records are asked again.
    before = server.total
    again = run_translate(cfg, progress=False)
    assert again["from_cache"] == 10 and again["translated"] == 10 and again["rejected"] == 2
    assert server.total - before == again["requests"] == 6
    assert read_jsonl(Path(cfg.output)) == out


def test_invalid_source_rows_are_rejected_without_a_request(tmp_path, standin_factory, demo):
    rows = [dict(r) for r in demo[:3]]
    rows[1]["Response"] = ""
    data = write_rows(tmp_path / "in.json", rows + ["not an object"])
    server = standin_factory()
    summary = run_translate(config(tmp_path, server, data, max_failure_ratio=0.5), progress=False)
    assert (summary["records"], summary["translated"], summary["rejected"]) == (4, 2, 2)
    assert server.total == 2
    rejects = read_jsonl(Path(summary["rejects"]))
    assert [(r["row"], r["field"]) for r in rejects] == [(1, "Response"), (3, None)]


# ------------------------------------------------------------------------------- verifiable, mcq


def test_verifiable_translates_both_fields_and_warns(tmp_path, standin_factory, demo):
    rows = demo[20:26]
    server = standin_factory()
    cfg = config(tmp_path, server, write_rows(tmp_path / "in.json", rows), format="verifiable")
    summary = run_translate(cfg, progress=False)
    assert summary["translated"] == 6 and summary["rejected"] == 0
    assert any("verifier" in w and "English/Chinese" in w and "Japanese" in w for w in summary["warnings"])
    out = read_jsonl(Path(cfg.output))
    for o, r in zip(out, rows, strict=True):
        assert o["Open-ended Verifiable Question"] == fake_translate(r["Open-ended Verifiable Question"])
        assert o["Ground-True Answer"] == fake_translate(r["Ground-True Answer"])
        assert o["Question"] == r["Question"] and o["Complex_CoT"] == r["Complex_CoT"]
    # Into a language the published verifier was trained on, no such warning (the demo "translates" into English
    # through the stand-in's passthrough).
    passthrough = standin_factory(passthrough=True)
    english = config(tmp_path / "en", passthrough, tmp_path / "in.json", format="verifiable", target_language="English")
    assert run_translate(english, progress=False)["warnings"] == []


def test_mcq_keeps_option_letters_and_answer_idx(tmp_path, standin_factory, demo):
    rows = [dict(r) for r in demo[30:36]]
    rows[1]["answer"] = "See option " + rows[1]["answer_idx"]  # an answer that is not the option text
    rows[2] = rows[2] | {"answer_idx": "Z"}  # not an option: rejected before any request
    server = standin_factory()
    cfg = config(tmp_path, server, write_rows(tmp_path / "in.json", rows), format="mcq", max_failure_ratio=0.2)
    summary = run_translate(cfg, progress=False)
    assert (summary["translated"], summary["rejected"], server.total) == (5, 1, 5)
    assert summary["warnings"] == []
    out = read_jsonl(Path(cfg.output))
    for o, r in zip(out, [r for i, r in enumerate(rows) if i != 2], strict=True):
        assert list(o["options"]) == list(r["options"])
        assert o["options"] == {k: fake_translate(v) for k, v in r["options"].items()}
        assert o["answer_idx"] == r["answer_idx"]
        assert o["question"] == fake_translate(r["question"])
        assert o["answer"] == fake_translate(r["answer"])
        if r["answer"] == r["options"][r["answer_idx"]]:
            assert o["answer"] == o["options"][o["answer_idx"]]
        assert o["Question"] == r["Question"]


# ------------------------------------------------------------------------------- kill and resume

RUNNER = (
    "import json, sys\n"
    "from medo1.data.translate import TranslateConfig, run_translate\n"
    "run_translate(TranslateConfig.model_validate(json.loads(sys.argv[1])))\n"
)


def test_killed_run_resumes_without_losing_or_repeating_records(tmp_path, standin_factory, demo):
    rows = demo[40:64]
    ids = [r["Question"] for r in rows]
    source_of = {fake_translate(q): q for q in ids}
    server = standin_factory(latency_s=0.15)
    cfg = config(tmp_path, server, write_rows(tmp_path / "in.json", rows), concurrency=2)
    cache_file = Path(cfg.output).with_name(Path(cfg.output).name + ".cache") / "translations.jsonl"

    def cached_ids() -> set[str]:
        found = set()
        for line in cache_file.read_text(encoding="utf-8").splitlines() if cache_file.exists() else []:
            try:
                found.add(source_of[json.loads(line)["translation"]["Question"]])
            except json.JSONDecodeError:
                pass  # a line torn by the kill
        return found

    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, cfg.model_dump_json()],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    try:
        while len(cached_ids()) < 4:
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no cache entries after 30 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.3)  # let requests the dead client left in flight reach the stand-in
    at_kill = cached_ids()
    assert 4 <= len(at_kill) < len(rows)
    assert not Path(cfg.output).exists()
    requests_at_kill = dict(server.requests)
    # A kill in the middle of an append leaves a torn last line; the resume must cope.
    with cache_file.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "torn", "transl')

    summary = run_translate(cfg, progress=False)
    assert summary["from_cache"] == len(at_kill)
    assert summary["translated"] == len(rows) and summary["rejected"] == 0
    assert summary["requests"] == len(rows) - len(at_kill)
    out = read_jsonl(Path(cfg.output))
    assert [o["Question"] for o in out] == [fake_translate(q) for q in ids]  # each exactly once, in order
    for rid in at_kill:
        assert server.requests[rid] == requests_at_kill[rid], "a cached record was requested again"
        assert server.successes[rid] == 1
    assert all(server.successes[rid] >= 1 for rid in ids)
    assert sum(server.successes.values()) <= len(rows) + cfg.concurrency  # at most the in-flight ones twice
    lines = cache_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(rows) and all(json.loads(line) for line in lines)


# ------------------------------------------------------------------------------- key, transport errors


def test_api_key_comes_from_env_and_never_leaks(tmp_path, standin_factory, demo, monkeypatch):
    secret = "sk-standin-SECRET-0123456789"
    server = StandIn(api_key=secret, max_lifetime_s=60).start()
    try:
        monkeypatch.setenv("MEDO1_TEST_KEY", secret)
        data = write_rows(tmp_path / "in.json", demo[:3])
        cfg = config(tmp_path, server, data, api_key_env="MEDO1_TEST_KEY")
        summary = run_translate(cfg, progress=False)
        assert summary["translated"] == 3 and server.unauthorized == 0
        assert secret not in json.dumps(summary)
        for path in Path(cfg.output).parent.rglob("*"):
            if path.is_file():
                assert secret not in path.read_text(encoding="utf-8"), path

        monkeypatch.setenv("MEDO1_TEST_KEY", "sk-wrong-KEY-987")
        wrong = config(tmp_path, server, data, api_key_env="MEDO1_TEST_KEY", output=str(tmp_path / "o2.jsonl"))
        with pytest.raises(TranslateError, match="MEDO1_TEST_KEY") as err:
            run_translate(wrong, progress=False)
        assert "sk-wrong-KEY-987" not in str(err.value)
        assert server.unauthorized >= 1
    finally:
        server.stop()
    # The stand-in of the other tests checks "Bearer test-key" from $OPENAI_API_KEY.
    checked = standin_factory()
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(TranslateError, match="OPENAI_API_KEY"):
        run_translate(config(tmp_path, checked, data, output=str(tmp_path / "o3.jsonl")), progress=False)
    assert checked.unauthorized >= 1 and checked.total == 0


def test_endpoint_faults_are_ridden_out_through_the_shared_client(tmp_path, standin_factory, demo):
    rows = demo[:3]
    server = standin_factory(faults=["429-date", "500", "malformed-json"], retry_after_s=0.5)
    cfg = config(tmp_path, server, write_rows(tmp_path / "in.json", rows), concurrency=1)
    started = time.monotonic()
    summary = run_translate(cfg, progress=False)
    assert time.monotonic() - started >= 0.4  # the Retry-After date was waited for
    assert (summary["translated"], summary["rejected"]) == (3, 0)
    assert summary["retries"] == 3 and summary["requests"] == 6 and summary["validation_retries"] == 0
    assert [o["Question"] for o in read_jsonl(Path(cfg.output))] == [fake_translate(r["Question"]) for r in rows]


def previous_run(tmp_path: Path, standin_factory, demo: list[dict]) -> tuple[Path, TranslateConfig, bytes]:
    """A finished run's output, which a later failed run must leave as it was."""
    data = write_rows(tmp_path / "in.json", demo[:4])
    cfg = config(tmp_path, standin_factory(), data)
    run_translate(cfg, progress=False)
    before = Path(cfg.output).read_bytes()
    assert len(before.splitlines()) == 4
    Path(cfg.output + ".cache").joinpath("translations.jsonl").unlink()  # so the next run asks again
    return data, cfg, before


def test_every_record_failing_fails_the_run_and_keeps_the_previous_output(tmp_path, standin_factory, demo, capsys):
    data, cfg, before = previous_run(tmp_path, standin_factory, demo)
    url = f"http://127.0.0.1:{free_port()}/v1"  # refused: nothing listens there
    failing = cfg.model_copy(update={"base_url": url, "max_retries": 1, "max_failure_ratio": 0.9})
    with pytest.raises(TranslateError) as error:
        run_translate(failing, progress=False)
    message = str(error.value)
    assert "4 of 4 record(s) failed" in message and "ConnectError" in message and "\n" not in message
    assert f"nothing was written to {cfg.output}" in message
    assert Path(cfg.output).read_bytes() == before
    assert not Path(cfg.output).with_suffix(".rejects.jsonl").exists()
    assert not list(Path(cfg.output).parent.glob(".*tmp*"))

    # The command line: one line on stderr, a non-zero exit code, no traceback.
    code = main(
        [
            "translate",
            str(data),
            "--output",
            cfg.output,
            "--target-language",
            "Japanese",
            "--base-url",
            url,
            "--set",
            "max_retries=0",
            "--set",
            "backoff_s=0.01",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert [line for line in err.splitlines() if line.startswith("medo1: error:")] == [
        line for line in err.splitlines() if "record(s) failed" in line
    ]
    assert "Traceback" not in err and Path(cfg.output).read_bytes() == before


def test_max_failure_ratio_fails_the_run_and_stops_asking(tmp_path, standin_factory, demo):
    rows = demo[:10]
    ids = [r["Question"] for r in rows]
    server = standin_factory(drop_marker=set(ids[2:]))  # it strips their markers: rows 2.. are rejected
    data = write_rows(
        tmp_path / "in.json",
        [r | {"Response": f"## Final Response\n\n{r['Response']}"} if i >= 2 else r for i, r in enumerate(rows)],
    )
    cfg = config(tmp_path, server, data, concurrency=1, validation_retries=0, max_failure_ratio=0.1)
    Path(cfg.output).parent.mkdir(parents=True)
    Path(cfg.output).write_text("previous\n")
    with pytest.raises(TranslateError, match=r"more than max_failure_ratio=0.1 allows \(1\)") as error:
        run_translate(cfg, progress=False)
    assert "stopped without asking for the other" in str(error.value)
    assert server.total <= 5 < len(rows)  # two failures spend the budget; the rest is not asked for
    assert Path(cfg.output).read_text() == "previous\n"

    # Invalid source rows alone can spend the budget: then nothing is asked at all.
    broken = write_rows(tmp_path / "broken.json", ["not an object"] * 2 + rows[:2])
    before = server.total
    with pytest.raises(TranslateError, match="2 of 4 record"):
        run_translate(config(tmp_path, server, broken, max_failure_ratio=0.25), progress=False)
    assert server.total == before


def test_a_server_that_never_answers_shows_progress_and_a_clear_end(tmp_path, standin_factory, demo, caplog):
    caplog.set_level(logging.WARNING, logger="medo1.chat_client")
    data = write_rows(tmp_path / "in.json", demo[:2])
    silent = standin_factory(latency_s=5.0)
    cfg = config(tmp_path, silent, data, timeout_s=0.4, max_retries=1, progress_after_s=0.15, max_failure_ratio=0.5)
    started = time.monotonic()
    with pytest.raises(TranslateError) as error:
        run_translate(cfg, progress=False)
    assert time.monotonic() - started < 3
    assert "2 of 2 record(s) failed" in str(error.value) and "timed out after 0.4 s" in str(error.value)
    assert "no answer after 2 attempt(s)" in str(error.value)
    logged = [r.getMessage() for r in caplog.records]
    assert any("request(s) waiting for an answer" in m for m in logged)
    assert sum("attempt 2 of 2" in m for m in logged) == 2
    assert not Path(cfg.output).exists()
