"""Test peers for the firmware bridge: a scripted GFP/1 firmware over a real pty or TCP socket,
a hand-advanced clock, small scans, and helpers to run a `GfpLink` inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from firmware_bridge.events import LinkEvent
from firmware_bridge.link import GfpLink
from firmware_bridge.messages import (
    Control,
    DaemonMessage,
    FirmwareMessage,
    Hello,
    ScanBegin,
    ScanEnd,
    ScanLines,
)
from firmware_bridge.settings import LinkSettings
from firmware_bridge.simulator.endpoint import FirmwareEndpoint
from firmware_bridge.simulator.ports import FirmwarePort, PtyPort, TcpServerPort
from inference.scan import Scan

T = TypeVar("T")

TRANSPORTS = ("pty", "socket")


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body with asyncio.run (the suite has no asyncio plugin), bounded to 60 s."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


class FakeClock:
    """A monotonic clock the test advances by hand; safe to read from reader threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class ScriptedFirmware:
    """A firmware that sends exactly what the test says, over a real pty or a TCP socket.

    It answers CONTROL ``hello`` with HELLO (unless ``auto_hello`` is off) and records every
    message the daemon sends.
    """

    def __init__(self, port: FirmwarePort, *, device: str = "combo", rows: int = 16, channels: int = 2,
                 bits: int = 16) -> None:
        self.port = port
        self.endpoint = FirmwareEndpoint(port, on_message=self._on_message)
        self.hello_msg = Hello(device=device, fw_version="test-1", serial_no="T-0001", protocol=1,
                               rows=rows if device != "ocr" else None, channels=channels if device != "ocr" else None,
                               bits=bits if device != "ocr" else None)
        self.auto_hello = True
        self.received: list[DaemonMessage] = []
        self._arrived = asyncio.Event()
        self.connects = 0
        port.on_connect = self._on_connect
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return self.port.url

    def _on_connect(self) -> None:
        self.connects += 1
        self._arrived.set()

    def _on_message(self, msg: DaemonMessage) -> None:
        self.received.append(msg)
        self._arrived.set()
        if self.auto_hello and isinstance(msg, Control) and msg.command == "hello":
            task = asyncio.get_running_loop().create_task(self.send(self.hello_msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def send(self, msg: FirmwareMessage, **kwargs: Any) -> None:
        await self.endpoint.send(msg, **kwargs)

    async def send_frame(self, frame_type: int, payload: bytes, *, seq: int | None = None) -> None:
        await self.endpoint.send_frame(frame_type, payload, seq=seq)

    async def send_raw(self, data: bytes) -> None:
        await self.endpoint.send_raw(data)

    def messages(self, kind: type[T]) -> list[T]:
        return [m for m in self.received if isinstance(m, kind)]

    async def wait_message(self, kind: type[T], predicate: Callable[[T], bool] = lambda m: True,
                           *, within_s: float = 5.0, start: int = 0) -> T:
        """The first message of ``kind`` (from index ``start`` of `received`) matching ``predicate``."""
        async with asyncio.timeout(within_s):
            while True:
                for msg in self.received[start:]:
                    if isinstance(msg, kind) and predicate(msg):
                        return msg
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.port.close()


@contextlib.asynccontextmanager
async def scripted_firmware(transport: str, **kwargs: Any) -> AsyncIterator[ScriptedFirmware]:
    port: FirmwarePort = PtyPort() if transport == "pty" else TcpServerPort("127.0.0.1", 0)
    fw = ScriptedFirmware(port, **kwargs)
    await port.start()
    try:
        yield fw
    finally:
        await fw.close()


def fast_settings(url: str, **overrides: Any) -> LinkSettings:
    """Settings with short reconnect delays so tests do not wait on backoff."""
    base = LinkSettings(name="test", url=url, reconnect_initial_s=0.05, reconnect_max_s=0.2)
    return replace(base, **overrides)


class LinkRunner:
    """A running `GfpLink` and every event it produced so far."""

    def __init__(self, link: GfpLink) -> None:
        self.link = link
        self.events: list[LinkEvent] = []
        self._arrived = asyncio.Event()

    async def _pump(self) -> None:
        async for event in self.link.events():
            self.events.append(event)
            self._arrived.set()

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_event(self, kind: type[T], predicate: Callable[[T], bool] = lambda e: True,
                         *, within_s: float = 5.0, start: int = 0) -> T:
        async with asyncio.timeout(within_s):
            while True:
                for event in self.events[start:]:
                    if isinstance(event, kind) and predicate(event):
                        return event
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def running_link(settings: LinkSettings, **kwargs: Any) -> AsyncIterator[LinkRunner]:
    """Run a link for the duration of the block; cancelling it must close the port and threads."""
    link = GfpLink(settings, **kwargs)
    runner = LinkRunner(link)
    task = asyncio.create_task(link.run(), name="test-link")
    pump = asyncio.create_task(runner._pump(), name="test-link-events")
    try:
        yield runner
    finally:
        task.cancel()
        pump.cancel()
        results = await asyncio.gather(task, pump, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def wait_until(predicate: Callable[[], bool], *, within_s: float = 5.0) -> None:
    """Poll a condition on plain state (counters have no change notification)."""
    async with asyncio.timeout(within_s):
        while not predicate():
            await asyncio.sleep(0.01)


def make_scan(columns: int = 40, *, rows: int = 16, channels: int = 2, bits: int = 16, seed: int = 0,
              scan_id: str = "T-SCAN-1") -> Scan:
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if bits == 16 else np.uint8
    pixels = rng.integers(0, (1 << bits) - 1, size=(channels, rows, columns), dtype=dtype)
    return Scan(pixels=pixels, scan_id=scan_id, bits=bits, pixel_mm=5.0)


def begin_of(scan: Scan, scan_no: int = 1, **overrides: Any) -> ScanBegin:
    msg = ScanBegin(scan_no=scan_no, scan_id=scan.scan_id, rows=scan.rows, channels=scan.channels, bits=scan.bits,
                    pixel_mm=scan.pixel_mm, started_ms=1_700_000_000_000, expected_columns=scan.columns)
    return replace(msg, **overrides)


def lines_of(scan: Scan, scan_no: int = 1, *, per_frame: int = 8, columns: range | None = None) -> list[ScanLines]:
    data = scan.wire_bytes()
    cb = scan.rows * scan.channels * (2 if scan.bits == 16 else 1)
    cols = columns if columns is not None else range(scan.columns)
    out = []
    for start in range(cols.start, cols.stop, per_frame):
        count = min(per_frame, cols.stop - start)
        out.append(ScanLines(scan_no=scan_no, first_column=start, column_count=count,
                             data=data[start * cb:(start + count) * cb]))
    return out


def end_of(scan: Scan, scan_no: int = 1, **overrides: Any) -> ScanEnd:
    msg = ScanEnd(scan_no=scan_no, scan_id=scan.scan_id, columns=scan.columns,
                  data_crc32=zlib.crc32(scan.wire_bytes()) & 0xFFFFFFFF, ended_ms=1_700_000_005_000, speed_kmh=6.0)
    return replace(msg, **overrides)
