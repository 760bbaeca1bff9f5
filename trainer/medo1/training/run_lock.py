"""One writer per run folder: `DIR/medo1.lock`, held by rank 0 of the training job while it runs.

The lock file names its holder (pid, host, and what tells this host's processes apart: the kernel's boot id, the pid
namespace and the process start time) and carries a heartbeat, rewritten every `HEARTBEAT_S` seconds. A second writer
is refused with one line naming the holder. A lock whose holder is gone is taken over:
- a holder this process can check (same host, same boot, same pid namespace: `medo1 launch --backend local`, a
  relaunch on the same machine) is gone once its pid is dead, a zombie, or a new process with another start time;
- a holder it cannot check (another node or pod: the operator recreated the job elsewhere, a dead node) is gone
  once its heartbeat is `STALE_AFTER_S` old. The new writer waits up to that long, saying so, and refuses if the
  heartbeat moves meanwhile. The bound is above NFS's attribute cache (acdirmax, 60 s by default) plus a heartbeat,
  so a live holder is never read as stale.
Taking over goes through a guard file created exclusively, so two processes finding the same stale lock do not both
win. Light on purpose (no torch): every training stage takes it before loading anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medo1.atomic import atomic_write_text
from medo1.errors import Medo1Error

log = logging.getLogger(__name__)

LOCK_NAME = "medo1.lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0
GUARD_STALE_S = 30.0
UNREADABLE_GRACE_S = 2.0


class RunFolderLocked(Medo1Error, RuntimeError):
    """The run folder is being written by another live process."""


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None off Linux or for a gone pid."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What identifies a process across hosts and containers: host name, boot id, pid namespace, pid, start time."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    try:
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pid_ns = None
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid_ns": pid_ns,
        "start_ticks": int(stat[19]) if stat and len(stat) > 19 else None,  # field 22 of stat(5)
    }


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """True / False when this process can tell whether the lock's holder still runs; None when it cannot (another
    host, boot or pid namespace)."""
    here = process_identity()
    if any(holder.get(key) != here[key] for key in ("host", "boot_id", "pid_ns")):
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):  # dead, not yet reaped by its parent
            return False
        started = holder.get("start_ticks")
        if started is not None and len(stat) > 19 and int(stat[19]) != started:
            return False  # the pid belongs to a newer process now
    return True


def describe(holder: dict[str, Any], now: float) -> str:
    beat = holder.get("heartbeat_at")
    age = f", last heartbeat {now - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started_at', '?')}{age})"


class RunLock:
    """`acquire()` the run folder's lock (or raise RunFolderLocked), keep its heartbeat while held, `release()` it."""

    def __init__(
        self,
        directory: str | Path,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.clock, self.sleep = clock, sleep
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    # ---- the file ---------------------------------------------------------------------------
    def _content(self) -> str:
        now = self.clock()
        return json.dumps(
            {
                **process_identity(),
                "token": self.token,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "heartbeat_at": now,
            }
        )

    def _create(self) -> bool:
        """Create the lock holding our content, atomically; False when a lock exists."""
        staged = self.path.with_name(f".{LOCK_NAME}.{self.token}")
        staged.write_text(self._content())
        try:
            os.link(staged, self.path)  # fails if the lock exists; the lock appears with its content
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(staged.read_text())
            return True
        finally:
            staged.unlink(missing_ok=True)

    def read(self) -> dict[str, Any] | None:
        """The holder, None when there is no lock; a lock that stays unreadable (a writer that died between creating
        and filling it) reads as a holder whose heartbeat is the file's modification time."""
        deadline = self.clock() + UNREADABLE_GRACE_S
        while True:
            try:
                text = self.path.read_text()
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            try:
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder
            except ValueError:
                pass
            if self.clock() >= deadline:
                return {"pid": None, "host": "?", "heartbeat_at": mtime, "token": None, "unreadable": True}
            self.sleep(0.1)

    # ---- acquire / release ------------------------------------------------------------------
    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        waited_for: dict[str, Any] | None = None
        while True:
            if self._create():
                break
            holder = self.read()
            if holder is None:
                continue  # released meanwhile
            alive = holder_alive(holder)
            now = self.clock()
            if alive:
                raise RunFolderLocked(
                    f"{self.directory} is in use by {describe(holder, now)}; one writer at a time: "
                    f"wait for it to end or stop it (a lock left by a dead process is taken over)"
                )
            if alive is None:
                beat = holder.get("heartbeat_at") if isinstance(holder.get("heartbeat_at"), (int, float)) else 0.0
                if waited_for is not None and beat != waited_for.get("heartbeat_at"):
                    raise RunFolderLocked(
                        f"{self.directory} is in use by {describe(holder, now)}: its heartbeat went "
                        "on while this process waited; one writer at a time"
                    )
                wait = beat + self.stale_after_s - now
                if wait > 0 and waited_for is None:
                    log.warning(
                        "%s is locked by %s, which this host cannot check; waiting %.0f s for its heartbeat "
                        "to go stale",
                        self.directory,
                        describe(holder, now),
                        wait,
                    )
                    waited_for = holder
                    self.sleep(wait + 0.5)
                    continue
            if self._take_over(holder):
                log.warning(
                    "took over the lock of %s from %s, which is gone", self.directory, describe(holder, self.clock())
                )
                break
        self._beating = threading.Thread(target=self._beat, name="medo1-run-lock", daemon=True)
        self._beating.start()
        return self

    def _take_over(self, stale: dict[str, Any]) -> bool:
        """Replace `stale` with our lock unless another process changed the lock first."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if self.clock() - guard.stat().st_mtime > GUARD_STALE_S:  # a taker that died mid-way
                    guard.unlink()
            self.sleep(0.1)
            return False
        try:
            current = self.read()
            if current is not None and current.get("token") != stale.get("token"):
                return False
            atomic_write_text(self.path, self._content())
            return True
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.read()
            if holder is None or holder.get("token") != self.token:
                self.lost = True
                log.error(
                    "lost the lock of %s (now %s): another process writes to this run folder",
                    self.directory,
                    describe(holder, self.clock()) if holder else "no lock",
                )
                return
            holder["heartbeat_at"] = self.clock()
            atomic_write_text(self.path, json.dumps(holder))

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        holder = self.read()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
