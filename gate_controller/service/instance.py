"""One daemon per gate: an exclusive lock on the state directory, held for the life of the process.

Two daemons on the same state directory would drive the same PLCs, share one outbox and take the
same MQTT client id from each other. `smartgate run` therefore takes an exclusive ``flock`` on
``<state_dir>/smartgate.lock`` before it opens anything and keeps it until it exits (the kernel
drops it when the process dies, however it dies, so a stale file never blocks a restart). The
file holds the PID of the holder, for the message a second instance prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "InstanceLock", "InstanceRunning", "lock_holder"]

LOCK_NAME = "smartgate.lock"


class InstanceRunning(RuntimeError):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{path} is locked by {holder}: a smartgate daemon already runs on this state directory "
                         "(stop it first, e.g. systemctl stop smartgate)")


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or "x")
    return None


class InstanceLock:
    """The exclusive lock of one state directory; `acquire` raises `InstanceRunning` when it is taken."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise InstanceRunning(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(state_dir: Path) -> InstanceRunning | None:
    """Whether a daemon holds ``state_dir`` right now (checked by taking and dropping the lock)."""
    path = Path(state_dir) / LOCK_NAME
    if not path.exists():
        return None
    try:
        with InstanceLock(state_dir):
            return None
    except InstanceRunning as err:
        return err
