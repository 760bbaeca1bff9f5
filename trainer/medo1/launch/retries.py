"""Who restarts a failed job, and when not to.

Whole-job restarts have one owner, the job itself keeps the count: every job the launcher creates carries the
annotation `medo1.io/attempt` (1 for the first, n for the (n-1)th restart), and a failed job is created again
only while `attempt <= restarts` (runPolicy.jobRestarts for a PyTorchJob; none for a batch Job, whose own
backoffLimit restarts its pod, or a TrainJob, whose JobSet restarts it: failurePolicy.maxRestarts). So the
layers above the launcher (a retried pipeline step, the chart's run Job retrying its pod, a rerun chain)
restart the launcher, not the training: the launcher they start finds the failed job, sees its attempts used
up, and reports the failure instead of starting the job a 4th, 8th or 16th time.

A failure that a restart cannot cure is not restarted at all, and is marked on the job (`medo1.io/final`) so
no later launcher restarts it either: a medo1 error (bad config, missing input: the CLI's `medo1: error:`
line, exit code 2) or running out of memory before the first training step. The training container writes
which one to its termination message (`medo1.training.termination`); the launcher reads it off the job's pods, and the
`medo1: error:` line off the Master's log as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medo1.training.termination import INCURABLE_PREFIXES, USER_ERROR_EXIT_CODE

ATTEMPT = "medo1.io/attempt"
FINAL = "medo1.io/final"
BASE_NAME = "medo1.io/job"
"""Label: the name the launcher was asked for, kept by a job created under another name (a replacement that
could not take the old one's name, see `medo1.launch.kubernetes`)."""
MANAGER = "medo1"


def attempt(job: dict[str, Any]) -> int:
    """The job's attempt number (a job not created by this launcher counts as the first)."""
    try:
        return max(1, int(((job.get("metadata") or {}).get("annotations") or {}).get(ATTEMPT, 1)))
    except ValueError:
        return 1


def final_reason(job: dict[str, Any]) -> str | None:
    return ((job.get("metadata") or {}).get("annotations") or {}).get(FINAL)


def mark(job: dict[str, Any], base: str, number: int, owner: dict[str, Any] | None) -> dict[str, Any]:
    """`job` as the launcher creates it: managed by medo1 (not Helm, which does not manage it), labelled with its
    base name, annotated with its attempt, owned by `owner` (the run Job) when there is one."""
    metadata = job["metadata"]
    metadata["labels"] = {**(metadata.get("labels") or {}), "app.kubernetes.io/managed-by": MANAGER, BASE_NAME: base}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), ATTEMPT: str(number)}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return job


def incurable(pods: Iterable[dict[str, Any]], log_tail: Iterable[str], kind: str, container: str) -> str | None:
    """Why a failed job's restart would fail the same way, or None: a termination message of one of its pods'
    main containers (or the Master's log) saying so, or a batch Job's `medo1` container exiting with a user error."""
    for pod in pods:
        status = pod.get("status") or {}
        for state in status.get("containerStatuses") or []:
            if state.get("name") != container:
                continue
            for terminated in (
                (state.get("state") or {}).get("terminated"),
                (state.get("lastState") or {}).get("terminated"),
            ):
                if not terminated:
                    continue
                message = (terminated.get("message") or "").strip().splitlines()
                if message and message[0].startswith(INCURABLE_PREFIXES):
                    return f"pod {pod['metadata']['name']}: {message[0]}"
                if kind == "Job" and terminated.get("exitCode") == USER_ERROR_EXIT_CODE:
                    return f"pod {pod['metadata']['name']}: medo1 exited with code {USER_ERROR_EXIT_CODE} (a config or input error)"
    for line in log_tail:
        if line.startswith(INCURABLE_PREFIXES[0]):
            return f"the Master pod's log: {line}"
    return None
