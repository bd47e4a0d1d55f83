"""The outbox's write side: the SQLite schema, the inserts and deletions, and the backlog limits.

`Store` runs on one thread at a time (`Outbox.open`, then the writer thread). A batch of operations
is one SQL transaction; a transaction or event gets its ``msg_id``, ``seq`` and ``boot_id`` in the
transaction that stores it. After every batch the backlog limits are enforced (telemetry dropped
first, then previews and images) and the ``BACKLOG_FULL`` alarm is raised or cleared in the same
transaction (the package docstring has the rules).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ulid import ULID

from gate_controller.config import BacklogConfig
from gate_controller.core.errors import OutboxError
from gate_controller.core.timestamps import WallClock, utc_timestamp
from gate_controller.hub.outbox.rows import (
    CLASS_OF,
    KEEP,
    MEDIA,
    QOS_OF,
    RESERVED_KEYS,
    SEQUENCED,
    TELEMETRY,
    Committed,
    dumps,
)

MB: Final = 1024 * 1024

logger = logging.getLogger(__name__)


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

ROW_COLUMNS = "id, kind, topic, qos, retain, seq, msg_id, created_at, payload"


@dataclass(frozen=True, slots=True)
class _Counters:
    count: tuple[int, ...]
    nbytes: int
    sequenced: int
    full: bool
    dropped: dict[str, int]
    next_seq: int
    boot_id: int


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one commit is one fsync.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # Keep the WAL file from staying huge after a burst of images has been checkpointed.
    conn.execute("PRAGMA journal_size_limit=67108864")
    return conn


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class Store:
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
            if kind in SEQUENCED:
                self.sequenced += n
        self.dropped = {"telemetry": 0, "preview": 0, "image": 0}
        self._needs_fsync = False
        self.emitted: list[Mapping[str, Any]] = []
        """Events the store wrote itself (``BACKLOG_FULL``) in the last committed batch, as published;
        `Outbox` hands them to its observers like any other event."""
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

    def batch(self, ops: Sequence[Callable[[Store], Any]], durable: bool) -> list[Any]:
        """Run ``ops`` in one SQL transaction; a failing op is rolled back alone (its exception
        is its result), a failing commit fails them all with `OutboxError`."""
        before = self._snapshot()
        meta_before = (self.next_seq, self.full)
        results: list[Any] = []
        self.emitted = []
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
            self.emitted = []  # rolled back: nothing was written
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
        cls = CLASS_OF[kind]
        seq: int | None = None
        if kind in SEQUENCED:
            assert isinstance(body, Mapping)
            assert msg_id is not None
            seq = self.next_seq
            doc: dict[str, Any] = {}
            if "schema" in body:
                doc["schema"] = body["schema"]
            doc.update(msg_id=msg_id, seq=seq, boot_id=self.boot_id)
            doc.update((k, v) for k, v in body.items() if k not in doc and k not in RESERVED_KEYS)
            payload = dumps(doc)
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = dumps(dict(body))
        cur = self.conn.execute(
            "INSERT INTO outbox (kind, class, topic, qos, retain, seq, msg_id, created_at, size, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, cls, topic, QOS_OF[kind], int(retain), seq, msg_id, created_at, len(payload), payload),
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
        return len(self._delete_rows(ids))

    def _delete_rows(self, ids: Sequence[int]) -> list[str]:
        """Delete rows by id (in chunks of 500 bound parameters) and keep the counters; returns the
        kinds of the rows that still existed."""
        kinds: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for cls, kind, size in self.conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING class, kind, size", chunk  # noqa: S608
            ).fetchall():
                self.count[cls] -= 1
                self.bytes[cls] -= size
                if kind in SEQUENCED:
                    self.sequenced -= 1
                kinds.append(kind)
        return kinds

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
        for kind in self._delete_rows(victims):
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
        committed = self.insert("event", self.event_topic, body, msg_id=str(ULID()), created_at=now.timestamp())
        self.emitted.append({**body, "msg_id": committed.msg_id, "seq": committed.seq, "boot_id": self.boot_id})
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
