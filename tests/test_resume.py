"""One resume set-up for SFT, GRPO and PPO (medo1.training.resume): the recipe fingerprint a resume must match, a finished
run that stays finished, and one writer per run folder (medo1.training.run_lock)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medo1.config import ConfigError, load_config
from medo1.rl.config import RLConfig
from medo1.sft.config import SFTConfig
from medo1.training import checkpoint
from medo1.training.resume import RUN_RECORD, RecipeChanged, content_identity, open_run, recipe_fingerprint
from medo1.training.run_lock import LOCK_NAME, RunFolderLocked, RunLock, process_identity
from tests.conftest import REPO, TINY_RECIPE, run_medo1, sft_overrides, write_short_rows

RL_RECIPE = REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"


def sft_config(model, data, out, **extra) -> SFTConfig:
    return load_config(SFTConfig, TINY_RECIPE, sft_overrides(model, data, out, **extra))


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder`: size, modification time and bytes, to prove nothing was written."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fake_checkpoint(out: Path, step: int, fingerprint: dict | None) -> Path:
    """A complete checkpoint as a run would leave it, its marker holding the recipe fingerprint (or none: a
    checkpoint from before fingerprints)."""
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    info = {"fingerprint": fingerprint} if fingerprint is not None else {}
    checkpoint.mark_complete(path, step=step, world_size=1, **info)
    return path


@pytest.fixture
def tiny_inputs(tiny_model, demo_rows, tmp_path):
    return tiny_model, write_short_rows(demo_rows, tmp_path / "rows.json", 8)


# ---- the fingerprint ------------------------------------------------------------------------------


def test_the_fingerprint_holds_what_changes_the_maths_and_not_where_or_how_often_results_are_written(
    tiny_inputs, tmp_path
):
    model, data = tiny_inputs
    fingerprint = recipe_fingerprint(sft_config(model, data, tmp_path / "run"), processes=2)
    for key in (
        "model.name_or_path",
        "data.path",
        "data.max_length",
        "data.limit",
        "train.learning_rate",
        "train.lr_scheduler",
        "train.epochs",
        "train.max_steps",
        "train.per_device_batch_size",
        "train.gradient_accumulation_steps",
        "train.seed",
        "train.precision",
        "lora.enabled",
    ):
        assert key in fingerprint, key
    assert fingerprint["world_size"] == 2  # the global batch
    assert fingerprint["data.path.content"] == content_identity(data)
    assert fingerprint["model.name_or_path.content"] == content_identity(model)
    for key in (
        "output.dir",
        "output.logging_steps",
        "output.save_steps",
        "output.keep",
        "output.report_to",
        "train.dataloader_workers",
        "train.distributed",
        "model.gradient_checkpointing",
        "lora.r",
        "resume.allow_changes",
    ):
        assert key not in fingerprint, key
    moved = recipe_fingerprint(
        sft_config(
            model,
            data,
            tmp_path / "elsewhere",
            **{"output.logging_steps": 7, "output.save_steps": 3, "train.distributed": "fsdp"},
        ),
        processes=2,
    )
    assert moved == fingerprint

    rl = recipe_fingerprint(load_config(RLConfig, RL_RECIPE, ["algo=grpo", f"model.name_or_path={model}"]))
    assert "grpo.num_generations" in rl and "sampling.temperature" in rl and "reward.reward_wrong" in rl
    assert not any(key.startswith(("ppo.", "rloo.", "sampling.engine", "sampling.vllm")) for key in rl)


def test_content_identity_sees_a_file_replaced_under_the_same_path_but_not_a_copy(tmp_path):
    data = tmp_path / "rows.json"
    data.write_text('[{"a": 1}]')
    before = content_identity(data)
    copy = tmp_path / "copy" / "rows.json"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    os.utime(copy, (1, 1))
    assert content_identity(copy) == before
    data.write_text('[{"a": 2}]')
    assert content_identity(data) != before
    assert content_identity(tmp_path / "absent") is None and content_identity("Qwen/Qwen2.5-7B-Instruct") is None


# ---- resume under another recipe ------------------------------------------------------------------


def test_a_resume_with_a_changed_learning_rate_is_refused_naming_the_key(tiny_inputs, tmp_path):
    model, data = tiny_inputs
    out = tmp_path / "run"
    original = sft_config(model, data, out)
    ckpt = fake_checkpoint(out, 4, recipe_fingerprint(original))
    before = snapshot(out)

    changed = sft_config(model, data, out, **{"train.learning_rate": 3e-4})
    with pytest.raises(RecipeChanged) as refused, open_run(changed, "auto", "sft"):
        pass
    message = str(refused.value)
    assert message.startswith(f"{ckpt} was trained under another recipe: train.learning_rate: 0.001 -> 0.0003.")
    assert "--allow-changed train.learning_rate" in message and "\n" not in message
    assert snapshot(out) == before and not (out / LOCK_NAME).exists()

    # The same recipe resumes; so does the changed one when the change is allowed.
    with open_run(original, "auto", "sft") as run:
        assert run.resume_from == ckpt and (out / LOCK_NAME).is_file()
    allowed = sft_config(model, data, out, **{"train.learning_rate": 3e-4, "resume.allow_changes": "[train]"})
    with open_run(allowed, "auto", "sft") as run:
        assert run.resume_from == ckpt and run.marker_info["fingerprint"]["train.learning_rate"] == 3e-4


def test_resume_auto_into_another_runs_folder_is_refused(tiny_inputs, demo_rows, tmp_path):
    """Issue 28 item 11: another run's recipe (other data, other learning rate) pointed at this folder."""
    model, data = tiny_inputs
    out = tmp_path / "run"
    fake_checkpoint(out, 2, recipe_fingerprint(sft_config(model, data, out)))
    other_data = write_short_rows(demo_rows, tmp_path / "other.json", 8, offset=8)
    other = sft_config(model, other_data, out, **{"train.learning_rate": 1e-5})
    with pytest.raises(
        RecipeChanged,
        match=r"data\.path: .*; data\.path\.content: content \w+ -> content \w+; "
        r"train\.learning_rate: 0\.001 -> 1e-05\. To continue it anyway pass "
        r"--allow-changed data\.path --allow-changed data\.path\.content "
        r"--allow-changed train\.learning_rate",
    ):
        with open_run(other, "auto", "sft"):
            pass
    # Edited in place (same path, other rows): the content tells.
    data.write_text(other_data.read_text())
    with pytest.raises(RecipeChanged, match=r"^\S+ was trained under another recipe: data\.path\.content: content"):
        with open_run(sft_config(model, data, out), "auto", "sft"):
            pass


def test_a_run_folder_without_a_checkpoint_keeps_its_recipe_and_its_stage(tiny_inputs, tmp_path):
    model, data = tiny_inputs
    out = tmp_path / "run"
    with open_run(sft_config(model, data, out), "none", "sft"):
        pass  # a run that died before its first checkpoint
    assert json.loads((out / RUN_RECORD).read_text())["status"] == "running"
    with pytest.raises(RecipeChanged, match=r"^the run in \S+ was trained under another recipe: train\.seed: 42 -> 7"):
        with open_run(sft_config(model, data, out, **{"train.seed": 7}), "none", "sft"):
            pass
    rl = load_config(RLConfig, RL_RECIPE, [f"model.name_or_path={model}", f"output.dir={out}"])
    with pytest.raises(checkpoint.ResumeError, match="holds a sft run, not a rl run"):
        with open_run(rl, "auto", "rl"):
            pass


def test_an_allowed_key_that_names_nothing_is_refused(tiny_inputs, tmp_path):
    model, data = tiny_inputs
    config = sft_config(model, data, tmp_path / "run", **{"resume.allow_changes": "[train.lr]"})
    with pytest.raises(ConfigError, match=r"resume\.allow_changes: train\.lr is not a key the resume check compares"):
        with open_run(config, "auto", "sft"):
            pass


def test_a_checkpoint_from_before_fingerprints_resumes_with_a_warning(tiny_inputs, tmp_path, caplog):
    model, data = tiny_inputs
    out = tmp_path / "run"
    ckpt = fake_checkpoint(out, 3, None)
    with open_run(sft_config(model, data, out, **{"train.seed": 1}), "auto", "sft") as run:
        assert run.resume_from == ckpt
    assert "predates recipe fingerprints" in caplog.text


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_stages_use_the_same_set_up(tiny_model, tmp_path, algo):
    """PPO and GRPO go through open_run: a finished run returns before any model loads, a changed recipe is
    refused before any model loads."""
    from medo1.rl import run_rl

    out = tmp_path / "run"
    overrides = [f"algo={algo}", f"model.name_or_path={tiny_model}", f"output.dir={out}"]
    config = load_config(RLConfig, RL_RECIPE, overrides)
    export = out / "export"
    export.mkdir(parents=True)
    (out / RUN_RECORD).write_text(
        json.dumps(
            {
                "stage": "rl",
                "status": "finished",
                "final_step": 2,
                "export": "export",
                "fingerprint": recipe_fingerprint(config),
            }
        )
    )
    before = snapshot(out)
    result = run_rl(config, resume="auto")
    assert result.already_finished and result.final_step == 2 and result.export_dir == export
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["export", RUN_RECORD]

    changed = load_config(RLConfig, RL_RECIPE, [*overrides, "train.learning_rate=1e-3"])
    with pytest.raises(
        RecipeChanged,
        match=r"^the finished run in \S+ was trained under another recipe: "
        r"train\.learning_rate: 1e-05 -> 0\.001\.",
    ):
        run_rl(changed, resume="auto")
    assert snapshot(out) == before


# ---- a finished run is finished (a real tiny SFT run) -----------------------------------------------


@pytest.fixture(scope="module")
def finished_sft(tiny_model, demo_rows, tmp_path_factory):
    from medo1.sft.trainer import run_sft

    tmp = tmp_path_factory.mktemp("finished-sft")
    data = write_short_rows(demo_rows, tmp / "rows.json", 8)
    overrides = sft_overrides(tiny_model, data, tmp / "run", **{"train.max_steps": 2, "output.save_steps": 1})
    result = run_sft(load_config(SFTConfig, TINY_RECIPE, overrides))
    return result, overrides


@pytest.mark.e2e
def test_rerunning_a_finished_run_does_nothing_and_says_so(finished_sft):
    """Issue 28 item 12: a rerun trained no step but re-exported and rewrote the config, metrics and report each
    time (a pod retry or chain rerun replaced the model). Now it exits 0 and nothing in the folder changes."""
    result, overrides = finished_sft
    out = result.output_dir
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["status"] == "finished" and record["final_step"] == 2 and record["export"] == "export"
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["fingerprint"] == record["fingerprint"]
    before = snapshot(out)

    args = ["sft", "--config", TINY_RECIPE, "--resume", "auto", *[a for o in overrides for a in ("--set", o)]]
    rerun = run_medo1(args)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout.splitlines()[-1]) == {
        "output_dir": str(out),
        "final_step": 2,
        "export_dir": str(out / "export"),
        "already_finished": True,
    }
    assert f"sft run in {out} already finished at step 2; export {out / 'export'} kept: nothing to do" in rerun.stderr
    assert snapshot(out) == before


@pytest.mark.e2e
def test_a_finished_run_under_a_changed_recipe_is_refused_and_left_whole(finished_sft):
    from medo1.sft.trainer import run_sft

    result, overrides = finished_sft
    before = snapshot(result.output_dir)
    changed = load_config(SFTConfig, TINY_RECIPE, [*overrides, "train.learning_rate=3e-4"])
    with pytest.raises(
        RecipeChanged,
        match=r"^the finished run in \S+ was trained under another recipe: "
        r"train\.learning_rate: 0\.001 -> 0\.0003\. To continue it anyway pass "
        r"--allow-changed train\.learning_rate",
    ):
        run_sft(changed, resume="auto")
    assert snapshot(result.output_dir) == before


# ---- one writer per run folder ----------------------------------------------------------------------


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tiny_inputs, tmp_path):
    from medo1.sft.trainer import run_sft

    model, data = tiny_inputs
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunFolderLocked) as refused:
            run_sft(sft_config(model, data, out), resume="auto")
    message = str(refused.value)
    assert message.startswith(f"{out} is in use by pid {os.getpid()} on host {socket.gethostname()} (since ")
    assert "one writer at a time" in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, and the lock released


def lock_file(out: Path, **holder) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps({"token": "old", "started_at": "2026-12-01T00:00:00Z", **holder}))
    return path


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lock_file(tmp_path, **process_identity(dead.pid), heartbeat_at=time.time())
    with RunLock(tmp_path) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    assert not path.exists()
    assert f"took over the lock of {tmp_path} from pid {dead.pid}" in caplog.text


def test_a_killed_but_unreaped_holder_and_a_reused_pid_count_as_dead(tmp_path):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not waited for: a zombie
    lock_file(tmp_path / "a", **process_identity(zombie.pid), heartbeat_at=time.time())
    with RunLock(tmp_path / "a"):
        pass
    zombie.wait()
    reused = {**process_identity(), "start_ticks": process_identity()["start_ticks"] - 1}  # this pid, another start
    lock_file(tmp_path / "b", **reused, heartbeat_at=time.time())
    with RunLock(tmp_path / "b"):
        pass


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_a_lock_from_another_host_is_taken_over_once_its_heartbeat_is_stale(tmp_path):
    """A pod retried on another node: the dead pod's lock cannot be checked by pid, so its heartbeat decides."""
    clock = FakeClock()
    elsewhere = {"pid": 17, "host": "medo1-sft-master-0", "boot_id": "another-node", "pid_ns": 1, "start_ticks": 5}
    path = lock_file(tmp_path, **elsewhere, heartbeat_at=clock.now - 100)
    with RunLock(tmp_path, clock=clock, sleep=clock.sleep, stale_after_s=120) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    assert clock.slept == [20.5]  # until the heartbeat was 120 s old, then taken over

    # Long dead: taken over at once.
    clock = FakeClock()
    lock_file(tmp_path, **elsewhere, heartbeat_at=clock.now - 3600)
    with RunLock(tmp_path, clock=clock, sleep=clock.sleep):
        assert clock.slept == []


def test_a_lock_whose_heartbeat_goes_on_elsewhere_is_refused(tmp_path):
    clock = FakeClock()
    elsewhere = {"pid": 17, "host": "medo1-sft-master-0", "boot_id": "another-node", "pid_ns": 1, "start_ticks": 5}
    path = lock_file(tmp_path, **elsewhere, heartbeat_at=clock.now - 10)

    def beating(seconds):  # the holder on the other node writes its heartbeat while we wait
        clock.sleep(seconds)
        path.write_text(json.dumps({**json.loads(path.read_text()), "heartbeat_at": clock.now - 5}))

    with pytest.raises(
        RunFolderLocked,
        match=rf"^{tmp_path} is in use by pid 17 on host medo1-sft-master-0 .*its "
        "heartbeat went on while this process waited",
    ):
        RunLock(tmp_path, clock=clock, sleep=beating).acquire()


def test_the_holder_keeps_its_heartbeat_and_notices_a_takeover(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat_at"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat_at"] > first
    (tmp_path / LOCK_NAME).write_text(json.dumps({**process_identity(), "token": "someone-else", "heartbeat_at": 0}))
    time.sleep(0.3)
    assert lock.lost
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "someone-else"  # not ours to remove
