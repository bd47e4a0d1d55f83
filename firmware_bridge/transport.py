"""One open ``serial.serial_for_url`` port, driven by threads so the event loop never blocks.

pyserial is blocking. A dedicated reader thread waits in ``select`` on the port and a stop pipe
(so an idle link costs no CPU and closing is immediate), and a single-thread executor does the
open, every write (in order) and the close. Ports without a file descriptor (``rfc2217://``,
``loop://``) fall back to short read timeouts. The owner passes callbacks that run in the reader
thread; they must hand results to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import serial
import serial.serialposix
from serial.urlhandler import protocol_socket

from firmware_bridge.errors import LinkClosedError, LinkError
from firmware_bridge.frame import MAX_READ_CHUNK

__all__ = ["SerialTransport"]

log = logging.getLogger(__name__)

_FALLBACK_READ_TIMEOUT_S = 0.1
_DIRECT_READ = {serial.serialposix.Serial.read, protocol_socket.Serial.read}
_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SerialTransport:
    """A serial port (or socket/rfc2217/loop URL) with a reader thread and a writer thread.

    ``on_data(bytes)`` runs in the reader thread for every chunk read (at most 64 KiB).
    ``idle_timeout()`` runs in the reader thread before each wait and returns how long to wait for
    input before calling ``on_idle()`` (None: wait indefinitely). ``on_closed(error)`` runs once in
    the reader thread when it exits: ``error`` is None after `close`, else what broke the port.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[BaseException | None], None],
        on_idle: Callable[[], None] | None = None,
        idle_timeout: Callable[[], float | None] | None = None,
        baudrate: int = 115200,
        parity: str = "N",
        bytesize: int = 8,
        stopbits: float = 1,
        write_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.name = name
        self._on_data = on_data
        self._on_closed = on_closed
        self._on_idle = on_idle
        self._idle_timeout = idle_timeout
        self._serial_kwargs: dict[str, Any] = {
            "baudrate": baudrate, "parity": _PARITIES[parity], "bytesize": bytesize, "stopbits": stopbits,
            "write_timeout": write_timeout_s,
        }
        self._ser: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_r = -1
        self._stop_w = -1
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_exited: asyncio.Future[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._ser is not None and not self._closed and not self._stop.is_set()

    async def open(self) -> None:
        """Open the port (in the writer thread) and start the reader thread; `LinkError` on failure."""
        loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"gfp-{self.name}-write")
        opening = self._executor.submit(self._open_blocking)
        try:
            self._ser = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled mid-open: the thread may still be connecting. Let it finish (bounded by
            # pyserial's connect timeout) and close whatever it opened, so nothing leaks.
            self._executor.shutdown(wait=True)
            self._executor = None
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                with contextlib.suppress(serial.SerialException, OSError):
                    opening.result().close()
            raise
        self._stop_r, self._stop_w = os.pipe()
        self._loop = loop
        self._reader_exited = loop.create_future()
        self._reader = threading.Thread(target=self._read_loop, name=f"gfp-{self.name}-read", daemon=True)
        self._reader.start()

    def _open_blocking(self) -> Any:
        try:
            ser = serial.serial_for_url(self.url, do_not_open=True)
            for key, value in self._serial_kwargs.items():
                setattr(ser, key, value)
            ser.timeout = 0
            if isinstance(ser, serial.Serial):
                # Two processes reading one device each get half the bytes: refuse instead.
                ser.exclusive = True
            ser.open()
        except (serial.SerialException, OSError, ValueError) as err:
            raise LinkError(f"cannot open {self.url}: {err}") from err
        try:
            ser.fileno()
        except (OSError, ValueError, AttributeError):
            ser.timeout = _FALLBACK_READ_TIMEOUT_S
        return ser

    def _read_loop(self) -> None:
        ser = self._ser
        error: BaseException | None = None
        try:
            try:
                fd = ser.fileno()
            except (OSError, ValueError, AttributeError):
                fd = -1
            if fd >= 0:
                self._select_loop(ser, fd)
            else:
                self._polling_loop(ser)
        except (serial.SerialException, OSError) as err:
            if not self._stop.is_set():
                error = err
        except Exception as err:  # a bug in a callback must not kill the link silently
            log.exception("link %s: reader thread failed", self.name)
            error = err
        finally:
            self._stop.set()
            try:
                self._on_closed(error)
            finally:
                self._signal_exit()

    def _signal_exit(self) -> None:
        loop, exited = self._loop, self._reader_exited
        if loop is None or exited is None:
            return
        # RuntimeError: the loop is already closed; close() then joins the thread directly.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, exited)

    def _select_loop(self, ser: Any, fd: int) -> None:
        stop_r = self._stop_r
        # pyserial's own read() copies every chunk twice and selects again; for its plain tty
        # and socket classes (not wrappers such as spy:// that override read) we read the
        # descriptor it opened directly, which doubles the rate a pty can be drained at.
        direct = type(ser).read in _DIRECT_READ
        while not self._stop.is_set():
            timeout = self._idle_timeout() if self._idle_timeout else None
            ready, _, _ = select.select([fd, stop_r], [], [], timeout)
            if stop_r in ready:
                return
            if fd in ready:
                if direct:
                    self._drain(fd)
                else:
                    data = ser.read(MAX_READ_CHUNK)
                    if data:
                        self._on_data(data)
            elif self._on_idle is not None:
                self._on_idle()

    def _drain(self, fd: int) -> None:
        """Read until the descriptor is empty: one select per burst, not one per chunk.

        A tty in pyserial's raw mode (VMIN=0) answers an empty read with b"" rather than EAGAIN,
        so b"" only means a lost device on the first read after select reported readiness (the
        rule pyserial itself applies).
        """
        first = True
        while not self._stop.is_set():
            try:
                data = os.read(fd, MAX_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                if first:
                    raise serial.SerialException("device reports readiness to read but returned no data "
                                                 "(device disconnected?)")
                return
            first = False
            self._on_data(data)

    def _polling_loop(self, ser: Any) -> None:
        while not self._stop.is_set():
            data = ser.read(1)
            if data:
                waiting = ser.in_waiting
                if waiting:
                    data += ser.read(min(waiting, MAX_READ_CHUNK - 1))
                self._on_data(data)
            elif self._on_idle is not None:
                self._on_idle()

    def submit(self, data: bytes) -> concurrent.futures.Future[None]:
        """Queue a write; writes go out in submission order. The future fails with `LinkError`."""
        if self._executor is None or not self.is_open:
            raise LinkClosedError(f"{self.url} is not open")
        return self._executor.submit(self._write_blocking, data)

    async def write(self, data: bytes) -> None:
        await asyncio.wrap_future(self.submit(data))

    def _write_blocking(self, data: bytes) -> None:
        if self._stop.is_set():
            raise LinkClosedError(f"{self.url} is closed")
        try:
            self._ser.write(data)
        except (serial.SerialException, OSError) as err:  # SerialTimeoutException included
            raise LinkError(f"write to {self.url} failed: {err}") from err

    async def close(self) -> None:
        """Stop the reader, close the port and join both threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        try:
            if self._reader_exited is not None:
                await asyncio.shield(self._reader_exited)
            if self._executor is not None and self._ser is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close_blocking)
        finally:
            self._finish_close()

    def _close_blocking(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as err:
                log.debug("link %s: closing %s: %s", self.name, self.url, err)

    def _finish_close(self) -> None:
        """Bounded blocking cleanup; after the awaits above everything here is already finished."""
        if self._reader is not None:
            self._reader.join(timeout=5.0)
            self._reader = None
        if self._ser is not None:
            self._close_blocking()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
