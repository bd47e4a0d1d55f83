"""`HubLink`: one gate's MQTT session with the hub, kept up by its own reconnect loop.

Each connection is a fresh `Session`; at its CONNACK the link subscribes, publishes the birth and
hands the session to the `Publisher`, which moves outbox rows until the connection ends; notices
and commands go to `Inbound`. A clean shutdown publishes the ``shutdown`` status, waits for its
PUBACK and disconnects cleanly (so the broker drops the Will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from gate_controller import __version__
from gate_controller.config import GateConfig, MqttConfig, read_secret
from gate_controller.core.backoff import backoff_delay
from gate_controller.core.errors import HubConnectError, HubError, OutboxError
from gate_controller.core.timestamps import WallClock, utc_now, utc_timestamp
from gate_controller.hub.link.inbound import Inbound
from gate_controller.hub.link.interfaces import (
    BirthInfo,
    CommandHandler,
    HubStatus,
    ModelSink,
    NoticeSink,
    check_scan_id,
)
from gate_controller.hub.link.publisher import Publisher
from gate_controller.hub.link.session import Session, new_client, tls_context, wait_event
from gate_controller.hub.outbox import Outbox

logger = logging.getLogger(__name__)


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
        models: ModelSink | None = None,
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
        self._birth = birth
        self._sw_version = sw_version
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._connect_timeout_s = connect_timeout_s
        self._started_at = utc_timestamp(wall_clock())
        self._password: str | None = None
        if mqtt_config.username is not None and mqtt_config.password_file is not None:
            self._password = read_secret(mqtt_config.password_file, base_dir=config_dir).decode("utf-8")
        self._tls = tls_context(mqtt_config, config_dir) if mqtt_config.tls is not None else None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._session: Session | None = None
        self._sessions = 0
        self._publisher = Publisher(outbox, window=mqtt_config.max_inflight, keepalive_s=mqtt_config.keepalive_s,
                                    wake=self._wake, stopping=self._stopping)
        self._inbound = Inbound(outbox, notice_prefix=f"{mqtt_config.topic_prefix}/{site}/release/",
                                cmd_prefix=f"{self.root}/cmd/", notices=notices, notice_key=notice_key,
                                commands=commands, wall_clock=wall_clock,
                                model_prefix=f"{mqtt_config.topic_prefix}/{site}/models/", models=models)
        self._connected_since: float | None = None
        self._last_error: str | None = None
        self._running = False
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
        models: ModelSink | None = None,
        config_dir: Path | None = None,
    ) -> HubLink:
        """The daemon's way in: site, gate, client id and site key come from the config."""
        key = read_secret(config.mqtt.command_key_file, base_dir=config_dir)
        return cls(config.mqtt, site=config.site, gate=config.gate, outbox=outbox, birth=birth,
                   client_id=config.client_id, commands=commands, notices=notices, notice_key=key,
                   models=models, config_dir=config_dir)

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
            published=self._publisher.published, acknowledged=self._publisher.acknowledged,
            inflight=len(s.rows_inflight) if s is not None else 0, last_error=self._last_error,
        )

    async def publish_preview(self, scan_id: str, jpeg: bytes) -> bool:
        """Queue a scan preview (JPEG) durably; False when previews are switched off."""
        if not self.config.publish_previews:
            return False
        check_scan_id(scan_id)
        await self.outbox.enqueue_preview(scan_id, jpeg)
        return True

    async def publish_image(self, scan_id: str, png: bytes) -> None:
        """Queue a full-resolution image (reply to ``scan.fetch``)."""
        check_scan_id(scan_id)
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
            self._publisher.publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)
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
        self._publisher.acks_final = False
        self._done.clear()
        self._loop = asyncio.get_running_loop()
        self.outbox.add_listener(self._publisher.on_rows)
        try:
            async with asyncio.TaskGroup() as tg:
                acks = tg.create_task(self._publisher.ack_flusher(), name="hub-acks")
                notices = tg.create_task(self._inbound.notice_worker(), name="hub-notices")
                commands = tg.create_task(self._inbound.command_worker(), name="hub-commands")
                models = tg.create_task(self._inbound.model_worker(), name="hub-models")
                try:
                    await self._connection_loop()
                finally:
                    self._inbound.close()
                    await asyncio.wait({notices, commands, models})
                    self._publisher.finish_acks()
                    await asyncio.wait({acks})
        finally:
            self.outbox.remove_listener(self._publisher.on_rows)
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
        return backoff_delay(failures - 1, initial_s=self.config.reconnect_initial_s,
                             max_s=self.config.reconnect_max_s, rng=self._rng)

    async def _pause(self, seconds: float) -> None:
        await wait_event(self._stopping, seconds)

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

    def _new_session(self, number: int) -> Session:
        assert self._loop is not None
        will = {"state": "offline", "reason": "connection-lost", "boot_id": self.outbox.boot_id,
                "gate": self.gate, "site": self.site}
        client = new_client(self.config, client_id=self.client_id, connect_timeout_s=self._connect_timeout_s,
                            tls=self._tls, password=self._password, will_topic=self.status_topic, will=will)
        session = Session(number=number, client=client, connack=self._loop.create_future(),
                          suback=self._loop.create_future(), closed=self._loop.create_future())
        self._bind_callbacks(session)
        return session

    def _bind_callbacks(self, s: Session) -> None:
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
            post(self._publisher.on_publish, s, mid)

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            post(self._on_message, s, message.topic, bytes(message.payload), bool(message.retain))

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            post(self._on_suback, s, [str(r) for r in reasons if r.is_failure])

        s.client.on_connect = on_connect
        s.client.on_disconnect = on_disconnect
        s.client.on_publish = on_publish
        s.client.on_message = on_message
        s.client.on_subscribe = on_subscribe

    async def _connect(self, s: Session) -> None:
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

    def _on_connack(self, s: Session, failed: bool, reason: str) -> None:
        if s.connack.done():
            return
        if failed:
            s.connack.set_exception(HubConnectError(f"broker refused the connection: {reason}"))
        else:
            s.connack.set_result(None)

    def _on_disconnect(self, s: Session, reason: str) -> None:
        s.alive = False
        s.release_waiters()
        if not s.connack.done():
            s.connack.set_exception(HubConnectError(f"connection closed before CONNACK: {reason}"))
        if not s.closed.done():
            s.closed.set_result(reason)
        self._wake.set()

    def _on_suback(self, s: Session, failures: list[str]) -> None:
        if not s.suback.done():
            s.suback.set_result(None)
        if failures:
            logger.error("hub link: broker refused a subscription (%s): check the broker ACL for %s",
                         ", ".join(failures), self.config.username or self.client_id)

    async def _serve(self, s: Session, down_since: str | None) -> str:
        """From CONNACK to the end of the connection; returns why it ended."""
        await self._publisher.begin(s)
        s.connected_at = time.monotonic()
        self._session = s
        topics = [(f"{self._inbound.notice_prefix}+", 1), (f"{self._inbound.cmd_prefix}+", 1), (self.status_topic, 1)]
        if self._inbound.model_prefix is not None:
            topics.append((f"{self._inbound.model_prefix}+/+", 1))
        result, _ = s.client.subscribe(topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return f"subscribe failed: {mqtt.error_string(result)}"
        try:
            self._publisher.publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)
        except HubError as err:
            return str(err)
        # The session counts as up once the broker holds its subscriptions, so that a command sent
        # after `wait_connected` reaches the gate (one sent between CONNACK and SUBACK is lost with
        # the clean session, and the hub sends it again when no reply comes).
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            acked: set[asyncio.Future[Any]] = {s.suback, s.closed, stop}
            await asyncio.wait(acked, timeout=self._connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not s.suback.done() and s.alive and not self._stopping.is_set():
            logger.warning("hub link: no SUBACK within %g s; carrying on without it", self._connect_timeout_s)
        self._connected_since = s.connected_at
        self._connected.set()
        if down_since is not None:
            await self._link_event(active=False, detail={"link": "hub", "down_since": down_since})
        pump = asyncio.create_task(self._publisher.pump(s), name=f"hub-pump-{s.number}")
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

    async def _say_goodbye(self, s: Session) -> None:
        """Clean shutdown: let in-flight rows finish, publish the retained ``shutdown`` status."""
        timeout = self._shutdown_grace_s
        deadline = time.monotonic() + timeout
        while s.alive and s.rows_inflight and time.monotonic() < deadline - timeout / 2:
            self._wake.clear()
            await wait_event(self._wake, 0.1)
        death = {"state": "offline", "reason": "shutdown", "boot_id": self.outbox.boot_id, "gate": self.gate,
                 "site": self.site, "ts": utc_timestamp(self._wall_clock())}
        try:
            waiter = self._publisher.publish_direct(s, self.status_topic, death, retain=True, wait=True)
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

    async def _teardown(self, s: Session, *, graceful: bool) -> None:
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
        s.release_waiters()
        s.inflight.clear()
        s.rows_inflight.clear()
        if not s.connack.done():
            s.connack.cancel()
        if not s.suback.done():
            s.suback.cancel()
        if not s.closed.done():
            s.closed.set_result("closed")

    # ------------------------------------------------------------------ birth

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

    # ------------------------------------------------------------------ inbound

    def _on_message(self, s: Session, topic: str, payload: bytes, retain: bool) -> None:
        if not s.alive:
            return
        if topic == self.status_topic:
            self._on_own_status(s, payload, retain)
        elif not self._inbound.route(topic, payload):
            logger.debug("hub link: ignoring message on %s", topic)

    def _on_own_status(self, s: Session, payload: bytes, retain: bool) -> None:
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
                self._publisher.publish_direct(s, self.status_topic, self._birth_payload(), retain=True, wait=False)
