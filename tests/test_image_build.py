"""The trainer image, both variants, built for real from images/trainer/Dockerfile through the Makefile's own targets
(`make image`, `make image-cpu`: buildah, as no Docker engine runs here) on a Debian bookworm base that debootstrap
makes (the stand-in for python:3.11-slim-bookworm), then run as the cluster runs it: as uid 1000, with the chart's
volumes (/data, /checkpoints, /hf-cache) mounted from host folders.

The GPU image (CUDA torch from PyPI, vLLM, flash-attn-4), the one 8x H100 clusters pull, runs here on the CPU:
- the chart's pod command for the cpu-smoke values (`torchrun ... -m medo1 sft`, 2 processes over gloo) trains to a
  complete checkpoint and export. The regression test for `No module named medo1`: the old GPU layout kept torch in
  the base image's Python under a venv with --system-site-packages, so `torchrun` was the base's and torch's
  elastic agent started every worker with the base's interpreter (sys.executable), which has no medo1;
- one Python: `torchrun` and `python` are the venv's, and no other interpreter in the image imports torch;
- vllm, deepspeed and the attention backend (flash_attn.cute) import, `pip check` passes, and every command that
  tests/image_checks.py collects from the rendered manifests, the compiled pipeline, the chart and the README runs;
- a rebuild after a code change installs no lock again (buildah's layer cache).
The CPU image: the same layout, its imports and `pip check`, and the cpu-smoke PyTorchJob's pods (one pod; Master and
Worker) to a checkpoint. Build times and image sizes are printed (`pytest -s`).

Skips only where buildah cannot run here (not installed, or no storage/isolation for it); CI installs buildah and
debootstrap (.ci/run). Cold, the builds download the locks (~0.4 GB shared, ~3.5 GB more for the GPU image);
buildah's layer cache makes a rerun on the same machine take seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from medo1 import chart
from medo1.training import checkpoint
from tests.conftest import DEMO_DATA, REPO, free_port
from tests.image_checks import in_image_commands, run_checks

pytestmark = pytest.mark.image
BASE_IMAGE = "localhost/medo1-bookworm-base"
REGISTRY = "localhost/medo1-test"
TAG = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]  # as the Makefile's TAG
UID = "1000:1000"  # the chart's podSecurityContext.runAsUser and the image's USER
VENV = "/opt/medo1/venv"
# The build context the Dockerfile reads (and the Makefile), for a rebuild from a copy.
CONTEXT = (
    "Makefile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "images",
    "trainer",
    "recipes",
    "helm",
    "examples",
)


def buildah_unusable() -> str | None:
    """Why buildah cannot build here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install buildah debootstrap; .ci/run does)"
    done = subprocess.run(["buildah", "info"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"buildah cannot run here: {done.stderr.strip()[-300:]}"
    if not image_exists(BASE_IMAGE) and shutil.which("debootstrap") is None:
        return "debootstrap is not installed, and the base image it makes is missing"
    return None


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def buildah(*args: str, timeout: int = 600) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"buildah {' '.join(args[:3])}: {done.stderr[-3000:]}"
    return done.stdout.strip()


def make_base_image(workdir: Path) -> None:
    """Debian bookworm, minimal, with Python 3.11 and its venv module: the images' base, as a local buildah image.
    Like python:3.11-slim-bookworm it has one Python and no pip outside the venv the Dockerfile makes."""
    rootfs = workdir / "rootfs"
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", rootfs],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    container = buildah("from", "scratch")
    try:
        buildah("copy", "--quiet", container, str(rootfs), "/")
        buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container)
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container)
        shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(tmp_path_factory) -> str:
    reason = buildah_unusable()
    if reason:
        pytest.skip(reason)
    if not image_exists(BASE_IMAGE):
        make_base_image(tmp_path_factory.mktemp("base"))
    return BASE_IMAGE


def make_image(target: str, base_image: str, directory: Path = REPO, tag: str = TAG) -> tuple[str, float, str]:
    """`make TARGET` (the Makefile's own), kept on buildah (DOCKER_ENGINE=) should a Docker engine answer:
    (image, seconds, buildah's output)."""
    started = time.monotonic()
    done = subprocess.run(
        ["make", target, f"BASE_IMAGE={base_image}", f"REGISTRY={REGISTRY}", f"TAG={tag}", "DOCKER_ENGINE="],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=3600,
    )  # cold, beside the suite
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return f"{REGISTRY}/trainer:{tag}{'-cpu' if target == 'image-cpu' else ''}", seconds, done.stdout + done.stderr


def image_size(image: str) -> str:
    return buildah("images", "--format", "{{.Size}}", image).splitlines()[0]


def report(request, line: str) -> None:
    """A line on the terminal even where pytest captures the output (CI's `make test`): build times and sizes."""
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{line}", flush=True)


@pytest.fixture(scope="module")
def cpu_image(base_image, request) -> str:
    image, seconds, _ = make_image("image-cpu", base_image)
    report(request, f"`make image-cpu` (buildah) took {seconds:.0f} s; {image} is {image_size(image)}")
    return image


@pytest.fixture(scope="module")
def gpu_image(base_image, request) -> str:
    image, seconds, _ = make_image("image", base_image)
    report(request, f"`make image` (buildah) took {seconds:.0f} s; {image} is {image_size(image)}")
    return image


@pytest.fixture(params=["gpu", "cpu"])
def image(request) -> tuple[str, str]:
    """(variant, image) for each variant."""
    return request.param, request.getfixturevalue(f"{request.param}_image")


class Container:
    """A working container of the image; `run` executes in it as buildah runs a pod's container."""

    def __init__(self, image: str, volumes: dict[str, Path]):
        self.name = buildah("from", "--quiet", image)
        self.volumes = volumes

    def argv(self, command: list[str], env: dict[str, str] | None = None) -> list[str]:
        mounts = [arg for path, host in self.volumes.items() for arg in ("-v", f"{host}:{path}")]
        envs = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        return [
            "buildah",
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--user",
            UID,
            *mounts,
            *envs,
            self.name,
            "--",
            *command,
        ]

    def run(self, command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout)

    def remove(self) -> None:
        buildah("rm", self.name)


def volume_folders(root: Path, mounts: list[str]) -> dict[str, Path]:
    """Host folders for the volumes, writable by uid 1000 as the pod's fsGroup makes a PVC."""
    folders = {}
    for mount in mounts:
        folder = root / mount.strip("/").replace("/", "-")
        folder.mkdir(parents=True)
        os.chown(folder, 1000, 1000)
        folders[mount] = folder
    return folders


@pytest.mark.parametrize("existing", ["", "ubuntu"])
def test_user_creation_on_a_base_with_and_without_a_uid_1000(base_image, existing):
    # Ubuntu's images have `ubuntu` at uid and gid 1000 with its home: made here on the Debian base the way
    # Ubuntu's image has it, since Ubuntu's archive is out of this machine's reach (BASE_IMAGE may be Ubuntu's).
    container = buildah("from", "--quiet", base_image)
    try:
        if existing:
            buildah(
                "run",
                "--isolation",
                "chroot",
                container,
                "--",
                "useradd",
                "--uid",
                "1000",
                "--user-group",
                "--create-home",
                "--shell",
                "/bin/bash",
                existing,
            )
        buildah(
            "copy", "--quiet", container, str(REPO / "images" / "trainer" / "create-user.sh"), "/tmp/create-user.sh"
        )
        buildah("run", "--isolation", "chroot", container, "--", "sh", "/tmp/create-user.sh")
        summary = buildah(
            "run",
            "--isolation",
            "chroot",
            "--user",
            UID,
            container,
            "--",
            "sh",
            "-c",
            "getent passwd 1000; getent group 1000 | cut -d: -f1,3; stat -c %u:%g /hf-cache /home/medo1; "
            "touch /hf-cache/probe /checkpoints/probe /home/medo1/probe && echo writable",
        )
    finally:
        buildah("rm", container)
    assert summary.split("\n") == [
        "medo1:x:1000:1000::/home/medo1:/bin/bash",
        "medo1:1000",
        "1000:1000",
        "1000:1000",
        "writable",
    ]


# Every ELF executable named python* in the image (symlinks resolved), each asked whether it imports torch, and
# the interpreter torchrun's shebang names.
PYTHONS = r"""
import json, os, subprocess
found = set()
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in {"/proc", "/sys", "/dev", "/run", "/tmp"}]
    for name in files:
        path = os.path.realpath(os.path.join(root, name))
        if name.startswith("python") and os.path.isfile(path) and os.access(path, os.X_OK):
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    found.add(path)
torch = {path: subprocess.run([path, "-c", "import torch"], capture_output=True).returncode == 0 for path in sorted(found)}
torchrun = subprocess.run(["sh", "-c", "command -v torchrun"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"interpreters": sorted(found), "imports_torch": torch, "torchrun": torchrun,
                  "shebang": open(torchrun).readline().strip()}))
"""


def test_one_python_in_the_image_the_venvs(image):
    variant, name = image
    container = Container(name, {})
    try:
        layout = container.run(["python", "-c", PYTHONS])
        owner = container.run(
            [
                "sh",
                "-c",
                "id -u; id -g; id -un; echo $HOME; stat -c %u:%g /hf-cache; "
                "touch /hf-cache/probe /home/medo1/probe && echo writable; echo $HF_HOME",
            ]
        )
    finally:
        container.remove()
    assert layout.returncode == 0, layout.stderr[-3000:]
    found = json.loads(layout.stdout.splitlines()[-1])
    print(f"\n{variant} image: {found}")
    # One interpreter (the base's; the venv's `python` is a link to it), and only through the venv does it see torch.
    (interpreter,) = found["interpreters"]
    assert found["imports_torch"] == {interpreter: False}
    assert found["torchrun"] == f"{VENV}/bin/torchrun"
    assert re.fullmatch(rf"#!{VENV}/bin/python3?(\.\d+)?", found["shebang"]), found["shebang"]
    assert owner.returncode == 0, owner.stderr
    assert owner.stdout.split() == ["1000", "1000", "medo1", "/home/medo1", "1000:1000", "writable", "/hf-cache"]


# flash_attn.cute is flash-attn-4's module; transformers takes attn_implementation=flash_attention_4 from it when the
# distribution is flash-attn-4 (transformers 5.19, modeling_flash_attention_utils.py, FLASH_ATTENTION_COMPATIBILITY_MATRIX).
GPU_IMPORTS = """
import importlib.metadata as metadata
import deepspeed, flash_attn.cute, torch, transformers, vllm
from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX
print(torch.__version__, torch.version.cuda, vllm.__version__, deepspeed.__version__, metadata.version("flash-attn-4"),
      transformers.__version__, FLASH_ATTENTION_COMPATIBILITY_MATRIX[4]["pkg_availability_check"]())
"""


def test_gpu_image_runs_every_in_image_command_and_imports_vllm_deepspeed_and_flash_attention(gpu_image, tmp_path):
    container = Container(gpu_image, volume_folders(tmp_path, ["/data", "/checkpoints", "/hf-cache"]))
    try:
        imported = container.run(["python", "-c", GPU_IMPORTS])
        broken = container.run(["pip", "check"])
        failures, by_design = run_checks(container.run, gpu_image=True)
    finally:
        container.remove()
    assert imported.returncode == 0, imported.stderr[-3000:]
    versions = imported.stdout.splitlines()[-1].split()  # DeepSpeed logs its accelerator to stdout first
    print(
        f"\nGPU image: torch {versions[0]} (CUDA {versions[1]}), vLLM {versions[2]}, DeepSpeed {versions[3]}, "
        f"flash-attn-4 {versions[4]} (transformers {versions[5]} finds it: {versions[6]})"
    )
    assert versions[0] == "2.13.0+cu130" and versions[1].startswith("13.") and versions[6] == "True"
    assert broken.returncode == 0, broken.stdout[-3000:]
    assert not by_design  # in the GPU image nothing is missing by design
    checks = len(in_image_commands())
    assert not failures, f"{len(failures)} of {checks} in-image checks fail in the GPU image:\n" + "\n".join(failures)


def test_cpu_image_imports_what_every_in_image_command_imports(cpu_image):
    container = Container(cpu_image, {})
    try:
        broken = container.run(["pip", "check"])
        failures, by_design = run_checks(container.run, gpu_image=False)
    finally:
        container.remove()
    assert broken.returncode == 0, broken.stdout[-3000:]
    print("Missing by design (GPU image only, or optional):", *by_design, sep="\n  ")
    assert not failures, f"{len(failures)} in-image imports fail in the CPU image:\n" + "\n".join(failures)


def test_a_rebuild_after_a_code_change_installs_no_lock_again(gpu_image, base_image, tmp_path, request):
    """The build context copied with one source file changed: buildah reuses every layer up to medo1's sources."""
    for name in CONTEXT:
        source, target = REPO / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, target)
    with (tmp_path / "trainer" / "medo1" / "__init__.py").open("a") as handle:
        handle.write("# a code change\n")
    image, seconds, output = make_image("image", base_image, directory=tmp_path, tag=f"{TAG}-rebuild")
    try:
        steps = re.findall(r"^STEP \d+/\d+: (.*)$", output, re.M)
        cached = re.findall(r"^--> Using cache", output, re.M)
        report(
            request,
            f"`make image` after a code change took {seconds:.0f} s, {len(cached)} of {len(steps)} steps from "
            "the cache",
        )
        install_steps = [s for s in steps if "uv pip install --no-deps" in s]
        assert install_steps, steps
        for step in install_steps:  # buildah prints "--> Using cache <id>" right after a step it takes from the cache
            assert re.search(re.escape(step) + r"\n--> Using cache", output), f"rebuilt: {step[:200]}"
        assert "+ torch==" not in output and "+ vllm==" not in output  # uv lists what it installs
    finally:
        buildah("rmi", image)


def smoke_jobs() -> list[tuple[str, dict]]:
    """The CPU smoke PyTorchJob as rendered in manifests/cpu-smoke.yaml, and the same profile on two nodes
    (Master + Worker, one process each) rendered by the chart."""
    (job,) = [
        d
        for d in yaml.safe_load_all((REPO / "manifests" / "cpu-smoke.yaml").read_text())
        if d and d["kind"] == "PyTorchJob"
    ]
    values = chart.load_profile("cpu-smoke")
    values["cluster"] = {**values["cluster"], "nodes": 2, "cpuProcsPerNode": 1}
    (two_nodes,) = [o for o in chart.render_chart(values) if o["kind"] == "PyTorchJob"]
    return [("manifest", job), ("two-nodes", two_nodes)]


@pytest.mark.parametrize("variant, job_name", [("gpu", "manifest"), ("cpu", "manifest"), ("cpu", "two-nodes")])
def test_cpu_smoke_pytorchjob_pods_run_in_the_image_to_a_checkpoint(request, tmp_path, variant, job_name):
    """The chart's pods for the cpu-smoke values, command, args and env as rendered, with the env the training
    operator injects. The GPU image runs them as the CPU image would: CUDA torch on this CPU, gloo."""
    image = request.getfixturevalue(f"{variant}_image")
    job = dict(smoke_jobs())[job_name]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = [
        (role, spec["template"]["spec"])
        for role in ("Master", "Worker")
        if role in replicas
        for spec in [replicas[role]]
        for _ in range(int(spec.get("replicas", 1)))
    ]
    assert [role for role, _ in pods][:1] == ["Master"] and (job_name == "manifest" or len(pods) == 2)
    (first,) = pods[0][1]["containers"]
    mounts = [m["mountPath"] for m in first["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    volumes = volume_folders(tmp_path, mounts)

    # What a user puts on the volumes first (the profile's comment): the demo data and a tiny model, made in
    # the image itself with `medo1 model init-tiny`.
    shutil.copy(DEMO_DATA, volumes["/data"] / DEMO_DATA.name)
    os.chown(volumes["/data"] / DEMO_DATA.name, 1000, 1000)
    setup = Container(image, volumes)
    try:
        done = setup.run(["medo1", "model", "init-tiny", "/checkpoints/tiny-model"])
    finally:
        setup.remove()
    assert done.returncode == 0, done.stderr[-3000:]

    port = free_port()
    started = time.monotonic()
    running = []
    try:
        for index, (role, spec) in enumerate(pods):
            (pod,) = spec["containers"]
            assert pod["name"] == "pytorch" and pod["image"].endswith("-cpu")  # the profile's image: the CPU variant
            argv = [*pod["command"], *pod["args"]]
            assert argv[0] == "torchrun" and argv[argv.index("-m") + 1] == "medo1"  # the layout this test guards
            env = {e["name"]: e["value"] for e in pod.get("env", []) if "value" in e}
            env.update(chart.operator_env(job, pod_index=index, master_addr="127.0.0.1", master_port=port))
            container = Container(image, volumes)
            process = subprocess.Popen(
                container.argv(argv, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((role, container, process))
        for role, _, process in running:
            output, _ = process.communicate(timeout=900)
            assert "No module named" not in output, output[-4000:]
            assert process.returncode == 0, f"{role} pod exited {process.returncode}:\n{output[-4000:]}"
    finally:
        for _, container, process in running:
            if process.poll() is None:
                process.kill()
            container.remove()
    print(f"\n{variant} image, {job_name}: {len(pods)} pod(s) ran in {time.monotonic() - started:.0f} s")

    out = volumes["/checkpoints"] / "sft-tiny"
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [2]
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == int(chart.operator_env(job, 0, "x", 0)["PET_NNODES"]) * int(
        job["spec"]["nprocPerNode"]
    )
    assert (out / "export" / "model.safetensors").is_file()
    assert (out / "export" / "model.safetensors").stat().st_uid == 1000  # written by the image's user
