"""The virtual gate firmware against the real link, and its OCR and truck models."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from stdnum import iso6346

from firmware_bridge.events import FaultEvent, HeartbeatEvent, HelloEvent, LinkStateEvent, OcrEvent, ScanEvent
from firmware_bridge.frame import DAEMON_TO_FIRMWARE, FIRMWARE_TO_DAEMON, FrameType, encode_frame
from firmware_bridge.messages import Control, Resend, ScanLines, decode_firmware_message
from firmware_bridge.receiver import FrameReceiver
from firmware_bridge.simulator.faults import FaultConfig
from firmware_bridge.simulator.firmware import FirmwareSimulator
from firmware_bridge.simulator.trucks import (
    ContainerSpec,
    TruckSpec,
    container_number,
    ocr_reads,
    random_container_number,
    random_truck,
)
from inference.scan import Scan
from tests.support.firmware import (
    TRANSPORTS,
    FakeClock,
    async_test,
    fast_settings,
    make_scan,
    running_link,
    wait_until,
)


def small_scans(truck: TruckSpec, scan_id: str) -> Scan:
    return make_scan(120, rows=32, channels=2, bits=16, seed=truck.seed, scan_id=scan_id)


TWO_BOXES = TruckSpec(
    plate="HB-123-XY", seed=11,
    containers=(ContainerSpec(container_number("MSCU", 123456), "22G1", 20, "cartons"),
                ContainerSpec(container_number("TGHU", 765431), "22G1", 20, "empty", declared="empty")))


async def serve(sim: FirmwareSimulator, transport: str) -> str:
    return await (sim.serve_pty() if transport == "pty" else sim.serve_tcp())


@pytest.mark.parametrize("transport", TRANSPORTS)
@async_test
async def test_truck_with_two_containers_end_to_end(transport: str) -> None:
    async with FirmwareSimulator(device="combo") as sim:
        url = await serve(sim, transport)
        async with running_link(fast_settings(url)) as runner:
            await runner.wait_event(HelloEvent)
            record = await sim.pass_truck(TWO_BOXES)
            event = await runner.wait_event(ScanEvent, within_s=10.0)
            assert event.complete
            assert event.sha256 == record.sha256
            assert event.scan is not None
            assert event.scan.pixels.shape == (2, 256, 2400)  # two 20 ft container scans side by side
            assert event.scan_id == record.scan_id
            assert event.speed_kmh == TWO_BOXES.speed_kmh
            truth = record.scan.meta["truck"]["containers"] if record.scan else []
            assert [c["number"] for c in truth] == [c.number for c in TWO_BOXES.containers]
            assert truth[1]["column_offset"] == 1200
            await wait_until(lambda: len(runner.of(OcrEvent)) == len(record.reads))
            assert [e.text for e in runner.of(OcrEvent)] == [r.text for r in record.reads]
            ack = await sim.wait_for_ack(record.scan_no or 0)
            assert ack.status == "complete"


@async_test
async def test_lossy_link_every_scan_recovered_by_resend() -> None:
    faults = FaultConfig(drop_lines_rate=0.3, duplicate_lines_rate=0.2, shuffle_lines=True, garbage_rate=0.2)
    async with FirmwareSimulator(device="scanner", rows=32, faults=faults, seed=3, scan_source=small_scans,
                                 lines_payload=1000) as sim:
        url = await sim.serve_tcp()
        async with running_link(fast_settings(url)) as runner:
            await runner.wait_event(HelloEvent)
            records = [await sim.pass_truck(random_truck(seed)) for seed in range(3)]
            await wait_until(lambda: len(runner.of(ScanEvent)) == 3, within_s=10.0)
            events = runner.of(ScanEvent)
            assert [e.sha256 for e in events] == [r.sha256 for r in records]
            assert all(e.complete for e in events)
            assert sum(e.resend_rounds for e in events) >= 1
            assert sim.injector.counts["dropped"] > 0
            counters = runner.link.counters()
            assert counters.garbage_bytes > 0
            assert counters.scans_complete == 3
            assert counters.lost_frames == sim.injector.counts["dropped"]


@async_test
async def test_noisy_link_never_yields_a_wrong_complete_scan() -> None:
    faults = FaultConfig(bit_flip_rate=0.08, garbage_rate=0.1, truncate_rate=0.02, drop_frame_rate=0.02,
                         bad_data_crc_rate=0.2, abort_rate=0.1)
    async with FirmwareSimulator(device="combo", rows=32, faults=faults, seed=5, scan_source=small_scans,
                                 lines_payload=800, heartbeat_interval_s=0.2, ack_wait_s=0.3) as sim:
        url = await sim.serve_tcp()
        async with running_link(fast_settings(url, link_timeout_s=1.0)) as runner:
            await runner.wait_event(HelloEvent, within_s=10.0)
            records = {}
            for seed in range(8):
                record = await sim.pass_truck(random_truck(seed))
                records[record.scan_id] = record
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.5)  # RESEND rounds of the last scan
            counters = runner.link.counters()
            assert counters.crc_errors + counters.header_errors > 0
            assert any(e.complete for e in runner.of(ScanEvent))
            for event in runner.of(ScanEvent):
                sent = records[event.scan_id]
                if event.complete:
                    assert event.sha256 == sent.sha256
                    assert not sent.crc_corrupted
                    assert not sent.aborted
                elif sent.crc_corrupted and event.reason == "data_crc32_mismatch":
                    assert event.sha256 == sent.sha256


@async_test
async def test_faults_heartbeat_state_and_link_drop() -> None:
    async with FirmwareSimulator(device="ocr", heartbeat_interval_s=0.2) as sim:
        url = await sim.serve_tcp()
        async with running_link(fast_settings(url)) as runner:
            await runner.wait_event(HelloEvent)
            assert runner.link.device is not None
            assert runner.link.device.device == "ocr"
            await sim.set_fault("LINAC_INTERLOCK", severity="critical", message="door open")
            fault = await runner.wait_event(FaultEvent)
            assert (fault.code, fault.severity, fault.active) == ("LINAC_INTERLOCK", "critical", True)
            await runner.wait_event(HeartbeatEvent, lambda e: e.state == "fault")
            await sim.set_fault("LINAC_INTERLOCK", severity="critical", active=False)
            await runner.wait_event(FaultEvent, lambda e: not e.active)
            start = len(runner.events)
            await sim.drop_link(0.5)
            await runner.wait_event(LinkStateEvent, lambda e: not e.up, start=start)
            await runner.wait_event(LinkStateEvent, lambda e: e.up, start=start, within_s=5.0)
            record = await sim.pass_truck(TWO_BOXES)  # an OCR unit sends reads only
            assert record.scan_no is None
            await wait_until(lambda: len(runner.of(OcrEvent)) == len(record.reads))


class RawDaemon:
    """A bare daemon side on TCP for poking the simulator with frames the link would never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.rx = FrameReceiver(FIRMWARE_TO_DAEMON)
        self.frames: list[Any] = []
        self.seq = 0

    async def send(self, msg: Any) -> None:
        assert msg.frame_type in DAEMON_TO_FIRMWARE
        self.writer.write(encode_frame(msg.frame_type, self.seq, msg.to_payload()))
        self.seq += 1
        await self.writer.drain()

    async def read_for(self, seconds: float) -> list[Any]:
        got: list[Any] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    got += [decode_firmware_message(f) for f in self.rx.feed(data, 0.0)]
        except TimeoutError:
            pass
        return got


@async_test
async def test_resend_served_only_while_the_scan_is_kept_and_controls_honoured() -> None:
    clock = FakeClock()
    async with FirmwareSimulator(device="scanner", rows=32, scan_source=small_scans, clock=clock,
                                 ack_wait_s=0.0) as sim:
        url = await sim.serve_tcp()
        host, port = url.removeprefix("socket://").split(":")
        daemon = RawDaemon(*await asyncio.open_connection(host, int(port)))
        try:
            await daemon.send(Control("time_sync", now_ms=int(time.time() * 1000) + 60_000))
            record = await sim.pass_truck(random_truck(1))
            await daemon.read_for(0.3)
            assert 59_000 < sim.time_offset_ms < 61_000
            clock.advance(29.0)
            await daemon.send(Resend(record.scan_no or 0, 10, 5))
            answers = [m for m in await daemon.read_for(0.5) if isinstance(m, ScanLines)]
            assert [(m.first_column, m.column_count) for m in answers] == [(10, 5)]
            clock.advance(2.0)
            await daemon.send(Resend(record.scan_no or 0, 10, 5))
            assert not [m for m in await daemon.read_for(0.5) if isinstance(m, ScanLines)]
            assert sim.unanswered_resends == 1
            await daemon.send(Control("disarm"))
            await daemon.read_for(0.2)
            assert sim.pass_truck is not None
            unscanned = await sim.pass_truck(random_truck(2))
            assert unscanned.scan_no is None
            await daemon.send(Control("arm"))
            await daemon.read_for(0.2)
            assert (await sim.pass_truck(random_truck(3))).scan_no == 2
        finally:
            daemon.writer.close()
            await daemon.writer.wait_closed()


@async_test
async def test_software_baud_throttle() -> None:
    def tiny(truck: TruckSpec, scan_id: str) -> Scan:
        return make_scan(200, rows=32, channels=1, bits=8, scan_id=scan_id)

    async with FirmwareSimulator(device="scanner", rows=32, channels=1, bits=8, baud=115200, scan_source=tiny,
                                 heartbeat_interval_s=2.0) as sim:
        url = await sim.serve_tcp()
        async with running_link(fast_settings(url)) as runner:
            await runner.wait_event(HelloEvent)
            start = time.monotonic()
            await sim.pass_truck(random_truck(1))
            await runner.wait_event(ScanEvent, within_s=5.0)
            elapsed = time.monotonic() - start
    # 6,400 pixel bytes plus framing at 11,520 bytes/s: at least about 0.56 s on the line.
    assert elapsed >= 0.5
    assert elapsed < 2.0


def test_container_numbers_are_valid_iso6346() -> None:
    rng = random.Random(7)
    numbers = [random_container_number(rng) for _ in range(2000)]
    assert all(iso6346.is_valid(n) for n in numbers)
    assert len(set(numbers)) > 1990
    assert container_number("CSQU", 305438) == "CSQU3054383"


def test_ocr_model_misreads_like_a_real_engine() -> None:
    clean = damaged = confusions = spaced = 0
    for seed in range(300):
        truck = random_truck(seed, ocr_quality=0.6)
        truths = {c.number for c in truck.containers}
        for read in ocr_reads(truck, now_ms=0):
            assert 0.0 <= read.confidence <= 1.0
            if read.char_confidence is not None:
                assert len(read.char_confidence) == len(read.text)
            if read.kind != "container":
                continue
            if read.text in truths:
                clean += 1
            elif read.text.replace(" ", "") in truths:
                spaced += 1
            else:
                damaged += 1
                if any(len(read.text) == 11 and sum(a != b for a, b in zip(read.text, t, strict=True)) <= 2
                       for t in truths):
                    confusions += 1
    assert clean > damaged > 0
    assert confusions > 0
    assert spaced > 0


def test_truck_spec_validation() -> None:
    box = ContainerSpec(container_number("MSCU", 1), "42G1", 40)
    valid = container_number("MSCU", 1)
    with pytest.raises(ValueError, match="ISO 6346"):
        ContainerSpec(valid[:10] + str((int(valid[10]) + 1) % 10), "42G1", 40)
    with pytest.raises(ValueError, match="20 ft"):
        TruckSpec(plate="X", containers=(box, box))
    with pytest.raises(ValueError, match="1 or 2"):
        TruckSpec(plate="X", containers=())
    with pytest.raises(ValueError, match="cargo"):
        ContainerSpec(container_number("MSCU", 1), cargo="gold")


@async_test
async def test_simulator_rejects_a_scan_that_does_not_match_its_hello() -> None:
    async with FirmwareSimulator(device="scanner", rows=64, scan_source=small_scans) as sim:
        await sim.serve_tcp()
        with pytest.raises(ValueError, match="HELLO"):
            await sim.pass_truck(random_truck(0))


@async_test
async def test_simulator_counts_frames_it_cannot_decode() -> None:
    async with FirmwareSimulator(device="ocr") as sim:
        url = await sim.serve_tcp()
        host, port = url.removeprefix("socket://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(encode_frame(FrameType.CONTROL, 0, b'{"command":"reboot"}'))
        await writer.drain()
        await wait_until(lambda: len(sim.endpoint.rejected) == 1)
        writer.close()
        await writer.wait_closed()
