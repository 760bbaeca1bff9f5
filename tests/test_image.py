"""Image build inputs, checked without a container engine: the Dockerfile's steps, the build
context, and the lock files (complete for what runs in the image, installable: pip dry run against the
registry). The image built and run for real: test_image_build.py; its Python environment: test_image_env.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import tomllib
import yaml
from medo1 import k8s
from packaging.utils import canonicalize_name

from tests.conftest import REPO

DOCKERFILE = REPO / "images" / "trainer" / "Dockerfile"
LOCK = REPO / "images" / "trainer" / "requirements.lock"
CPU_LOCK = REPO / "images" / "trainer" / "requirements-cpu.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def args_defaults() -> dict[str, str]:
    return dict(re.match(r"(\w+)=(.*)", rest).groups() for kw, rest in instructions() if kw == "ARG" and "=" in rest)


def test_base_image_is_pinned_cuda_pytorch():
    steps = instructions()
    assert steps[0][0] == "ARG" and [kw for kw, _ in steps].count("FROM") == 1
    base = args_defaults()["BASE_IMAGE"]
    repository, _, tag = base.partition(":")
    assert repository == "pytorch/pytorch"
    assert re.fullmatch(r"2\.13\.0-cuda\d+\.\d+-cudnn\d+-devel", tag), tag
    assert "torch==2.13.0" in (REPO / "images" / "trainer" / "base-image-packages.txt").read_text()
    assert "torch==2.13.0" in args_defaults()["TORCH_CPU_SPEC"]
    # The tag's source is cited; the base runs Ubuntu 24.04's Python 3.12, which the GPU lock is resolved for
    # (the build stops when a lock's Python differs from the base's).
    assert "https://hub.docker.com/r/pytorch/pytorch/tags" in DOCKERFILE.read_text()
    assert "for Python 3.12 " in LOCK.read_text() and "for Python 3.11 " in CPU_LOCK.read_text()
    assert "is for Python {want}, the base has {have}" in DOCKERFILE.read_text()


def test_runs_as_non_root_with_an_entrypoint_and_oci_labels():
    steps = instructions()
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    entrypoint = next(rest for kw, rest in steps if kw == "ENTRYPOINT")
    assert entrypoint == '["medo1"]'
    labels = " ".join(rest for kw, rest in steps if kw == "LABEL")
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # The chart's pods run as the same uid the image creates.
    pod_uid = yaml.safe_load((k8s.CHART_DIR / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert users[-1].split(":")[0] == str(pod_uid)


def test_installs_locked_deps_deepspeed_flash_attention_and_the_package():
    runs = [rest for kw, rest in instructions() if kw == "RUN"]
    lock_step = next(run for run in runs if "-r \"$lock\"" in run)
    assert "lock=images/trainer/requirements.lock" in lock_step and "lock=images/trainer/requirements-cpu.lock" in lock_step
    assert "--no-deps" in lock_step  # the lock is complete: nothing may resolve a second torch over the base's
    assert re.search(r"^deepspeed==", LOCK.read_text(), re.M) and re.search(r"^deepspeed==", CPU_LOCK.read_text(), re.M)
    # FusedAdam compiled at install on the GPU variant, not JIT-compiled on every fresh pod.
    assert "DS_BUILD_FUSED_ADAM=$fused_adam" in lock_step and "fused_adam=1; export DS_ACCELERATOR=cuda" in lock_step
    assert "DS_BUILD_OPS" not in " ".join(rest for kw, rest in instructions() if kw == "ENV")
    assert args_defaults()["TORCH_CUDA_ARCH_LIST"].strip('"') == "9.0"
    assert "pip install --no-deps ." in " ".join(runs) and "--without-pip" in " ".join(runs)


def test_flash_attention_builds_in_its_own_layer_with_arch_list_and_job_limit():
    (step,) = [rest for kw, rest in instructions() if kw == "RUN" and "flash-attn==" in rest]
    assert "requirements" not in step  # its own layer: a lock change does not rebuild it, nor it the lock
    assert "flash-attn==${FLASH_ATTN_VERSION}" in step and args_defaults()["FLASH_ATTN_VERSION"]
    assert "MAX_JOBS=$FLASH_ATTN_MAX_JOBS" in step and int(args_defaults()["FLASH_ATTN_MAX_JOBS"]) > 0
    assert 'FLASH_ATTN_CUDA_ARCHS="$FLASH_ATTN_CUDA_ARCHS"' in step
    assert args_defaults()["FLASH_ATTN_CUDA_ARCHS"].strip('"') == "90"  # H100


def test_user_creation_copes_with_a_base_that_has_uid_1000():
    # Ubuntu 24.04 (the PyTorch devel base) has `ubuntu` at uid/gid 1000: a bare `groupadd --gid 1000` fails.
    # Run for real on such a base in test_image_build.py; here, that the Dockerfile uses the script.
    run = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert "groupadd" not in run and "medo1-create-user" in run
    script = (REPO / "images" / "trainer" / "create-user.sh").read_text()
    assert "getent passwd 1000" in script and "usermod --login medo1" in script
    assert "chown 1000:1000 /data /checkpoints /hf-cache" in script


def test_copies_what_the_chart_and_launcher_expect():
    copies = {rest.split()[-1]: rest.split()[0] for kw, rest in instructions() if kw == "COPY"}
    assert copies["/opt/medo1/recipes/"] == "recipes/"
    assert copies["/opt/medo1/helm/"] == "helm/"
    assert ("ENV", "MEDO1_CHART=/opt/medo1/helm/medo1") in instructions()
    # Every recipe a profile points at is shipped in the image.
    values = yaml.safe_load((k8s.CHART_DIR / "values.yaml").read_text())
    shipped = [values] + [k8s.load_profile(p) for p in k8s.profiles()]
    for profile in shipped:
        for stage in [*profile.get("stages", {}).values(), *profile.get("jobs", {}).values()]:
            recipe = stage["recipe"]
            assert recipe.startswith("/opt/medo1/recipes/")
            assert (REPO / "recipes" / recipe.removeprefix("/opt/medo1/recipes/")).is_file(), recipe


def test_dockerignore_keeps_the_context_small():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "tests"} <= ignored
    for needed in ("trainer", "recipes", "helm", "examples", "images"):
        assert needed not in ignored


def requirement_names(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return {canonicalize_name(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in wanted}


def pins(lock) -> dict[str, str]:
    lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines)}


# What runs in the image needs these extras: `medo1 launch` and the pipeline's training steps render the chart
# through helm_python (k8s), the CPU smoke profile asks for `medo1 model init-tiny` (tiny).
IMAGE_EXTRAS = ("tracking", "pipeline", "k8s", "tiny")


@pytest.mark.parametrize("lock, extras", [(LOCK, (*IMAGE_EXTRAS, "gpu")), (CPU_LOCK, IMAGE_EXTRAS)], ids=["gpu", "cpu"])
def test_lock_pins_every_runtime_dependency(lock, extras):
    locked = pins(lock)
    assert "torch" not in locked  # from the base image (GPU) or installed before the lock (CPU build)
    for name in requirement_names(*extras) - {"torch"}:
        assert name in locked, f"{name} is not in {lock.name}: run `make lock`"


def test_cpu_lock_runs_the_gpu_locks_versions_of_medo1s_requirements():
    shared = requirement_names(*IMAGE_EXTRAS, "gpu") & pins(CPU_LOCK).keys()
    assert {name: pins(CPU_LOCK)[name] for name in shared} == {name: pins(LOCK)[name] for name in shared}


@pytest.mark.slow
@pytest.mark.parametrize("lock", [LOCK, CPU_LOCK], ids=["gpu", "cpu"])
def test_lock_installs_in_a_clean_virtualenv(tmp_path, lock):
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    report = tmp_path / "report.json"
    python = re.search(r"for Python (\d+\.\d+)", lock.read_text()).group(1)
    # The base's glibc (Ubuntu 24.04: 2.39) takes manylinux_2_39 wheels and every older manylinux tag (vLLM's
    # llguidance 1.7.6 has an x86_64 wheel for manylinux_2_31 only); pip (23.x) does not add the older tags to an
    # explicit --platform by itself, so each is named.
    platforms = (*(f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)), "manylinux2014_x86_64")
    # This pip checks Requires-Python against the interpreter running it, not --python-version; the wheel tags
    # (cp312) still have to match the base's Python.
    target = ["--target", tmp_path / "target", "--python-version", python, "--ignore-requires-python",
              *(arg for platform in platforms for arg in ("--platform", platform))]
    done = subprocess.run(
        [tmp_path / "venv" / "bin" / "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
         *(target if lock == LOCK else []), "--report", report, "-r", lock],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"transformers", "trl", "deepspeed", "accelerate", "peft", "helm-python-sdk"} <= installed
