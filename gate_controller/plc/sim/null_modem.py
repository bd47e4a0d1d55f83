"""Two pseudo-terminals joined like a null-modem cable, for Modbus RTU without hardware.

pymodbus opens serial ports by path, and the master side of a pty has none; bridging the masters
of two ptys gives two slave paths that behave like the two ends of a cable: the virtual PLC opens
one, the daemon (or mbpoll) the other. Linux ptys carry no parity: use parity N on both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tty

__all__ = ["PtyNullModem"]


class PtyNullModem:
    """``a`` and ``b`` are the two ends; bytes written to one come out of the other.

    `start` must be called on the event loop that relays; `close` releases all four descriptors.
    Setting `cut` drops bytes in both directions (a pulled cable).
    """

    def __init__(self) -> None:
        self._m1, self._s1 = os.openpty()
        self._m2, self._s2 = os.openpty()
        for fd in (self._s1, self._s2):
            tty.setraw(fd)
        for fd in (self._m1, self._m2):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.a = os.ttyname(self._s1)
        self.b = os.ttyname(self._s2)
        self.cut = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._m1, self._relay, self._m1, self._m2)
        self._loop.add_reader(self._m2, self._relay, self._m2, self._m1)

    def _relay(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return  # EAGAIN, or EIO while no one holds the slave open
        if data and not self.cut:
            with contextlib.suppress(OSError):
                os.write(dst, data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self._m1, self._m2):
                self._loop.remove_reader(fd)
            self._loop = None
        for fd in (self._m1, self._s1, self._m2, self._s2):
            with contextlib.suppress(OSError):
                os.close(fd)
