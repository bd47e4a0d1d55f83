"""Scan transfer rules of spec section 4, on the pure assembler (time is passed in)."""

from __future__ import annotations

import hashlib
import zlib

import pytest

from firmware_bridge.errors import PayloadError
from firmware_bridge.messages import Resend, ScanAbort, ScanAck
from firmware_bridge.scan_assembler import AssembledScan, AssemblerAction, ScanAssembler
from tests.support.firmware import begin_of, end_of, lines_of, make_scan


def results(actions: list[AssemblerAction]) -> list[AssembledScan]:
    return [a for a in actions if isinstance(a, AssembledScan)]


def acks(actions: list[AssemblerAction]) -> list[ScanAck]:
    return [a for a in actions if isinstance(a, ScanAck)]


def resends(actions: list[AssemblerAction]) -> list[Resend]:
    return [a for a in actions if isinstance(a, Resend)]


def feed_all(asm: ScanAssembler, msgs: list, now: float = 0.0) -> list[AssemblerAction]:
    out: list[AssemblerAction] = []
    for m in msgs:
        out += asm.on_lines(m, now)
    return out


def test_complete_scan_in_order() -> None:
    scan = make_scan(40)
    asm = ScanAssembler()
    assert asm.on_begin(begin_of(scan), 0.0) == []
    assert feed_all(asm, lines_of(scan)) == []
    actions = asm.on_end(end_of(scan), 1.0)
    assert acks(actions) == [ScanAck(scan_no=1, status="complete")]
    (res,) = results(actions)
    assert res.complete
    assert res.reason is None
    assert res.data == scan.wire_bytes()
    assert res.sha256 == scan.sha256() == hashlib.sha256(scan.wire_bytes()).hexdigest()
    assert res.end_received_at == 1.0
    assert asm.open_scan is None
    assert asm.counters.scans_complete == 1


def test_columns_out_of_order_and_duplicated_first_copy_wins() -> None:
    scan = make_scan(40)
    other = make_scan(40, seed=9)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    frames = lines_of(scan, per_frame=5)
    feed_all(asm, list(reversed(frames)))
    # Repeats with different bytes must not replace what arrived first.
    feed_all(asm, lines_of(other, per_frame=7)[:3])
    (res,) = results(asm.on_end(end_of(scan), 0.0))
    assert res.complete
    assert res.sha256 == scan.sha256()
    assert asm.counters.duplicate_columns == 21


def test_missing_columns_resend_rounds_then_recovered() -> None:
    scan = make_scan(64)
    asm = ScanAssembler(resend_first_delay_s=0.05, resend_interval_s=1.0, resend_rounds=3)
    asm.on_begin(begin_of(scan), 0.0)
    frames = lines_of(scan, per_frame=8)
    feed_all(asm, frames[:2] + frames[3:6] + frames[7:])  # columns 16..23 and 48..55 missing
    assert asm.on_end(end_of(scan), 10.0) == []
    assert asm.next_deadline() == pytest.approx(10.05)
    assert asm.poll(10.04) == []
    round1 = asm.poll(10.05)
    assert resends(round1) == [Resend(1, 16, 8), Resend(1, 48, 8)]
    assert asm.next_deadline() == pytest.approx(11.05)
    feed_all(asm, [frames[2]], 10.2)
    actions = feed_all(asm, [frames[6]], 10.3)
    (res,) = results(actions)
    assert res.complete
    assert res.resend_rounds == 1
    assert acks(actions)[0].status == "complete"
    assert asm.counters.resent_columns == 16


def test_resend_ranges_are_split_and_merged_within_the_frame_cap() -> None:
    scan = make_scan(400, rows=2, channels=1)
    asm = ScanAssembler(max_resend_ranges=4, resend_merge_gap=0)
    asm.on_begin(begin_of(scan), 0.0)
    # Every 20th column missing: 20 ranges of one column, more than the cap of 4.
    feed_all(asm, [m for m in lines_of(scan, per_frame=1) if m.first_column % 20 != 0])
    asm.on_end(end_of(scan), 0.0)
    ranges = resends(asm.poll(1.0))
    assert 1 <= len(ranges) <= 4
    covered = {c for r in ranges for c in range(r.from_column, r.from_column + r.count)}
    assert set(range(0, 400, 20)) <= covered
    assert all(r.count >= 1 for r in ranges)


def test_gives_up_one_interval_after_the_third_round() -> None:
    scan = make_scan(16)
    asm = ScanAssembler(resend_first_delay_s=0.05, resend_interval_s=1.0, resend_rounds=3)
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan, columns=range(12)))
    asm.on_end(end_of(scan), 0.0)
    times = []
    t = 0.0
    while True:
        deadline = asm.next_deadline()
        assert deadline is not None
        t = deadline
        actions = asm.poll(t)
        if results(actions):
            break
        assert resends(actions) == [Resend(1, 12, 4)]
        times.append(t)
    assert times == pytest.approx([0.05, 1.05, 2.05])
    assert t == pytest.approx(3.05)
    (res,) = results(actions)
    assert not res.complete
    assert res.reason == "missing_columns"
    assert res.sha256 is None
    assert res.data is None
    assert res.resend_rounds == 3
    assert acks(actions) == [ScanAck(1, "rejected", "missing_columns")]
    assert asm.counters.resend_rounds == 3


def test_wrong_data_crc32_is_rejected_but_keeps_pixels_and_hash_of_what_arrived() -> None:
    scan = make_scan(20)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan))
    bad = (zlib.crc32(scan.wire_bytes()) ^ 1) & 0xFFFFFFFF
    actions = asm.on_end(end_of(scan, data_crc32=bad), 0.0)
    (res,) = results(actions)
    assert not res.complete
    assert res.reason == "data_crc32_mismatch"
    assert res.data == scan.wire_bytes()
    assert res.sha256 == scan.sha256()
    assert acks(actions) == [ScanAck(1, "rejected", "data_crc32_mismatch")]


def test_columns_at_or_beyond_the_total_are_discarded() -> None:
    scan = make_scan(30)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan))
    short = make_scan(24)
    # SCAN_END says 24 columns (the crc of the first 24 columns' bytes).
    data24 = scan.wire_bytes()[:24 * short.rows * short.channels * 2]
    (res,) = results(asm.on_end(end_of(scan, columns=24, data_crc32=zlib.crc32(data24)), 0.0))
    assert res.complete
    assert res.columns == 24
    assert res.data == data24
    assert asm.counters.discarded_columns == 6


def test_superseded_before_end_is_void_and_rejected() -> None:
    first, second = make_scan(20, scan_id="A"), make_scan(20, scan_id="B", seed=1)
    asm = ScanAssembler()
    asm.on_begin(begin_of(first, 1), 0.0)
    feed_all(asm, lines_of(first, 1))  # every column, but no SCAN_END: still void
    actions = asm.on_begin(begin_of(second, 2), 1.0)
    (res,) = results(actions)
    assert res.begin.scan_id == "A"
    assert not res.complete
    assert res.reason == "superseded"
    assert res.data is None
    assert res.sha256 is None
    assert res.end is None
    assert acks(actions) == [ScanAck(1, "rejected", "superseded")]
    assert asm.open_scan is not None
    assert asm.open_scan.scan_id == "B"
    assert asm.counters.scans_superseded == 1


def test_superseded_during_resend_rounds_is_finalized_incomplete() -> None:
    first, second = make_scan(20, scan_id="A"), make_scan(20, scan_id="B", seed=1)
    asm = ScanAssembler()
    asm.on_begin(begin_of(first, 1), 0.0)
    feed_all(asm, lines_of(first, 1, columns=range(10)))
    asm.on_end(end_of(first, 1), 0.0)
    assert resends(asm.poll(0.1))
    actions = asm.on_begin(begin_of(second, 2), 0.5)
    (res,) = results(actions)
    assert res.reason == "superseded"
    assert res.end is not None
    assert res.columns_received == 10
    assert res.resend_rounds == 1
    assert acks(actions) == [ScanAck(1, "rejected", "superseded")]


def test_abort_reports_the_firmware_reason_and_sends_no_ack() -> None:
    scan = make_scan(20)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan, columns=range(8)))
    actions = asm.on_abort(ScanAbort(1, "interlock"), 1.0)
    assert acks(actions) == []
    (res,) = results(actions)
    assert res.aborted
    assert not res.complete
    assert res.reason == "interlock"
    assert asm.open_scan is None
    assert asm.counters.scans_aborted == 1
    assert asm.on_abort(ScanAbort(1, "again"), 2.0) == []
    assert asm.counters.unknown_scan_frames == 1


def test_no_scan_end_sixty_seconds_after_the_last_frame_drops_the_scan() -> None:
    scan = make_scan(20)
    asm = ScanAssembler(scan_timeout_s=60.0)
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan, columns=range(8)), 30.0)
    assert asm.next_deadline() == pytest.approx(90.0)
    assert asm.poll(89.9) == []
    actions = asm.poll(90.1)
    (res,) = results(actions)
    assert res.reason == "timeout"
    assert not res.complete
    assert asm.counters.scans_timed_out == 1
    assert acks(actions) == [ScanAck(1, "rejected", "timeout")]


def test_scan_id_mismatch_rejects_the_scan() -> None:
    scan = make_scan(10)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan))
    actions = asm.on_end(end_of(scan, scan_id="SOMETHING-ELSE"), 0.0)
    (res,) = results(actions)
    assert not res.complete
    assert res.reason == "scan_id_mismatch"
    assert acks(actions) == [ScanAck(1, "rejected", "scan_id_mismatch")]


def test_lines_for_an_unknown_scan_are_counted_and_dropped() -> None:
    scan = make_scan(10)
    asm = ScanAssembler()
    assert feed_all(asm, lines_of(scan, 5)) == []
    asm.on_begin(begin_of(scan, 6), 0.0)
    feed_all(asm, lines_of(scan, 5))
    assert asm.counters.unknown_scan_frames == 4
    assert asm.on_end(end_of(scan, 5), 0.0) == []
    assert asm.counters.unknown_scan_frames == 5


def test_lines_payload_length_must_match_the_geometry() -> None:
    scan = make_scan(10)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    bad = lines_of(scan)[0]
    with pytest.raises(PayloadError) as err:
        asm.on_lines(type(bad)(bad.scan_no, bad.first_column, bad.column_count, bad.data[:-1]), 0.0)
    assert err.value.kind == "length"


def test_repeated_scan_end_of_a_closed_scan_repeats_the_ack() -> None:
    scan = make_scan(10)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan))
    asm.on_end(end_of(scan), 0.0)
    assert asm.on_end(end_of(scan), 1.0) == [ScanAck(1, "complete")]
    assert asm.counters.duplicate_ends == 1


def test_scan_larger_than_the_memory_cap_is_rejected() -> None:
    scan = make_scan(50)
    cb = scan.rows * scan.channels * 2
    asm = ScanAssembler(max_scan_bytes=cb * 20)
    asm.on_begin(begin_of(scan), 0.0)
    feed_all(asm, lines_of(scan))
    (res,) = results(asm.on_end(end_of(scan), 0.0))
    assert res.reason == "too_large"
    assert asm.counters.discarded_columns == 30


def test_zero_columns_is_incomplete() -> None:
    scan = make_scan(10)
    asm = ScanAssembler()
    asm.on_begin(begin_of(scan), 0.0)
    (res,) = results(asm.on_end(end_of(scan, columns=0, data_crc32=0), 0.0))
    assert res.reason == "no_columns"
