"""Hub upload stage: file allowlist, credential refusal, load check, model card, and the push path.

The push test runs against tests/hub_standin.py, a local HTTP server that stands in for the
Hugging Face Hub API (huggingface.co); nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from medo1.atomic import DIR_MARKER
from medo1.hub import secret_scan
from medo1.hub import upload as up
from medo1.hub.config import UploadConfig, UploadError, UploadRefused
from medo1.hub.model_card import CARD_TEMPLATE
from medo1.hub.upload import plan_upload, upload
from tests.hub_standin import HubStandIn

FAKE_TOKEN = "hf_" + "Zq7" * 12  # matches the hf_ token pattern; not a real token
HYPER = {"learning_rate": 5e-6, "epochs": 3, "lr_scheduler": "cosine", "global_batch": 128}


@pytest.fixture
def export_dir(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny exported model plus the training leftovers a real output dir often holds."""
    out = tmp_path / "export"
    shutil.copytree(tiny_model, out)
    (out / "training_args.bin").write_bytes(b"\x80\x04pickle-not-allowed")
    (out / "optimizer.pt").write_bytes(b"\x80\x04optimizer-state")
    return out


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    path.write_text(
        json.dumps(
            {
                "benchmarks": {
                    "medqa": {"n": 1273, "accuracy": 0.726, "unparseable": 4},
                    "pubmedqa": {"n": 1000, "accuracy": 0.792, "unparseable": 0},
                },
                "average_accuracy": 0.759,
            }
        )
    )
    return path


def make_config(model_dir: Path, **extra) -> UploadConfig:
    values = {
        "model_dir": str(model_dir),
        "repo_id": "medo1-test/tiny-medo1",
        "base_model": "Qwen/Qwen2.5-7B-Instruct",
        "datasets": ["FreedomIntelligence/medical-o1-reasoning-SFT"],
        "language": ["en"],
        "hyperparameters": HYPER,
        **extra,
    }
    return UploadConfig(**values)


def test_plan_sends_allowlisted_files_and_a_full_card(export_dir: Path, report: Path, tiny_model: Path):
    plan = plan_upload(make_config(export_dir, eval_report=str(report)))

    expected = sorted([p.name for p in tiny_model.iterdir() if p.name != DIR_MARKER] + ["README.md"])
    assert sorted(plan.file_names()) == expected
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(expected)
    sizes = {f.path: f.size for f in plan.files}
    assert sizes["model.safetensors"] == (export_dir / "model.safetensors").stat().st_size
    assert sizes["README.md"] == len(plan.card.encode())

    skipped = {s.path: s.reason for s in plan.skipped}
    assert set(skipped) == {"training_args.bin", "optimizer.pt"}
    assert all("pickle" in reason for reason in skipped.values())
    assert not (export_dir / "README.md").exists(), "the card must not be written into the user's directory"

    card = plan.card
    front = card.split("---\n")[1]
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert meta["datasets"] == ["FreedomIntelligence/medical-o1-reasoning-SFT"]
    assert meta["language"] == ["en"]
    assert meta["tags"] == ["medical", "reasoning", "medo1"]
    assert meta["pipeline_tag"] == "text-generation"
    assert "| learning_rate | 5e-06 |" in card and "| epochs | 3 |" in card and "| lr_scheduler | cosine |" in card
    assert "| benchmark | n | accuracy | unparseable |" in card
    assert "| medqa | 1273 | 72.6% | 4 |" in card and "| pubmedqa | 1000 | 79.2% | 0 |" in card
    assert "75.9%" in card
    assert "not medical advice" in card and "qualified healthcare professional" in card
    assert "## Thinking" in card and "## Final Response" in card
    assert "## License\n\napache-2.0" in card


def test_a_local_base_model_is_named_not_linked(export_dir: Path, tmp_path: Path):
    plan = plan_upload(make_config(export_dir, base_model=str(tmp_path / "tiny-model")))
    front = yaml.safe_load(plan.card.split("---")[1])
    assert "base_model" not in front
    assert f"from `{tmp_path / 'tiny-model'}` with medo1" in plan.card and "huggingface.co//" not in plan.card


def test_card_without_report_says_not_evaluated(export_dir: Path):
    plan = plan_upload(make_config(export_dir))
    assert "Not evaluated." in plan.card
    assert "| benchmark |" not in plan.card


@pytest.mark.parametrize(
    "name, content",
    [
        (".env", "WANDB_API_KEY=abc\n"),
        ("my_token.txt", "nothing secret-looking inside\n"),
        ("deploy.pem", "x"),
        ("subdir/credentials.json", "{}"),
    ],
)
def test_credential_file_names_refuse_the_upload(export_dir: Path, name: str, content: str):
    path = export_dir / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    with pytest.raises(UploadRefused, match="credential") as info:
        plan_upload(make_config(export_dir, dry_run=True))
    assert name in str(info.value)


def test_hf_token_inside_a_json_file_refuses(export_dir: Path):
    secret = "hf_" + "aB3" * 11
    (export_dir / "extra_config.json").write_text(json.dumps({"hub_token": secret}))
    with pytest.raises(UploadRefused, match="extra_config.json") as info:
        plan_upload(make_config(export_dir, dry_run=True))
    assert "Hugging Face token" in str(info.value)
    assert secret not in str(info.value), "the refusal must not repeat the secret"


def test_literal_hf_token_value_in_a_file_refuses(export_dir: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "plainvalue-without-prefix-123")
    (export_dir / "chat_template.jinja").write_text("{{ 'plainvalue-without-prefix-123' }}")
    with pytest.raises(UploadRefused, match="chat_template.jinja.*HF_TOKEN value"):
        plan_upload(make_config(export_dir, dry_run=True))


def test_tokenizer_files_are_not_flagged(export_dir: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    names = [p.name for p in export_dir.iterdir()]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(names)
    (export_dir / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (export_dir / "added_tokens.json").write_text(json.dumps({"<|im_end|>": 151645}))
    files = [p.name for p in export_dir.iterdir() if up._skip_reason(p.name, p.name) is None]
    assert secret_scan.scan_credentials(export_dir, sorted(p.name for p in export_dir.iterdir()), files) == []
    plan = plan_upload(make_config(export_dir, dry_run=True))
    assert {"special_tokens_map.json", "added_tokens.json", "tokenizer.json"} <= set(plan.file_names())


def test_directory_that_does_not_load_is_refused(export_dir: Path):
    (export_dir / "config.json").write_text('{"model_type": "qwen2", "hidden_size": ')
    with pytest.raises(UploadRefused, match=r"does not load with transformers \(config failed"):
        plan_upload(make_config(export_dir, dry_run=True))


def test_missing_chat_template_is_refused(export_dir: Path):
    config_path = export_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.pop("chat_template", None)
    config_path.write_text(json.dumps(tok_config))
    (export_dir / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(UploadRefused, match="no tokenizer chat template"):
        plan_upload(make_config(export_dir, dry_run=True))


def test_missing_token_is_a_clear_error(export_dir: Path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UploadError, match="HF_TOKEN is not set"):
        upload(make_config(export_dir))


def test_dry_run_needs_no_token_and_no_network(export_dir: Path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("dry run must not create an HfApi client")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    hub = HubStandIn().start()
    try:
        result = upload(make_config(export_dir, dry_run=True, endpoint=hub.url))
    finally:
        hub.stop()
    assert hub.requests == []
    assert result["dry_run"] is True
    assert "README.md" in [f["path"] for f in result["files"]]
    assert "training_args.bin" in [s["path"] for s in result["skipped"]]


def test_push_to_hub_standin(export_dir: Path, report: Path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(up, "RETRY_BASE_SECONDS", 0.01)
    caplog.set_level(logging.DEBUG)
    hub = HubStandIn(fail_commit=1).start()
    try:
        config = make_config(export_dir, eval_report=str(report), endpoint=hub.url, commit_message="medo1 tiny")
        planned = plan_upload(config)
        result = upload(config)
    finally:
        hub.stop()

    assert hub.created == [{"name": "tiny-medo1", "organization": "medo1-test", "visibility": "private"}]
    commit_calls = [r for r in hub.requests if "/commit/" in r.path]
    assert [r.status for r in commit_calls] == [503, 200], "the first 503 must be retried"
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo"] == "medo1-test/tiny-medo1" and commit["revision"] == "main"
    assert commit["header"]["summary"] == "medo1 tiny"
    assert sorted(commit["files"]) == sorted(planned.file_names())
    assert commit["files"]["config.json"] == (export_dir / "config.json").read_bytes()
    assert commit["files"]["model.safetensors"] == (export_dir / "model.safetensors").read_bytes()
    assert commit["files"]["README.md"].decode() == planned.card
    # the raw wire payload is base64, as the Hub expects for regular (non-LFS) files
    body = commit_calls[-1].body.decode()
    line = next(json.loads(x) for x in body.splitlines() if '"tokenizer_config.json"' in x)
    assert base64.b64decode(line["value"]["content"]) == (export_dir / "tokenizer_config.json").read_bytes()

    assert hub.requests, "the stand-in saw no traffic"
    assert all(r.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for r in hub.requests)

    assert result["repo_id"] == "medo1-test/tiny-medo1"
    assert result["commit_url"].startswith(hub.url) and "/commit/" in result["commit_url"]
    assert sorted(result["files"]) == sorted(planned.file_names())
    out = capsys.readouterr()
    assert "retry 1/3" in caplog.text
    for text in (json.dumps(result), caplog.text, out.out, out.err):
        assert FAKE_TOKEN not in text


def test_persistent_503_gives_up_after_retries(export_dir: Path, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(up, "RETRY_BASE_SECONDS", 0.01)
    hub = HubStandIn(fail_commit=100).start()
    try:
        with pytest.raises(HfHubHTTPError) as info:
            upload(make_config(export_dir, endpoint=hub.url, retries=2))
    finally:
        hub.stop()
    assert [r.status for r in hub.requests if "/commit/" in r.path] == [503, 503, 503]
    assert FAKE_TOKEN not in str(info.value)


def test_client_errors_are_not_retried():
    calls = []

    def failing():
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        up._with_retries("x", 3, failing)
    assert calls == [1]


# --------------------------------------------------------------------------- leaks


def refusal(export_dir: Path, **extra) -> str:
    with pytest.raises(UploadRefused) as info:
        plan_upload(make_config(export_dir, dry_run=True, **extra))
    return str(info.value)


def test_a_symlink_out_of_the_folder_is_refused(export_dir: Path, tmp_path: Path):
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (export_dir / "extra_config.json").symlink_to(outside)
    message = refusal(export_dir)
    assert "extra_config.json: resolves to a path outside" in message
    assert "root:x" not in message


def test_a_symlinked_directory_out_of_the_folder_is_refused(export_dir: Path, tmp_path: Path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.json").write_text("{}")
    (export_dir / "more").symlink_to(tmp_path / "home", target_is_directory=True)
    assert "more: resolves to a path outside" in refusal(export_dir)


def test_a_large_file_with_the_live_token_across_a_chunk_boundary_is_refused(export_dir: Path, monkeypatch):
    live = "plainvalue" + "7Qx" * 6  # no hf_ prefix: only the live-value check can find it
    monkeypatch.setenv("HF_TOKEN", live)
    state = export_dir / "trainer_state.json"
    with state.open("w") as handle:  # 6 MB, one "log" line per 100 bytes, the token straddling 3 MiB
        filler = '{"log": "' + "x" * 88 + '"},\n'
        lines_before = (3 * secret_scan.SCAN_CHUNK_BYTES - 5) // len(filler)
        handle.write(filler * lines_before)
        handle.write("y" * (3 * secret_scan.SCAN_CHUNK_BYTES - 5 - lines_before * len(filler)) + live + "\n")
        handle.write(filler * (3 * secret_scan.SCAN_CHUNK_BYTES // len(filler)))
    assert state.stat().st_size > 6_000_000
    message = refusal(export_dir)
    assert f"trainer_state.json: line {lines_before + 1}: the live HF_TOKEN value" in message
    assert live not in message


@pytest.mark.parametrize(
    "name, text, key, line",
    [
        ("extra_config.json", '{\n  "api_key": "' + "3f9a6c0e" * 4 + '"\n}', "api_key", 2),
        ("generation_config.json", '{"wandb_token": "Zm9vYmFyYmF6cXV4cXV1eA=="}', "wandb_token", 1),
        ("merges.txt", "#version: 0.2\nDB_PASSWORD=k2J9xQ7vLp3mN8rT\n", "DB_PASSWORD", 2),
        ("chat_template.jinja", "{# secret: 'a8F3kL9mQ2xZ7pR4' #}", "secret", 1),
    ],
)
def test_a_high_entropy_value_under_a_secret_key_is_refused(export_dir: Path, name, text, key, line):
    (export_dir / name).write_text(text)
    message = refusal(export_dir)
    assert f"{name}: line {line}: a high-entropy value under key '{key}'" in message
    value = text.split(":" if ":" in text.splitlines()[line - 1] else "=")[-1]
    assert value.strip(" \"'}\n#") not in message


@pytest.mark.parametrize("value, kind", [("sk-abc12345", "OpenAI-style key"), ("hf_abcDEF123", "Hugging Face token")])
def test_short_sk_and_hf_values_are_refused(export_dir: Path, value, kind):
    (export_dir / "extra_config.json").write_text(json.dumps({"note": value}))
    message = refusal(export_dir)
    assert f"extra_config.json: line 1: what looks like {'an' if kind[0] == 'O' else 'a'} {kind}" in message
    assert value not in message


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "empty weight file (0 bytes)"),
        (b"\x10\x00\x00", "not a safetensors file (3 bytes, no header)"),
        ((64).to_bytes(8, "little") + b"{}", "not a safetensors file (header length beyond the file)"),
        ((2).to_bytes(8, "little") + b"{}", "holds no tensors"),
    ],
)
def test_an_empty_or_unreadable_extra_weight_shard_is_refused(export_dir: Path, content: bytes, why: str):
    (export_dir / "model-extra.safetensors").write_bytes(content)
    assert f"model-extra.safetensors: {why}" in refusal(export_dir)


def test_a_truncated_shard_is_refused(export_dir: Path):
    whole = (export_dir / "model.safetensors").read_bytes()
    (export_dir / "model.safetensors").write_bytes(whole[:-100])
    assert "model.safetensors: truncated or padded" in refusal(export_dir)


def test_low_entropy_and_tokenizer_values_under_secret_keys_pass():
    text = json.dumps(
        {
            "pad_token": "<|endoftext|>",
            "bos_token": "<|begin_of_text|>",
            "max_token_length": 1234567890123456,
            "secret_placeholder": "aaaaaaaaaaaaaaaaaaaaaaaa",
            "password": "changeme",
            "tokenizer_class": "Qwen2Tokenizer",
        }
    )
    assert secret_scan.find_secrets(text, live={}) == []


def test_a_legit_export_with_secrets_in_the_environment_is_accepted(export_dir: Path, monkeypatch, tiny_model: Path):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "Lm4" * 10)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2)
    plan = plan_upload(make_config(export_dir, dry_run=True))
    assert sorted(plan.file_names()) == sorted(
        [p.name for p in tiny_model.iterdir() if p.name != DIR_MARKER] + ["README.md"]
    )


def test_a_broken_symlink_and_an_unreadable_file_are_refused(export_dir: Path, tmp_path: Path):
    import os

    (export_dir / "gone.json").symlink_to(export_dir / "never-written.json")
    assert "gone.json: a broken symlink" in refusal(export_dir)
    (export_dir / "gone.json").unlink()
    locked = export_dir / "extra_config.json"
    locked.write_text("{}")
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        pytest.skip("running as a user who can read any file (root)")
    assert "extra_config.json: cannot be read (Permission denied)" in refusal(export_dir)


@pytest.mark.e2e
def test_the_card_template_ships_in_the_wheel(tmp_path: Path):
    """The card comes from package data (pyproject.toml), not from the source tree."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(repo / "trainer", source / "trainer", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(repo / "pyproject.toml", source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob("medo1-*.whl")))
    assert wheel.read(f"medo1/{CARD_TEMPLATE}") == (repo / "trainer/medo1" / CARD_TEMPLATE).read_bytes()


# ------------------------------------------------------------------------------- leak variants

LIVE = "LiveValue-9c1e7a3f5b2d8e4a6c0f"


@pytest.mark.parametrize(
    "name, encode",
    [
        ("utf8-bom.json", lambda t: b"\xef\xbb\xbf" + json.dumps({"n": t}).encode()),
        ("utf16-le-no-bom.json", lambda t: json.dumps({"n": t}).encode("utf-16-le")),
        ("utf16-be.json", lambda t: json.dumps({"n": t}).encode("utf-16")[2:].decode("utf-16-le").encode("utf-16-be")),
        ("utf32.json", lambda t: json.dumps({"n": t}).encode("utf-32")),
        (
            "escaped.json",
            lambda t: json.dumps({"n": "".join(f"\\u{ord(c):04x}" for c in t)}).replace("\\\\", "\\").encode(),
        ),
        ("split-escape.json", lambda t: ('{"n": "' + t[:5] + "\\u" + f"{ord(t[5]):04x}" + t[6:] + '"}').encode()),
        (
            "basic-auth.json",
            lambda t: json.dumps({"h": "Basic " + base64.b64encode(f"me:{t}".encode()).decode()}).encode(),
        ),
        ("urlsafe.json", lambda t: json.dumps({"h": base64.urlsafe_b64encode(f"xx{t}".encode()).decode()}).encode()),
        (
            "percent.json",
            lambda t: json.dumps({"u": "https://h/?k=" + "".join(f"%{b:02X}" for b in t.encode())}).encode(),
        ),
    ],
)
def test_the_live_token_is_found_however_a_reader_would_decode_it(export_dir: Path, monkeypatch, name, encode):
    monkeypatch.setenv("HF_TOKEN", LIVE)
    (export_dir / name).write_bytes(encode(LIVE))
    with pytest.raises(UploadRefused, match=rf"{re.escape(name)}: line 1: the live HF_TOKEN value") as info:
        plan_upload(make_config(export_dir, dry_run=True))
    assert LIVE not in str(info.value)


def test_escaped_url_syntax_and_opaque_tokens_in_urls_and_headers_are_found():
    found = lambda text: [what for _, what in secret_scan.find_secrets_decoded(text, {})]  # noqa: E731
    assert "what looks like Basic Auth Credentials (detect-secrets)" in found('{"u": "postgres:\\/\\/admin:pw@db"}')
    assert "what looks like a token in a URL's user-info" in found('{"u": "https://x9Kq2mZ7pL4vR8tW3nYb@git.example"}')
    assert "what looks like a bearer token" in found("Authorization: Bearer x9Kq2mZ7pL4vR8tW3nYb5c")
    assert found('{"u": "https://huggingface.co/Qwen/Qwen2.5-7B", "a": "Bearer of bad news"}') == []


def test_hard_links_inside_the_folder_are_fine_and_special_files_are_refused_unread(export_dir: Path, tmp_path: Path):
    os.link(export_dir / "config.json", export_dir / "config-copy.json")
    assert "config-copy.json" in up._all_files(export_dir)
    os.mkfifo(export_dir / "pipe.json")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(export_dir / "sock.json"))
        with pytest.raises(UploadRefused) as info:
            up._all_files(export_dir)
    assert "pipe.json: a FIFO, not a file (refused unread)" in str(info.value)
    assert "sock.json: a socket, not a file (refused unread)" in str(info.value)


def test_a_gguf_file_in_the_folder_is_never_sent(export_dir: Path):
    (export_dir / "model.gguf").write_bytes(b"GGUF" + b"\x00" * 8 + b"hf_" + b"Qx7RmZ2pLk9VbN4tWc8Y")
    plan = plan_upload(make_config(export_dir, dry_run=True))
    assert "model.gguf" not in plan.file_names()
    assert {s.path: s.reason for s in plan.skipped}["model.gguf"] == "not on the upload allowlist"


@pytest.mark.parametrize("leak", ["metadata", "hard link", "fifo"])
def test_a_real_upload_with_a_leak_sends_nothing_to_the_hub(export_dir: Path, tmp_path: Path, monkeypatch, leak):
    """The Hub stand-in sees no request at all: the refusal comes before the repo is created."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    if leak == "metadata":
        weights = export_dir / "model.safetensors"
        save_file(load_file(weights), weights, metadata={"format": "pt", "pushed_with": "hf_" + "Qx7RmZ2pLk9VbN4tWc8Y"})
    elif leak == "hard link":
        (tmp_path / "notes.json").write_text("{}")
        os.link(tmp_path / "notes.json", export_dir / "notes.json")
    else:
        os.mkfifo(export_dir / "notes.json")
    hub = HubStandIn().start()
    try:
        with pytest.raises(UploadRefused):
            upload(make_config(export_dir, endpoint=hub.url))
    finally:
        hub.stop()
    assert hub.requests == [] and hub.commits == []
