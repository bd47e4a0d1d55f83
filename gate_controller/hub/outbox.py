"""The durable outbox: every message for the hub is committed here before anything else happens.

MQTT contract section 2: a transaction or event is committed and fsynced *before* the barrier
moves for it and before it is published, and leaves local storage only after the broker's
PUBACK. SQLite in WAL mode gives that with one file:

* ``outbox`` rows hold each message exactly as it will be published. Transactions and events get
  their ``msg_id`` (ULID), ``seq`` and ``boot_id`` in the same SQL transaction that stores them,
  so ``seq`` can never be consumed without its message existing (no gap) nor reused (the
  counter lives in the same database, committed together). ``historical`` is decided at publish
  time, so it is spliced in by the publisher (`OutboxRow.wire_payload`).
* ``open_transactions`` is the journal of decisions whose passage is still in progress. A record
  that is still open when the daemon starts is completed by `Outbox.open` as cancelled by the
  restart, in the same SQL transaction that removes it from the journal: it reaches the hub once.
* ``meta`` keeps ``next_seq``, ``boot_id`` and the ``BACKLOG_FULL`` alarm state.

Transactions and events are committed with ``synchronous=FULL`` (fsync at every commit);
previews, telemetry, images and replies, which the contract lets us lose, and the deletions after
PUBACK (a lost deletion only means a duplicate, which the hub removes by ``msg_id``) use
``synchronous=NORMAL``. All writes go through one writer thread that commits whatever has queued
up as one SQL transaction (group commit), so concurrent lanes share an fsync instead of queueing
behind each other; reads for the publisher use a second connection on a reader thread (WAL
readers never block the writer).

Backlog limits (``mqtt.backlog``): at most ``max_telemetry`` telemetry rows and ``max_previews``
preview/image rows are kept (oldest dropped first). When the backlog exceeds ``max_mb`` or free
disk falls below ``min_free_disk_mb``, telemetry is dropped first, then previews and images;
transactions, events and command replies are never dropped. When transactions and events reach
``max_messages``, or space stays short after the drops, a ``BACKLOG_FULL`` alarm is committed (in
the same SQL transaction) and the outbox keeps accepting transactions until the disk itself is
full, at which point commits fail with `OutboxError` and the lane must not move the barrier. The
alarm clears (``active: false``) once everything is back under 90 % of its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import shutil
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from ulid import ULID

from gate_controller.config import BacklogConfig
from gate_controller.core.errors import OutboxError
from gate_controller.core.ports import EventSeverity, EventType
from gate_controller.core.timestamps import WallClock, parse_timestamp, utc_now, utc_timestamp

__all__ = [
    "TRANSACTION_SCHEMA",
    "BacklogStats",
    "Committed",
    "Kind",
    "Outbox",
    "OutboxRow",
]

logger = logging.getLogger(__name__)

TRANSACTION_SCHEMA: Final = "smartgate.transaction/1"
MB: Final = 1024 * 1024

Kind = Literal["transaction", "event", "reply", "preview", "image", "telemetry"]

# Drop classes double as the backlog drain priority after a reconnect: what may never be dropped
# goes first (in seq order), then media, then the oldest telemetry.
KEEP, MEDIA, TELEMETRY = 0, 1, 2
_CLASS_OF: Final[dict[str, int]] = {
    "transaction": KEEP, "event": KEEP, "reply": KEEP, "preview": MEDIA, "image": MEDIA, "telemetry": TELEMETRY,
}
_SEQUENCED: Final = frozenset({"transaction", "event"})
_QOS_OF: Final[dict[str, int]] = {
    "transaction": 1, "event": 1, "reply": 1, "preview": 1, "image": 1, "telemetry": 0,
}
_RESERVED_KEYS: Final = frozenset({"msg_id", "seq", "boot_id", "historical"})
_EVENT_TYPES: Final = frozenset({"alarm", "state"})
_SEVERITIES: Final = frozenset({"info", "warning", "error", "critical"})
_CLEAR_RATIO: Final = 0.9

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    class INTEGER NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    seq INTEGER UNIQUE,
    msg_id TEXT,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_class ON outbox (class, id);
CREATE TABLE IF NOT EXISTS open_transactions (
    transaction_id TEXT PRIMARY KEY,
    boot_id INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    record TEXT NOT NULL
);
"""
# AUTOINCREMENT matters: row ids are the publisher's cursors and the keys of acknowledged rows
# awaiting deletion, so an id must never come back after its row was deleted.

_ROW_COLUMNS = "id, kind, topic, qos, retain, seq, msg_id, created_at, payload"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message as stored; ``payload`` of transactions/events lacks ``historical``."""

    id: int
    kind: str
    topic: str
    qos: int
    retain: bool
    seq: int | None
    msg_id: str | None
    created_at: float
    payload: bytes

    @property
    def drop_class(self) -> int:
        return _CLASS_OF[self.kind]

    def wire_payload(self, *, historical: bool) -> bytes:
        """The bytes to publish. ``historical`` is only known when the row is sent, and the
        stored JSON object always ends in ``}`` with at least one member, so the flag is
        appended as the last member without re-encoding the document."""
        if self.kind not in _SEQUENCED:
            return self.payload
        return self.payload[:-1] + (b',"historical":true}' if historical else b',"historical":false}')


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a message landed: its row, and for transactions/events its ``seq`` and ``msg_id``."""

    row_id: int
    seq: int | None
    msg_id: str | None


@dataclass(frozen=True)
class BacklogStats:
    pending: int
    """Rows waiting for a PUBACK (or, for telemetry, to be written), all kinds."""
    sequenced: int
    """Transactions and events among them (what ``max_messages`` limits)."""
    bytes: int
    by_class: Mapping[str, int]
    oldest_age_s: float | None
    full: bool
    dropped: Mapping[str, int]
    next_seq: int
    boot_id: int


@dataclass(frozen=True, slots=True)
class _Counters:
    count: tuple[int, ...]
    nbytes: int
    sequenced: int
    full: bool
    dropped: dict[str, int]
    next_seq: int
    boot_id: int


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one commit is one fsync.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # Keep the WAL file from staying huge after a burst of images has been checkpointed.
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def _disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class _Store:
    """The write side. Used from one thread at a time: `Outbox.open`, then the writer thread."""

    def __init__(self, path: Path, limits: BacklogConfig, disk_free: Callable[[], int], wall_clock: WallClock) -> None:
        self.path = path
        self.limits = limits
        self.disk_free = disk_free
        self.wall_clock = wall_clock
        self.conn = _connect(path)
        self._sync_full = True
        self.conn.executescript(_SCHEMA_SQL)
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        self.next_seq = int(meta.get("next_seq", 1))
        self.boot_id = int(meta.get("boot_id", 0))
        self.full = bool(meta.get("backlog_full", 0))
        self.count = [0, 0, 0]
        self.bytes = [0, 0, 0]
        self.sequenced = 0
        for cls, kind, n, size in self.conn.execute(
            "SELECT class, kind, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY class, kind"
        ):
            self.count[cls] += n
            self.bytes[cls] += size
            if kind in _SEQUENCED:
                self.sequenced += n
        self.dropped = {"telemetry": 0, "preview": 0, "image": 0}
        self._needs_fsync = False
        self.published: _Counters = self._counters()
        """The counters as of the last commit, replaced whole so other threads read them lock-free."""

    def _counters(self) -> _Counters:
        return _Counters(tuple(self.count), sum(self.bytes), self.sequenced, self.full, dict(self.dropped),
                         self.next_seq, self.boot_id)

    # ------------------------------------------------------------------ transactions

    def _snapshot(self) -> tuple[Any, ...]:
        return (self.next_seq, list(self.count), list(self.bytes), self.sequenced, self.full, dict(self.dropped))

    def _restore(self, snap: tuple[Any, ...]) -> None:
        self.next_seq, self.count, self.bytes, self.sequenced, self.full, self.dropped = (
            snap[0], list(snap[1]), list(snap[2]), snap[3], snap[4], dict(snap[5]))

    def _set_sync(self, full: bool) -> None:
        if full != self._sync_full:
            self.conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def batch(self, ops: Sequence[Callable[[_Store], Any]], durable: bool) -> list[Any]:
        """Run ``ops`` in one SQL transaction; a failing op is rolled back alone (its exception
        is its result), a failing commit fails them all with `OutboxError`."""
        before = self._snapshot()
        meta_before = (self.next_seq, self.full)
        results: list[Any] = []
        try:
            self._set_sync(durable)
            self.conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                inner = self._snapshot()
                self.conn.execute("SAVEPOINT op")
                try:
                    results.append(op(self))
                except sqlite3.Error:
                    raise
                except Exception as err:  # the op's own input was bad: fail it alone
                    self.conn.execute("ROLLBACK TO op")
                    self._restore(inner)
                    results.append(err)
                self.conn.execute("RELEASE op")
            self._enforce_limits()
            if (self.next_seq, self.full) != meta_before:
                self._write_meta()
            self.conn.execute("COMMIT")
            if self._needs_fsync:
                # An alarm was committed by a NORMAL (non-fsyncing) batch, e.g. the deletions after
                # PUBACK. One FULL commit fsyncs the WAL, and with it every frame written before.
                self._needs_fsync = False
                self._set_sync(True)
                self.conn.execute("BEGIN IMMEDIATE")
                self._write_meta()
                self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self._restore(before)
            self._needs_fsync = False
            raise OutboxError(f"outbox {self.path}: commit failed: {err}") from err
        self.published = self._counters()
        return results

    def _write_meta(self) -> None:
        self.conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("next_seq", self.next_seq), ("backlog_full", int(self.full))],
        )

    # ------------------------------------------------------------------ operations (inside batch)

    def insert(self, kind: str, topic: str, body: Mapping[str, Any] | bytes, *, msg_id: str | None,
               created_at: float, retain: bool = False) -> Committed:
        cls = _CLASS_OF[kind]
        seq: int | None = None
        if kind in _SEQUENCED:
            assert isinstance(body, Mapping)
            assert msg_id is not None
            seq = self.next_seq
            doc: dict[str, Any] = {}
            if "schema" in body:
                doc["schema"] = body["schema"]
            doc.update(msg_id=msg_id, seq=seq, boot_id=self.boot_id)
            doc.update((k, v) for k, v in body.items() if k not in doc and k not in _RESERVED_KEYS)
            payload = _dumps(doc)
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = _dumps(dict(body))
        cur = self.conn.execute(
            "INSERT INTO outbox (kind, class, topic, qos, retain, seq, msg_id, created_at, size, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, cls, topic, _QOS_OF[kind], int(retain), seq, msg_id, created_at, len(payload), payload),
        )
        if seq is not None:
            self.next_seq += 1
            self.sequenced += 1
        self.count[cls] += 1
        self.bytes[cls] += len(payload)
        assert cur.lastrowid is not None
        return Committed(cur.lastrowid, seq, msg_id)

    def open_transaction(self, transaction_id: str, record: str, opened_at: float) -> None:
        self.conn.execute(
            "INSERT INTO open_transactions (transaction_id, boot_id, opened_at, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(transaction_id) DO UPDATE SET record = excluded.record",
            (transaction_id, self.boot_id, opened_at, record),
        )

    def close_transaction(self, transaction_id: str) -> None:
        self.conn.execute("DELETE FROM open_transactions WHERE transaction_id = ?", (transaction_id,))

    def delete(self, ids: Sequence[int]) -> int:
        removed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for cls, kind, size in self.conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING class, kind, size", chunk  # noqa: S608
            ).fetchall():
                self._forget(cls, kind, size)
                removed += 1
        return removed

    def _forget(self, cls: int, kind: str, size: int) -> None:
        self.count[cls] -= 1
        self.bytes[cls] -= size
        if kind in _SEQUENCED:
            self.sequenced -= 1

    def _drop_oldest(self, cls: int, *, rows: int = 0, nbytes: int = 0) -> int:
        """Delete the oldest rows of a droppable class: at least ``rows`` rows, or until at least
        ``nbytes`` bytes are freed. Returns the bytes freed."""
        assert cls != KEEP
        victims: list[int] = []
        freed = 0
        for row_id, size in self.conn.execute("SELECT id, size FROM outbox WHERE class = ? ORDER BY id", (cls,)):
            if len(victims) >= rows and freed >= nbytes:
                break
            victims.append(row_id)
            freed += size
        if not victims:
            return 0
        for start in range(0, len(victims), 500):
            chunk = victims[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for c, kind, size in self.conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING class, kind, size", chunk  # noqa: S608
            ).fetchall():
                self._forget(c, kind, size)
                self.dropped[kind] = self.dropped.get(kind, 0) + 1
        logger.warning("outbox: dropped %d %s rows (%d bytes) to stay within backlog limits",
                       len(victims), "telemetry" if cls == TELEMETRY else "preview/image", freed)
        return freed

    def _enforce_limits(self) -> None:
        limits = self.limits
        if self.count[TELEMETRY] > limits.max_telemetry:
            self._drop_oldest(TELEMETRY, rows=self.count[TELEMETRY] - limits.max_telemetry)
        if self.count[MEDIA] > limits.max_previews:
            self._drop_oldest(MEDIA, rows=self.count[MEDIA] - limits.max_previews)
        max_bytes = limits.max_mb * MB
        min_free = limits.min_free_disk_mb * MB
        # Freed rows do not shrink the file, but SQLite reuses their pages for the next inserts,
        # so bytes dropped here count as free space for the decision.
        free = self.disk_free()
        for cls in (TELEMETRY, MEDIA):
            short = max(sum(self.bytes) - max_bytes, min_free - free, 0)
            if short > 0 and self.count[cls] > 0:
                free += self._drop_oldest(cls, nbytes=short)
        total = sum(self.bytes)
        over = self.sequenced >= limits.max_messages or total > max_bytes or free < min_free
        under = (self.sequenced < _CLEAR_RATIO * limits.max_messages and total < _CLEAR_RATIO * max_bytes
                 and free >= min_free)
        if over and not self.full:
            self.full = True
            self._insert_backlog_event(active=True, total=total, free=free)
        elif under and self.full:
            self.full = False
            self._insert_backlog_event(active=False, total=total, free=free)

    def _insert_backlog_event(self, *, active: bool, total: int, free: int) -> None:
        now = self.wall_clock()
        body = {
            "ts": utc_timestamp(now), "lane": None, "type": "alarm", "code": "BACKLOG_FULL",
            "severity": "error" if active else "info", "active": active,
            "detail": {
                "pending_messages": self.sequenced, "pending_bytes": total,
                "disk_free_mb": round(free / MB, 1), "max_messages": self.limits.max_messages,
                "max_mb": self.limits.max_mb, "min_free_disk_mb": self.limits.min_free_disk_mb,
                "dropped": dict(self.dropped),
            },
        }
        self.insert("event", self.event_topic, body, msg_id=str(ULID()), created_at=now.timestamp())
        if not self._sync_full:
            self._needs_fsync = True
        log = logger.error if active else logger.info
        log("outbox: BACKLOG_FULL %s (%d transactions/events, %.1f MB pending, %.0f MB disk free)",
            "raised" if active else "cleared", self.sequenced, total / MB, free / MB)

    event_topic = ""  # set by Outbox.open before the first batch

    # ------------------------------------------------------------------ startup

    def bump_boot_id(self) -> int:
        self._set_sync(True)
        self.conn.execute("BEGIN IMMEDIATE")
        self.boot_id += 1
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('boot_id', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (self.boot_id,),
        )
        self.conn.execute("COMMIT")
        self.published = self._counters()
        return self.boot_id

    def open_records(self) -> list[tuple[str, int, str]]:
        return [(str(t), int(b), str(r)) for t, b, r in self.conn.execute(
            "SELECT transaction_id, boot_id, record FROM open_transactions ORDER BY opened_at, transaction_id")]


def _recovered_record(record: Mapping[str, Any], *, now: datetime, site: str, gate: str) -> dict[str, Any]:
    """Complete a journalled transaction whose passage the previous daemon never saw end.

    The decision stays what it was (it may have moved the barrier); ``CANCELLED`` is added to its
    reasons, ``completed_at`` is the recovery time and ``recovered`` tells the hub that the end of
    the passage was not observed.
    """
    out = {k: v for k, v in record.items() if k not in _RESERVED_KEYS}
    out.setdefault("schema", TRANSACTION_SCHEMA)
    out.setdefault("site", site)
    out.setdefault("gate", gate)
    out["completed_at"] = utc_timestamp(now)
    decision = dict(out.get("decision") or {})
    reasons = list(decision.get("reasons") or [])
    if "CANCELLED" not in reasons:
        reasons.append("CANCELLED")
    decision["reasons"] = reasons
    decision.setdefault("action", "manual")
    decision.setdefault("by", "auto")
    decision.setdefault("operator", None)
    out["decision"] = decision
    out.setdefault("barrier", None)
    timings = dict(out.get("timings_ms") or {})
    try:
        arrived = parse_timestamp(str(out.get("arrived_at")))
        timings["arrival_to_complete"] = max(0, round((now - arrived).total_seconds() * 1000))
    except ValueError:
        timings.setdefault("arrival_to_complete", None)
    timings.setdefault("scan_end_to_decision", None)
    timings.setdefault("arrival_to_decision", None)
    out["timings_ms"] = timings
    out["recovered"] = True
    return out


class Outbox:
    """The durable outbox and transaction journal (implements `ports.TransactionJournal`).

    Open it once at daemon start with `Outbox.open` (bumps ``boot_id``, completes transactions left
    open by the previous run), share it between the lanes (journal), the `HubLink` (publisher) and
    `Telemetry`, and `close` it last. The async methods may be called from the event loop that
    first uses the outbox; blocking work happens on the outbox's own two threads.
    """

    def __init__(self, store: _Store, *, root_topic: str, site: str, gate: str, wall_clock: WallClock,
                 recovered: Sequence[str]) -> None:
        self._store = store
        self.root_topic = root_topic
        self.site = site
        self.gate = gate
        self._wall_clock = wall_clock
        self.recovered: tuple[str, ...] = tuple(recovered)
        """Transaction ids that `open` completed as cancelled by restart."""
        self._queue: queue.SimpleQueue[tuple[Callable[[_Store], Any], bool, asyncio.Future[Any],
                                             asyncio.AbstractEventLoop]] = queue.SimpleQueue()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-reader")
        self._read_conn: sqlite3.Connection | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._last_id = 0
        self._closed = False
        self._archive_hook: Callable[[Mapping[str, Any]], None] | None = None
        self._observers: list[Callable[[str, Mapping[str, Any]], None]] = []

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        root_topic: str,
        site: str,
        gate: str,
        limits: BacklogConfig | None = None,
        wall_clock: WallClock = utc_now,
        disk_free: Callable[[], int] | None = None,
    ) -> Outbox:
        """Open (creating if needed) the outbox at ``path``, count this start in ``boot_id`` and
        complete every transaction the previous run left open. Blocking; call it once at startup.
        """
        db = Path(path)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            store = _Store(db, limits or BacklogConfig(), disk_free or (lambda: _disk_free_bytes(db.parent)),
                           wall_clock)
            store.event_topic = f"{root_topic}/events"
            previous = store.boot_id
            boot_id = store.bump_boot_id()
            now = wall_clock()
            recovered: list[str] = []
            ops: list[Callable[[_Store], Any]] = []
            for transaction_id, old_boot, text in store.open_records():
                try:
                    record = json.loads(text)
                except ValueError:
                    logger.exception("outbox: open transaction %s from boot %d is unreadable; dropped",
                                     transaction_id, old_boot)
                    ops.append(partial(_Store.close_transaction, transaction_id=transaction_id))
                    continue
                body = _recovered_record(record, now=now, site=site, gate=gate)
                ops.append(_complete_op(transaction_id, f"{root_topic}/transactions", body, now.timestamp()))
                recovered.append(transaction_id)
            if ops:
                results = store.batch(ops, durable=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise OutboxError(f"outbox {db}: cannot recover open transactions: {result}") from result
                logger.warning("outbox: completed %d transaction(s) left open by boot %d as cancelled by restart",
                               len(recovered), previous)
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {db}: cannot open: {err}") from err
        outbox = cls(store, root_topic=root_topic, site=site, gate=gate, wall_clock=wall_clock, recovered=recovered)
        logger.info("outbox %s open: boot_id %d, next seq %d, %d messages pending", db, boot_id, store.next_seq,
                    sum(store.count))
        return outbox

    # ------------------------------------------------------------------ properties

    @property
    def boot_id(self) -> int:
        return self._store.boot_id

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def limits(self) -> BacklogConfig:
        return self._store.limits

    @property
    def closed(self) -> bool:
        return self._closed

    def set_archive_hook(self, hook: Callable[[Mapping[str, Any]], None] | None) -> None:
        """Called (on a worker thread) with every completed transaction as published, so the scan
        archive can answer ``inspection.result`` after the row has left the outbox."""
        self._archive_hook = hook

    def add_observer(self, observer: Callable[[str, Mapping[str, Any]], None]) -> None:
        """``observer(kind, message)`` runs on the event loop after each committed ``transaction`` or
        ``event``, with the message as published (without ``historical``). It must return at once:
        the committing lane is waiting (the technician console's feed)."""
        self._observers.append(observer)

    def _observe(self, kind: str, message: Mapping[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(kind, message)
            except Exception:  # an observer is a view; the commit stands whatever it does
                logger.exception("outbox observer failed on a %s", kind)

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(max_row_id)`` runs on the event loop after every commit that added rows."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # ------------------------------------------------------------------ the write path

    async def _run(self, op: Callable[[_Store], T], *, durable: bool) -> T:
        if self._closed:
            raise OutboxError("outbox is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put((op, durable, fut, loop))
        loop.run_in_executor(self._writer, self._drain)
        return cast(T, await fut)

    def _drain(self) -> None:
        """Writer thread: commit everything queued so far as one SQL transaction (group commit)."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        durable = any(item[1] for item in items)
        try:
            results = self._store.batch([item[0] for item in items], durable)
            max_id = self._max_row_id_locked()
        except Exception as caught:  # every waiter must hear of a failed commit, whatever failed
            err = caught if isinstance(caught, OutboxError) else OutboxError(f"outbox commit failed: {caught!r}")
            logger.error("%s", err)  # noqa: TRY400 - the message says it all; callers get the exception
            with contextlib.suppress(RuntimeError):
                for _, _, fut, loop in items:
                    loop.call_soon_threadsafe(_settle, fut, err)
            return
        try:
            for (_, _, fut, loop), result in zip(items, results, strict=True):
                loop.call_soon_threadsafe(_settle, fut, result)
            items[-1][3].call_soon_threadsafe(self._notify, max_id)
        except RuntimeError:  # the loop closed while we committed: nobody is waiting any more
            logger.debug("outbox: event loop closed before a commit could be reported")

    def _max_row_id_locked(self) -> int:
        row = self._store.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def _notify(self, max_id: int) -> None:
        if max_id > self._last_id:
            self._last_id = max_id
            for callback in list(self._listeners):
                callback(max_id)

    # ------------------------------------------------------------------ TransactionJournal

    async def open_transaction(self, record: Mapping[str, Any]) -> None:
        """Journal a decided transaction (fsynced) before the barrier moves for it."""
        transaction_id = _transaction_id(record)
        text = _dumps(dict(record)).decode("utf-8")
        opened_at = self._wall_clock().timestamp()
        await self._run(lambda s: s.open_transaction(transaction_id, text, opened_at), durable=True)

    async def complete_transaction(self, record: Mapping[str, Any]) -> None:
        """Commit the finished record to the outbox (fsynced) and close its journal entry."""
        await self.commit_transaction(record)

    async def commit_transaction(self, record: Mapping[str, Any]) -> Committed:
        """`complete_transaction` that also says which ``seq``/``msg_id`` the record received."""
        transaction_id = _transaction_id(record)
        body = {k: v for k, v in record.items() if k not in _RESERVED_KEYS}
        body.setdefault("schema", TRANSACTION_SCHEMA)
        body.setdefault("site", self.site)
        body.setdefault("gate", self.gate)
        _dumps(body)  # refuse what cannot be JSON before it reaches the writer
        now = self._wall_clock().timestamp()
        committed: Committed = await self._run(
            _complete_op(transaction_id, f"{self.root_topic}/transactions", body, now), durable=True)
        published = {**body, "msg_id": committed.msg_id, "seq": committed.seq, "boot_id": self.boot_id}
        if self._observers:
            self._observe("transaction", published)
        hook = self._archive_hook
        if hook is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, hook, published)
            except Exception:  # the transaction is committed; the archive copy is a convenience
                logger.exception("scan archive could not keep transaction %s", transaction_id)
        return committed

    async def emit_event(
        self,
        *,
        lane: str | None,
        type: EventType,
        code: str,
        severity: EventSeverity,
        active: bool,
        detail: Mapping[str, Any],
    ) -> None:
        """Commit an event (contract section 5), fsynced."""
        await self.commit_event(lane=lane, type=type, code=code, severity=severity, active=active, detail=detail)

    async def commit_event(
        self,
        *,
        lane: str | None,
        type: EventType,
        code: str,
        severity: EventSeverity,
        active: bool,
        detail: Mapping[str, Any],
    ) -> Committed:
        if type not in _EVENT_TYPES:
            raise ValueError(f"event type must be alarm or state (got {type!r})")
        if severity not in _SEVERITIES:
            raise ValueError(f"event severity must be one of {sorted(_SEVERITIES)} (got {severity!r})")
        if not code or not code.replace("_", "").isalnum() or not code.isupper():
            raise ValueError(f"event code must be UPPER_SNAKE_CASE (got {code!r})")
        now = self._wall_clock()
        body = {"ts": utc_timestamp(now), "lane": lane, "type": type, "code": code, "severity": severity,
                "active": bool(active), "detail": dict(detail)}
        _dumps(body)
        topic = f"{self.root_topic}/events"
        msg_id = str(ULID())
        committed: Committed = await self._run(
            lambda s: s.insert("event", topic, body, msg_id=msg_id, created_at=now.timestamp()), durable=True)
        if self._observers:
            self._observe("event", {**body, "msg_id": committed.msg_id, "seq": committed.seq, "boot_id": self.boot_id})
        return committed

    # ------------------------------------------------------------------ other kinds

    async def enqueue_reply(self, reply: Mapping[str, Any]) -> Committed:
        payload = _dumps(dict(reply))
        return await self._insert_plain("reply", f"{self.root_topic}/reply", payload)

    async def enqueue_preview(self, scan_id: str, jpeg: bytes) -> Committed:
        return await self._insert_plain("preview", f"{self.root_topic}/scans/{scan_id}/preview", bytes(jpeg))

    async def enqueue_image(self, scan_id: str, png: bytes) -> Committed:
        return await self._insert_plain("image", f"{self.root_topic}/scans/{scan_id}/image", bytes(png))

    async def enqueue_telemetry(self, payload: Mapping[str, Any]) -> Committed:
        return await self._insert_plain("telemetry", f"{self.root_topic}/telemetry", _dumps(dict(payload)))

    async def _insert_plain(self, kind: str, topic: str, payload: bytes) -> Committed:
        now = self._wall_clock().timestamp()
        return await self._run(lambda s: s.insert(kind, topic, payload, msg_id=None, created_at=now),
                               durable=False)

    # ------------------------------------------------------------------ the publisher's side

    async def acknowledge(self, row_ids: Sequence[int]) -> int:
        """Delete rows the broker acknowledged; returns how many still existed."""
        ids = list(row_ids)
        if not ids:
            return 0
        return await self._run(lambda s: s.delete(ids), durable=False)

    def _reader_conn(self) -> sqlite3.Connection:
        if self._read_conn is None:
            conn = sqlite3.connect(str(self._store.path), isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
            conn.execute("PRAGMA query_only=1")
            self._read_conn = conn
        return self._read_conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise OutboxError("outbox is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, lambda: fn(self._reader_conn()))
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self._store.path}: read failed: {err}") from err

    async def fetch_after(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Rows with ``id > after_id`` in commit order (the live stream)."""
        return await self._read(lambda c: [OutboxRow(*_row(r)) for r in c.execute(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (after_id, limit))])

    async def fetch_backlog(self, drop_class: int, after_id: int, upto_id: int, limit: int) -> list[OutboxRow]:
        """Rows of one drop class with ``after_id < id <= upto_id`` in commit (= seq) order."""
        return await self._read(lambda c: [OutboxRow(*_row(r)) for r in c.execute(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE class = ? AND id > ? AND id <= ? "  # noqa: S608
            "ORDER BY id LIMIT ?", (drop_class, after_id, upto_id, limit))])

    async def max_row_id(self) -> int:
        """The highest row id ever assigned (the live/backlog boundary at a connect)."""
        def query(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0
        return await self._read(query)

    async def stats(self) -> BacklogStats:
        def oldest(c: sqlite3.Connection) -> float | None:
            row = c.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
            return float(row[0]) if row else None
        created = await self._read(oldest)
        c = self._store.published
        age = None if created is None else max(0.0, self._wall_clock().timestamp() - created)
        return BacklogStats(
            pending=sum(c.count), sequenced=c.sequenced, bytes=c.nbytes,
            by_class={"keep": c.count[KEEP], "media": c.count[MEDIA], "telemetry": c.count[TELEMETRY]},
            oldest_age_s=age, full=c.full, dropped=dict(c.dropped), next_seq=c.next_seq, boot_id=c.boot_id,
        )

    def pending_count(self) -> int:
        """Rows not yet acknowledged, as of the last commit (cheap: no database access)."""
        return sum(self._store.published.count)

    @property
    def backlog_full(self) -> bool:
        return self._store.published.full

    async def open_transaction_ids(self) -> list[str]:
        return await self._read(lambda c: [str(r[0]) for r in c.execute(
            "SELECT transaction_id FROM open_transactions ORDER BY opened_at")])

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Wait for queued commits, then close both connections and threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._reader.submit(self._close_reader).result()
        self._reader.shutdown(wait=True)
        self._store.conn.close()

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if fut.cancelled():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _row(r: tuple[Any, ...]) -> tuple[Any, ...]:
    row_id, kind, topic, qos, retain, seq, msg_id, created_at, payload = r
    return (int(row_id), str(kind), str(topic), int(qos), bool(retain), seq, msg_id, float(created_at),
            bytes(payload))


def _transaction_id(record: Mapping[str, Any]) -> str:
    transaction_id = record.get("transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id:
        raise ValueError("a transaction record needs a non-empty string transaction_id")
    return transaction_id


def _complete_op(transaction_id: str, topic: str, body: Mapping[str, Any],
                 created_at: float) -> Callable[[_Store], Committed]:
    msg_id = str(ULID())

    def op(store: _Store) -> Committed:
        store.close_transaction(transaction_id)
        return store.insert("transaction", topic, body, msg_id=msg_id, created_at=created_at)

    return op

