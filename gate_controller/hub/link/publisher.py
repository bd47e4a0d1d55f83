"""Moving outbox rows to the broker: the window, backlog and live together, PUBACKs, deletions.

Durability lives in the `Outbox`; the publisher only moves rows to the broker and deletes them once
the broker acknowledged them (the package docstring has the rules: mids per session, the bounded
window, the backlog/live boundary at each CONNACK). It runs on the event loop; paho's callbacks
reach it through the link, already handed over to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from gate_controller.core.errors import HubError, OutboxError
from gate_controller.hub.link.session import Flight, Session, json_bytes, wait_event
from gate_controller.hub.outbox import Outbox, OutboxRow

logger = logging.getLogger(__name__)

_MID_SPACE: Final = 65535
_LAP_MARGIN: Final = 256
_FETCH_BATCH_MIN: Final = 64
_ACK_COALESCE_S: Final = 0.01


class Publisher:
    """The outbox side of the hub link: one per `HubLink`, serving one session at a time.

    ``wake`` is set whenever there may be something to do (new rows, a PUBACK, a session ending);
    ``stopping`` is the link's shutdown flag.
    """

    def __init__(self, outbox: Outbox, *, window: int, keepalive_s: float, wake: asyncio.Event,
                 stopping: asyncio.Event) -> None:
        self.outbox = outbox
        self._window = window
        self._fetch_batch = max(_FETCH_BATCH_MIN, 2 * window)
        self._keepalive_s = keepalive_s
        self._wake = wake
        self._stopping = stopping
        self._latest_id = 0
        self._ack_event = asyncio.Event()
        self._ack_queue: list[int] = []
        self._acked: set[int] = set()
        self.acks_final = False
        """Set (with `finish_acks`) when the link stops: the flusher deletes what is left and returns."""
        self.published = 0
        self.acknowledged = 0

    # ------------------------------------------------------------------ sessions

    async def begin(self, s: Session) -> None:
        """At CONNACK: rows up to the highest row id so far are this session's backlog."""
        s.boundary = await self.outbox.max_row_id()
        s.live_after = s.boundary
        self._latest_id = max(self._latest_id, s.boundary)

    def abort(self, s: Session, reason: str) -> None:
        """End a session whose acknowledgements can no longer be trusted; rows stay in the outbox."""
        logger.error("hub link: ending session %d: %s", s.number, reason)
        self.end(s, reason)

    def end(self, s: Session, reason: str) -> None:
        s.alive = False
        if not s.closed.done():
            s.closed.set_result(reason)
        self._wake.set()

    def _register(self, s: Session, mid: int, flight: Flight) -> None:
        if mid in s.inflight:
            # Two messages waiting under one mid: a PUBACK could not be attributed. End the session
            # rather than guess; both rows stay in the outbox and go out again after the reconnect.
            self.abort(s, f"mid {mid} reused while still awaiting PUBACK")
            raise HubError("mid collision")
        s.inflight[mid] = flight
        s.published += 1

    def publish_direct(self, s: Session, topic: str, payload: Mapping[str, Any], *,
                       retain: bool, wait: bool) -> asyncio.Future[bool] | None:
        """Status messages bypass the outbox: they describe the present, and the next CONNACK
        (or the broker's Will) replaces whatever a lost one would have said. Call on the loop."""
        info = s.client.publish(topic, json_bytes(payload), qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise HubError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        waiter: asyncio.Future[bool] | None = asyncio.get_running_loop().create_future() if wait else None
        self._register(s, info.mid, Flight(None, s.published, waiter))
        return waiter

    # ------------------------------------------------------------------ the pump

    def _lapped(self, s: Session) -> bool:
        """True when the next mid could equal the oldest one still awaiting its PUBACK."""
        if not s.inflight:
            return False
        oldest = next(iter(s.inflight.values())).index
        return s.published - oldest >= _MID_SPACE - _LAP_MARGIN - self._window

    async def pump(self, s: Session) -> None:
        """Keep the window full for one session until it ends or the link stops."""
        keepalive = self._keepalive_s
        lapped_since: float | None = None
        while s.alive and not self._stopping.is_set():
            self._wake.clear()
            await self._fill(s)
            if not s.alive or self._stopping.is_set():
                return
            if self._lapped(s):
                lapped_since = lapped_since or time.monotonic()
                if time.monotonic() - lapped_since > 2 * keepalive:
                    self.abort(s, "oldest message unacknowledged for too long")
                    return
            else:
                lapped_since = None
            await wait_event(self._wake, keepalive)

    async def _fill(self, s: Session) -> None:
        while s.alive and len(s.rows_inflight) < self._window and not self._lapped(s):
            row = await self._next_row(s)
            if row is None or not s.alive:
                return
            self._publish_row(s, row)

    async def _next_row(self, s: Session) -> OutboxRow | None:
        for _ in range(2):
            source = s.turn
            s.turn ^= 1
            row = await (self._next_live(s) if source == 0 else self._next_backlog(s))
            if row is not None:
                return row
        return None

    def _usable(self, s: Session, row: OutboxRow) -> bool:
        return row.id not in self._acked and row.id not in s.rows_inflight

    async def _next_live(self, s: Session) -> OutboxRow | None:
        while True:
            while s.live_buf:
                row = s.live_buf.popleft()
                if self._usable(s, row):
                    return row
            if self._latest_id <= s.live_after:
                return None
            rows = await self.outbox.fetch_after(s.live_after, self._fetch_batch)
            if not rows:
                # Everything after the cursor was already dropped or deleted.
                s.live_after = max(s.live_after, self._latest_id)
                return None
            s.live_after = rows[-1].id
            s.live_buf.extend(rows)

    async def _next_backlog(self, s: Session) -> OutboxRow | None:
        while True:
            while s.backlog_buf:
                row = s.backlog_buf.popleft()
                if self._usable(s, row):
                    return row
            if s.backlog_done:
                return None
            cls = s.backlog_class
            rows = await self.outbox.fetch_backlog(cls, s.backlog_after[cls], s.boundary, self._fetch_batch)
            if rows:
                s.backlog_after[cls] = rows[-1].id
                s.backlog_buf.extend(rows)
            elif cls < 2:
                s.backlog_class += 1
            else:
                s.backlog_done = True

    def _publish_row(self, s: Session, row: OutboxRow) -> None:
        payload = row.wire_payload(historical=row.id <= s.boundary)
        try:
            info = s.client.publish(row.topic, payload, qos=row.qos, retain=row.retain)
        except ValueError as err:
            # Only an oversized image can get here (> 256 MB); it can never be sent.
            logger.error("hub link: dropping outbox row %d (%s): %s", row.id, row.topic, err)  # noqa: TRY400
            self._acked.add(row.id)
            self._ack_queue.append(row.id)
            self._ack_event.set()
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # paho saw the connection drop before its disconnect callback reached us.
            self.end(s, "connection lost")
            return
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.abort(s, f"publish failed: {mqtt.error_string(info.rc)}")
            return
        try:
            self._register(s, info.mid, Flight(row.id, s.published))
        except HubError:
            return
        s.rows_inflight.add(row.id)
        self.published += 1

    # ------------------------------------------------------------------ acknowledgements

    def on_publish(self, s: Session, mid: int) -> None:
        # Callbacks of a session we ended are ignored: ignoring a PUBACK can only cause a
        # duplicate, never a loss.
        if not s.alive:
            return
        flight = s.inflight.pop(mid, None)
        if flight is None:
            logger.debug("hub link: PUBACK for unknown mid %d", mid)
            return
        if flight.row_id is not None:
            s.rows_inflight.discard(flight.row_id)
            self._acked.add(flight.row_id)
            self._ack_queue.append(flight.row_id)
            self.acknowledged += 1
            self._ack_event.set()
        elif flight.waiter is not None and not flight.waiter.done():
            flight.waiter.set_result(True)
        self._wake.set()

    def on_rows(self, max_id: int) -> None:
        """The outbox's listener: rows up to ``max_id`` were committed."""
        if max_id > self._latest_id:
            self._latest_id = max_id
            self._wake.set()

    def finish_acks(self) -> None:
        """Let `ack_flusher` delete what is acknowledged so far, without waiting, and return."""
        self.acks_final = True
        self._ack_event.set()

    async def ack_flusher(self) -> None:
        """Delete acknowledged rows in batches (one SQL transaction for all acks so far).

        Deletions wait a few milliseconds so that the PUBACKs of a window arrive together and
        share one SQL transaction, leaving the writer thread to the commits lanes wait for. A
        deletion that is late or lost costs nothing but a duplicate after a restart: until the
        row is gone, this process skips it by id.
        """
        while True:
            await self._ack_event.wait()
            if not self.acks_final:
                await asyncio.sleep(_ACK_COALESCE_S)
            self._ack_event.clear()
            if self._ack_queue:
                ids, self._ack_queue = self._ack_queue, []
                try:
                    await self.outbox.acknowledge(ids)
                except OutboxError as err:
                    logger.error("hub link: cannot delete %d acknowledged rows (retried with the next): %s",  # noqa: TRY400
                                 len(ids), err)
                    if not self.acks_final:
                        self._ack_queue[:0] = ids
                else:
                    self._acked.difference_update(ids)
            if self.acks_final:
                return
