"""The MQTT session with the hub: connect, birth/death, publish the outbox, receive notices and commands.

Durability lives in the `Outbox`; this module only moves rows to the broker and deletes them once
the broker acknowledged them. What it relies on, and what it deliberately does not:

* **A fresh paho client per connection.** paho keeps unacknowledged QoS 1 messages in memory and
  re-sends them on its own reconnect, with the same 16-bit ``mid``s our bookkeeping uses. A new
  client for every session (``reconnect_on_failure=False``) means paho's queue dies with the
  connection; the outbox rows are the only copy that matters, and ``is_published()`` is never
  consulted.
* **PUBACK -> row mapping by mid, per session.** paho assigns ``mid`` at ``publish()``; the map
  ``mid -> row id`` is owned by the event loop, and paho callbacks reach it only through
  ``loop.call_soon_threadsafe``, so a PUBACK processed by the loop always finds its entry (the
  loop cannot run the callback before ``publish()`` has returned and the entry exists). Mids are
  16-bit and reused, so a collision with an entry still waiting ends the session instead of
  guessing (nothing is deleted without a certain PUBACK), and publishing pauses before the
  counter could lap the oldest message still waiting.
* **A bounded window** (``mqtt.max_inflight``) of rows awaiting PUBACK. Rows are deleted only on
  PUBACK (QoS 0 telemetry: once paho wrote it). On a disconnect every row in flight simply stays
  in the outbox and is sent again after the reconnect, then with ``historical: true``.
* **Backlog and live together.** At each CONNACK the highest row id is the boundary: rows up to it
  are the backlog (drained by drop class: transactions/events/replies in ``seq`` order, then media,
  then telemetry), rows after it are live; the window alternates between the two so a long
  backlog never delays a new transaction by more than one slot.
* **Our own reconnect loop** with capped exponential backoff and jitter, around the first connect
  too; TLS with CA and optional client certificate; username + password file; the Will set at
  every CONNECT; birth after every CONNACK and on ``rebirth``; a clean shutdown publishes the
  ``shutdown`` status, waits for its PUBACK and disconnects cleanly (so the broker drops the Will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gate_controller import __version__
from gate_controller.config import GateConfig, MqttConfig, read_secret, resolve_secret_path
from gate_controller.core.errors import ConfigError, HubConnectError, HubError, OutboxError
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from gate_controller.hub.outbox import Outbox, OutboxRow

__all__ = [
    "SCAN_ID_PATTERN",
    "BirthInfo",
    "CommandHandler",
    "HubLink",
    "HubStatus",
    "NoticeSink",
]

logger = logging.getLogger(__name__)

SCAN_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A scan id that is safe as one MQTT topic level and as a file name."""

_MID_SPACE: Final = 65535
_LAP_MARGIN: Final = 256
_FETCH_BATCH_MIN: Final = 64
_ACK_COALESCE_S: Final = 0.01


@dataclass(frozen=True)
class BirthInfo:
    """What the daemon tells the hub about itself in every birth message."""

    lanes: Sequence[str]
    links: Mapping[str, Literal["up", "down"]]
    model: Mapping[str, str] | None = None
    """``{"name", "version", "sha256"}`` of the loaded model, or None when none is loaded."""


class NoticeSink(Protocol):
    """Where signed release notices go (`notices.NoticeStore`): it verifies and keeps them.

    An outcome whose ``result`` is ``"rejected"`` (with a ``detail``) raises ``NOTICE_REJECTED``.
    """

    def apply(self, container: str, payload: bytes, *, key: bytes, now: datetime) -> object: ...


class CommandHandler(Protocol):
    """Verifies, executes and answers one command (see `commands.CommandDispatcher`)."""

    async def handle(self, name: str, payload: bytes) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class HubStatus:
    connected: bool
    connected_since: float | None
    """Monotonic time of the current CONNACK."""
    sessions: int
    published: int
    acknowledged: int
    inflight: int
    last_error: str | None


@dataclass(slots=True)
class _Flight:
    row_id: int | None
    index: int
    waiter: asyncio.Future[bool] | None = None
    """Resolved True on PUBACK, False when the connection ended first."""


@dataclass(eq=False)
class _Session:
    number: int
    client: mqtt.Client
    connack: asyncio.Future[None]
    closed: asyncio.Future[str]
    alive: bool = True
    boundary: int = 0
    live_after: int = 0
    backlog_after: list[int] = field(default_factory=lambda: [0, 0, 0])
    backlog_class: int = 0
    backlog_done: bool = False
    live_buf: deque[OutboxRow] = field(default_factory=deque)
    backlog_buf: deque[OutboxRow] = field(default_factory=deque)
    turn: int = 0
    inflight: dict[int, _Flight] = field(default_factory=dict)
    rows_inflight: set[int] = field(default_factory=set)
    published: int = 0
    connected_at: float = 0.0


class HubLink:
    """One gate's MQTT session with the hub; `run` it as a task, `shutdown` it to stop.

    ``birth`` is called for every birth message. ``commands`` handles ``{root}/cmd/+`` and
    ``notices`` receives ``{prefix}/{site}/release/+`` (with ``notice_key``, the site key).
    """

    def __init__(
        self,
        mqtt_config: MqttConfig,
        *,
        site: str,
        gate: str,
        outbox: Outbox,
        birth: Callable[[], BirthInfo],
        client_id: str | None = None,
        commands: CommandHandler | None = None,
        notices: NoticeSink | None = None,
        notice_key: bytes | None = None,
        config_dir: Path | None = None,
        sw_version: str = __version__,
        wall_clock: WallClock = utc_now,
        rng: random.Random | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.config = mqtt_config
        self.site = site
        self.gate = gate
        self.outbox = outbox
        self.client_id = client_id or f"smartgate-{site}-{gate}"
        self.root = f"{mqtt_config.topic_prefix}/{site}/{gate}"
        self.status_topic = f"{self.root}/status"
        self._notice_prefix = f"{mqtt_config.topic_prefix}/{site}/release/"
        self._cmd_prefix = f"{self.root}/cmd/"
        self._birth = birth
        self._commands = commands
        self._notices = notices
        self._notice_key = notice_key
        self._sw_version = sw_version
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._connect_timeout_s = connect_timeout_s
        self._started_at = utc_timestamp(wall_clock())
        self._password: str | None = None
        if mqtt_config.username is not None and mqtt_config.password_file is not None:
            self._password = read_secret(mqtt_config.password_file, base_dir=config_dir).decode("utf-8")
        self._tls = _tls_context(mqtt_config, config_dir) if mqtt_config.tls is not None else None
        self._window = mqtt_config.max_inflight
        self._fetch_batch = max(_FETCH_BATCH_MIN, 2 * self._window)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._session: _Session | None = None
        self._sessions = 0
        self._latest_id = 0
        self._ack_queue: list[int] = []
        self._acked: set[int] = set()
        self._notice_queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._command_queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._published = 0
        self._acknowledged = 0
        self._connected_since: float | None = None
        self._last_error: str | None = None
        self._running = False
        self._acks_final = False
        self._shutdown_grace_s = 5.0
        bind_rebirth = getattr(commands, "bind_rebirth", None)
        if bind_rebirth is not None:
            bind_rebirth(self.rebirth)

    @classmethod
    def from_config(
        cls,
        config: GateConfig,
        *,
        outbox: Outbox,
        birth: Callable[[], BirthInfo],
        commands: CommandHandler | None = None,
        notices: NoticeSink | None = None,
        config_dir: Path | None = None,
    ) -> HubLink:
        """The daemon's way in: site, gate, client id and site key come from the config."""
        key = read_secret(config.mqtt.command_key_file, base_dir=config_dir)
        return cls(config.mqtt, site=config.site, gate=config.gate, outbox=outbox, birth=birth,
                   client_id=config.client_id, commands=commands, notices=notices, notice_key=key,
                   config_dir=config_dir)

    # ------------------------------------------------------------------ public surface

    @property
    def connected(self) -> bool:
        return self._session is not None and self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once a session is up (wrap in ``asyncio.timeout`` to bound the wait)."""
        await self._connected.wait()

    def status(self) -> HubStatus:
        s = self._session
        return HubStatus(
            connected=self.connected, connected_since=self._connected_since, sessions=self._sessions,
            published=self._published, acknowledged=self._acknowledged,
            inflight=len(s.rows_inflight) if s is not None else 0, last_error=self._last_error,
        )

    async def publish_preview(self, scan_id: str, jpeg: bytes) -> bool:
        """Queue a scan preview (JPEG) durably; False when previews are switched off."""
        if not self.config.publish_previews:
            return False
        _check_scan_id(scan_id)
        await self.outbox.enqueue_preview(scan_id, jpeg)
        return True

    async def publish_image(self, scan_id: str, png: bytes) -> None:
        """Queue a full-resolution image (reply to ``scan.fetch``)."""
        _check_scan_id(scan_id)
        await self.outbox.enqueue_image(scan_id, png)

    async def publish_telemetry(self, payload: Mapping[str, Any]) -> None:
        """Queue one telemetry message (QoS 0; kept in the backlog within ``max_telemetry``)."""
        await self.outbox.enqueue_telemetry(payload)

    async def rebirth(self) -> bool:
        """Publish the birth message again now; False when not connected (the next CONNACK will)."""
        s = self._session
        if s is None or not s.alive or not self._connected.is_set():
            return False
        try:
            self._publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)
        except HubError as err:
            logger.warning("hub link: rebirth failed: %s", err)
            return False
        return True

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Publish the ``shutdown`` status (if connected), disconnect cleanly and let `run` return.

        ``grace_s`` bounds the wait for rows in flight and for the status message's PUBACK."""
        self._shutdown_grace_s = grace_s
        self._stopping.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Keep the session up until `shutdown`; returns after the clean disconnect."""
        if self._running:
            raise RuntimeError("HubLink.run is already running")
        self._running = True
        self._acks_final = False
        self._done.clear()
        self._loop = asyncio.get_running_loop()
        self.outbox.add_listener(self._on_rows)
        try:
            async with asyncio.TaskGroup() as tg:
                acks = tg.create_task(self._ack_flusher(), name="hub-acks")
                notices = tg.create_task(self._notice_worker(), name="hub-notices")
                commands = tg.create_task(self._command_worker(), name="hub-commands")
                try:
                    await self._connection_loop()
                finally:
                    self._notice_queue.put_nowait(None)
                    self._command_queue.put_nowait(None)
                    await asyncio.wait({notices, commands})
                    self._acks_final = True
                    self._ack_event.set()
                    await asyncio.wait({acks})
        finally:
            self.outbox.remove_listener(self._on_rows)
            self._running = False
            self._done.set()

    async def _connection_loop(self) -> None:
        failures = 0
        down_since: str | None = None
        url = f"{self.config.host}:{self.config.port}"
        while not self._stopping.is_set():
            self._sessions += 1
            session = self._new_session(self._sessions)
            try:
                await self._connect(session)
            except HubConnectError as err:
                await self._teardown(session, graceful=False)
                failures += 1
                self._last_error = str(err)
                if failures == 1:
                    logger.warning("hub link: cannot connect to %s: %s (retrying with backoff)", url, err)
                    if down_since is None:
                        down_since = utc_timestamp(self._wall_clock())
                        await self._link_event(active=True, detail={"link": "hub", "reason": str(err)})
                else:
                    logger.debug("hub link: connect attempt %d to %s failed: %s", failures, url, err)
                await self._pause(self._backoff(failures))
                continue
            logger.info("hub link: connected to %s as %s (session %d)", url, self.client_id, session.number)
            failures = 0
            reason = "shutdown"
            try:
                reason = await self._serve(session, down_since)
                down_since = None
            finally:
                await self._teardown(session, graceful=self._stopping.is_set())
            if self._stopping.is_set():
                break
            self._last_error = reason
            logger.warning("hub link: connection to %s lost: %s", url, reason)
            down_since = utc_timestamp(self._wall_clock())
            await self._link_event(active=True, detail={"link": "hub", "reason": reason})
            await self._pause(self._backoff(1))

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with equal jitter (half fixed, half random)."""
        growth = 2.0 ** min(failures - 1, 30)
        base = min(self.config.reconnect_max_s, self.config.reconnect_initial_s * growth)
        return base / 2 + self._rng.random() * base / 2

    async def _pause(self, seconds: float) -> None:
        await _wait_event(self._stopping, seconds)

    async def _link_event(self, *, active: bool, detail: Mapping[str, Any]) -> None:
        """LINK_DOWN for the hub link itself, committed like every event (it reaches the hub later)."""
        if self._stopping.is_set():
            return
        try:
            await self.outbox.emit_event(lane=None, type="alarm", code="LINK_DOWN",
                                         severity="warning" if active else "info", active=active, detail=detail)
        except OutboxError as err:
            logger.error("hub link: cannot record LINK_DOWN: %s", err)  # noqa: TRY400 - expected failure mode

    # ------------------------------------------------------------------ one session

    def _new_session(self, number: int) -> _Session:
        assert self._loop is not None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self._connect_timeout_s
        # Our window is the only flow control; paho's own in-flight cap would just queue in memory.
        client.max_inflight_messages_set(0)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self._password)
        will = {"state": "offline", "reason": "connection-lost", "boot_id": self.outbox.boot_id,
                "gate": self.gate, "site": self.site}
        client.will_set(self.status_topic, _json(will), qos=1, retain=True)
        session = _Session(number=number, client=client, connack=self._loop.create_future(),
                           closed=self._loop.create_future())
        self._bind_callbacks(session)
        return session

    def _bind_callbacks(self, s: _Session) -> None:
        """paho calls these on its network thread; each one only hands over to the loop."""
        loop = self._loop
        assert loop is not None

        def post(fn: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed during interpreter exit
                loop.call_soon_threadsafe(fn, *args)

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            post(self._on_connack, s, bool(reason.is_failure), str(reason))

        def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            # MQTT 3.1.1 has no DISCONNECT reason from the broker: paho reports a lost
            # connection as "Unspecified error".
            text = "connection lost" if str(reason) == "Unspecified error" else f"disconnected: {reason}"
            post(self._on_disconnect, s, text)

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            post(self._on_publish, s, mid)

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            post(self._on_message, s, message.topic, bytes(message.payload), bool(message.retain))

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            post(self._on_suback, s, [str(r) for r in reasons if r.is_failure])

        s.client.on_connect = on_connect
        s.client.on_disconnect = on_disconnect
        s.client.on_publish = on_publish
        s.client.on_message = on_message
        s.client.on_subscribe = on_subscribe

    async def _connect(self, s: _Session) -> None:
        assert self._loop is not None
        try:
            await self._loop.run_in_executor(
                None, s.client.connect, self.config.host, self.config.port, self.config.keepalive_s)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise HubConnectError(f"{type(err).__name__}: {err}") from err
        s.client.loop_start()
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {s.connack, stop}
            done, _ = await asyncio.wait(waiting, timeout=self._connect_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if s.connack in done:
            s.connack.result()  # raises HubConnectError for a refused CONNACK
            return
        if self._stopping.is_set():
            raise HubConnectError("shutting down")
        raise HubConnectError(f"no CONNACK within {self._connect_timeout_s:g} s")

    def _on_connack(self, s: _Session, failed: bool, reason: str) -> None:
        if s.connack.done():
            return
        if failed:
            s.connack.set_exception(HubConnectError(f"broker refused the connection: {reason}"))
        else:
            s.connack.set_result(None)

    @staticmethod
    def _release_waiters(s: _Session) -> None:
        for flight in s.inflight.values():
            if flight.waiter is not None and not flight.waiter.done():
                flight.waiter.set_result(False)

    def _on_disconnect(self, s: _Session, reason: str) -> None:
        s.alive = False
        self._release_waiters(s)
        if not s.connack.done():
            s.connack.set_exception(HubConnectError(f"connection closed before CONNACK: {reason}"))
        if not s.closed.done():
            s.closed.set_result(reason)
        self._wake.set()

    def _on_suback(self, s: _Session, failures: list[str]) -> None:
        if failures:
            logger.error("hub link: broker refused a subscription (%s): check the broker ACL for %s",
                         ", ".join(failures), self.config.username or self.client_id)

    async def _serve(self, s: _Session, down_since: str | None) -> str:
        """From CONNACK to the end of the connection; returns why it ended."""
        assert self._loop is not None
        s.boundary = await self.outbox.max_row_id()
        s.live_after = s.boundary
        self._latest_id = max(self._latest_id, s.boundary)
        s.connected_at = time.monotonic()
        self._session = s
        result, _ = s.client.subscribe([(f"{self._notice_prefix}+", 1), (f"{self._cmd_prefix}+", 1),
                                        (self.status_topic, 1)])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return f"subscribe failed: {mqtt.error_string(result)}"
        try:
            self._publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)
        except HubError as err:
            return str(err)
        self._connected_since = s.connected_at
        self._connected.set()
        if down_since is not None:
            await self._link_event(active=False, detail={"link": "hub", "down_since": down_since})
        pump = asyncio.create_task(self._pump(s), name=f"hub-pump-{s.number}")
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {s.closed, stop, pump}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if not s.closed.done() and self._stopping.is_set():
            await self._say_goodbye(s)
            return "shutdown"
        if s.closed.done():
            return s.closed.result()
        return "session aborted"

    async def _say_goodbye(self, s: _Session) -> None:
        """Clean shutdown: let in-flight rows finish, publish the retained ``shutdown`` status."""
        timeout = self._shutdown_grace_s
        deadline = time.monotonic() + timeout
        while s.alive and s.rows_inflight and time.monotonic() < deadline - timeout / 2:
            self._wake.clear()
            await _wait_event(self._wake, 0.1)
        death = {"state": "offline", "reason": "shutdown", "boot_id": self.outbox.boot_id, "gate": self.gate,
                 "site": self.site, "ts": utc_timestamp(self._wall_clock())}
        try:
            waiter = self._publish_direct(s, self.status_topic, death, retain=True, wait=True)
            assert waiter is not None
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                acked = await asyncio.shield(waiter)
        except HubError as err:
            logger.warning("hub link: shutdown status not published: %s", err)
        except TimeoutError:
            logger.warning("hub link: shutdown status not acknowledged within %.1f s", timeout)
        else:
            if not acked:
                logger.warning("hub link: connection closed before the shutdown status was acknowledged")

    async def _teardown(self, s: _Session, *, graceful: bool) -> None:
        assert self._loop is not None
        s.alive = False
        if self._session is s:
            self._session = None
            self._connected.clear()
            self._connected_since = None
        s.client.disconnect()
        join = self._loop.run_in_executor(None, s.client.loop_stop)
        try:
            # A clean DISCONNECT must reach the broker before the socket closes, or the broker
            # publishes the Will over our shutdown status; give paho's thread a moment to send it.
            async with asyncio.timeout(2.0 if graceful else 0.5):
                await asyncio.shield(join)
        except TimeoutError:
            sock = s.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    # The plain-socket shutdown (not SSLSocket's) wakes paho's thread with an error
                    # even when the broker stopped reading (SIGSTOP, dead network).
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]  # SSLSocket is a socket
            await join
        self._release_waiters(s)
        s.inflight.clear()
        s.rows_inflight.clear()
        if not s.connack.done():
            s.connack.cancel()
        if not s.closed.done():
            s.closed.set_result("closed")

    def _abort(self, s: _Session, reason: str) -> None:
        """End a session whose acknowledgements can no longer be trusted; rows stay in the outbox."""
        logger.error("hub link: ending session %d: %s", s.number, reason)
        self._end(s, reason)

    def _end(self, s: _Session, reason: str) -> None:
        s.alive = False
        if not s.closed.done():
            s.closed.set_result(reason)
        self._wake.set()

    # ------------------------------------------------------------------ publishing

    def _birth_payload(self) -> dict[str, Any]:
        try:
            info = self._birth()
        except Exception:
            # The birth describes the gate; a failing description must not keep the link down.
            logger.exception("hub link: the birth callback failed; publishing a birth without lanes and links")
            info = BirthInfo(lanes=(), links={})
        return {
            "state": "online", "boot_id": self.outbox.boot_id, "gate": self.gate, "site": self.site,
            "sw_version": self._sw_version, "started_at": self._started_at,
            "ts": utc_timestamp(self._wall_clock()), "lanes": list(info.lanes),
            "model": dict(info.model) if info.model is not None else None, "links": dict(info.links),
        }

    def _register(self, s: _Session, mid: int, flight: _Flight) -> None:
        if mid in s.inflight:
            # Two messages waiting under one mid: a PUBACK could not be attributed. End the session
            # rather than guess; both rows stay in the outbox and go out again after the reconnect.
            self._abort(s, f"mid {mid} reused while still awaiting PUBACK")
            raise HubError("mid collision")
        s.inflight[mid] = flight
        s.published += 1

    def _publish_direct(self, s: _Session, topic: str, payload: Mapping[str, Any], *,
                        retain: bool, wait: bool) -> asyncio.Future[bool] | None:
        """Status messages bypass the outbox: they describe the present, and the next CONNACK
        (or the broker's Will) replaces whatever a lost one would have said."""
        assert self._loop is not None
        info = s.client.publish(topic, _json(payload), qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise HubError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        waiter: asyncio.Future[bool] | None = self._loop.create_future() if wait else None
        self._register(s, info.mid, _Flight(None, s.published, waiter))
        return waiter

    def _lapped(self, s: _Session) -> bool:
        """True when the next mid could equal the oldest one still awaiting its PUBACK."""
        if not s.inflight:
            return False
        oldest = next(iter(s.inflight.values())).index
        return s.published - oldest >= _MID_SPACE - _LAP_MARGIN - self._window

    async def _pump(self, s: _Session) -> None:
        keepalive = self.config.keepalive_s
        lapped_since: float | None = None
        while s.alive and not self._stopping.is_set():
            self._wake.clear()
            await self._fill(s)
            if not s.alive or self._stopping.is_set():
                return
            if self._lapped(s):
                lapped_since = lapped_since or time.monotonic()
                if time.monotonic() - lapped_since > 2 * keepalive:
                    self._abort(s, "oldest message unacknowledged for too long")
                    return
            else:
                lapped_since = None
            await _wait_event(self._wake, keepalive)

    async def _fill(self, s: _Session) -> None:
        while s.alive and len(s.rows_inflight) < self._window and not self._lapped(s):
            row = await self._next_row(s)
            if row is None or not s.alive:
                return
            self._publish_row(s, row)

    async def _next_row(self, s: _Session) -> OutboxRow | None:
        for _ in range(2):
            source = s.turn
            s.turn ^= 1
            row = await (self._next_live(s) if source == 0 else self._next_backlog(s))
            if row is not None:
                return row
        return None

    def _usable(self, s: _Session, row: OutboxRow) -> bool:
        return row.id not in self._acked and row.id not in s.rows_inflight

    async def _next_live(self, s: _Session) -> OutboxRow | None:
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

    async def _next_backlog(self, s: _Session) -> OutboxRow | None:
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

    def _publish_row(self, s: _Session, row: OutboxRow) -> None:
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
            self._end(s, "connection lost")
            return
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._abort(s, f"publish failed: {mqtt.error_string(info.rc)}")
            return
        try:
            self._register(s, info.mid, _Flight(row.id, s.published))
        except HubError:
            return
        s.rows_inflight.add(row.id)
        self._published += 1

    def _on_publish(self, s: _Session, mid: int) -> None:
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
            self._acknowledged += 1
            self._ack_event.set()
        elif flight.waiter is not None and not flight.waiter.done():
            flight.waiter.set_result(True)
        self._wake.set()

    def _on_rows(self, max_id: int) -> None:
        if max_id > self._latest_id:
            self._latest_id = max_id
            self._wake.set()

    async def _ack_flusher(self) -> None:
        """Delete acknowledged rows in batches (one SQL transaction for all acks so far).

        Deletions wait a few milliseconds so that the PUBACKs of a window arrive together and
        share one SQL transaction, leaving the writer thread to the commits lanes wait for. A
        deletion that is late or lost costs nothing but a duplicate after a restart: until the
        row is gone, this process skips it by id.
        """
        while True:
            await self._ack_event.wait()
            if not self._acks_final:
                await asyncio.sleep(_ACK_COALESCE_S)
            self._ack_event.clear()
            if self._ack_queue:
                ids, self._ack_queue = self._ack_queue, []
                try:
                    await self.outbox.acknowledge(ids)
                except OutboxError as err:
                    logger.error("hub link: cannot delete %d acknowledged rows (retried with the next): %s",  # noqa: TRY400
                                 len(ids), err)
                    if not self._acks_final:
                        self._ack_queue[:0] = ids
                else:
                    self._acked.difference_update(ids)
            if self._acks_final:
                return

    # ------------------------------------------------------------------ inbound

    def _on_message(self, s: _Session, topic: str, payload: bytes, retain: bool) -> None:
        if not s.alive:
            return
        if topic == self.status_topic:
            self._on_own_status(s, payload, retain)
        elif topic.startswith(self._notice_prefix):
            self._notice_queue.put_nowait((topic[len(self._notice_prefix):], payload))
        elif topic.startswith(self._cmd_prefix):
            self._command_queue.put_nowait((topic[len(self._cmd_prefix):], payload))
        else:
            logger.debug("hub link: ignoring message on %s", topic)

    def _on_own_status(self, s: _Session, payload: bytes, retain: bool) -> None:
        """Heal a Will published over our birth.

        When the broker notices a dead connection only after our new session is up (a half-open
        TCP connection taken over by the reconnect), it publishes that connection's Will after our
        birth, and the retained status would say offline while we are online. Seeing a live (not
        retained) offline status for ourselves while connected, we publish the birth again.
        """
        if retain or self._stopping.is_set() or not self._connected.is_set():
            return
        try:
            state = json.loads(payload).get("state")
        except (ValueError, AttributeError):
            return
        if state == "offline":
            logger.info("hub link: an offline status was published for this gate while it is online; rebirth")
            with contextlib.suppress(HubError):
                self._publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)

    async def _notice_worker(self) -> None:
        assert self._loop is not None
        while (item := await self._notice_queue.get()) is not None:
            container, payload = item
            if self._notices is None or self._notice_key is None:
                logger.debug("hub link: no notice store; ignoring notice for %s", container)
                continue
            try:
                outcome = await self._loop.run_in_executor(None, partial(
                    self._notices.apply, container, payload, key=self._notice_key, now=self._wall_clock()))
            except Exception:
                logger.exception("hub link: release notice for %s not applied", container)
                continue
            if str(getattr(outcome, "result", "")) == "rejected":
                # A forged or malformed notice is a security-relevant fact the hub should see,
                # like a rejected command; it changes nothing on the gate.
                detail = {"container": container, "reason": str(getattr(outcome, "detail", None) or "rejected"),
                          "bytes": len(payload)}
                try:
                    await self.outbox.emit_event(lane=None, type="alarm", code="NOTICE_REJECTED",
                                                 severity="warning", active=True, detail=detail)
                except OutboxError as err:
                    logger.error("hub link: cannot record NOTICE_REJECTED: %s", err)  # noqa: TRY400

    async def _command_worker(self) -> None:
        while (item := await self._command_queue.get()) is not None:
            name, payload = item
            if self._commands is None:
                logger.warning("hub link: command %s received but no command handler is configured", name)
                continue
            try:
                await self._commands.handle(name, payload)
            except Exception:
                logger.exception("hub link: command %s failed", name)


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives while the
    awaited event is being set, which left a cancelled pump running for a whole keepalive.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _check_scan_id(scan_id: str) -> None:
    if not SCAN_ID_PATTERN.match(scan_id):
        raise ValueError(f"scan id {scan_id!r} is not usable in a topic (needs [A-Za-z0-9_.-]{{1,64}})")


def _resolve(path: Path, base_dir: Path | None) -> Path:
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _tls_context(config: MqttConfig, config_dir: Path | None) -> ssl.SSLContext:
    """Verify the broker against our CA (hostname included); present a client cert if configured.

    The private key is a secret (``LoadCredential=``), so it is looked up like the other ``*_file``
    secrets; the CA and certificate are public and resolve relative to the config file.
    """
    assert config.tls is not None
    tls = config.tls
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(_resolve(tls.ca_file, config_dir)))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(_resolve(tls.cert_file, config_dir)),
                                str(resolve_secret_path(tls.key_file, base_dir=config_dir)))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"mqtt.tls: cannot load certificates: {err}") from err
    return ctx

