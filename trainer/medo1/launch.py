"""Launching a training stage on Kubernetes: the PyTorchJob comes from the Helm chart (one source
for the pod spec), and the wait reads the job's status conditions as Training Operator v1 writes
them (Created, Running, Restarting, Succeeded, Failed).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medo1 import k8s
from medo1.config import StageError

log = logging.getLogger("medo1.launch")

TERMINAL = ("Succeeded", "Failed")


class LaunchError(StageError):
    pass


def build_pytorchjob(stage: str, values: dict[str, Any] | None = None, release: str = k8s.RELEASE,
                     namespace: str = k8s.NAMESPACE) -> dict[str, Any]:
    """The chart's PyTorchJob for one stage (`sft` or `rl`), every other stage and Job switched off."""
    values = copy.deepcopy(values or {})
    chart_values = k8s.chart_defaults()
    stages = values.setdefault("stages", {})
    for name in chart_values["stages"]:
        stages.setdefault(name, {}).update(enabled=name == stage)
    for name in chart_values.get("jobs", {}):
        values.setdefault("jobs", {}).setdefault(name, {}).update(enabled=False)
    values["backend"] = "pytorchjob"
    jobs = [o for o in k8s.render_chart(values, release, namespace) if o["kind"] == "PyTorchJob"]
    if len(jobs) != 1:
        raise LaunchError(f"stage {stage!r} rendered {len(jobs)} PyTorchJobs; known stages: {sorted(chart_values['stages'])}")
    job = jobs[0]
    job["metadata"]["namespace"] = namespace
    return job


@dataclass(frozen=True)
class JobState:
    phase: str
    """Created, Running, Restarting, Succeeded, Failed, or Pending before any condition."""
    reason: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL


def job_state(job: dict[str, Any]) -> JobState:
    """The job's current phase: a terminal condition wins, else the newest condition that is True."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]
    for phase in TERMINAL:
        for condition in conditions:
            if condition.get("type") == phase:
                return JobState(phase, condition.get("reason", ""), condition.get("message", ""))
    if not conditions:
        return JobState("Pending")
    newest = max(conditions, key=lambda c: c.get("lastTransitionTime") or c.get("lastUpdateTime") or "")
    return JobState(newest.get("type", "Pending"), newest.get("reason", ""), newest.get("message", ""))


def wait_for_job(
    read_job: Callable[[], dict[str, Any]],
    timeout_s: float,
    poll_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobState:
    """Poll until Succeeded (returned) or Failed / timeout (LaunchError with the job's reason)."""
    deadline = clock() + timeout_s
    last_phase = None
    restarts = 0
    while True:
        state = job_state(read_job())
        if state.phase != last_phase:
            if state.phase == "Restarting":
                restarts += 1
            log.info("job %s%s", state.phase, f" ({state.reason}: {state.message})" if state.reason else "")
            last_phase = state.phase
        if state.phase == "Succeeded":
            return state
        if state.phase == "Failed":
            raise LaunchError(f"job failed: {state.reason or 'no reason given'}: {state.message}".rstrip(": "))
        if clock() >= deadline:
            raise LaunchError(
                f"job still {state.phase} after {timeout_s:.0f} s (restarted {restarts} time(s)); last: "
                f"{state.reason or '-'} {state.message}".rstrip()
            )
        sleep(poll_s)
