"""The container's termination message: why a medo1 process in a pod ended, where Kubernetes shows it
(`status.containerStatuses[].state.terminated.message`, read from the file at the container's
terminationMessagePath, /dev/termination-log by default, at most 4096 bytes). The launcher reads it to tell a
failure a restart cannot cure from one it can (`medo1.launch.retries`).

Written only where that file exists (the kubelet creates it in every container) or `MEDO1_TERMINATION_LOG`
names one; never on a plain machine. Under torchrun each rank writes the same kind of line; the last wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

USER_ERROR_EXIT_CODE = 2  # medo1.errors.Medo1Error.exit_code: the CLI's `medo1: error:` line
USER_ERROR = "medo1: error:"
OOM_AT_START = "medo1: out of memory before the first training step:"
OOM_LATER = "medo1: out of memory after"
INCURABLE_PREFIXES = (USER_ERROR, OOM_AT_START)
DEFAULT_PATH = "/dev/termination-log"
PATH_ENV = "MEDO1_TERMINATION_LOG"
MAX_BYTES = 4096


def message_for(exc: BaseException) -> str | None:
    """The line a process ending with `exc` leaves: a medo1 error, or running out of memory (before the first
    training step, or after how many); None for anything else (its traceback is in the log)."""
    from medo1.errors import Medo1Error

    if isinstance(exc, Medo1Error):
        return f"{USER_ERROR} {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError) or "CUDA out of memory" in str(exc):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        preemption = sys.modules.get("medo1.training.preemption")  # loaded by every training loop
        steps = preemption.completed_steps() if preemption is not None else 0
        if steps == 0:
            return f"{OOM_AT_START} {first}"
        return f"{OOM_LATER} {steps} training step(s): {first}"
    return None


def record(exc: BaseException) -> None:
    """Write `exc`'s line to the termination message file, when there is one; never raises."""
    target = os.environ.get(PATH_ENV) or (DEFAULT_PATH if Path(DEFAULT_PATH).exists() else None)
    message = message_for(exc)
    if not target or message is None:
        return
    try:
        Path(target).write_bytes(message.encode()[:MAX_BYTES])
    except OSError:
        pass
