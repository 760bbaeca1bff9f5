"""The CPU trainer image built for real from images/trainer/Dockerfile (`make image-cpu`, through buildah: no
Docker engine here) on a Debian bookworm base made with debootstrap, then run as the cluster runs it: as uid 1000,
with the chart's volumes (/data, /checkpoints, /hf-cache) mounted from host folders. Inside it run every command
the image environment test collects (tests/test_image_env.py) and the CPU smoke PyTorchJob's pods (Master and
Worker containers on the host network, with the env the training operator injects) to a complete checkpoint.

Skips only where buildah cannot run here (not installed, or no storage/isolation for it); CI installs buildah
and debootstrap (.ci/run). A cold build takes minutes (the lock's ~120 packages and torch from the network);
buildah's layer cache makes a rerun on the same machine take seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from medo1 import checkpoint, k8s

from tests.conftest import DEMO_DATA, REPO, free_port
from tests.test_image_env import run_checks

pytestmark = pytest.mark.slow
BASE_IMAGE = "localhost/medo1-bookworm-base"
REGISTRY = "localhost/medo1-test"
UID = "1000:1000"  # the chart's podSecurityContext.runAsUser and the image's USER


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
    """Debian bookworm, minimal, with Python 3.11 and venv: the CPU image's base, as a local buildah image."""
    rootfs = workdir / "rootfs"
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
         "bookworm", rootfs], capture_output=True, text=True, timeout=900)
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
def cpu_image(base_image) -> str:
    tag = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]  # as the Makefile's TAG
    image = f"{REGISTRY}/trainer:{tag}-cpu"
    started = time.monotonic()
    # The Makefile's own target; DOCKER_ENGINE= keeps it on buildah should a Docker engine answer.
    done = subprocess.run(["make", "image-cpu", f"CPU_BASE_IMAGE={base_image}", f"REGISTRY={REGISTRY}",
                           f"TAG={tag}", "DOCKER_ENGINE="], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(f"\n`make image-cpu` (buildah) took {time.monotonic() - started:.0f} s")
    return image


class Container:
    """A working container of the image; `run` executes in it as buildah runs a pod's container."""

    def __init__(self, image: str, volumes: dict[str, Path]):
        self.name = buildah("from", "--quiet", image)
        self.volumes = volumes

    def argv(self, command: list[str], env: dict[str, str] | None = None) -> list[str]:
        mounts = [arg for path, host in self.volumes.items() for arg in ("-v", f"{host}:{path}")]
        envs = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        return ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", UID, *mounts, *envs,
                self.name, "--", *command]

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


@pytest.fixture(scope="module")
def base_image(tmp_path_factory) -> str:
    reason = buildah_unusable()
    if reason:
        pytest.skip(reason)
    if not image_exists(BASE_IMAGE):
        make_base_image(tmp_path_factory.mktemp("base"))
    return BASE_IMAGE


@pytest.mark.parametrize("existing", ["", "ubuntu"])
def test_user_creation_on_a_base_with_and_without_a_uid_1000(base_image, existing):
    # Ubuntu 24.04, the PyTorch devel base, has `ubuntu` at uid and gid 1000 with its home: made here on the
    # Debian base the way Ubuntu's image has it, since Ubuntu's archive is out of this machine's reach.
    container = buildah("from", "--quiet", base_image)
    try:
        if existing:
            buildah("run", "--isolation", "chroot", container, "--", "useradd", "--uid", "1000", "--user-group",
                    "--create-home", "--shell", "/bin/bash", existing)
        buildah("copy", "--quiet", container, str(REPO / "images" / "trainer" / "create-user.sh"), "/tmp/create-user.sh")
        buildah("run", "--isolation", "chroot", container, "--", "sh", "/tmp/create-user.sh")
        summary = buildah("run", "--isolation", "chroot", "--user", UID, container, "--", "sh", "-c",
                          "getent passwd 1000; getent group 1000 | cut -d: -f1,3; stat -c %u:%g /hf-cache /home/medo1; "
                          "touch /hf-cache/probe /checkpoints/probe /home/medo1/probe && echo writable")
    finally:
        buildah("rm", container)
    assert summary.split("\n") == ["medo1:x:1000:1000::/home/medo1:/bin/bash", "medo1:1000", "1000:1000", "1000:1000",
                                   "writable"]


def test_image_user_owns_its_home_and_hf_cache(cpu_image):
    container = Container(cpu_image, {})
    try:
        done = container.run(["sh", "-c", "id -u; id -g; id -un; echo $HOME; stat -c %u:%g /hf-cache; "
                                          "touch /hf-cache/probe /home/medo1/probe && echo writable; echo $HF_HOME"])
    finally:
        container.remove()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1000", "1000", "medo1", "/home/medo1", "1000:1000", "writable", "/hf-cache"]


def test_in_image_commands_run_in_the_built_image(cpu_image, tmp_path):
    container = Container(cpu_image, volume_folders(tmp_path, ["/data", "/checkpoints", "/hf-cache"]))
    try:
        failures, gpu_only = run_checks(container.run)
    finally:
        container.remove()
    print("Missing by design (GPU image only, or optional):", *gpu_only, sep="\n  ")
    assert not failures, f"{len(failures)} in-image commands fail in the built image:\n" + "\n".join(failures)


def smoke_jobs() -> list[tuple[str, dict]]:
    """The CPU smoke PyTorchJob as rendered in manifests/cpu-smoke.yaml, and the same profile on two nodes
    (Master + Worker, one process each) rendered by the chart."""
    (job,) = [d for d in yaml.safe_load_all((REPO / "manifests" / "cpu-smoke.yaml").read_text())
              if d and d["kind"] == "PyTorchJob"]
    values = k8s.load_profile("cpu-smoke")
    values["cluster"] = {**values["cluster"], "nodes": 2, "cpuProcsPerNode": 1}
    (two_nodes,) = [o for o in k8s.render_chart(values) if o["kind"] == "PyTorchJob"]
    return [("manifest", job), ("two-nodes", two_nodes)]


@pytest.mark.parametrize("variant", ["manifest", "two-nodes"])
def test_cpu_smoke_pytorchjob_pods_run_in_the_image_to_a_checkpoint(cpu_image, tmp_path, variant):
    job = dict(smoke_jobs())[variant]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = [(role, spec["template"]["spec"]) for role in ("Master", "Worker") if role in replicas
            for spec in [replicas[role]] for _ in range(int(spec.get("replicas", 1)))]
    assert [role for role, _ in pods][:1] == ["Master"] and (variant == "manifest" or len(pods) == 2)
    (first,) = pods[0][1]["containers"]
    mounts = [m["mountPath"] for m in first["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    volumes = volume_folders(tmp_path, mounts)

    # What a user puts on the volumes first (the profile's comment): the demo data and a tiny model, made in
    # the image itself with `medo1 model init-tiny`.
    shutil.copy(DEMO_DATA, volumes["/data"] / DEMO_DATA.name)
    os.chown(volumes["/data"] / DEMO_DATA.name, 1000, 1000)
    setup = Container(cpu_image, volumes)
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
            assert pod["name"] == "pytorch" and pod["image"].endswith("-cpu")
            env = {e["name"]: e["value"] for e in pod.get("env", []) if "value" in e}
            env.update(k8s.operator_env(job, pod_index=index, master_addr="127.0.0.1", master_port=port))
            container = Container(cpu_image, volumes)
            process = subprocess.Popen(container.argv([*pod["command"], *pod["args"]], env), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            running.append((role, container, process))
        for role, _, process in running:
            output, _ = process.communicate(timeout=900)
            assert process.returncode == 0, f"{role} pod exited {process.returncode}:\n{output[-4000:]}"
    finally:
        for _, container, process in running:
            if process.poll() is None:
                process.kill()
            container.remove()
    print(f"\n{variant}: {len(pods)} pod(s) ran in {time.monotonic() - started:.0f} s")

    out = volumes["/checkpoints"] / "sft-tiny"
    assert [step for step, _ in checkpoint.list_checkpoints(out)] == [2]
    marker = json.loads((out / "checkpoint-2" / checkpoint.COMPLETE_MARKER).read_text())
    assert marker["world_size"] == int(k8s.operator_env(job, 0, "x", 0)["PET_NNODES"]) * int(job["spec"]["nprocPerNode"])
    assert (out / "export" / "model.safetensors").is_file()
    assert (out / "export" / "model.safetensors").stat().st_uid == 1000  # written by the image's user
