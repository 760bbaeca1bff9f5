"""Process facts under torchrun (RANK / WORLD_SIZE set per process) or a plain single process, and ending with
one's parent."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

# prctl(2) option: the signal sent to this process when the thread that created it ends (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def parent_death_signal(signum: int, parent_pid: int) -> Callable[[], None] | None:
    """A function that, run in a child of `parent_pid` (a Popen `preexec_fn`, or the child itself at start), asks
    Linux to send it `signum` when that parent ends, however it ends (kill -9 included); if the parent has already
    gone, it sends the signal at once. None where prctl(PR_SET_PDEATHSIG) does not exist (not Linux). libc is loaded
    here, in the caller, so that nothing is loaded between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def request() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signum)

    return request


def exit_with_parent(signum: int = signal.SIGTERM) -> None:
    """This process gets `signum` when its parent ends (a rank under torchrun: SIGTERM, so that it checkpoints and
    stops as on preemption, `medo1.training.preemption`). Torchrun starts each rank in a session of its own, so without this
    a torchrun killed with SIGKILL leaves its ranks training."""
    request = parent_death_signal(signum, os.getppid())
    if request is not None:
        request()
