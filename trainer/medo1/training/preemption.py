"""Stop cleanly on SIGTERM (node drain, Kueue preemption, `kubectl delete`): finish the optimizer step under
way, write a complete checkpoint on every rank, and exit with `PREEMPTED_EXIT_CODE`.

The handler only sets a flag; the training loops read it at step boundaries through `stop_agreed`, which
all-reduces it so that every rank stops after the same step (a rank that stopped alone would leave the
others waiting in a collective save). A second SIGTERM ends the process at once, as the default action
would: the checkpoint being written then has no completion marker (`medo1.training.checkpoint` writes it last), so
`--resume auto` sets it aside and continues from the one before. The kubelet's SIGKILL at the end of
`terminationGracePeriodSeconds` has the same effect.

Under torchrun the pod's SIGTERM reaches the agent, which forwards it to the workers and kills them after
`--shutdown-timeout` / `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds (30 by default): that bound, too, must
cover a save.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger(__name__)

# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM. A PyTorchJob with `restartPolicy: ExitCode`
# restarts a pod on exit codes 128-255 (retryable) and fails the job on 1-127 (permanent); `OnFailure` restarts on
# any non-zero code (training-operator v1, `IsRetryableExitCode` in pkg/util/train). The restarted pod
# continues with `--resume auto`.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM

_requested = threading.Event()
_steps_completed = 0


class Preempted(SystemExit):
    """Raised once the preemption checkpoint is complete; ends the process with `PREEMPTED_EXIT_CODE`."""

    def __init__(self, checkpoint_dir, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.checkpoint_dir = checkpoint_dir
        self.step = step

    def __str__(self) -> str:
        return f"stopped on SIGTERM after step {self.step}; complete checkpoint {self.checkpoint_dir}"


def _on_sigterm(signum, frame) -> None:
    if _requested.is_set():
        # The second SIGTERM: no more waiting for the save. Die by the signal, as the default action does.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _requested.set()
    log.warning("SIGTERM: finishing the current step, then writing a checkpoint and exiting")


@contextmanager
def sigterm_stops_training() -> Iterator[None]:
    """Around a training loop: SIGTERM sets the stop flag instead of ending the process. Python delivers
    signals to the main thread only, so elsewhere (a library caller's worker thread) nothing is installed."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_requested() -> bool:
    """This process has had a SIGTERM (local, not agreed: for cutting its own waits short, e.g. remote retries)."""
    return _requested.is_set()


def stop_agreed(device: torch.device | str = "cpu") -> bool:
    """Collective when several ranks run: True on every rank once any rank has had a SIGTERM. Call it on every
    rank at the same step boundary; `device` is where the process group's backend reduces (cuda for NCCL)."""
    global _steps_completed
    _steps_completed += 1
    flag = torch.tensor([1.0 if _requested.is_set() else 0.0], device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def completed_steps() -> int:
    """Training steps this process has finished (step boundaries `stop_agreed` has seen): 0 means a failure came
    before the first step (`medo1.training.termination` reports an out-of-memory there as one a restart cannot cure)."""
    return _steps_completed


class StopOnSigterm(TrainerCallback):
    """For transformers Trainers: after the optimizer step during which any rank had a SIGTERM, save and stop.
    The check runs on every rank at every step end, so they all save at the same step."""

    def __init__(self):
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if stop_agreed(args.device):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_stopped_early(self, trainer) -> None:
        """After `trainer.train()`: raise `Preempted` when training stopped on SIGTERM before its last step (a
        stop at the last step is the normal end, and the run goes on to its export)."""
        state = trainer.state
        if self.stopped_at is not None and state.global_step < state.max_steps:
            stopped = Preempted(f"{trainer.args.output_dir}/checkpoint-{state.global_step}", state.global_step)
            log.warning("%s", stopped)
            raise stopped
