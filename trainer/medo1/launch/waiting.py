"""What a launch ends in, and waiting for it: the errors, a job's phase read off its status conditions
(Training Operator v1: Created, Running, Restarting, Succeeded, Failed; a batch Job's Complete counts as
Succeeded), the polling wait, and cancelling on SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from medo1.config import StageError

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
# A batch/v1 Job's terminal condition types, as the phases they mean.
PHASE_OF_CONDITION = {"Complete": "Succeeded", "Failed": "Failed"}
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
DEFAULT_POLL_S = 10.0
TAIL_LINES = 40
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class LaunchError(StageError):
    pass


@dataclass(frozen=True)
class JobState:
    phase: str
    """Created, Running, Restarting, Succeeded, Failed, or Pending before any condition."""
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL


class JobFailed(LaunchError):
    def __init__(self, message: str, state: JobState):
        super().__init__(message)
        self.state = state


class JobTimedOut(LaunchError):
    pass


class LaunchCancelled(LaunchError):
    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class LaunchResult:
    stage: str
    backend: str
    job_name: str
    namespace: str | None
    """None for the local backend."""
    state: JobState
    """The job's final state (Succeeded); for local runs JobState("Succeeded")."""
    action: str
    """pytorchjob: created, attached (it was already running), recreated (it had failed) or
    already-succeeded; local: ran."""
    restarts: int = 0
    """Whole-job restarts after a failure (runPolicy.jobRestarts allows them)."""
    kind: str | None = None
    """What ran: PyTorchJob, Job (the batch Job of a single-pod stage, which the pytorchjob and trainjob backends
    create for translate and upload) or TrainJob; None for the local backend's process."""


def job_state(job: dict[str, Any]) -> JobState:
    """The job's current phase: a terminal condition wins, else the newest condition that is True."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]
    for phase in TERMINAL:
        for condition in conditions:
            if PHASE_OF_CONDITION.get(condition.get("type"), condition.get("type")) == phase:
                return JobState(phase, condition.get("reason", ""), condition.get("message", ""))
    if not conditions:
        return JobState("Pending")
    newest = max(conditions, key=lambda c: c.get("lastTransitionTime") or c.get("lastUpdateTime") or "")
    return JobState(newest.get("type", "Pending"), newest.get("reason", ""), newest.get("message", ""))


def kueue_queue_holding(job: dict[str, Any]) -> str | None:
    """The Kueue LocalQueue a job waits in, while Kueue keeps it suspended until it admits the whole job
    (a PyTorchJob's runPolicy.suspend, a batch Job's spec.suspend); None when it is not held."""
    spec = job.get("spec") or {}
    suspended = (spec.get("runPolicy") or {}).get("suspend") or spec.get("suspend")
    queue = ((job.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    return queue if suspended and queue else None


def wait_for_job(
    read_job: Callable[[], dict[str, Any]],
    timeout_s: float,
    poll_s: float = DEFAULT_POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    check_pods: Callable[[dict[str, Any]], None] | None = None,
) -> JobState:
    """Poll until Succeeded (returned) or Failed (JobFailed with the job's reason) or timeout (JobTimedOut).
    `check_pods` runs with the job at each poll of a job that is not done (it raises to end the wait, as
    `medo1.launch.pods` does for a stuck pod, or a job Kueue can never admit). Time the job spends suspended by
    Kueue, waiting for admission, does not count against `timeout_s`."""
    deadline = clock() + timeout_s
    last_phase = None
    restarts = 0
    last_tick = clock()
    queued_in = None
    while True:
        job = read_job()
        state = job_state(job)
        now = clock()
        queue = None if state.done else kueue_queue_holding(job)
        if queued_in:  # the time since the last poll, when the job was held then
            deadline += now - last_tick
        if queue:
            if queue != queued_in:
                log.info(
                    "job suspended by Kueue: waiting for admission in LocalQueue %s (not counted against the timeout)",
                    queue,
                )
        elif queued_in:
            log.info("job admitted by Kueue")
        queued_in, last_tick = queue, now
        if state.phase != last_phase:
            if state.phase == "Restarting":
                restarts += 1
            log.info("job %s%s", state.phase, f" ({state.reason}: {state.message})" if state.reason else "")
            last_phase = state.phase
        if state.phase == "Succeeded":
            return state
        if state.phase == "Failed":
            raise JobFailed(f"job failed: {state.reason or 'no reason given'}: {state.message}".rstrip(": "), state)
        if check_pods is not None:
            check_pods(job)
        if clock() >= deadline:
            raise JobTimedOut(
                f"job still {state.phase} after {timeout_s:.0f} s (restarted {restarts} time(s)); last: "
                f"{state.reason or '-'} {state.message}".rstrip()
            )
        sleep(poll_s)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """SIGTERM (Kubeflow Pipelines cancels a step by deleting its pod) and SIGINT raise LaunchCancelled
    in the main thread, so that the caller cleans up; signals after the first are ignored while it does.
    Python delivers signals to the main thread only, so elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def cancel(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise LaunchCancelled(signum)

    previous = {signum: signal.signal(signum, cancel) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def tail_text(lines: Iterable[str], source: str) -> str:
    lines = list(lines)
    if not lines:
        return f"\n(nothing from {source})"
    return f"\nlast {len(lines)} lines of {source}:\n" + "\n".join(lines)
