"""A `GfpLink` against a scripted firmware over a real pty and over socket:// (spec sections 2-5)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from firmware_bridge.errors import LinkClosedError, ProtocolError
from firmware_bridge.events import FaultEvent, HeartbeatEvent, HelloEvent, LinkStateEvent, OcrEvent, ScanEvent
from firmware_bridge.frame import MAGIC, MAX_PAYLOAD, FrameType, crc16_ccitt_false, encode_frame
from firmware_bridge.messages import (
    Control,
    DaemonHeartbeat,
    Fault,
    FirmwareHeartbeat,
    OcrRead,
    Resend,
    ScanAbort,
    ScanAck,
)
from firmware_bridge.simulator.ports import PtyPort, TcpServerPort
from tests.support.firmware import (
    TRANSPORTS,
    FakeClock,
    LinkRunner,
    ScriptedFirmware,
    async_test,
    begin_of,
    end_of,
    fast_settings,
    lines_of,
    make_scan,
    running_link,
    scripted_firmware,
    wait_until,
)

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


@contextlib.asynccontextmanager
async def linked(transport: str, *, clock: FakeClock | None = None,
                 **overrides: Any) -> AsyncIterator[tuple[ScriptedFirmware, LinkRunner]]:
    """A scripted firmware and a running link that has completed its HELLO handshake."""
    async with scripted_firmware(transport) as fw:
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        async with running_link(fast_settings(fw.url, **overrides), **kwargs) as runner:
            await runner.wait_event(HelloEvent)
            yield fw, runner


def ocr(text: str) -> OcrRead:
    return OcrRead(kind="container", camera="left", text=text, confidence=0.9)


async def marker(fw: ScriptedFirmware, runner: LinkRunner, text: str = "MARK") -> None:
    """Send an OCR read and wait for it: everything sent before has been processed."""
    start = len(runner.events)
    await fw.send(ocr(text))
    await runner.wait_event(OcrEvent, lambda e: e.text == text, start=start)


def texts(runner: LinkRunner) -> list[str]:
    return [e.text for e in runner.of(OcrEvent)]


# --------------------------------------------------------------------------- handshake and liveness


@async_test
async def test_hello_on_connect_and_heartbeats_both_ways(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        link = runner.link
        assert isinstance(fw.received[0], Control)
        assert fw.received[0].command == "hello"
        assert link.is_up
        assert link.device is not None
        assert link.device.serial_no == "T-0001"
        assert link.device.rows == 16
        up = runner.of(LinkStateEvent)
        assert [e.up for e in up] == [True]
        hb = await fw.wait_message(DaemonHeartbeat)
        assert hb.state == "ready"
        await fw.send(FirmwareHeartbeat(uptime_ms=1234, state="scanning"))
        event = await runner.wait_event(HeartbeatEvent)
        assert (event.uptime_ms, event.state) == (1234, "scanning")
        link.daemon_state = "degraded"
        await fw.wait_message(DaemonHeartbeat, lambda m: m.state == "degraded", within_s=3.0)
        assert len(fw.messages(DaemonHeartbeat)) >= 2


@async_test
async def test_control_commands(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        await runner.link.send_control("arm")
        await runner.link.send_control("time_sync")
        await runner.link.send_control("time_sync", now_ms=42)
        await runner.link.send_control("disarm")
        await fw.wait_message(Control, lambda m: m.command == "disarm")
        sent = [(m.command, m.now_ms) for m in fw.messages(Control)][1:]
        assert sent[0] == ("arm", None)
        assert sent[1][0] == "time_sync"
        assert abs(sent[1][1] - time.time() * 1000) < 5000
        assert sent[2:] == [("time_sync", 42), ("disarm", None)]
        with pytest.raises(ProtocolError):
            await runner.link.send_control("reboot")
        with pytest.raises(ProtocolError):
            await runner.link.send_control("arm", speed=3)


# --------------------------------------------------------------------------- section 5: framing


@async_test
async def test_frames_split_at_every_byte_boundary(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        stream = (encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr("SPLIT1").to_payload())
                  + encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr("SPLIT2").to_payload()))
        for i in range(len(stream)):
            await fw.send_raw(stream[i:i + 1])
            await asyncio.sleep(0.001)
        await runner.wait_event(OcrEvent, lambda e: e.text == "SPLIT2")
        assert texts(runner) == ["SPLIT1", "SPLIT2"]
        counters = runner.link.counters()
        assert counters.garbage_bytes == 0
        assert counters.lost_frames == 0


@async_test
async def test_frames_back_to_back_in_one_read(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        names = [f"B2B{i:02d}" for i in range(30)]
        await fw.send_raw(b"".join(encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr(n).to_payload())
                                   for n in names))
        await runner.wait_event(OcrEvent, lambda e: e.text == names[-1])
        assert texts(runner) == names


@async_test
async def test_garbage_and_false_magics_between_frames(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        before = runner.link.counters()
        await fw.send_raw(b"\x00\x13\x37noise")
        await fw.send(ocr("G1"))
        await fw.send_raw(MAGIC + b"\x09junk")  # false magic, wrong version
        await fw.send(ocr("G2"))
        await fw.send_raw(MAGIC + b"\x01\x20" + b"\x00" * 8)  # version 1, bad header CRC
        await fw.send(ocr("G3"))
        await runner.wait_event(OcrEvent, lambda e: e.text == "G3")
        after = runner.link.counters()
        assert texts(runner) == ["G1", "G2", "G3"]
        assert after.garbage_bytes - before.garbage_bytes == 8 + 7 + 12
        assert after.header_errors - before.header_errors == 2
        assert after.lost_frames == before.lost_frames


@async_test
async def test_corrupted_header(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        before = runner.link.counters()
        bad = bytearray(encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr("LOST").to_payload()))
        bad[7] ^= 0x10  # length byte: the header CRC no longer matches
        await fw.send_raw(bytes(bad))
        await marker(fw, runner, "AFTER")
        after = runner.link.counters()
        assert texts(runner) == ["AFTER"]
        assert after.header_errors - before.header_errors == 1
        assert after.lost_frames - before.lost_frames == 1  # its sequence number is missing


@async_test
async def test_corrupted_payload(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        before = runner.link.counters()
        bad = bytearray(encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr("LOST").to_payload()))
        bad[20] ^= 0x01
        await fw.send_raw(bytes(bad))
        await marker(fw, runner, "AFTER")
        after = runner.link.counters()
        assert texts(runner) == ["AFTER"]
        assert after.crc_errors - before.crc_errors == 1
        assert after.garbage_bytes == before.garbage_bytes


@async_test
async def test_length_over_the_maximum(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        before = runner.link.counters()
        head = MAGIC + struct.pack("<BBHI", 1, FrameType.OCR_READ, fw.endpoint.next_seq(), MAX_PAYLOAD + 1)
        await fw.send_raw(head + struct.pack("<H", crc16_ccitt_false(head[2:])))
        await marker(fw, runner, "AFTER")
        after = runner.link.counters()
        assert after.oversize_headers - before.oversize_headers == 1
        assert after.header_errors - before.header_errors == 1
        assert texts(runner) == ["AFTER"]


@async_test
async def test_unknown_frame_types(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        before = runner.link.counters()
        await fw.send_frame(0x7E, b"\x00\x01\x02")
        await fw.send_frame(FrameType.RESEND, b'{"scan_no":1,"from_column":0,"count":1}')  # daemon's own type
        await marker(fw, runner)
        after = runner.link.counters()
        assert after.unknown_types - before.unknown_types == 2
        assert after.frames_rx - before.frames_rx == 3
        assert after.lost_frames == before.lost_frames
        assert after.rejected_payloads == before.rejected_payloads


@async_test
async def test_sequence_wrap_around(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        await fw.send_frame(FrameType.OCR_READ, ocr("W0").to_payload(), seq=65533)
        base = runner.link.counters().lost_frames
        for seq, name in ((65534, "W1"), (65535, "W2"), (0, "W3"), (1, "W4")):
            await fw.send_frame(FrameType.OCR_READ, ocr(name).to_payload(), seq=seq)
        await fw.send_frame(FrameType.OCR_READ, ocr("W5").to_payload(), seq=5)  # 2, 3, 4 lost
        await runner.wait_event(OcrEvent, lambda e: e.text == "W5")
        assert texts(runner) == ["W0", "W1", "W2", "W3", "W4", "W5"]
        assert runner.link.counters().lost_frames - base == 3


# --------------------------------------------------------------------------- section 5: scans


@async_test
async def test_ocr_read_interleaved_with_scan_lines(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        scan = make_scan(48)
        await fw.send(begin_of(scan))
        for i, lines in enumerate(lines_of(scan, per_frame=8)):
            await fw.send(lines)
            await fw.send(ocr(f"I{i}"))
        await fw.send(end_of(scan))
        event = await runner.wait_event(ScanEvent)
        assert event.complete
        assert event.sha256 == scan.sha256()
        assert texts(runner) == [f"I{i}" for i in range(6)]
        ack = await fw.wait_message(ScanAck)
        assert ack == ScanAck(1, "complete")


@async_test
async def test_columns_out_of_order_and_duplicated(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        scan = make_scan(60, seed=3)
        frames = lines_of(scan, per_frame=7)
        await fw.send(begin_of(scan))
        for lines in [*reversed(frames), frames[2], frames[0]]:
            await fw.send(lines)
        await fw.send(end_of(scan))
        event = await runner.wait_event(ScanEvent)
        assert event.complete
        assert event.scan is not None
        assert event.scan.sha256() == scan.sha256() == event.sha256
        assert (event.scan.pixels == scan.pixels).all()
        assert event.resend_rounds == 0
        assert runner.link.counters().duplicate_columns == 14
        assert (await fw.wait_message(ScanAck)).status == "complete"


@async_test
async def test_missing_columns_recovered_by_resend(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        scan = make_scan(64, seed=4)
        frames = lines_of(scan, per_frame=8)
        await fw.send(begin_of(scan))
        for lines in frames[:3] + frames[4:]:
            await fw.send(lines)
        await fw.send(end_of(scan))
        end_sent = time.monotonic()
        resend = await fw.wait_message(Resend)
        assert time.monotonic() - end_sent < 0.1 + 0.05  # round 1 within 100 ms of SCAN_END (+ transit)
        assert resend == Resend(1, 24, 8)
        for lines in lines_of(scan, columns=range(resend.from_column, resend.from_column + resend.count)):
            await fw.send(lines)
        event = await runner.wait_event(ScanEvent)
        assert event.complete
        assert event.resend_rounds == 1
        assert event.sha256 == scan.sha256()
        assert (await fw.wait_message(ScanAck)).status == "complete"
        counters = runner.link.counters()
        assert counters.resend_rounds == 1
        assert counters.resent_columns == 8


@async_test
async def test_wrong_data_crc32(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        scan = make_scan(20)
        await fw.send(begin_of(scan))
        for lines in lines_of(scan):
            await fw.send(lines)
        await fw.send(end_of(scan, data_crc32=(zlib.crc32(scan.wire_bytes()) + 1) & 0xFFFFFFFF))
        event = await runner.wait_event(ScanEvent)
        assert not event.complete
        assert event.reason == "data_crc32_mismatch"
        assert event.sha256 == scan.sha256()  # hash of the bytes received
        assert event.scan is not None
        assert await fw.wait_message(ScanAck) == ScanAck(1, "rejected", "data_crc32_mismatch")


def resend_count_is(fw: ScriptedFirmware, n: int) -> bool:
    return len(fw.messages(Resend)) == n


@async_test
async def test_resend_rounds_then_give_up(transport: str) -> None:
    clock = FakeClock()
    async with linked(transport, clock=clock, link_timeout_s=1000.0) as (fw, runner):
        scan = make_scan(32)
        await fw.send(begin_of(scan))
        for lines in lines_of(scan, columns=range(20)):
            await fw.send(lines)
        await fw.send(end_of(scan))
        await wait_until(lambda: runner.link.counters().scans_begun == 1)
        await asyncio.sleep(0.1)
        for round_no in (1, 2, 3):
            clock.advance(0.06 if round_no == 1 else 1.0)
            await wait_until(functools.partial(resend_count_is, fw, round_no))
            assert fw.messages(Resend)[-1] == Resend(1, 20, 12)
            assert not runner.of(ScanEvent)
        clock.advance(0.9)
        await asyncio.sleep(0.4)
        assert not runner.of(ScanEvent)
        clock.advance(0.15)
        event = await runner.wait_event(ScanEvent)
        assert not event.complete
        assert event.reason == "missing_columns"
        assert event.sha256 is None
        assert event.scan is None
        assert event.resend_rounds == 3
        assert event.columns_received == 20
        assert await fw.wait_message(ScanAck) == ScanAck(1, "rejected", "missing_columns")
        assert len(fw.messages(Resend)) == 3


@async_test
async def test_supersede_before_and_after_scan_end(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        a, b, c = make_scan(16, scan_id="A"), make_scan(16, scan_id="B", seed=1), make_scan(16, scan_id="C", seed=2)
        await fw.send(begin_of(a, 1))
        await fw.send(lines_of(a, 1)[0])
        await fw.send(begin_of(b, 2))  # A was still before its SCAN_END: void
        first = await runner.wait_event(ScanEvent)
        assert (first.scan_id, first.complete, first.reason, first.scan) == ("A", False, "superseded", None)
        assert await fw.wait_message(ScanAck) == ScanAck(1, "rejected", "superseded")
        await fw.send(lines_of(b, 2)[0])
        await fw.send(end_of(b, 2))
        await fw.wait_message(Resend)  # B is in its RESEND rounds now
        await fw.send(begin_of(c, 3))
        second = await runner.wait_event(ScanEvent, lambda e: e.scan_id == "B")
        assert (second.complete, second.reason, second.columns_received) == (False, "superseded", 8)
        assert await fw.wait_message(ScanAck, lambda m: m.scan_no == 2) == ScanAck(2, "rejected", "superseded")
        for lines in lines_of(c, 3):
            await fw.send(lines)
        await fw.send(end_of(c, 3))
        third = await runner.wait_event(ScanEvent, lambda e: e.scan_id == "C")
        assert third.complete
        assert runner.link.counters().scans_superseded == 2


@async_test
async def test_abort_gets_no_ack(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        a, b = make_scan(16, scan_id="A"), make_scan(16, scan_id="B", seed=1)
        await fw.send(begin_of(a, 1))
        await fw.send(lines_of(a, 1)[0])
        await fw.send(ScanAbort(1, "linac interlock"))
        event = await runner.wait_event(ScanEvent)
        assert event.aborted
        assert not event.complete
        assert event.reason == "linac interlock"
        await fw.send(begin_of(b, 2))
        for lines in lines_of(b, 2):
            await fw.send(lines)
        await fw.send(end_of(b, 2))
        await fw.wait_message(ScanAck, lambda m: m.scan_no == 2)
        assert [m.scan_no for m in fw.messages(ScanAck)] == [2]


@async_test
async def test_scan_without_end_times_out_after_sixty_seconds(transport: str) -> None:
    clock = FakeClock()
    async with linked(transport, clock=clock, link_timeout_s=1000.0) as (fw, runner):
        scan = make_scan(16)
        await fw.send(begin_of(scan))
        await fw.send(lines_of(scan)[0])
        await marker(fw, runner)
        clock.advance(59.0)
        await asyncio.sleep(0.4)
        assert not runner.of(ScanEvent)
        clock.advance(1.5)
        event = await runner.wait_event(ScanEvent)
        assert event.reason == "timeout"
        assert not event.complete
        assert runner.link.counters().scans_timed_out == 1


@async_test
async def test_partial_frame_discarded_after_two_seconds_of_silence(transport: str) -> None:
    clock = FakeClock()
    async with linked(transport, clock=clock, link_timeout_s=1000.0) as (fw, runner):
        frame = encode_frame(FrameType.OCR_READ, fw.endpoint.next_seq(), ocr("HALF").to_payload())
        await fw.send_raw(frame[:25])
        await asyncio.sleep(0.2)
        clock.advance(2.5)
        await wait_until(lambda: runner.link.counters().partial_frames == 1)
        await marker(fw, runner, "WHOLE")
        assert texts(runner) == ["WHOLE"]


# --------------------------------------------------------------------------- payloads, faults


@async_test
async def test_rejected_payloads_are_counted_and_logged_once_per_kind(transport: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="firmware_bridge.link")
    async with linked(transport) as (fw, runner):
        before = runner.link.counters().rejected_payloads
        for _ in range(3):
            await fw.send_frame(FrameType.HEARTBEAT, b'{"uptime_ms": true, "state": "idle"}')
        await fw.send_frame(FrameType.OCR_READ, b'{"kind": "container"}')
        await fw.send_frame(FrameType.FAULT, b"not json")
        scan = make_scan(8)
        await fw.send(begin_of(scan))
        short = lines_of(scan)[0]
        await fw.send_frame(FrameType.SCAN_LINES, short.to_payload()[:-2])  # wrong length for the geometry
        await marker(fw, runner)
        assert runner.link.counters().rejected_payloads - before == 6
        assert not runner.of(HeartbeatEvent)
        rejections = [r for r in caplog.records if "rejected a frame" in r.getMessage()]
        assert len(rejections) == 4


@async_test
async def test_faults_stay_active_until_cleared(transport: str) -> None:
    async with linked(transport) as (fw, runner):
        await fw.send(Fault("LINAC", "critical", True, "interlock open"))
        event = await runner.wait_event(FaultEvent)
        assert event.active
        assert set(runner.link.active_faults) == {"LINAC"}
        await fw.send(Fault("LINAC", "critical", False, "closed"))
        await runner.wait_event(FaultEvent, lambda e: not e.active)
        assert runner.link.active_faults == {}


# --------------------------------------------------------------------------- link loss and return


@async_test
async def test_link_loss_and_return(transport: str) -> None:
    async with linked(transport, link_timeout_s=1.0) as (fw, runner):
        start = len(runner.events)
        await fw.port.interrupt(1.2)  # TCP: client dropped and refused; pty: silence
        down = await runner.wait_event(LinkStateEvent, lambda e: not e.up, start=start, within_s=5.0)
        assert "port closed" in down.reason or "no valid frame" in down.reason
        assert not runner.link.is_up
        await runner.wait_event(LinkStateEvent, lambda e: e.up, start=start, within_s=10.0)
        hellos = [m for m in fw.received if isinstance(m, Control) and m.command == "hello"]
        assert len(hellos) >= 2  # CONTROL hello again after the reconnect
        await marker(fw, runner, "BACK")
        counters = runner.link.counters()
        assert counters.link_downs == 1
        assert counters.connects >= 2


@async_test
async def test_five_second_rule(transport: str) -> None:
    clock = FakeClock()
    async with linked(transport, clock=clock) as (fw, runner):
        fw.auto_hello = False
        clock.advance(4.9)
        await asyncio.sleep(0.4)
        assert runner.link.is_up
        clock.advance(0.2)
        down = await runner.wait_event(LinkStateEvent, lambda e: not e.up)
        assert "no valid frame for 5 s" in down.reason
        fw.auto_hello = True
        await fw.send(FirmwareHeartbeat(1, "idle"))
        await runner.wait_event(LinkStateEvent, lambda e: e.up, start=runner.events.index(down))


@async_test
async def test_first_connect_is_retried_until_the_port_appears(transport: str, tmp_path: Any) -> None:
    if transport == "socket":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free_port = probe.getsockname()[1]
        port: Any = TcpServerPort("127.0.0.1", free_port)
        url = f"socket://127.0.0.1:{free_port}"
    else:
        path = str(tmp_path / "gate-scanner")
        port = PtyPort(path)
        url = path
    async with running_link(fast_settings(url)) as runner:
        await wait_until(lambda: runner.link.counters().connect_failures >= 2)
        assert not runner.link.is_up
        fw = ScriptedFirmware(port)
        await port.start()
        try:
            await runner.wait_event(HelloEvent, within_s=5.0)
            assert runner.link.is_up
        finally:
            await fw.close()


@async_test
async def test_unplugged_device_backs_off_without_busy_looping(transport: str, tmp_path: Any) -> None:
    url = str(tmp_path / "no-such-tty") if transport == "pty" else "socket://127.0.0.1:1"
    cpu_before = time.process_time()
    async with running_link(fast_settings(url, reconnect_initial_s=0.1, reconnect_max_s=0.4)) as runner:
        await asyncio.sleep(1.5)
        failures = runner.link.counters().connect_failures
        with pytest.raises(LinkClosedError):
            await runner.link.send_control("hello")
    assert 2 <= failures <= 12
    assert time.process_time() - cpu_before < 0.5
