"""Issue 25, item 4: models come from where users keep them. The RL recipes name the verifier by its Hub id and load
it through the HF cache (HF_HOME, the hf-cache volume) like the policy; `medo1 launch chain` checks every stage's
inputs before its first job: local files and folders, and Hub ids in the cache or readable on the Hub (the stand-in
Hub of tests/hub_standin.py, through HF_ENDPOINT: the Hub itself is unreachable here) with the stage's token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medo1.cli import main
from medo1.config import load_config
from medo1.launch import InputsMissing, launch_chain
from medo1.rl.config import RLConfig
from tests.conftest import DEMO_DATA, REPO
from tests.hub_standin import HubStandIn
from tests.kube_standin import KubeStandIn, Step

VERIFIER = "FreedomIntelligence/medical_o1_verifier_3B"
SEVEN_B_RL = ["rl-ppo-qwen2.5-7b-8xh100.yaml", "rl-grpo-qwen2.5-7b-8xh100.yaml"]
NS = "team-c"
SUCCEEDED = {
    "conditions": [
        {
            "type": "Succeeded",
            "status": "True",
            "reason": "PyTorchJobSucceeded",
            "lastTransitionTime": "2026-11-23T11:00:00Z",
        }
    ]
}


@pytest.mark.parametrize("recipe", SEVEN_B_RL)
def test_the_rl_recipes_name_the_verifier_by_its_hub_id(recipe):
    assert load_config(RLConfig, str(REPO / "recipes" / recipe)).reward.model == VERIFIER


def hf_cache_entry(hub: os.PathLike, repo_id: str, repo_type: str = "model") -> os.PathLike:
    """A repo's snapshot folder in an HF cache, laid out as huggingface_hub writes it (refs/main -> snapshots/SHA)."""
    from pathlib import Path

    repo = Path(hub) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    sha = "9c2f1e0d" * 5
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.mark.multiprocess  # a process importing torch and transformers
def test_the_verifier_loads_by_its_hub_id_through_the_hf_cache(tmp_path):
    from tests.helpers import save_verifier

    save_verifier(hf_cache_entry(tmp_path / "hf-cache" / "hub", VERIFIER), 0.6)
    script = (
        "from medo1.rl.rewards.config import VerifierRewardConfig\n"
        "from medo1.rl.rewards.verifier import VerifierReward\n"
        f"reward = VerifierReward(VerifierRewardConfig(model={VERIFIER!r}))\n"
        "print(reward.true_index, type(reward.model).__name__)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "Qwen2ForSequenceClassification"]


# ---- the chain's check before its first job ------------------------------------------------------------------


def chain_values(tmp_path, verifier: str, secret: str = "") -> os.PathLike:
    """SFT then PPO on this machine's folders: the volumes' mount paths are folders here, as in the run pod."""
    volumes = {"data": tmp_path / "data", "checkpoints": tmp_path / "checkpoints", "hfCache": tmp_path / "hf-cache"}
    for folder in volumes.values():
        folder.mkdir(exist_ok=True)
    base = volumes["checkpoints"] / "models" / "smollm2"
    base.mkdir(parents=True, exist_ok=True)
    (volumes["data"] / "rl.json").write_text(DEMO_DATA.read_text())
    sft_out, rl_out = volumes["checkpoints"] / "sft", volumes["checkpoints"] / "rl"
    values = {
        "storage": {key: {"mountPath": str(folder)} for key, folder in volumes.items()},
        "secrets": {"hfToken": {"name": secret, "key": "HF_TOKEN"}},
        "stages": {
            "sft": {
                "enabled": True,
                "recipe": str(REPO / "recipes" / "sft-qwen2.5-7b-8xh100.yaml"),
                "set": [
                    f"model.name_or_path={base}",
                    f"data.path={volumes['data'] / 'sft.json'}",
                    f"output.dir={sft_out}",
                ],
            },
            "rl": {
                "enabled": True,
                "recipe": str(REPO / "recipes" / "rl-ppo-qwen2.5-7b-8xh100.yaml"),
                "set": [
                    f"model.name_or_path={sft_out / 'export'}",
                    f"data.path={volumes['data'] / 'rl.json'}",
                    f"reward.model={verifier}",
                    f"output.dir={rl_out}",
                ],
            },
        },
    }
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))
    return path


def test_a_chain_with_missing_inputs_says_which_stage_what_and_the_fix_and_creates_nothing(tmp_path, capsys):
    values = chain_values(tmp_path, "/models/medical_o1_verifier_3B")  # the old recipes' path: no pod mounts it
    assert main(["launch", "chain", "--values", str(values)]) == 2
    err = capsys.readouterr().err.splitlines()
    sft_data = tmp_path / "data" / "sft.json"
    assert err[-2:] == [
        f"medo1: error: stage sft: data.path {sft_data}: does not exist; fix: copy the file onto the data volume (a pod "
        "mounting it: kubectl cp FILE POD:/data/), or point the stage's data path at it (stages.<stage>.set / "
        "jobs.<stage>.set)",
        "stage rl: reward.model /models/medical_o1_verifier_3B: does not exist; fix: put the model folder there (the "
        "checkpoints volume), or name the model by its Hub id (owner/name) to load it through the HF cache",
    ]
    # The RL stage's model is the SFT export the chain writes first: not a missing input.
    assert not any("model.name_or_path" in line for line in err)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    standin = HubStandIn(repos={f"model:{VERIFIER}": {"private": True, "tokens": {"hf_stage_token"}}}).start()
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache" / "hub"))
    yield standin
    standin.stop()


def launch_checked_chain(values, kube):
    from kubeflow.training import TrainingClient
    from kubernetes.client import Configuration

    client = TrainingClient(client_configuration=Configuration(host=kube.url))
    return launch_chain(values_files=[values], namespace=NS, client=client, timeout_s=30, poll_s=0.05)


def test_a_hub_id_the_stages_token_can_read_passes_and_the_chain_starts(tmp_path, hub, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.json").write_text(DEMO_DATA.read_text())
    values = chain_values(tmp_path, VERIFIER, secret="hf-token")
    monkeypatch.setenv("HF_TOKEN", "hf_stage_token")  # the run pod gets the stages' secrets.hfToken
    kube = KubeStandIn().start()
    kube.script("*", [Step(SUCCEEDED)])
    try:
        with pytest.raises(Exception, match="sft succeeded but its export .* is not complete"):
            launch_checked_chain(values, kube)  # past the check: SFT ran (its export is not written here)
    finally:
        kube.stop()
    assert len(kube.calls("POST")) == 1
    (check,) = [r for r in hub.requests if r.path.endswith("/auth-check")]
    assert check.path == f"/api/models/{VERIFIER}/auth-check"
    assert check.headers["authorization"] == "Bearer hf_stage_token"


@pytest.mark.parametrize("case", ["no-token-for-the-stage", "wrong-token", "not-on-the-hub"])
def test_a_hub_id_neither_cached_nor_readable_is_refused_before_the_first_job(tmp_path, hub, monkeypatch, case):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.json").write_text(DEMO_DATA.read_text())
    verifier = "FreedomIntelligence/no_such_verifier" if case == "not-on-the-hub" else VERIFIER
    values = chain_values(tmp_path, verifier, secret="" if case == "no-token-for-the-stage" else "hf-token")
    monkeypatch.setenv("HF_TOKEN", "hf_someone_elses" if case == "wrong-token" else "hf_stage_token")
    kube = KubeStandIn().start()
    try:
        with pytest.raises(InputsMissing) as refused:
            launch_checked_chain(values, kube)
    finally:
        kube.stop()
    assert kube.requests == []
    who = (
        "no token (the stage gets none: set secrets.hfToken)"
        if case == "no-token-for-the-stage"
        else "the stage's token"
    )
    assert str(refused.value) == (
        f"stage rl: reward.model {verifier}: not in the HF cache ({tmp_path / 'hf-cache' / 'hub'}), and {hub.url} has no "
        f"such model readable with {who}; fix: check the id; a private repo needs a token that can read it "
        "(secrets.hfToken)"
    )


def test_a_hub_id_in_the_hf_cache_needs_no_hub(tmp_path, hub, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.json").write_text(DEMO_DATA.read_text())
    hf_cache_entry(tmp_path / "hf-cache" / "hub", VERIFIER)
    values = chain_values(tmp_path, VERIFIER)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub is not asked
    from medo1.launch import check_chain_inputs

    check_chain_inputs(values_files=[values])
    assert hub.requests == []
