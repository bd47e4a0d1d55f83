"""`Outbox`: the async front of the durable outbox and the transaction journal.

All writes go through one writer thread that commits whatever has queued up as one SQL transaction
(group commit), so concurrent lanes share an fsync instead of queueing behind each other; reads for
the publisher use a second connection on a reader thread (WAL readers never block the writer).
Opening the outbox counts the start in ``boot_id`` and completes the transactions the previous run
left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar, cast, get_args

from ulid import ULID

from gate_controller.config import BacklogConfig
from gate_controller.core.errors import OutboxError
from gate_controller.core.ports import EventSeverity, EventType
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from gate_controller.hub.outbox.journal import complete_op, record_transaction_id, recovered_record
from gate_controller.hub.outbox.rows import (
    KEEP,
    MEDIA,
    RESERVED_KEYS,
    TELEMETRY,
    TRANSACTION_SCHEMA,
    BacklogStats,
    Committed,
    OutboxRow,
    dumps,
)
from gate_controller.hub.outbox.store import ROW_COLUMNS, Store, disk_free_bytes

_EVENT_TYPES: Final = frozenset(get_args(EventType))
_SEVERITIES: Final = frozenset(get_args(EventSeverity))

logger = logging.getLogger(__name__)


T = TypeVar("T")


class Outbox:
    """The durable outbox and transaction journal (implements `ports.TransactionJournal`).

    Open it once at daemon start with `Outbox.open` (bumps ``boot_id``, completes transactions left
    open by the previous run), share it between the lanes (journal), the `HubLink` (publisher) and
    `Telemetry`, and `close` it last. The async methods may be called from the event loop that
    first uses the outbox; blocking work happens on the outbox's own two threads.
    """

    def __init__(self, store: Store, *, root_topic: str, site: str, gate: str, wall_clock: WallClock,
                 recovered: Sequence[str]) -> None:
        self._store = store
        self.root_topic = root_topic
        self.site = site
        self.gate = gate
        self._wall_clock = wall_clock
        self.recovered: tuple[str, ...] = tuple(recovered)
        """Transaction ids that `open` completed as cancelled by restart."""
        self._queue: queue.SimpleQueue[tuple[Callable[[Store], Any], bool, asyncio.Future[Any],
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
            store = Store(db, limits or BacklogConfig(), disk_free or (lambda: disk_free_bytes(db.parent)),
                           wall_clock)
            store.event_topic = f"{root_topic}/events"
            previous = store.boot_id
            boot_id = store.bump_boot_id()
            now = wall_clock()
            recovered: list[str] = []
            ops: list[Callable[[Store], Any]] = []
            for transaction_id, old_boot, text in store.open_records():
                try:
                    record = json.loads(text)
                except ValueError:
                    logger.exception("outbox: open transaction %s from boot %d is unreadable; dropped",
                                     transaction_id, old_boot)
                    ops.append(partial(Store.close_transaction, transaction_id=transaction_id))
                    continue
                body = recovered_record(record, now=now, site=site, gate=gate)
                ops.append(complete_op(transaction_id, f"{root_topic}/transactions", body, now.timestamp()))
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
        ``event``, with the message as published (without ``historical``), including the events the
        outbox raises itself (``BACKLOG_FULL``). It must return at once: the committing lane is
        waiting (the technician console's feed)."""
        self._observers.append(observer)

    def _observe(self, kind: str, message: Mapping[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(kind, message)
            except Exception:  # an observer is a view; the commit stands whatever it does
                logger.exception("outbox observer failed on a %s", kind)

    def _observe_emitted(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Events the store wrote on the writer thread (``BACKLOG_FULL`` raised or cleared), on the loop."""
        for message in messages:
            self._observe("event", message)

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(max_row_id)`` runs on the event loop after every commit that added rows."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # ------------------------------------------------------------------ the write path

    async def _run(self, op: Callable[[Store], T], *, durable: bool) -> T:
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
            emitted, self._store.emitted = self._store.emitted, []
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
            if emitted:
                loop = items[-1][3]
                # One more turn of the loop: the waiters woken above observe their own commit
                # first, so observers see the events in seq order.
                loop.call_soon_threadsafe(loop.call_soon, self._observe_emitted, emitted)
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
        transaction_id = record_transaction_id(record)
        text = dumps(dict(record)).decode("utf-8")
        opened_at = self._wall_clock().timestamp()
        await self._run(lambda s: s.open_transaction(transaction_id, text, opened_at), durable=True)

    async def complete_transaction(self, record: Mapping[str, Any]) -> None:
        """Commit the finished record to the outbox (fsynced) and close its journal entry."""
        await self.commit_transaction(record)

    async def commit_transaction(self, record: Mapping[str, Any]) -> Committed:
        """`complete_transaction` that also says which ``seq``/``msg_id`` the record received."""
        transaction_id = record_transaction_id(record)
        body = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
        body.setdefault("schema", TRANSACTION_SCHEMA)
        body.setdefault("site", self.site)
        body.setdefault("gate", self.gate)
        dumps(body)  # refuse what cannot be JSON before it reaches the writer
        now = self._wall_clock().timestamp()
        committed: Committed = await self._run(
            complete_op(transaction_id, f"{self.root_topic}/transactions", body, now), durable=True)
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
        dumps(body)
        topic = f"{self.root_topic}/events"
        msg_id = str(ULID())
        committed: Committed = await self._run(
            lambda s: s.insert("event", topic, body, msg_id=msg_id, created_at=now.timestamp()), durable=True)
        if self._observers:
            self._observe("event", {**body, "msg_id": committed.msg_id, "seq": committed.seq, "boot_id": self.boot_id})
        return committed


    # ------------------------------------------------------------------ other kinds

    async def enqueue_reply(self, reply: Mapping[str, Any]) -> Committed:
        payload = dumps(dict(reply))
        return await self._insert_plain("reply", f"{self.root_topic}/reply", payload)

    async def enqueue_preview(self, scan_id: str, jpeg: bytes) -> Committed:
        return await self._insert_plain("preview", f"{self.root_topic}/scans/{scan_id}/preview", bytes(jpeg))

    async def enqueue_image(self, scan_id: str, png: bytes) -> Committed:
        return await self._insert_plain("image", f"{self.root_topic}/scans/{scan_id}/image", bytes(png))

    async def enqueue_telemetry(self, payload: Mapping[str, Any]) -> Committed:
        return await self._insert_plain("telemetry", f"{self.root_topic}/telemetry", dumps(dict(payload)))

    async def enqueue_sample_chunk(self, sample: str, chunk: int, payload: bytes) -> Committed:
        """One chunk of a labelled sample for the hub; durable, so a committed chunk is never lost."""
        now = self._wall_clock().timestamp()
        topic = f"{self.root_topic}/samples/{sample}/{chunk}"
        return await self._run(lambda s: s.insert("sample", topic, bytes(payload), msg_id=None, created_at=now),
                               durable=True)

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
            f"SELECT {ROW_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (after_id, limit))])

    async def fetch_backlog(self, drop_class: int, after_id: int, upto_id: int, limit: int) -> list[OutboxRow]:
        """Rows of one drop class with ``after_id < id <= upto_id`` in commit (= seq) order."""
        return await self._read(lambda c: [OutboxRow(*_row(r)) for r in c.execute(
            f"SELECT {ROW_COLUMNS} FROM outbox WHERE class = ? AND id > ? AND id <= ? "  # noqa: S608
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
