"""The virtual gate firmware: a scanner, an OCR unit or a combo device speaking GFP/1.

`FirmwareSimulator` plays the firmware's side of one link over a pty, a TCP server or a serial
URL. It greets with HELLO on connect and on CONTROL ``hello``, sends HEARTBEAT every second,
honours ``arm``/``disarm``/``time_sync``, answers RESEND with SCAN_LINES from scans it keeps for
``keep_scans_s`` (30 s) after their SCAN_END, and records SCAN_ACKs. A coordinator moves trucks
through the lane with `pass_truck`, which sends that truck's OCR reads and scan when told to.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.messages import (
    Control,
    DaemonHeartbeat,
    DaemonMessage,
    Fault,
    FirmwareHeartbeat,
    Hello,
    OcrRead,
    Resend,
    ScanAbort,
    ScanAck,
    ScanBegin,
    ScanEnd,
    ScanLines,
    column_bytes,
)
from firmware_bridge.simulator.endpoint import FirmwareEndpoint
from firmware_bridge.simulator.fault_injector import FaultInjector
from firmware_bridge.simulator.faults import FaultConfig
from firmware_bridge.simulator.ports import FirmwarePort, PtyPort, TcpServerPort, open_port
from firmware_bridge.simulator.scans import truck_scan
from firmware_bridge.simulator.trucks import TruckSpec, ocr_reads
from inference.scan import Scan

__all__ = ["FirmwareSimulator", "PassageRecord"]

log = logging.getLogger(__name__)

ScanSource = Callable[[TruckSpec, str], Scan]
"""Builds the scan of a truck given the scan_id (called in a worker thread)."""

_DEFAULT_LINES_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class PassageRecord:
    """What the firmware sent for one truck: the ground truth a test or demo checks against."""

    truck: TruckSpec | None
    reads: tuple[OcrRead, ...]
    scan_no: int | None = None
    scan_id: str | None = None
    sha256: str | None = None
    """Identity hash of the scan as sent (even when ``data_crc32`` was deliberately wrong)."""
    columns: int = 0
    data_crc32: int | None = None
    crc_corrupted: bool = False
    aborted: bool = False
    started_ms: int | None = None
    ended_ms: int | None = None
    scan: Scan | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        truck = self.truck
        return {
            "event": "truck",
            "plate": truck.plate if truck else None,
            "containers": [c.number for c in truck.containers] if truck else [],
            "reads": [r.text for r in self.reads], "scan_no": self.scan_no, "scan_id": self.scan_id,
            "sha256": self.sha256, "columns": self.columns, "crc_corrupted": self.crc_corrupted,
            "aborted": self.aborted,
        }


@dataclass
class _KeptScan:
    scan_no: int
    scan_id: str
    data: bytes
    column_bytes: int
    columns: int
    kept_until: float


class FirmwareSimulator:
    """One simulated firmware device on one link. All methods run on the caller's event loop."""

    def __init__(
        self,
        *,
        device: str = "combo",
        serial_no: str = "SIM-0001",
        fw_version: str = "smartgate-sim 1.0",
        rows: int = 256,
        channels: int = 2,
        bits: int = 16,
        baud: int | None = None,
        faults: FaultConfig | None = None,
        heartbeat_interval_s: float = 1.0,
        keep_scans_s: float = 30.0,
        ack_wait_s: float = 5.0,
        lines_payload: int = _DEFAULT_LINES_PAYLOAD,
        realtime: bool = False,
        seed: int = 0,
        scan_source: ScanSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if device not in ("scanner", "ocr", "combo"):
            raise ValueError(f"device must be scanner, ocr or combo (got {device!r})")
        self.device = device
        self.serial_no = serial_no
        self.fw_version = fw_version
        self.rows, self.channels, self.bits = rows, channels, bits
        self.faults = faults or FaultConfig()
        self.baud = baud
        self.heartbeat_interval_s = heartbeat_interval_s
        self.keep_scans_s = keep_scans_s
        self.ack_wait_s = ack_wait_s
        self._awaiting_ack: int | None = None
        self.realtime = realtime
        self._lines_payload = max(10 + column_bytes(rows, channels, bits), lines_payload)
        self._rng = random.Random(seed)
        self._scan_source = scan_source or self._synthetic_scan
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_at = clock()
        self._port: FirmwarePort | None = None
        self._endpoint: FirmwareEndpoint | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kept: dict[int, _KeptScan] = {}
        self._ack_waiters: dict[int, list[asyncio.Future[ScanAck]]] = {}
        self._scan_lock = asyncio.Lock()
        self._scanning = False
        self._next_scan_no = 1
        self._boot = self._rng.randrange(0x10000)
        self.injector = FaultInjector(self.faults, random.Random(seed ^ 0xFA17))
        self.armed = True
        self.time_offset_ms = 0
        self.acks: dict[int, ScanAck] = {}
        self.resends: list[Resend] = []
        self.controls: list[Control] = []
        self.daemon_heartbeats = 0
        self.last_daemon_state: str | None = None
        self.active_faults: dict[str, Fault] = {}
        self.unanswered_resends = 0
        self._daemon_seen = asyncio.Event()

    # ------------------------------------------------------------------ serving

    @property
    def url(self) -> str:
        """The URL the daemon opens to reach this firmware."""
        return self._port.url if self._port else ""

    @property
    def endpoint(self) -> FirmwareEndpoint:
        if self._endpoint is None:
            raise RuntimeError("the simulator is not serving yet")
        return self._endpoint

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen like a serial device server; the daemon opens ``socket://host:port``."""
        return await self.serve(TcpServerPort(host, port))

    async def serve_pty(self, link_path: str | None = None) -> str:
        """Create a pseudo-terminal; the daemon opens the returned path."""
        return await self.serve(PtyPort(link_path))

    async def serve_url(self, url: str) -> str:
        """``pty``, ``pty:PATH``, ``socket://HOST:PORT`` (listen) or a serial device URL."""
        return await self.serve(open_port(url, baudrate=self.baud or 115200))

    async def serve(self, port: FirmwarePort) -> str:
        if self._port is not None:
            raise RuntimeError("the simulator already serves a port")
        self._port = port
        self._endpoint = FirmwareEndpoint(port, baud=self.baud, faults=self.injector, on_message=self._on_message)
        port.on_connect = lambda: self._spawn(self.send_hello(), "hello")
        url = await port.start()
        self._spawn(self._heartbeat_loop(), "heartbeat")
        if self.faults.link_drop_interval_s:
            self._spawn(self._link_drop_loop(self.faults.link_drop_interval_s), "link-drops")
        if self.faults.fault_interval_s:
            self._spawn(self._fault_loop(self.faults.fault_interval_s), "faults")
        log.info("simulated %s firmware %s serving on %s", self.device, self.serial_no, url)
        return url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._port is not None:
            await self._port.close()
        for waiters in self._ack_waiters.values():
            for fut in waiters:
                fut.cancel()
        self._ack_waiters.clear()

    async def __aenter__(self) -> FirmwareSimulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"sim-{self.serial_no}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------------ firmware behaviour

    def uptime_ms(self) -> int:
        return int((self._clock() - self._started_at) * 1000)

    def wall_ms(self) -> int:
        return int(self._wall_clock() * 1000) + self.time_offset_ms

    def state(self) -> str:
        if any(f.severity in ("error", "critical") for f in self.active_faults.values()):
            return "fault"
        return "scanning" if self._scanning else "idle"

    def hello(self) -> Hello:
        scanner = self.device in ("scanner", "combo")
        return Hello(device=self.device, fw_version=self.fw_version, serial_no=self.serial_no, protocol=1,
                     rows=self.rows if scanner else None, channels=self.channels if scanner else None,
                     bits=self.bits if scanner else None)

    async def send_hello(self) -> None:
        await self.endpoint.send(self.hello())

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.endpoint.send(FirmwareHeartbeat(uptime_ms=self.uptime_ms(), state=self.state()))
            await asyncio.sleep(self.heartbeat_interval_s)

    async def set_fault(self, code: str, *, severity: str = "error", active: bool = True,
                        message: str = "") -> None:
        """Raise (or clear, ``active=False``) a firmware fault and send the FAULT frame."""
        fault = Fault(code=code, severity=severity, active=active, message=message or code.lower())
        if active:
            self.active_faults[code] = fault
        else:
            self.active_faults.pop(code, None)
        await self.endpoint.send(fault)

    async def drop_link(self, duration_s: float) -> None:
        """Lose the link for ``duration_s`` (TCP: drop the client and refuse; pty: silence)."""
        if self._port is not None:
            log.info("simulator %s: link lost for %.1f s", self.serial_no, duration_s)
            await self._port.interrupt(duration_s)

    async def _link_drop_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.drop_link(self.faults.link_drop_duration_s)

    async def _fault_loop(self, interval_s: float) -> None:
        codes = (("DETECTOR_TEMP", "warning", "detector temperature high"),
                 ("LINAC_INTERLOCK", "error", "accelerator interlock open"),
                 ("CAMERA_DIRTY", "warning", "camera lens needs cleaning"))
        while True:
            await asyncio.sleep(interval_s)
            code, severity, message = self._rng.choice(codes)
            await self.set_fault(code, severity=severity, message=message)
            await asyncio.sleep(min(5.0, interval_s / 2))
            await self.set_fault(code, severity=severity, active=False, message=message)

    async def wait_for_daemon(self) -> None:
        """Return once a daemon has sent anything (so what we send next has a listener)."""
        await self._daemon_seen.wait()

    def _on_message(self, msg: DaemonMessage) -> None:
        self._daemon_seen.set()
        if isinstance(msg, DaemonHeartbeat):
            self.daemon_heartbeats += 1
            self.last_daemon_state = msg.state
        elif isinstance(msg, Resend):
            self.resends.append(msg)
            self._spawn(self._answer_resend(msg), "resend")
        elif isinstance(msg, ScanAck):
            self.acks[msg.scan_no] = msg
            for fut in self._ack_waiters.pop(msg.scan_no, []):
                if not fut.done():
                    fut.set_result(msg)
        elif isinstance(msg, Control):
            self.controls.append(msg)
            if msg.command == "hello":
                self._spawn(self.send_hello(), "hello")
            elif msg.command == "time_sync" and msg.now_ms is not None:
                self.time_offset_ms = msg.now_ms - int(self._wall_clock() * 1000)
            elif msg.command in ("arm", "disarm"):
                self.armed = msg.command == "arm"

    async def wait_for_ack(self, scan_no: int) -> ScanAck:
        """The daemon's SCAN_ACK for ``scan_no``; bound the wait with ``asyncio.timeout``."""
        if scan_no in self.acks:
            return self.acks[scan_no]
        fut: asyncio.Future[ScanAck] = asyncio.get_running_loop().create_future()
        self._ack_waiters.setdefault(scan_no, []).append(fut)
        return await fut

    def _prune_kept(self) -> None:
        now = self._clock()
        for scan_no in [n for n, kept in self._kept.items() if kept.kept_until < now]:
            del self._kept[scan_no]

    @property
    def kept_scans(self) -> tuple[int, ...]:
        self._prune_kept()
        return tuple(self._kept)

    async def _answer_resend(self, msg: Resend) -> None:
        self._prune_kept()
        kept = self._kept.get(msg.scan_no)
        if kept is None:
            self.unanswered_resends += 1
            log.info("simulator: RESEND for scan %s which is no longer kept", msg.scan_no)
            return
        stop = min(kept.columns, msg.from_column + msg.count)
        await self._send_columns(kept.scan_no, kept.data, kept.column_bytes, range(msg.from_column, stop),
                                 first_transmission=False)

    async def _send_columns(self, scan_no: int, data: bytes, cb: int, columns: range, *,
                            first_transmission: bool) -> None:
        per_frame = max(1, (self._lines_payload - 10) // cb)
        for start in range(columns.start, columns.stop, per_frame):
            count = min(per_frame, columns.stop - start)
            lines = ScanLines(scan_no=scan_no, first_column=start, column_count=count,
                              data=data[start * cb:(start + count) * cb])
            await self.endpoint.send(lines, first_transmission=first_transmission)

    # ------------------------------------------------------------------ trucks and scans

    def _synthetic_scan(self, truck: TruckSpec, scan_id: str) -> Scan:
        return truck_scan(truck, scan_id=scan_id, rows=self.rows, channels=self.channels, bits=self.bits)

    async def pass_truck(self, truck: TruckSpec) -> PassageRecord:
        """Send what this device sees of one truck passing: OCR reads and/or the scan.

        A scanner that is disarmed (CONTROL ``disarm``) does not scan. Returns once everything is
        sent; SCAN_ACK and RESEND are handled in the background (see `wait_for_ack`).
        """
        reads = ocr_reads(truck, now_ms=self.wall_ms(), rng=random.Random(truck.seed ^ 0x0C0FFEE)) \
            if self.device in ("ocr", "combo") else []
        if self.device == "ocr" or not self.armed:
            for read in reads:
                await self._pause(0.3)
                await self.endpoint.send(read)
            if self.device != "ocr":
                log.info("simulator %s: disarmed, truck %s not scanned", self.serial_no, truck.plate)
            return PassageRecord(truck=truck, reads=tuple(reads))
        async with self._scan_lock:
            scan_no = self._next_scan_no
            self._next_scan_no = (self._next_scan_no + 1) & 0xFFFF_FFFF
            scan_id = f"{self.serial_no}-{self._boot:04X}-{scan_no:06d}"
            scan = await asyncio.to_thread(self._scan_source, truck, scan_id)
            length_m = sum(c.length_ft for c in truck.containers) * 0.3048 + 1.0
            duration = length_m / (truck.speed_kmh / 3.6) if self.realtime else 0.0
            return await self._send_scan(scan, scan_no, reads=reads, truck=truck, duration_s=duration,
                                         speed_kmh=truck.speed_kmh)

    async def send_scan(self, scan: Scan, *, reads: Sequence[OcrRead] = (), speed_kmh: float | None = None,
                        duration_s: float = 0.0) -> PassageRecord:
        """Send one given scan (and OCR reads interleaved with its lines), as a scanner would."""
        async with self._scan_lock:
            scan_no = self._next_scan_no
            self._next_scan_no = (self._next_scan_no + 1) & 0xFFFF_FFFF
            return await self._send_scan(scan, scan_no, reads=list(reads), truck=None, duration_s=duration_s,
                                         speed_kmh=speed_kmh)

    async def _wait_previous_ack(self) -> None:
        """Like a real scanner, start no new scan while the last one may still be in its RESEND
        rounds; after ``ack_wait_s`` go ahead anyway (the daemon then supersedes it)."""
        previous, self._awaiting_ack = self._awaiting_ack, None
        if previous is None or previous in self.acks:
            return
        try:
            async with asyncio.timeout(self.ack_wait_s):
                await self.wait_for_ack(previous)
        except TimeoutError:
            log.info("simulator %s: scan %s not acknowledged, starting the next one", self.serial_no, previous)

    async def _pause(self, seconds: float) -> None:
        if self.realtime and seconds > 0:
            await asyncio.sleep(seconds)

    async def _send_scan(self, scan: Scan, scan_no: int, *, reads: list[OcrRead], truck: TruckSpec | None,
                         duration_s: float, speed_kmh: float | None) -> PassageRecord:
        if (scan.rows, scan.channels, scan.bits) != (self.rows, self.channels, self.bits):
            raise ValueError(f"scan geometry {scan.rows}x{scan.channels}x{scan.bits}bit does not match the "
                             f"HELLO of this device ({self.rows}x{self.channels}x{self.bits}bit)")
        await self._wait_previous_ack()
        ep = self.endpoint
        inj = self.injector
        data = scan.wire_bytes()
        cb = column_bytes(scan.rows, scan.channels, scan.bits)
        columns = scan.columns
        per_frame = max(1, (self._lines_payload - 10) // cb)
        starts = list(range(0, columns, per_frame))
        if self.faults.shuffle_lines:
            inj.rng.shuffle(starts)
        abort_at = inj.rng.randrange(1, max(2, len(starts))) if inj.chance(self.faults.abort_rate) else None
        plates = [r for r in reads if r.kind == "plate" and r.camera == "front"]
        others = [r for r in reads if r not in plates]
        for read in plates:
            await ep.send(read)
        self._scanning = True
        started_ms = self.wall_ms()
        try:
            await ep.send(ScanBegin(scan_no=scan_no, scan_id=scan.scan_id, rows=scan.rows, channels=scan.channels,
                                    bits=scan.bits, pixel_mm=scan.pixel_mm, started_ms=started_ms,
                                    expected_columns=columns))
            pause = duration_s / max(1, len(starts))
            for k, start in enumerate(starts):
                if k == abort_at:
                    await ep.send(ScanAbort(scan_no=scan_no, reason="truck reversed in the scan tunnel"))
                    for read in others:
                        await ep.send(read)
                    return PassageRecord(truck=truck, reads=tuple(reads), scan_no=scan_no, scan_id=scan.scan_id,
                                         columns=columns, aborted=True, started_ms=started_ms, scan=scan)
                count = min(per_frame, columns - start)
                lines = ScanLines(scan_no=scan_no, first_column=start, column_count=count,
                                  data=data[start * cb:(start + count) * cb])
                await ep.send(lines)
                if inj.chance(self.faults.duplicate_lines_rate):
                    inj.counts["duplicated"] += 1
                    await ep.send(lines)
                # OCR reads come in while the truck is still in the tunnel (combo devices).
                while others and len(others) * len(starts) > (len(starts) - k - 1) * len(reads):
                    await ep.send(others.pop(0))
                await self._pause(pause)
            for read in others:
                await ep.send(read)
            crc = zlib.crc32(data) & 0xFFFF_FFFF
            corrupted = inj.chance(self.faults.bad_data_crc_rate)
            sent_crc = crc ^ 0x0000_0100 if corrupted else crc
            ended_ms = self.wall_ms()
            self._prune_kept()
            self._kept[scan_no] = _KeptScan(scan_no, scan.scan_id, data, cb, columns,
                                            self._clock() + self.keep_scans_s)
            self._awaiting_ack = scan_no
            await ep.send(ScanEnd(scan_no=scan_no, scan_id=scan.scan_id, columns=columns, data_crc32=sent_crc,
                                  ended_ms=ended_ms, speed_kmh=speed_kmh))
        finally:
            self._scanning = False
        return PassageRecord(truck=truck, reads=tuple(reads), scan_no=scan_no, scan_id=scan.scan_id,
                             sha256=scan.sha256(), columns=columns, data_crc32=sent_crc, crc_corrupted=corrupted,
                             started_ms=started_ms, ended_ms=ended_ms, scan=scan)

    def stats(self) -> dict[str, Any]:
        ep = self._endpoint
        return {
            "frames_sent": ep.frames_sent if ep else 0, "bytes_sent": ep.bytes_sent if ep else 0,
            "daemon_heartbeats": self.daemon_heartbeats, "acks": len(self.acks), "resends": len(self.resends),
            "unanswered_resends": self.unanswered_resends, "kept_scans": len(self._kept),
            "faults_injected": dict(self.injector.counts),
            "rejected_from_daemon": len(ep.rejected) if ep else 0,
        }


