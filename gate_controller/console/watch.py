"""What the console remembers of the running gate: recent transactions, previews, decisions, alarms.

The daemon feeds it from the event loop, right after each commit (a transaction, an event), each
decision and each preview. Every call is a few dictionary operations and a non-blocking hand-over
to the connected browsers: the lane never waits for the console, and a browser that cannot keep
up loses feed items (it is told, and reloads), never the lane's time. Everything is bounded:
``size`` transactions, decisions and cleared alarms, and previews up to ``preview_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gate_controller.core.ports import Decider, DecisionOutcome, OcrObservation, PassageEvidence

__all__ = ["Alarm", "Decision", "FeedItem", "GateWatch", "Subscription", "WatchedDecider"]

MOMENTARY_ALARMS = frozenset({"COMMAND_REJECTED", "NOTICE_REJECTED"})
"""Alarms raised once and never cleared by a later event: shown among the cleared ones at once."""

_QUEUE_SIZE = 64


@dataclass(frozen=True)
class FeedItem:
    """One message pushed to the browsers: ``kind`` is ``transaction``, ``event`` or ``lagged``."""

    kind: str
    body: Mapping[str, Any]
    number: int = 0
    """Position in the feed since the daemon started (renders are shared by it)."""


@dataclass(frozen=True)
class Decision:
    """What the decider was given and what it said, kept for the transaction detail page."""

    transaction_id: str
    container_reads: tuple[OcrObservation, ...]
    plate_reads: tuple[OcrObservation, ...]
    action: str
    reasons: tuple[str, ...]
    extra: Mapping[str, Any]


@dataclass
class Alarm:
    key: tuple[str, str, str]
    code: str
    lane: str | None
    severity: str
    detail: Mapping[str, Any]
    raised_at: str
    cleared_at: str | None = None
    momentary: bool = False


@dataclass(eq=False)
class Subscription:
    """One browser's feed: a bounded queue; ``lagged`` once items had to be dropped for it."""

    queue: asyncio.Queue[FeedItem] = field(default_factory=lambda: asyncio.Queue(maxsize=_QUEUE_SIZE))
    lagged: bool = False
    dropped: int = 0


def _bounded_put(store: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


def _alarm_key(body: Mapping[str, Any]) -> tuple[str, str, str]:
    detail = body.get("detail") or {}
    which = detail.get("link") or detail.get("code") or detail.get("point") or ""
    return (str(body.get("code")), str(body.get("lane") or ""), str(which))


class GateWatch:
    def __init__(self, *, size: int = 100, preview_bytes: int = 4 * 1024 * 1024) -> None:
        self.size = size
        self.preview_bytes = preview_bytes
        self.started = time.time()
        self._transactions: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self._previews: OrderedDict[str, bytes] = OrderedDict()
        self._preview_total = 0
        self._events: deque[Mapping[str, Any]] = deque(maxlen=size)
        self._active: dict[tuple[str, str, str], Alarm] = {}
        self._cleared: deque[Alarm] = deque(maxlen=size)
        self._subscribers: set[Subscription] = set()
        self.counters = {"transactions": 0, "events": 0, "previews": 0, "feed_dropped": 0}
        self._pushed = 0

    # ------------------------------------------------------------------ fed by the daemon (loop)

    def on_message(self, kind: str, message: Mapping[str, Any]) -> None:
        """The outbox observer: every committed transaction and event."""
        if kind == "transaction":
            self.on_transaction(message)
        elif kind == "event":
            self.on_event(message)

    def on_transaction(self, record: Mapping[str, Any]) -> None:
        transaction_id = str(record.get("transaction_id"))
        _bounded_put(self._transactions, transaction_id, dict(record), self.size)
        self.counters["transactions"] += 1
        self._push("transaction", record)

    def on_event(self, body: Mapping[str, Any]) -> None:
        self._events.append(dict(body))
        self.counters["events"] += 1
        if body.get("type") == "alarm":
            self._track_alarm(body)
        self._push("event", body)

    def on_decision(self, evidence: PassageEvidence, outcome: DecisionOutcome) -> None:
        decision = Decision(
            transaction_id=evidence.transaction_id, container_reads=evidence.container_reads,
            plate_reads=evidence.plate_reads, action=outcome.action, reasons=outcome.reasons,
            extra=dict(outcome.extra),
        )
        _bounded_put(self._decisions, evidence.transaction_id, decision, self.size)

    def on_preview(self, scan_id: str, jpeg: bytes) -> None:
        old = self._previews.pop(scan_id, None)
        if old is not None:
            self._preview_total -= len(old)
        if len(jpeg) > self.preview_bytes:
            return
        self._previews[scan_id] = bytes(jpeg)
        self._preview_total += len(jpeg)
        self.counters["previews"] += 1
        while self._preview_total > self.preview_bytes or len(self._previews) > self.size:
            _, dropped = self._previews.popitem(last=False)
            self._preview_total -= len(dropped)

    def _track_alarm(self, body: Mapping[str, Any]) -> None:
        key = _alarm_key(body)
        code = str(body.get("code"))
        ts = str(body.get("ts") or "")
        if body.get("active") and code not in MOMENTARY_ALARMS:
            self._active[key] = Alarm(key, code, body.get("lane"), str(body.get("severity")),
                                      dict(body.get("detail") or {}), ts)
            return
        alarm = self._active.pop(key, None)
        if alarm is None:
            alarm = Alarm(key, code, body.get("lane"), str(body.get("severity")), dict(body.get("detail") or {}),
                          ts, momentary=code in MOMENTARY_ALARMS)
            if not alarm.momentary:
                return  # a clearing event for an alarm raised before the console started
        alarm.cleared_at = ts if not alarm.momentary else None
        self._cleared.appendleft(alarm)

    # ------------------------------------------------------------------ browsers

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _push(self, kind: str, body: Mapping[str, Any]) -> None:
        self._pushed += 1
        item = FeedItem(kind, body, self._pushed)
        for sub in self._subscribers:
            if sub.lagged:
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                # The browser is not reading: stop feeding it and tell it once, when it reads again.
                sub.lagged = True
                sub.dropped += 1
                self.counters["feed_dropped"] += 1

    # ------------------------------------------------------------------ read by the pages

    def transactions(self) -> list[Mapping[str, Any]]:
        """Newest first."""
        return list(reversed(self._transactions.values()))

    def transaction(self, transaction_id: str) -> Mapping[str, Any] | None:
        return self._transactions.get(transaction_id)

    def decision(self, transaction_id: str) -> Decision | None:
        return self._decisions.get(transaction_id)

    def preview(self, scan_id: str) -> bytes | None:
        return self._previews.get(scan_id)

    def has_preview(self, scan_id: str | None) -> bool:
        return scan_id is not None and scan_id in self._previews

    def active_alarms(self) -> list[Alarm]:
        return sorted(self._active.values(), key=lambda a: a.raised_at, reverse=True)

    def cleared_alarms(self) -> list[Alarm]:
        return list(self._cleared)

    def events(self) -> list[Mapping[str, Any]]:
        """Newest first."""
        return list(reversed(self._events))


class WatchedDecider:
    """The lane's `Decider`, reporting each passage's evidence and outcome to the watch.

    The report is a bounded dictionary insert after the decision; the decision itself is the inner
    decider's, unchanged and not delayed.
    """

    def __init__(self, inner: Decider, watch: GateWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        outcome = await self._inner.decide(evidence)
        self._watch.on_decision(evidence, outcome)
        return outcome
