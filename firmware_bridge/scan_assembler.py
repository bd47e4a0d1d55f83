"""Scan transfer (spec section 4) as a pure state machine: messages and a clock in, actions out.

The assembler never does I/O. Each call returns what the link must do, in order: `ScanAck` and
`Resend` messages to send to the firmware, and `AssembledScan` results to hand on. The link owns
time: it passes ``now`` (monotonic seconds) and calls `poll` at `next_deadline`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field

from firmware_bridge.errors import PayloadError
from firmware_bridge.frame import FrameType, crc32
from firmware_bridge.messages import Resend, ScanAbort, ScanAck, ScanBegin, ScanEnd, ScanLines

__all__ = ["AssembledScan", "AssemblerAction", "AssemblerCounters", "ScanAssembler"]

log = logging.getLogger(__name__)

# Reasons reported on incomplete scans (and sent in SCAN_ACK `rejected`); stable tokens.
REASON_SUPERSEDED = "superseded"
REASON_MISSING = "missing_columns"
REASON_CRC = "data_crc32_mismatch"
REASON_SCAN_ID = "scan_id_mismatch"
REASON_TIMEOUT = "timeout"
REASON_NO_COLUMNS = "no_columns"
REASON_TOO_LARGE = "too_large"


@dataclass(frozen=True)
class AssembledScan:
    """The end of one scan's transfer, complete or not."""

    begin: ScanBegin
    end: ScanEnd | None
    complete: bool
    reason: str | None
    """Why the scan is incomplete (a token above, or the firmware's SCAN_ABORT reason)."""
    aborted: bool
    data: bytes | None
    """All pixel bytes in column order when every column ``0..columns-1`` arrived, else None."""
    sha256: str | None
    columns: int
    """SCAN_END's column total, or the number of distinct columns received when there was no SCAN_END."""
    columns_received: int
    resend_rounds: int
    end_received_at: float | None
    finished_at: float


AssemblerAction = ScanAck | Resend | AssembledScan


@dataclass
class AssemblerCounters:
    scans_begun: int = 0
    scans_complete: int = 0
    scans_incomplete: int = 0
    scans_superseded: int = 0
    scans_aborted: int = 0
    scans_timed_out: int = 0
    scans_crc_mismatch: int = 0
    unknown_scan_frames: int = 0
    """SCAN_LINES / SCAN_END / SCAN_ABORT for a scan_no that is not open (section 4)."""
    duplicate_columns: int = 0
    discarded_columns: int = 0
    """Columns at or beyond SCAN_END's total, or beyond the memory cap."""
    duplicate_ends: int = 0
    resend_rounds: int = 0
    resend_requests: int = 0
    """RESEND frames sent (one per missing range per round)."""
    resent_columns: int = 0
    """Columns that arrived after SCAN_END, i.e. recovered by RESEND."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _OpenScan:
    begin: ScanBegin
    column_bytes: int
    max_columns: int
    last_frame_at: float
    columns: dict[int, bytes | memoryview] = field(default_factory=dict)
    end: ScanEnd | None = None
    end_received_at: float | None = None
    resend_rounds: int = 0
    next_resend_at: float | None = None
    overflow: bool = False


class ScanAssembler:
    """One link's scan transfer state: at most one open scan (section 4)."""

    def __init__(
        self,
        *,
        resend_first_delay_s: float = 0.05,
        resend_interval_s: float = 1.0,
        resend_rounds: int = 3,
        scan_timeout_s: float = 60.0,
        max_scan_bytes: int = 256 * 1024 * 1024,
        max_resend_ranges: int = 32,
        resend_merge_gap: int = 8,
    ) -> None:
        self._first_delay = resend_first_delay_s
        self._interval = resend_interval_s
        self._max_rounds = resend_rounds
        self._timeout = scan_timeout_s
        self._max_bytes = max_scan_bytes
        self._max_ranges = max(1, max_resend_ranges)
        self._merge_gap = resend_merge_gap
        self._open: _OpenScan | None = None
        self._last_ack: tuple[int, str, ScanAck] | None = None
        self.counters = AssemblerCounters()

    @property
    def open_scan(self) -> ScanBegin | None:
        return self._open.begin if self._open else None

    def next_deadline(self) -> float | None:
        scan = self._open
        if scan is None:
            return None
        if scan.end is None:
            return scan.last_frame_at + self._timeout
        return scan.next_resend_at

    # ------------------------------------------------------------------ inputs

    def on_begin(self, msg: ScanBegin, now: float) -> list[AssemblerAction]:
        actions: list[AssemblerAction] = []
        if self._open is not None:
            old = self._open
            log.warning("scan %s (%s) superseded by scan %s before it was acknowledged",
                        old.begin.scan_no, old.begin.scan_id, msg.scan_no)
            self.counters.scans_superseded += 1
            # Before its SCAN_END the old scan is void; after it, it is finalized with what arrived
            # (which is never everything, or it would already be closed).
            actions += self._finalize(old, now, REASON_SUPERSEDED, keep_data=old.end is not None)
        cb = msg.column_bytes
        self._open = _OpenScan(begin=msg, column_bytes=cb, max_columns=max(1, self._max_bytes // cb),
                               last_frame_at=now)
        self.counters.scans_begun += 1
        return actions

    def on_lines(self, msg: ScanLines, now: float) -> list[AssemblerAction]:
        scan = self._open
        if scan is None or scan.begin.scan_no != msg.scan_no:
            self.counters.unknown_scan_frames += 1
            return []
        cb = scan.column_bytes
        if len(msg.data) != msg.column_count * cb:
            raise PayloadError(FrameType.SCAN_LINES, "length",
                               f"{len(msg.data) + 10} bytes for {msg.column_count} columns of {cb} bytes")
        scan.last_frame_at = now
        columns = scan.columns
        limit = scan.end.columns if scan.end is not None else scan.max_columns
        counters = self.counters
        data = msg.data
        for i in range(msg.column_count):
            col = msg.first_column + i
            if col >= limit:
                counters.discarded_columns += 1
                if scan.end is None:
                    scan.overflow = True
                continue
            if col in columns:
                counters.duplicate_columns += 1
                continue
            columns[col] = data[i * cb:(i + 1) * cb]
            if scan.end is not None:
                counters.resent_columns += 1
        if scan.end is not None and len(columns) == scan.end.columns:
            return self._finalize(scan, now, None, keep_data=True)
        return []

    def on_end(self, msg: ScanEnd, now: float) -> list[AssemblerAction]:
        scan = self._open
        if scan is None or scan.begin.scan_no != msg.scan_no:
            last = self._last_ack
            if last is not None and last[0] == msg.scan_no and last[1] == msg.scan_id:
                # The firmware repeated SCAN_END of a scan we closed: repeat our answer.
                self.counters.duplicate_ends += 1
                return [last[2]]
            self.counters.unknown_scan_frames += 1
            return []
        if scan.end is not None:
            self.counters.duplicate_ends += 1
            return []
        scan.end = msg
        scan.end_received_at = now
        scan.last_frame_at = now
        if msg.scan_id != scan.begin.scan_id:
            log.warning("scan %s: SCAN_END scan_id %r differs from SCAN_BEGIN's %r", msg.scan_no,
                        msg.scan_id, scan.begin.scan_id)
            return self._finalize(scan, now, REASON_SCAN_ID, keep_data=False)
        if msg.columns == 0:
            return self._finalize(scan, now, REASON_NO_COLUMNS, keep_data=False)
        if msg.columns > scan.max_columns or scan.overflow:
            return self._finalize(scan, now, REASON_TOO_LARGE, keep_data=False)
        extra = [c for c in scan.columns if c >= msg.columns]
        for col in extra:
            del scan.columns[col]
        self.counters.discarded_columns += len(extra)
        if len(scan.columns) == msg.columns:
            return self._finalize(scan, now, None, keep_data=True)
        scan.next_resend_at = now + self._first_delay
        return []

    def on_abort(self, msg: ScanAbort, now: float) -> list[AssemblerAction]:
        scan = self._open
        if scan is None or scan.begin.scan_no != msg.scan_no:
            self.counters.unknown_scan_frames += 1
            return []
        log.info("scan %s (%s) aborted by the firmware: %s", msg.scan_no, scan.begin.scan_id, msg.reason)
        self.counters.scans_aborted += 1
        return self._finalize(scan, now, msg.reason, keep_data=False, aborted=True)

    def poll(self, now: float) -> list[AssemblerAction]:
        """Run the timers: the 60 s SCAN_END timeout and the RESEND rounds."""
        scan = self._open
        if scan is None:
            return []
        if scan.end is None:
            if now - scan.last_frame_at > self._timeout:
                log.warning("scan %s (%s): no SCAN_END %.0f s after its last frame; dropped",
                            scan.begin.scan_no, scan.begin.scan_id, self._timeout)
                self.counters.scans_timed_out += 1
                return self._finalize(scan, now, REASON_TIMEOUT, keep_data=False)
            return []
        if scan.next_resend_at is None or now < scan.next_resend_at:
            return []
        if scan.resend_rounds >= self._max_rounds:
            missing = scan.end.columns - len(scan.columns)
            log.warning("scan %s (%s): %d columns still missing after %d RESEND rounds",
                        scan.begin.scan_no, scan.begin.scan_id, missing, scan.resend_rounds)
            return self._finalize(scan, now, REASON_MISSING, keep_data=True)
        scan.resend_rounds += 1
        scan.next_resend_at = now + self._interval
        ranges = self._missing_ranges(scan)
        self.counters.resend_rounds += 1
        self.counters.resend_requests += len(ranges)
        log.info("scan %s: RESEND round %d for %d columns in %d ranges", scan.begin.scan_no,
                 scan.resend_rounds, scan.end.columns - len(scan.columns), len(ranges))
        return [Resend(scan_no=scan.begin.scan_no, from_column=start, count=stop - start)
                for start, stop in ranges]

    # ------------------------------------------------------------------ internals

    def _missing_ranges(self, scan: _OpenScan) -> list[tuple[int, int]]:
        assert scan.end is not None
        have = scan.columns
        ranges: list[list[int]] = []
        for col in range(scan.end.columns):
            if col in have:
                continue
            if ranges and ranges[-1][1] == col:
                ranges[-1][1] = col + 1
            else:
                ranges.append([col, col + 1])
        # Merging ranges across small gaps re-requests a few columns we have (duplicates are
        # ignored) in exchange for far fewer RESEND frames; the cap bounds the frames per round.
        gaps = [ranges[i + 1][0] - ranges[i][1] for i in range(len(ranges) - 1)]
        merge = {i for i, gap in enumerate(gaps) if gap <= self._merge_gap}
        excess = len(ranges) - len(merge) - self._max_ranges
        if excess > 0:
            rest = sorted((gaps[i], i) for i in range(len(gaps)) if i not in merge)
            merge.update(i for _gap, i in rest[:excess])
        out: list[tuple[int, int]] = []
        for i, (start, stop) in enumerate(ranges):
            if out and (i - 1) in merge:
                out[-1] = (out[-1][0], stop)
            else:
                out.append((start, stop))
        return out

    def _finalize(self, scan: _OpenScan, now: float, reason: str | None, *, keep_data: bool,
                  aborted: bool = False) -> list[AssemblerAction]:
        self._open = None
        end = scan.end
        total = end.columns if end is not None else len(scan.columns)
        data: bytes | None = None
        sha: str | None = None
        if keep_data and end is not None and total > 0 and len(scan.columns) == total:
            columns = scan.columns
            data = b"".join(columns[c] for c in range(total))
            sha = hashlib.sha256(data).hexdigest()
        complete = False
        if reason is None:
            if data is None:
                reason = REASON_MISSING
            elif end is not None and crc32(data) != end.data_crc32:
                reason = REASON_CRC
                self.counters.scans_crc_mismatch += 1
                log.warning("scan %s (%s): data_crc32 mismatch", scan.begin.scan_no, scan.begin.scan_id)
            else:
                complete = True
        actions: list[AssemblerAction] = []
        if not aborted:
            ack = ScanAck(scan_no=scan.begin.scan_no, status="complete" if complete else "rejected",
                          reason=None if complete else reason)
            actions.append(ack)
            self._last_ack = (scan.begin.scan_no, scan.begin.scan_id, ack)
        if complete:
            self.counters.scans_complete += 1
        else:
            self.counters.scans_incomplete += 1
        actions.append(AssembledScan(
            begin=scan.begin, end=end, complete=complete, reason=reason, aborted=aborted, data=data,
            sha256=sha, columns=total, columns_received=len(scan.columns),
            resend_rounds=scan.resend_rounds, end_received_at=scan.end_received_at, finished_at=now))
        return actions
