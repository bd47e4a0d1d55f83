"""Customs release notices: verified, ordered, and kept durably on the gate (MQTT contract section 7).

The hub publishes one retained notice per container on ``smartgate/v1/{site}/release/{number}``.
The gate keeps its own copy in SQLite so that it decides correctly while the broker is unreachable
and after a restart before the broker has re-sent anything.

Rules (docs/decisions.md, "Release notices"):

- A notice is applied only if it is a JSON object with a valid ``sig`` (HMAC-SHA256 with the site
  key, `gate_controller.decision.signing`), well-formed fields, and a ``container`` equal to the topic's.
  Anything else is rejected and changes nothing.
- Per container the notice with the later ``ts`` is the state. An older notice (a re-delivery
  overtaken by a newer one) is ignored. At an equal ``ts`` the stricter status wins
  (inspect > hold > released): that is what "an inspection order or hold always beats a release"
  means when there is one notice per container and two of them claim the same instant; a
  release only lifts a hold or inspection order by being *newer*.
- The same notice again (a broker re-sending its retained copy) is harmless: "unchanged".
- An empty payload deletes the notice. MQTT defines deletion that way, so it cannot carry a
  signature; that is safe because a deletion can only take a container *away* from release. The
  deleted notice's ``ts`` stays behind as a tombstone so that a late copy of it, or of anything
  older, cannot resurrect it.
- ``expires_at`` in the past: the notice stays stored (its ``ts`` still orders later ones) but
  `NoticeStore.lookup` no longer returns it.

Thread safety: one connection behind a lock, opened with ``check_same_thread=False``, so the hub
link may apply notices from an executor thread while decisions look them up from the event loop.
Each apply is one fsynced transaction (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

from gate_controller.decision.identity import is_valid_number
from gate_controller.decision.signing import SIG_FIELD, canonical_json, verify

__all__ = [
    "Notice",
    "NoticeOutcome",
    "NoticeResult",
    "NoticeStatus",
    "NoticeStore",
    "format_ts",
    "parse_ts",
]

log = logging.getLogger(__name__)

NoticeStatus = Literal["released", "hold", "inspect"]
_STATUSES: Final[dict[str, NoticeStatus]] = {status: status for status in get_args(NoticeStatus)}
# Strictness for notices that claim the same instant: an inspection order or a hold beats a release.
_STRICTNESS: Final = {"released": 0, "hold": 1, "inspect": 2}
_MAX_TEXT: Final = 256
_FUTURE_WARNING: Final = timedelta(seconds=300)
_SCHEMA_VERSION: Final = 1


class NoticeResult(enum.StrEnum):
    STORED = "stored"
    """The notice is now the container's state."""
    DELETED = "deleted"
    """An empty payload removed the container's notice."""
    UNCHANGED = "unchanged"
    """The same notice (or deletion) again: nothing to do."""
    STALE = "stale"
    """Authentic, but older than (or at the same instant less strict than) what is stored."""
    REJECTED = "rejected"
    """Malformed, forged, or for another container: ignored."""


@dataclass(frozen=True, slots=True)
class Notice:
    container: str
    status: NoticeStatus
    declared: str | None
    ref: str | None
    expires_at: datetime | None
    ts: datetime

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class NoticeOutcome:
    result: NoticeResult
    container: str
    notice: Notice | None
    """The notice in force for the container after this message (None if none)."""
    detail: str | None = None
    """Why a message was rejected or stale, for the log and the COMMAND_REJECTED-style event."""

    @property
    def changed(self) -> bool:
        return self.result in (NoticeResult.STORED, NoticeResult.DELETED)


def parse_ts(value: object) -> datetime:
    """An ISO-8601 timestamp with an explicit UTC offset (contract: ``2026-11-22T04:00:00.123Z``)."""
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError(f"timestamp must be an ISO-8601 string (got {value!r})")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"timestamp {value!r} is not ISO-8601") from err
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no UTC offset")
    return parsed.astimezone(UTC)


def format_ts(value: datetime) -> str:
    """The contract's timestamp form: UTC, milliseconds, ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _micros(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _optional_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"'{key}' must be a string of at most {_MAX_TEXT} characters or null")
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _parse(container: str, payload: bytes, key: bytes) -> tuple[Notice, dict[str, Any]]:
    """Decode and check one notice; every problem raises ValueError or TypeError, readable."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"malformed JSON: {err}") from err
    if not isinstance(obj, dict):
        raise TypeError("the notice must be a JSON object")
    if not verify(obj, key):
        raise ValueError("missing or wrong signature")
    if obj.get("container") != container:
        raise ValueError(f"'container' {obj.get('container')!r} does not match the topic's {container!r}")
    status = _STATUSES.get(obj["status"]) if isinstance(obj.get("status"), str) else None
    if status is None:
        raise ValueError(f"'status' must be one of {sorted(_STATUSES)} (got {obj.get('status')!r})")
    expires = obj.get("expires_at")
    notice = Notice(
        container=container,
        status=status,
        declared=_optional_text(obj, "declared"),
        ref=_optional_text(obj, "ref"),
        expires_at=None if expires is None else parse_ts(expires),
        ts=parse_ts(obj.get("ts")),
    )
    return notice, obj


class NoticeStore:
    """The gate's durable copy of the site's release notices (SQLite, one row per container)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        self._db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"notice store schema version {version} is not {_SCHEMA_VERSION}")
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS notices (
                       container TEXT PRIMARY KEY,
                       status TEXT,            -- NULL: deleted (a tombstone keeping ts_us)
                       declared TEXT,
                       ref TEXT,
                       expires_at TEXT,
                       ts TEXT,
                       ts_us INTEGER,
                       payload BLOB,
                       received_at TEXT NOT NULL
                   )"""
            )
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> NoticeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(self, container: str, payload: bytes, *, key: bytes, now: datetime) -> NoticeOutcome:
        """Apply one message received on ``.../release/{container}`` (``payload`` as received)."""
        now = _aware(now)
        if not is_valid_number(container):
            return NoticeOutcome(
                NoticeResult.REJECTED, container, None, f"{container!r} is not a valid container number",
            )
        if not payload:
            return self._delete(container, now)
        try:
            notice, obj = _parse(container, payload, key)
        except (TypeError, ValueError) as err:
            log.warning("release notice for %s rejected: %s", container, err)
            return NoticeOutcome(NoticeResult.REJECTED, container, self.lookup_any(container), str(err))
        if notice.ts - now > _FUTURE_WARNING:
            log.warning("release notice for %s is dated %s, ahead of the gate clock", container, format_ts(notice.ts))
        # Extra keys are signed, so authentic; they are kept in the stored body but not interpreted.
        body = canonical_json({k: v for k, v in obj.items() if k != SIG_FIELD})
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT status, ts_us, payload FROM notices WHERE container = ?", (container,)
                ).fetchone()
                verdict = self._order(notice, body, row)
                if verdict is None:
                    self._db.execute(
                        """INSERT OR REPLACE INTO notices
                           (container, status, declared, ref, expires_at, ts, ts_us, payload, received_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (
                            container, notice.status, notice.declared, notice.ref,
                            None if notice.expires_at is None else format_ts(notice.expires_at),
                            format_ts(notice.ts), _micros(notice.ts), body, format_ts(now),
                        ),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if verdict is None:
            log.info("release notice for %s: %s (ts %s)", container, notice.status, format_ts(notice.ts))
            return NoticeOutcome(NoticeResult.STORED, container, notice)
        result, detail = verdict
        return NoticeOutcome(result, container, self.lookup_any(container), detail)

    @staticmethod
    def _order(
        notice: Notice, body: bytes, row: tuple[str | None, int | None, bytes | None] | None,
    ) -> tuple[NoticeResult, str] | None:
        """None to store ``notice``, else why not."""
        if row is None:
            return None
        status, ts_us, stored_body = row
        mine = _micros(notice.ts)
        if status is None:  # tombstone
            if ts_us is not None and mine <= ts_us:
                return NoticeResult.STALE, "not newer than a notice that was deleted"
            return None
        assert ts_us is not None
        if mine > ts_us:
            return None
        if mine < ts_us:
            return NoticeResult.STALE, "older than the stored notice"
        if stored_body == body:
            return NoticeResult.UNCHANGED, "the stored notice again"
        if _STRICTNESS[notice.status] > _STRICTNESS[status]:
            return None
        return NoticeResult.STALE, f"same ts as the stored notice and not stricter than {status!r}"

    def _delete(self, container: str, now: datetime) -> NoticeOutcome:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT status FROM notices WHERE container = ?", (container,)).fetchone()
                live = row is not None and row[0] is not None
                if live:
                    self._db.execute(
                        """UPDATE notices SET status = NULL, declared = NULL, ref = NULL, expires_at = NULL,
                           payload = NULL, received_at = ? WHERE container = ?""",
                        (format_ts(now), container),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if live:
            log.info("release notice for %s deleted", container)
            return NoticeOutcome(NoticeResult.DELETED, container, None)
        return NoticeOutcome(NoticeResult.UNCHANGED, container, None, "no notice to delete")

    def lookup(self, container: str, now: datetime) -> Notice | None:
        """The notice in force for ``container`` at ``now``; None if none, deleted or expired."""
        notice = self.lookup_any(container)
        if notice is None or not notice.active(_aware(now)):
            return None
        return notice

    def lookup_any(self, container: str) -> Notice | None:
        """The stored notice even if expired (for diagnostics); None if none or deleted."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, declared, ref, expires_at, ts FROM notices WHERE container = ? AND status IS NOT NULL",
                (container,),
            ).fetchone()
        if row is None:
            return None
        status, declared, ref, expires_at, ts = row
        return Notice(
            container=container, status=status, declared=declared, ref=ref,
            expires_at=None if expires_at is None else parse_ts(expires_at), ts=parse_ts(ts),
        )

    def count(self, now: datetime) -> int:
        """Notices in force (for telemetry)."""
        stamp = format_ts(_aware(now))
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM notices WHERE status IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)",
                (stamp,),
            ).fetchone()
        return int(row[0])

    def prune(self, now: datetime, *, keep: timedelta = timedelta(days=30)) -> int:
        """Forget tombstones and expired notices older than ``keep``; returns rows removed.

        After that long the broker no longer holds (or re-sends) the deleted or expired notice,
        so nothing is left that the tombstone must outrank.
        """
        cutoff = format_ts(_aware(now) - keep)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    """DELETE FROM notices WHERE received_at < ?
                       AND (status IS NULL OR (expires_at IS NOT NULL AND expires_at < ?))""",
                    (cutoff, cutoff),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cur.rowcount)
