"""Image build inputs, checked without a container engine: the Dockerfile's steps, the build
context, and the lock file installing in a clean virtualenv (pip dry run against the registry)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import tomllib
import yaml
from medo1 import k8s

from tests.conftest import REPO

DOCKERFILE = REPO / "images" / "trainer" / "Dockerfile"
LOCK = REPO / "images" / "trainer" / "requirements.lock"


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
    run = " ".join(rest for kw, rest in instructions() if kw == "RUN")
    assert "-r images/trainer/requirements.lock" in run
    assert re.search(r"^deepspeed==", LOCK.read_text(), re.M)
    assert "flash-attn==${FLASH_ATTN_VERSION}" in run and args_defaults()["FLASH_ATTN_VERSION"]
    assert "pip install --no-deps ." in run


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


def test_lock_pins_every_runtime_dependency():
    pins = dict(line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["gpu"] + project["optional-dependencies"]["tracking"]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        if name == "torch":
            assert "torch" not in pins  # from the base image
            continue
        assert name in pins, f"{name} is not in the lock: run `make lock`"


@pytest.mark.slow
def test_lock_installs_in_a_clean_virtualenv(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [tmp_path / "venv" / "bin" / "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
         "--report", report, "-r", LOCK],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"transformers", "trl", "deepspeed", "accelerate", "peft"} <= installed
