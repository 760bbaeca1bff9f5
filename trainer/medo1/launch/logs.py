"""Following the log of a job's Master pod on the cluster: printed as it is written, across restarts
and dropped connections, its last lines kept for error messages."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medo1.launch.waiting import TAIL_LINES

if TYPE_CHECKING:
    from medo1.launch.kubernetes import ClusterJobs

log = logging.getLogger(__name__)

POD_RECHECK_S = 5.0


def _sortable_time(stamp: str) -> str:
    """Kubelet's RFC 3339 log timestamp (UTC; nanoseconds, trailing zeros trimmed) as a string that sorts by time."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction:0<9}"


@dataclass(frozen=True)
class _ContainerRun:
    pod: str
    key: tuple[str, int]
    """(pod uid, restart count): a restart in place or a new pod is a new run."""
    running: bool


class MasterLogFollower:
    """Prints the Master pod's (a batch Job: its pod's) main-container log to stdout as it is written, from a daemon thread,
    and keeps its last lines for error messages. It waits for the pod to start, follows every run of the
    container (a restart in place or a new pod), and after a dropped connection picks the same run up
    again without printing a line twice (the log comes with kubelet's timestamps to tell)."""

    def __init__(self, jobs: ClusterJobs, recheck_s: float = POD_RECHECK_S):
        self._jobs = jobs
        self._recheck_s = recheck_s
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stopping = threading.Event()
        self._response: Any = None
        self._last_stamp = ""
        self._last_wall = 0.0
        self._thread = threading.Thread(target=self._run, name="master-log", daemon=True)

    def start(self) -> MasterLogFollower:
        self._thread.start()
        return self

    def stop(self, drain_s: float) -> None:
        """Stop once the log of the run being followed has ended, waiting at most drain_s for that."""
        self._stopping.set()
        self._thread.join(drain_s)
        response = self._response
        if response is not None and self._thread.is_alive():
            # Not close(): closing a stream another thread is blocked reading from waits for that read.
            # Shutting the socket down ends the read; the follower thread then releases the connection.
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                response.shutdown()
            self._thread.join(max(drain_s, 1.0))

    def _run(self) -> None:
        followed = None
        while True:
            run = self._current_run()
            if run is not None and run.key != followed:
                followed, self._last_stamp = run.key, ""
                self._follow(run, resume=False)
            elif self._stopping.is_set():
                return
            elif run is not None and run.running:
                # Its log ended while it runs: the connection dropped, or the pod status lags its exit.
                if not self._stopping.wait(self._recheck_s):
                    self._follow(run, resume=bool(self._last_stamp))
            else:
                self._stopping.wait(self._recheck_s)

    def _current_run(self) -> _ContainerRun | None:
        try:
            pods = self._jobs.master_pods()
        except (RuntimeError, TimeoutError) as exc:
            log.debug("listing the pods of %s: %s", self._jobs.where, exc)
            return None
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        for pod in sorted(live, key=lambda p: str(p.metadata.creation_timestamp or ""), reverse=True):
            for status in (pod.status and pod.status.container_statuses) or []:
                if (
                    status.name == self._jobs.container
                    and status.state
                    and (status.state.running or status.state.terminated)
                ):
                    return _ContainerRun(
                        pod.metadata.name, (pod.metadata.uid, status.restart_count), bool(status.state.running)
                    )
        return None

    def _follow(self, run: _ContainerRun, resume: bool) -> None:
        from kubernetes.client.rest import ApiException
        from kubernetes.watch.watch import iter_resp_lines
        from urllib3.exceptions import HTTPError

        since_seconds = math.ceil(time.time() - self._last_wall) + 5 if resume else None
        printed_through = self._last_stamp if resume else ""
        try:
            self._response = self._jobs.open_log(run.pod, since_seconds)
            for line in iter_resp_lines(self._response):
                stamp, _, text = line.partition(" ")
                stamp = _sortable_time(stamp)
                if stamp <= printed_through:
                    continue
                self._last_stamp, self._last_wall = stamp, time.time()
                print(text, flush=True)
                self.tail.append(text)
        except (
            ApiException,
            HTTPError,
            OSError,
        ) as exc:  # a pod gone, a container not started, a dropped stream: _run looks again
            log.debug("log of %s: %s", run.pod, exc)
        finally:
            response, self._response = self._response, None
            if response is not None:
                response.release_conn()
