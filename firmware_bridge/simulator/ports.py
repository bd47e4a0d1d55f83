"""The firmware's end of a GFP/1 byte stream: a pseudo-terminal, a TCP server, or a serial URL.

Each port delivers received bytes to ``on_data`` and reports a new peer with ``on_connect`` (a TCP
client connecting; a pty or a serial port is "connected" from the start). `write` returns False
when no peer is there to receive (the bytes are lost, as on an unplugged cable). `interrupt`
simulates a link loss: a TCP server drops its client and refuses connections for a while, a pty
or serial port goes silent in both directions (a pty cannot be unplugged).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import logging
import os
import tty
from collections.abc import Callable
from pathlib import Path

from firmware_bridge.errors import LinkError
from firmware_bridge.frame import MAX_READ_CHUNK
from firmware_bridge.transport import SerialTransport

__all__ = ["FirmwarePort", "PtyPort", "SerialPort", "TcpServerPort", "open_port"]

log = logging.getLogger(__name__)


class FirmwarePort(abc.ABC):
    """Base: callbacks, the interrupt window and the common write contract."""

    url: str = ""

    def __init__(self) -> None:
        self.on_data: Callable[[bytes], None] = lambda data: None
        self.on_connect: Callable[[], None] = lambda: None
        self._silent_until = 0.0

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    def _silent(self) -> bool:
        return asyncio.get_running_loop().time() < self._silent_until

    @abc.abstractmethod
    async def start(self) -> str:
        """Start serving; return the URL the daemon must open."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> bool: ...

    async def interrupt(self, duration_s: float) -> None:
        """Lose the link for ``duration_s`` seconds (returns at once; the loss lasts in the background)."""
        self._silent_until = asyncio.get_running_loop().time() + duration_s

    @abc.abstractmethod
    async def close(self) -> None: ...


class PtyPort(FirmwarePort):
    """A pseudo-terminal pair: the daemon opens the slave path; we hold the master.

    We also keep the slave open so the master never sees a hang-up while the daemon reconnects,
    and put it in raw mode before anyone reads it (a cooked tty would echo our frames back).
    ``link_path``, when given, is made a symlink to the slave for a stable configured path.
    """

    def __init__(self, link_path: str | None = None) -> None:
        super().__init__()
        self._link_path = Path(link_path) if link_path else None
        self._master = -1
        self._slave = -1
        self._writable: asyncio.Event | None = None

    @property
    def connected(self) -> bool:
        return self._master >= 0 and not self._silent()

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        path = os.ttyname(self._slave)
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
            self._link_path.symlink_to(path)
            path = str(self._link_path)
        self.url = path
        self._writable = asyncio.Event()
        loop.add_reader(self._master, self._readable)
        self.on_connect()
        return path

    def _readable(self) -> None:
        try:
            data = os.read(self._master, MAX_READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno == errno.EIO:  # no slave open at this instant; keep serving
                return
            raise
        if data and not self._silent():
            self.on_data(data)

    async def write(self, data: bytes) -> bool:
        if self._master < 0 or self._silent():
            return False
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                n = 0
            except OSError as err:
                raise LinkError(f"pty write failed: {err}") from err
            view = view[n:]
            if view:
                # The slave's input queue is full until the daemon reads: wait for room.
                assert self._writable is not None
                self._writable.clear()
                loop.add_writer(self._master, self._writable.set)
                try:
                    await self._writable.wait()
                finally:
                    loop.remove_writer(self._master)
        return True

    async def close(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()


class TcpServerPort(FirmwarePort):
    """A serial device server: listens on host:port, one client at a time (a newer one wins)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_tasks: set[asyncio.Task[None]] = set()
        self._client_writers: set[asyncio.StreamWriter] = set()
        self._reopen: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def start(self) -> str:
        await self._listen()
        self.url = f"socket://{self.host}:{self.port}"
        return self.url

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._client_tasks.add(task)
        old, self._writer = self._writer, writer
        if old is not None:
            old.close()
        self._client_writers.add(writer)
        try:
            self.on_connect()
            while True:
                data = await reader.read(MAX_READ_CHUNK)
                if not data:
                    break
                if writer is self._writer:
                    self.on_data(data)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Ending normally: asyncio's server callback calls exception() on this task and
            # fails noisily on a cancelled one (Python 3.11).
            pass
        finally:
            self._client_writers.discard(writer)
            if self._writer is writer:
                self._writer = None
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._client_tasks.discard(task)

    async def write(self, data: bytes) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def interrupt(self, duration_s: float) -> None:
        await super().interrupt(duration_s)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reopen is None or self._reopen.done():
            self._reopen = asyncio.create_task(self._listen_after(duration_s), name="sim-tcp-reopen")

    async def _listen_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if not self._closed:
            await self._listen()

    async def close(self) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen
        if self._server is not None:
            self._server.close()
        for writer in list(self._client_writers):
            writer.close()  # the client's read loop sees EOF and ends by itself
        if self._client_tasks:
            _done, pending = await asyncio.wait(set(self._client_tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class SerialPort(FirmwarePort):
    """A real serial port (or any serial URL) on the firmware side, e.g. a null-modem cable to the gate PC."""

    def __init__(self, url: str, *, baudrate: int = 115200) -> None:
        super().__init__()
        self.url = url
        self._baudrate = baudrate
        self._transport: SerialTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_open and not self._silent()

    async def start(self) -> str:
        self._loop = asyncio.get_running_loop()
        self._transport = SerialTransport(self.url, name="sim", baudrate=self._baudrate,
                                          on_data=self._on_thread_data, on_closed=self._on_thread_closed)
        await self._transport.open()
        self.on_connect()
        return self.url

    def _on_thread_data(self, data: bytes) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if not self._silent():
            self.on_data(data)

    def _on_thread_closed(self, error: BaseException | None) -> None:
        if error is not None:
            log.warning("simulator port %s closed: %s", self.url, error)

    async def write(self, data: bytes) -> bool:
        if not self.connected or self._transport is None:
            return False
        try:
            await self._transport.write(data)
        except LinkError:
            return False
        return True

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None


def open_port(url: str, *, baudrate: int = 115200) -> FirmwarePort:
    """The port for a simulator URL: ``pty`` / ``pty:PATH`` (symlink PATH to a new pty),
    ``socket://HOST:PORT`` or ``tcp://HOST:PORT`` (listen there; the daemon opens the same
    ``socket://`` URL), anything else is opened with ``serial_for_url`` (a device path)."""
    if url == "pty":
        return PtyPort()
    if url.startswith("pty:"):
        return PtyPort(url[4:])
    for scheme in ("socket://", "tcp://"):
        if url.startswith(scheme):
            host, _, port = url[len(scheme):].partition(":")
            if not port.isdigit():
                raise LinkError(f"{url}: expected {scheme}HOST:PORT")
            return TcpServerPort(host or "127.0.0.1", int(port))
    return SerialPort(url, baudrate=baudrate)
