"""Hub upload stage: file allowlist, credential refusal, load check, model card, and the push path.

The push test runs against tests/hub_standin.py, a local HTTP server that stands in for the
Hugging Face Hub API (huggingface.co); nothing leaves the machine.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from medo1 import upload as up
from medo1.upload import UploadConfig, UploadError, UploadRefused, plan_upload, upload

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

    expected = sorted([p.name for p in tiny_model.iterdir()] + ["README.md"])
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
    assert up.scan_credentials(export_dir, sorted(p.name for p in export_dir.iterdir()), files) == []
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
