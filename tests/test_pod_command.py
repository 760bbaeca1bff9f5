"""The CPU smoke profile's rendered PyTorchJob, run for real: its container command and env under
torchrun with 2 processes, plus what the training operator injects. Mounts become local folders
(the one thing a pod has that this machine does not), so manifest, entrypoint and trainer agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medo1 import chart
from medo1.training import checkpoint
from tests.conftest import DEMO_DATA, REPO, free_port

pytestmark = pytest.mark.multiprocess
IMAGE_RECIPES = "/opt/medo1/recipes"  # where images/trainer/Dockerfile copies recipes/


def test_rendered_cpu_smoke_pytorchjob_runs_under_torchrun(tiny_model, tmp_path):
    objects = chart.render_chart(chart.load_profile("cpu-smoke"))
    (job,) = [o for o in objects if o["kind"] == "PyTorchJob"]
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["name"] == "pytorch"

    # Each volume mount becomes a local folder; the image's recipes are the repository's.
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"] if m["mountPath"] != "/dev/shm"}
    for local in mounts.values():
        local.mkdir()

    def local_path(text: str) -> str:
        if text.startswith(IMAGE_RECIPES):
            return str(REPO / "recipes") + text[len(IMAGE_RECIPES) :]
        for mount, local in mounts.items():
            text = text.replace(f"={mount}/", f"={local}/").replace(f"={mount}", f"={local}")
            if text.startswith(mount):
                text = str(local) + text[len(mount) :]
        return text

    # What a user puts on the volumes before the smoke run (see the profile's comment).
    shutil.copy(DEMO_DATA, mounts["/data"] / "medical_o1_demo.json")
    shutil.copytree(tiny_model, mounts["/checkpoints"] / "tiny-model")

    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {k: local_path(v) for k, v in env.items()}
    env.update(chart.operator_env(job, pod_index=0, master_addr="127.0.0.1", master_port=free_port()))
    assert env["PET_NPROC_PER_NODE"] == "2" and env["WORLD_SIZE"] == "2"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun if part == "torchrun" else part for part in container["command"]]
    args = [local_path(arg) for arg in container["args"]]
    done = subprocess.run(
        command + args, cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]

    out = mounts["/checkpoints"] / "sft-tiny"
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [2]
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == 2
    assert (out / "export" / "model.safetensors").is_file()
    assert (mounts["/hf-cache"]).is_dir() and env["HF_HOME"] == str(mounts["/hf-cache"])
