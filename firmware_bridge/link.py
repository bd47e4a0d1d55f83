"""One GFP/1 link: a serial URL, its reconnect loop, the receiver, scan assembly and events.

A `GfpLink` is owned by one asyncio task, the one awaiting `run`. Inside it two child tasks share
the state: the connection loop (open with capped exponential backoff plus jitter, the first open
included; one session per open port) and the timer loop (our HEARTBEATs, the 5 s link rule, the
scan assembler's RESEND and timeout deadlines, which keep running while the port is down so a scan
still ends on time). Port I/O runs in the transport's threads; the reader thread parses frames
itself and hands finished frames to the loop, so a busy link costs the loop one callback per read.

`GfpLink` is one piece (about 460 lines): both loops and the frame handlers share the session, the
scan assembler and the counters inside one owner task, and the spec's timing rules (HELLO,
heartbeat, the 5 s link rule, RESEND) are only checkable where they all meet. Its diagnostics
records (counters, recent frames) live in `diagnostics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from firmware_bridge.diagnostics import RECENT_FRAMES, FrameNote, LinkCounters, frame_type_name
from firmware_bridge.errors import LinkClosedError, LinkError, PayloadError, ProtocolError
from firmware_bridge.events import (
    DeviceInfo,
    FaultEvent,
    HeartbeatEvent,
    HelloEvent,
    LinkEvent,
    LinkStateEvent,
    OcrEvent,
    ScanEvent,
)
from firmware_bridge.frame import FIRMWARE_TO_DAEMON, Frame, encode_frame
from firmware_bridge.messages import (
    COMMANDS,
    Control,
    DaemonHeartbeat,
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
    decode_firmware_message,
)
from firmware_bridge.receiver import FrameReceiver
from firmware_bridge.scan_assembler import AssembledScan, AssemblerAction, ScanAssembler
from firmware_bridge.settings import LinkSettings
from firmware_bridge.transport import SerialTransport
from inference.errors import ScanFormatError
from inference.scan import Scan

__all__ = ["RECENT_FRAMES", "FrameNote", "GfpLink", "LinkCounters"]

log = logging.getLogger(__name__)

# Longest sleep of the timer loop: bounds how late a deadline is noticed when the clock is a
# test clock advanced by hand (with the real clock every deadline is slept to exactly).
_MAX_TICK_S = 0.25
_MIN_TICK_S = 0.005
# The reader thread wakes at most this late to apply the partial-frame rule (rule 6).
_MAX_IDLE_WAIT_S = 0.5

_CLOSED_BY_OWNER = "link closed"

OutgoingMessage = Control | DaemonHeartbeat | ScanAck | Resend


class GfpLink:
    """The daemon's end of one GFP/1 link (spec sections 2-4).

    Usage: ``task = asyncio.create_task(link.run())``; consume ``link.events()``; cancel the task
    (or call `stop`) to close the port and join every thread the link started.
    """

    def __init__(
        self,
        settings: LinkSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._started_at = clock()
        self._receiver = FrameReceiver(FIRMWARE_TO_DAEMON, partial_timeout_s=settings.partial_frame_timeout_s)
        self._assembler = ScanAssembler(
            resend_first_delay_s=settings.resend_first_delay_s,
            resend_interval_s=settings.resend_interval_s,
            resend_rounds=settings.resend_rounds,
            scan_timeout_s=settings.scan_timeout_s,
            max_scan_bytes=settings.max_scan_bytes,
        )
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue(maxsize=settings.event_queue_size)
        self._counts: dict[str, int] = dict.fromkeys(
            ("connects", "connect_failures", "disconnects", "link_downs", "rejected_payloads", "frames_tx",
             "bytes_tx", "tx_dropped", "hellos", "heartbeats_rx", "ocr_reads", "faults", "events_dropped"), 0)
        self._logged_rejections: set[tuple[int, str]] = set()
        self._tx_seq = 0
        self._transport: SerialTransport | None = None
        self._conn_id = 0
        self._session_end: asyncio.Future[str] | None = None
        self._session_started = 0.0
        self._session_was_up = False
        self._last_frame_at: float | None = None
        self._last_posted_frame_at: float | None = None
        self._next_heartbeat = 0.0
        self._up = False
        self._device: DeviceInfo | None = None
        self._faults: dict[str, FaultEvent] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._running = False
        self._open_failing = False
        self._queue_full_logged = False
        self._recent: deque[FrameNote] = deque(maxlen=RECENT_FRAMES)
        self.daemon_state = "ready"
        """Sent in our HEARTBEAT: ``ready``, or ``degraded`` when the daemon cannot decide normally."""

    # ------------------------------------------------------------------ public surface

    @property
    def is_up(self) -> bool:
        return self._up

    @property
    def is_connected(self) -> bool:
        return self._transport is not None and self._transport.is_open

    @property
    def device(self) -> DeviceInfo | None:
        """The last HELLO received on this link (kept across reconnects)."""
        return self._device

    @property
    def active_faults(self) -> dict[str, FaultEvent]:
        return dict(self._faults)

    @property
    def event_queue(self) -> asyncio.Queue[LinkEvent]:
        return self._events

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Every event of the link, in order; the single consumer must keep up."""
        while True:
            yield await self._events.get()

    async def wait_connected(self) -> None:
        """Return once the port is open (the link may not be up yet: no frame may have arrived)."""
        await self._connected.wait()

    def recent_frames(self) -> list[FrameNote]:
        """The last frames received and sent, oldest first (a bounded window; payloads are not kept)."""
        return list(self._recent)

    def counters(self) -> LinkCounters:
        rx = self._receiver.counters
        asm = self._assembler.counters
        return LinkCounters(
            bytes_rx=rx.bytes, frames_rx=rx.frames, garbage_bytes=rx.garbage_bytes,
            header_errors=rx.header_errors, oversize_headers=rx.oversize_headers, crc_errors=rx.crc_errors,
            unknown_types=rx.unknown_types, partial_frames=rx.partial_frames, lost_frames=rx.lost_frames,
            sequence_resyncs=rx.sequence_resyncs, **self._counts, **asm.as_dict(),
        )

    def stop(self) -> None:
        """Ask `run` to return (closing the port) instead of cancelling its task."""
        self._stop.set()

    async def send_control(self, command: str, **fields: Any) -> None:
        """Send CONTROL ``hello``, ``time_sync`` (``now_ms`` defaults to our wall clock), ``arm`` or ``disarm``.

        Raises `LinkClosedError` when the port is not open and `LinkError` when the write fails.
        """
        if command not in COMMANDS:
            raise ProtocolError(f"unknown CONTROL command {command!r} (expected one of {', '.join(COMMANDS)})")
        now_ms = fields.pop("now_ms", None)
        if fields:
            raise ProtocolError(f"CONTROL {command} takes no fields {sorted(fields)}")
        if command == "time_sync" and now_ms is None:
            now_ms = int(self._wall_clock() * 1000)
        if now_ms is not None and (not isinstance(now_ms, int) or isinstance(now_ms, bool)):
            raise ProtocolError(f"now_ms must be an integer (got {now_ms!r})")
        transport = self._transport
        if transport is None or not transport.is_open:
            raise LinkClosedError(f"link {self.name} is not connected")
        try:
            await transport.write(self._encode(Control(command=command, now_ms=now_ms)))
        except LinkClosedError:
            raise
        except LinkError as err:
            self._end_session(f"write failed: {err}")
            raise

    async def run(self) -> None:
        """Keep the link open until cancelled or `stop`; never returns on port errors."""
        if self._running:
            raise RuntimeError(f"link {self.name} is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        conn = asyncio.create_task(self._connection_loop(), name=f"gfp-{self.name}-connection")
        timers = asyncio.create_task(self._timer_loop(), name=f"gfp-{self.name}-timers")
        stopper = asyncio.create_task(self._stop.wait(), name=f"gfp-{self.name}-stop")
        try:
            done, _pending = await asyncio.wait({conn, timers, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is stopper or task.cancelled() else task.exception()
                if error is not None:  # a bug in a child task: fail loudly
                    raise error
        finally:
            for task in (conn, timers, stopper):
                task.cancel()
            await asyncio.gather(conn, timers, stopper, return_exceptions=True)
            self._set_down(_CLOSED_BY_OWNER)
            self._running = False

    # ------------------------------------------------------------------ connection loop

    async def _connection_loop(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            # Everything a new connection's callbacks look at is set up before the port opens:
            # the reader thread may deliver frames (or report the port closed) at once.
            self._conn_id += 1
            self._receiver.reset()
            self._last_posted_frame_at = None
            self._last_frame_at = None
            self._session_was_up = False
            self._session_end = loop.create_future()
            transport = self._make_transport(self._conn_id)
            self._transport = transport
            try:
                await transport.open()
            except LinkError as err:
                self._transport = None
                self._session_end = None
                self._counts["connect_failures"] += 1
                if not self._open_failing:
                    log.warning("link %s: %s; retrying with backoff", self.name, err)
                    self._open_failing = True
                else:
                    log.debug("link %s: %s", self.name, err)
                await self._backoff(attempt)
                attempt += 1
                continue
            if self._open_failing:
                log.info("link %s: %s open again", self.name, self.settings.url)
                self._open_failing = False
            self._counts["connects"] += 1
            reason = _CLOSED_BY_OWNER
            try:
                reason = await self._session()
            finally:
                self._connected.clear()
                self._transport = None
                self._session_end = None
                self._counts["disconnects"] += 1
                await transport.close()
                self._set_down(reason)
            if self._session_was_up:
                attempt = 0
            await self._backoff(attempt)
            attempt += 1

    def _make_transport(self, conn_id: int) -> SerialTransport:
        s = self.settings
        return SerialTransport(
            s.url, name=self.name, baudrate=s.baudrate, parity=s.parity, bytesize=s.bytesize,
            stopbits=s.stopbits, write_timeout_s=s.write_timeout_s,
            on_data=lambda data: self._on_data(conn_id, data),
            on_closed=lambda error: self._post(self._on_transport_closed, conn_id, error),
            on_idle=self._on_idle, idle_timeout=self._idle_timeout,
        )

    async def _session(self) -> str:
        assert self._session_end is not None
        self._session_started = self._clock()
        log.debug("link %s: %s open, sending CONTROL hello", self.name, self.settings.url)
        # Rule 9: ask for HELLO on every (re)connect; the firmware may have powered up long ago.
        self._send_nowait(Control(command="hello"))
        self._next_heartbeat = self._session_started
        self._connected.set()
        self._wake.set()
        return await self._session_end

    def _end_session(self, reason: str) -> None:
        if self._session_end is not None and not self._session_end.done():
            self._session_end.set_result(reason)

    async def _backoff(self, attempt: int) -> None:
        s = self.settings
        delay = min(s.reconnect_max_s, s.reconnect_initial_s * (2 ** min(attempt, 30)))
        delay *= self._rng.uniform(0.5, 1.0)
        await asyncio.sleep(delay)

    # ------------------------------------------------------------------ reader thread side

    def _on_data(self, conn_id: int, data: bytes) -> None:
        """Reader thread: parse, then hand frames (and the sign of life) to the loop."""
        receiver = self._receiver
        frames = receiver.feed(data, self._clock())
        seen = receiver.last_frame_at
        if frames or seen != self._last_posted_frame_at:
            self._last_posted_frame_at = seen
            self._post(self._on_frames, conn_id, frames, seen)

    def _idle_timeout(self) -> float | None:
        deadline = self._receiver.partial_deadline()
        if deadline is None:
            return None
        return min(max(deadline - self._clock(), 0.0) + 0.01, _MAX_IDLE_WAIT_S)

    def _on_idle(self) -> None:
        self._receiver.expire(self._clock())

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under a finishing thread
            loop.call_soon_threadsafe(callback, *args)

    # ------------------------------------------------------------------ loop side: frames

    def _on_transport_closed(self, conn_id: int, error: BaseException | None) -> None:
        if conn_id == self._conn_id:
            self._end_session(f"port closed: {error}" if error is not None else "port closed")
            self._wake.set()

    def _on_frames(self, conn_id: int, frames: list[Frame], last_frame_at: float | None) -> None:
        if conn_id != self._conn_id:
            return  # a late callback of a previous connection
        if last_frame_at is not None:
            self._last_frame_at = last_frame_at
            if not self._up:
                self._up = True
                self._session_was_up = True
                log.info("link %s: up", self.name)
                self._emit(LinkStateEvent(self.name, True, "frames received", self._clock()))
        for frame in frames:
            self._handle_frame(frame)
        self._wake.set()

    def _handle_frame(self, frame: Frame) -> None:
        self._recent.append(FrameNote(self._wall_clock(), "rx", frame_type_name(frame.type), frame.seq,
                                      len(frame.payload)))
        try:
            msg = decode_firmware_message(frame)
            now = self._clock()
            if isinstance(msg, ScanLines):
                self._apply(self._assembler.on_lines(msg, now))
            elif isinstance(msg, FirmwareHeartbeat):
                self._counts["heartbeats_rx"] += 1
                self._emit(HeartbeatEvent(self.name, msg.uptime_ms, msg.state, now))
            elif isinstance(msg, ScanBegin):
                self._apply(self._assembler.on_begin(msg, now))
            elif isinstance(msg, ScanEnd):
                self._apply(self._assembler.on_end(msg, now))
            elif isinstance(msg, ScanAbort):
                self._apply(self._assembler.on_abort(msg, now))
            elif isinstance(msg, OcrRead):
                self._counts["ocr_reads"] += 1
                self._emit(OcrEvent(self.name, msg.kind, msg.camera, msg.text, msg.confidence,
                                    msg.char_confidence, msg.iso_type, msg.read_ms, now))
            elif isinstance(msg, Fault):
                self._on_fault(msg, now)
            elif isinstance(msg, Hello):
                self._counts["hellos"] += 1
                self._device = DeviceInfo(msg.device, msg.fw_version, msg.serial_no, msg.protocol,
                                          msg.rows, msg.channels, msg.bits)
                log.info("link %s: HELLO from %s %s fw %s", self.name, msg.device, msg.serial_no, msg.fw_version)
                self._emit(HelloEvent(self.name, self._device, now))
        except PayloadError as err:
            self._counts["rejected_payloads"] += 1
            key = (err.frame_type, err.kind)
            if key not in self._logged_rejections:
                self._logged_rejections.add(key)
                log.warning("link %s: rejected a frame: %s (further ones of this kind are only counted)",
                            self.name, err)

    def _on_fault(self, msg: Fault, now: float) -> None:
        self._counts["faults"] += 1
        event = FaultEvent(self.name, msg.code, msg.severity, msg.active, msg.message, now)
        if msg.active:
            if msg.code not in self._faults:
                log.warning("link %s: firmware fault %s (%s): %s", self.name, msg.code, msg.severity, msg.message)
            self._faults[msg.code] = event
        elif self._faults.pop(msg.code, None) is not None:
            log.info("link %s: firmware fault %s cleared", self.name, msg.code)
        self._emit(event)

    def _apply(self, actions: list[AssemblerAction]) -> None:
        for action in actions:
            if isinstance(action, AssembledScan):
                self._emit(self._scan_event(action))
            else:
                self._send_nowait(action)

    def _scan_event(self, result: AssembledScan) -> ScanEvent:
        begin, end = result.begin, result.end
        complete, reason, scan = result.complete, result.reason, None
        if result.data is not None:
            meta: dict[str, Any] = {"link": self.name, "scan_no": begin.scan_no, "started_ms": begin.started_ms,
                                    "ended_ms": end.ended_ms if end else None, "complete": complete}
            if end is not None and end.speed_kmh is not None:
                meta["speed_kmh"] = end.speed_kmh
            if self._device is not None:
                meta["device_serial"] = self._device.serial_no
            try:
                scan = Scan.from_wire(result.data, columns=result.columns, rows=begin.rows,
                                      channels=begin.channels, bits=begin.bits, scan_id=begin.scan_id,
                                      pixel_mm=begin.pixel_mm, meta=meta)
            except ScanFormatError:
                log.exception("link %s: scan %s could not be built", self.name, begin.scan_id)
                complete, reason = False, "scan_format"
        if complete:
            log.info("link %s: scan %s complete (%d columns, %d RESEND rounds)", self.name, begin.scan_id,
                     result.columns, result.resend_rounds)
        else:
            log.warning("link %s: scan %s incomplete: %s", self.name, begin.scan_id, reason)
        return ScanEvent(
            link=self.name, scan_id=begin.scan_id, scan_no=begin.scan_no, columns=result.columns,
            rows=begin.rows, channels=begin.channels, bits=begin.bits, pixel_mm=begin.pixel_mm,
            complete=complete, sha256=result.sha256, reason=reason, resend_rounds=result.resend_rounds,
            scan=scan, started_ms=begin.started_ms, ended_ms=end.ended_ms if end else None,
            speed_kmh=end.speed_kmh if end else None, received=result.end_received_at,
            monotonic=result.finished_at, columns_received=result.columns_received, aborted=result.aborted,
            expected_columns=begin.expected_columns,
        )

    def _emit(self, event: LinkEvent) -> None:
        if self._events.full():
            self._counts["events_dropped"] += 1
            if not self._queue_full_logged:
                self._queue_full_logged = True
                log.error("link %s: event queue full (%d); events are being dropped", self.name,
                          self._events.maxsize)
            return
        self._queue_full_logged = False
        self._events.put_nowait(event)

    # ------------------------------------------------------------------ loop side: sending and timers

    def _encode(self, msg: OutgoingMessage) -> bytes:
        payload = msg.to_payload()
        data = encode_frame(msg.frame_type, self._tx_seq, payload)
        self._recent.append(FrameNote(self._wall_clock(), "tx", frame_type_name(msg.frame_type), self._tx_seq,
                                      len(payload)))
        self._tx_seq = (self._tx_seq + 1) & 0xFFFF
        self._counts["frames_tx"] += 1
        self._counts["bytes_tx"] += len(data)
        return data

    def _send_nowait(self, msg: OutgoingMessage) -> None:
        transport = self._transport
        if transport is None or not transport.is_open:
            self._counts["tx_dropped"] += 1
            log.debug("link %s: not connected, dropped %s", self.name, type(msg).__name__)
            return
        try:
            future = transport.submit(self._encode(msg))
        except LinkClosedError:
            self._counts["tx_dropped"] += 1
            return
        conn_id = self._conn_id
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() is None
            else self._post(self._on_write_failed, conn_id, f.exception()))

    def _on_write_failed(self, conn_id: int, error: BaseException) -> None:
        if isinstance(error, LinkClosedError):
            return  # a write queued while the port was closing; the session is ending anyway
        if conn_id == self._conn_id:
            log.warning("link %s: %s", self.name, error)
            self._end_session(f"write failed: {error}")

    def _set_down(self, reason: str) -> None:
        if self._up:
            self._up = False
            self._counts["link_downs"] += 1
            log.log(logging.INFO if reason == _CLOSED_BY_OWNER else logging.WARNING, "link %s: down (%s)",
                    self.name, reason)
            self._emit(LinkStateEvent(self.name, False, reason, self._clock()))

    async def _timer_loop(self) -> None:
        while True:
            now = self._clock()
            deadline = self._tick(now)
            wait = _MAX_TICK_S if deadline is None else min(max(deadline - now, _MIN_TICK_S), _MAX_TICK_S)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _tick(self, now: float) -> float | None:
        """Run what is due; return the next deadline."""
        s = self.settings
        deadlines: list[float] = []
        self._apply(self._assembler.poll(now))
        asm_deadline = self._assembler.next_deadline()
        if asm_deadline is not None:
            deadlines.append(asm_deadline)
        if self._connected.is_set() and self._session_end is not None and not self._session_end.done():
            if now >= self._next_heartbeat:
                self._send_nowait(DaemonHeartbeat(uptime_ms=int((now - self._started_at) * 1000),
                                                  state=self.daemon_state))
                self._next_heartbeat = now + s.heartbeat_interval_s
            deadlines.append(self._next_heartbeat)
            reference = self._last_frame_at if self._last_frame_at is not None else self._session_started
            silent_for = now - max(reference, self._session_started)
            if silent_for > s.link_timeout_s:
                # The 5 s rule. Reopening the port also discards a false frame header that may
                # be swallowing the stream (its length is trusted until its frame CRC fails).
                self._end_session(f"no valid frame for {s.link_timeout_s:g} s")
            else:
                deadlines.append(max(reference, self._session_started) + s.link_timeout_s + 0.001)
        return min(deadlines) if deadlines else None
