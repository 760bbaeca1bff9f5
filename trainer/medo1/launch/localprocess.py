"""The local backend: the stage's container command run on this machine (a training stage under the
torchrun beside this Python, with what the operator would inject; a single-pod stage as the `medo1`
command beside it), its output relayed, Ctrl-C / SIGTERM / SIGHUP (the terminal closed) stopping the whole
process group. The run never outlives the launcher: Linux sends it SIGTERM when the launcher ends, even by
`kill -9` (PR_SET_PDEATHSIG), and torchrun's ranks get the same from torchrun (`medo1.training.process.exit_with_parent`);
SIGTERM makes a training stage checkpoint and stop, as on preemption."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medo1 import chart
from medo1.launch.waiting import (
    TAIL_LINES,
    JobFailed,
    JobState,
    JobTimedOut,
    LaunchCancelled,
    LaunchError,
    LaunchResult,
    cancel_on_signals,
    tail_text,
)
from medo1.training.process import parent_death_signal

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0
OUTPUT_DRAIN_S = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_command(job: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The main container's command and environment for a run on this machine: the executable beside
    this Python (torchrun for a PyTorchJob, medo1 for a Job); the container's literal env plus, for a
    PyTorchJob, what the operator injects (one node, 127.0.0.1, a free port). An env value pointing into
    a volume mount that does not exist here (HF_HOME=/hf-cache) is dropped so the user's own setting
    applies; to use a local folder, set storage.<volume>.mountPath. Secret env vars (secretKeyRef) are
    not in the result: the run inherits them from this environment when they are set here."""
    container_name = chart.MAIN_CONTAINER[job["kind"]]
    _, template = chart.pod_templates(job)[0]
    container = next(c for c in template["spec"]["containers"] if c["name"] == container_name)
    command = [*container.get("command", []), *container.get("args", [])]
    expected = "torchrun" if job["kind"] == "PyTorchJob" else "medo1"
    if not command or command[0] != expected:
        raise LaunchError(f"the {container_name} container runs {command[:1]}, not {expected}")
    executable = Path(sys.executable).with_name(expected)
    if not executable.is_file():
        raise LaunchError(f"no {expected} beside {sys.executable}")
    missing_mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if not Path(m["mountPath"]).exists()]
    env = {}
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            value = str(var["value"])
            mount = next((m for m in missing_mounts if value == m or value.startswith(m.rstrip("/") + "/")), None)
            if mount is not None:
                log.info("not setting %s: it points into the volume mount %s, which does not exist here", name, mount)
                continue
            env[name] = value
        elif "secretKeyRef" in var.get("valueFrom", {}):
            log.info(
                "%s comes from Secret %s in a pod; here from this environment (%s)",
                name,
                var["valueFrom"]["secretKeyRef"].get("name"),
                "set" if name in os.environ else "not set",
            )
        else:
            log.warning("not setting %s: %s has no local equivalent", name, ", ".join(var.get("valueFrom", {})))
    if job["kind"] == "PyTorchJob":
        env.update(chart.operator_env(job, pod_index=0, master_addr="127.0.0.1", master_port=_free_port()))
    return [str(executable), *command[1:]], env


def _relay(stream: Iterable[str], tail: deque[str], quiet: threading.Event) -> None:
    """Print the run's output as it comes; once the run is being stopped, keep reading (so it never
    blocks on a full pipe) but print nothing: every rank's KeyboardInterrupt traceback says only that
    it was stopped."""
    for line in stream:
        if quiet.is_set():
            continue
        line = line.rstrip("\n")
        print(line, flush=True)
        tail.append(line)


def _stop_process_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def _hangup_cancels() -> Iterator[None]:
    """SIGHUP (the launcher's terminal closed) cancels the run as SIGTERM does, instead of ending the launcher
    before it has stopped the run. Main thread only, as for `cancel_on_signals`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # once: the stop is under way
        raise LaunchCancelled(signum)

    previous = signal.signal(signal.SIGHUP, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def run_local(stage: str, job: dict[str, Any], timeout_s: float) -> LaunchResult:
    command, env = local_command(job)
    log.info("running %s here: %s", stage, shlex.join(command))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    quiet = threading.Event()
    process = None
    with cancel_on_signals(), _hangup_cancels():
        try:
            # A process group of its own, so that a signal reaches torchrun and its workers alike; SIGTERM to it
            # when this launcher ends, however it ends.
            process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGTERM, os.getpid()),
            )
            relay = threading.Thread(
                target=_relay, args=(process.stdout, tail, quiet), name="local-output", daemon=True
            )
            relay.start()
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                quiet.set()
                _stop_process_group(process, signal.SIGTERM)
                raise JobTimedOut(
                    f"local {stage} run still going after {timeout_s:.0f} s; stopped it{tail_text(tail, 'its output')}"
                ) from None
            relay.join(OUTPUT_DRAIN_S)
        except LaunchCancelled as exc:
            quiet.set()
            if process is not None:
                # A closed terminal stops the run as a preemption does: each rank checkpoints, then exits.
                _stop_process_group(process, signal.SIGTERM if exc.signum == signal.SIGHUP else exc.signum)
            raise LaunchCancelled(exc.signum, f"{exc}; stopped the local {stage} run") from None
    if code != 0:
        raise JobFailed(
            f"local {stage} run exited with code {code}{tail_text(tail, 'its output')}",
            JobState("Failed", "ExitCode", f"exit code {code}"),
        )
    return LaunchResult(stage, "local", job["metadata"]["name"], None, JobState("Succeeded"), action="ran")
