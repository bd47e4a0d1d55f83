"""The demo's child processes die with it, however it dies.

``python -m gate_controller.demo.child PARENT_PID SIGNAL PROGRAM [ARG...]`` asks the kernel for
``SIGNAL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``, kept across ``execve``), checks that
the parent is still ``PARENT_PID`` (it may have died before the request) and replaces itself with
``PROGRAM``. The demo starts its daemon and its broker this way, so a demo killed with SIGKILL (a CI
timeout, a closed terminal) leaves no daemon holding the PLC ports and no broker holding the MQTT
port. The simulators run inside the demo process and go with it anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["orphan_proof", "set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when the thread that forked it exits (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def orphan_proof(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """``argv`` wrapped so that the program gets ``sig`` when this process dies.

    Start the result from the thread that lives as long as the process (the event loop's): the
    kernel sends the signal when the forking *thread* exits.
    """
    return [sys.executable, "-m", "gate_controller.demo.child", str(os.getpid()), str(int(sig)), *argv]


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m gate_controller.demo.child PARENT_PID SIGNAL PROGRAM [ARG...]", file=sys.stderr)
        return 64
    parent, sig = int(argv[0]), int(argv[1])
    set_parent_death_signal(sig)
    if os.getppid() != parent:
        return 0  # the parent died before the request took effect: nothing to run for
    program = list(argv[2:])
    try:
        os.execvp(program[0], program)  # noqa: S606  (the demo's own daemon and broker, argv from the demo)
    except OSError as err:
        print(f"cannot run {program[0]}: {err}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
