"""Image build inputs, checked without a container engine: the Dockerfile's steps, the build
context, and the lock files (complete for what runs in the image, installable: pip dry run against the
registry). The image built and run for real: test_image_build.py; its Python environment: test_image_env.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.utils import canonicalize_name

from medo1 import chart
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


def lock_python(lock) -> str:
    return re.search(r"for Python (\d+\.\d+)", lock.read_text()).group(1)


def test_one_pinned_debian_python_base_and_one_python_for_both_variants():
    steps = instructions()
    assert steps[0][0] == "ARG" and [kw for kw, _ in steps].count("FROM") == 1
    # python:3.11.x-slim-bookworm (Debian bookworm's Python 3.11: debootstrap makes its stand-in in
    # test_image_build.py), for both variants; both locks for its Python, which the build checks.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args_defaults()["BASE_IMAGE"])
    assert lock_python(LOCK) == lock_python(CPU_LOCK) == "3.11"
    assert "the locks are for Python {want}, the base has {have}" in DOCKERFILE.read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^BASE_IMAGE \?= python:3\.11\.\d+-slim-bookworm$", makefile, re.M)
    assert "--build-arg BASE_IMAGE=$(BASE_IMAGE)" in makefile and "CPU_BASE_IMAGE" not in makefile


def test_one_virtualenv_holds_every_package_torch_included():
    """The layout every training pod needs: `torchrun` is the venv's, so torch's elastic agent starts the workers
    with the venv's interpreter (sys.executable), which has medo1. A venv over the base's site-packages with torch
    left in the base (the old GPU layout) ran the base's torchrun, whose workers died of `No module named medo1`."""
    runs = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert "python3 -m venv /opt/medo1/venv" in runs and "--system-site-packages" not in DOCKERFILE.read_text()
    env = " ".join(rest for kw, rest in instructions() if kw == "ENV")
    assert "VIRTUAL_ENV=/opt/medo1/venv" in env and "PATH=/opt/medo1/venv/bin:" in env
    assert pins(LOCK)["torch"] and "torch" not in pins(CPU_LOCK)
    variant = next(run for run in (rest for kw, rest in instructions() if kw == "RUN") if "$VARIANT" in run)
    assert "gpu) /tmp/uv/bin/uv pip install --no-deps --compile-bytecode -r images/trainer/requirements.lock" in variant
    assert "grep '^torch==' images/trainer/requirements.lock" in variant and '"$torch+cpu"' in variant


def test_nothing_is_compiled_and_the_variants_share_the_layers_before_torch():
    text = DOCKERFILE.read_text()
    # No flash-attention sdist, no CUDA compiler, no DeepSpeed op build (torch's fused AdamW trains under ZeRO-3).
    for compiled in ("flash-attn==", "FLASH_ATTN", "TORCH_CUDA_ARCH_LIST", "DS_BUILD_FUSED_ADAM", "nvcc", "-devel"):
        assert compiled not in text, compiled
    steps = instructions()
    runs = [i for i, (kw, _) in enumerate(steps) if kw == "RUN"]
    shared = next(i for i in runs if "-r images/trainer/requirements-cpu.lock" in steps[i][1])
    assert (
        "DS_BUILD_OPS=0 /tmp/uv/bin/uv pip install --no-deps --compile-bytecode -r images/trainer/requirements-cpu.lock"
        in steps[shared][1]
    )
    variant_arg = steps.index(("ARG", "VARIANT=gpu"))
    # A build argument that differs between the variants, declared before the shared step, would split the shared
    # layers (VERSION and REVISION, which change with every commit, would reinstall the locks on every build): only
    # the base and uv's settings, the same for both, come before it.
    early = {rest.split("=")[0] for kw, rest in steps[:shared] if kw == "ARG"}
    assert early == {"BASE_IMAGE", "UV_PIN", "UV_PYTHON", "UV_SYSTEM_CERTS", "UV_NO_CACHE", "UV_LINK_MODE"}, early
    assert shared < variant_arg
    # The variant's step is the only one between the shared layer and medo1's sources: a code change rebuilds
    # medo1's own layer and what follows, never a lock install.
    sources = steps.index(("COPY", "trainer/ trainer/"))
    assert [i for i in runs if shared < i < sources] == [next(i for i in runs if "$VARIANT" in steps[i][1])]
    assert variant_arg < sources
    late = [i for i, (kw, rest) in enumerate(steps) if kw == "ARG" and rest.split("=")[0] in {"VERSION", "REVISION"}]
    assert late and min(late) > max(runs)


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
    pod_uid = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert users[-1].split(":")[0] == str(pod_uid)


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
    values = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    shipped = [values] + [chart.load_profile(p) for p in chart.profiles()]
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
# through helm_python (k8s), the CPU smoke profile asks for `medo1 model init-tiny` (tiny), the README's
# `medo1 model import-gguf` reads GGUF files (demo).
IMAGE_EXTRAS = ("tracking", "pipeline", "k8s", "tiny", "demo")


@pytest.mark.parametrize("lock, extras", [(LOCK, (*IMAGE_EXTRAS, "gpu")), (CPU_LOCK, IMAGE_EXTRAS)], ids=["gpu", "cpu"])
def test_lock_pins_every_runtime_dependency(lock, extras):
    locked = pins(lock)
    for name in requirement_names(*extras) - {"torch"}:
        assert name in locked, f"{name} is not in {lock.name}: run `make lock`"
    # torch is the GPU lock's (PyPI's CUDA 13.0 build); the CPU image installs the CPU build of the same release.
    assert ("torch" in locked) == (lock == LOCK)


def test_cpu_lock_is_the_gpu_lock_without_what_only_cuda_needs():
    cpu, gpu = pins(CPU_LOCK), pins(LOCK)
    assert {name: gpu.get(name) for name in cpu} == cpu  # every version the GPU image's
    left_out = set(gpu) - set(cpu)
    assert {"torch", "vllm", "flash-attn-4", "triton", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= left_out
    assert not {"deepspeed", "transformers", "trl", "setuptools", "sympy", "networkx"} & left_out
    # What torch's CPU wheel requires stays (torch-2.13.0+cpu's METADATA: filelock, typing-extensions, setuptools,
    # sympy, networkx, jinja2, fsspec); `pip check` in the built CPU image (test_image_build.py) checks all of it.
    assert {"filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2", "fsspec"} <= set(cpu)


# The locks' only source distributions, built at install: DeepSpeed (setup.py, DS_BUILD_OPS=0: no op compiled) and
# kfp-server-api (pure Python, no wheel on PyPI). Everything else must be a wheel: nothing else may compile.
SDISTS = ("deepspeed", "kfp-server-api")


@pytest.mark.e2e
@pytest.mark.parametrize("lock", [LOCK, CPU_LOCK], ids=["gpu", "cpu"])
def test_lock_installs_in_a_clean_virtualenv(tmp_path, lock):
    """A pip dry run against the index (wheel metadata only). The images built from both locks, test_image_build.py,
    need buildah; this needs only this machine's Python, the locks' (3.11, glibc 2.36 as in Debian bookworm)."""
    assert "%d.%d" % sys.version_info[:2] == lock_python(lock), f"{lock.name} is for Python {lock_python(lock)}"
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            tmp_path / "venv" / "bin" / "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "-q",
            "--only-binary=:all:",
            f"--no-binary={','.join(SDISTS)}",
            "--report",
            report,
            "-r",
            lock,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"transformers", "trl", "deepspeed", "accelerate", "peft", "helm-python-sdk"} <= installed
    assert ("vllm" in installed) == (lock == LOCK)
