"""One MQTT connection to the hub: its paho client, TLS, and the bookkeeping of what is in flight.

A fresh paho client per connection (``reconnect_on_failure=False``): paho keeps unacknowledged QoS 1
messages in memory and re-sends them on its own reconnect with the same 16-bit ``mid``s our
bookkeeping uses, so its queue must die with the connection. ``Session.inflight`` maps each ``mid``
to the outbox row (or status message) it carries until the PUBACK.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gate_controller.config import MqttConfig, resolve_secret_path
from gate_controller.core.errors import ConfigError
from gate_controller.hub.outbox import OutboxRow


@dataclass(slots=True)
class Flight:
    row_id: int | None
    index: int
    waiter: asyncio.Future[bool] | None = None
    """Resolved True on PUBACK, False when the connection ended first."""


@dataclass(eq=False)
class Session:
    number: int
    client: mqtt.Client
    connack: asyncio.Future[None]
    suback: asyncio.Future[None]
    """Resolved when the broker acknowledged the session's subscriptions."""
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
    inflight: dict[int, Flight] = field(default_factory=dict)
    rows_inflight: set[int] = field(default_factory=set)
    published: int = 0
    connected_at: float = 0.0

    def release_waiters(self) -> None:
        """Tell everyone waiting for a PUBACK of this session that it will not come."""
        for flight in self.inflight.values():
            if flight.waiter is not None and not flight.waiter.done():
                flight.waiter.set_result(False)


def new_client(
    config: MqttConfig, *, client_id: str, connect_timeout_s: float, tls: ssl.SSLContext | None,
    password: str | None, will_topic: str, will: Mapping[str, Any],
) -> mqtt.Client:
    """A paho client for one connection, with TLS, credentials and the Will set."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
    )
    client.connect_timeout = connect_timeout_s
    # Our window is the only flow control; paho's own in-flight cap would just queue in memory.
    client.max_inflight_messages_set(0)
    if tls is not None:
        client.tls_set_context(tls)
    if config.username is not None:
        client.username_pw_set(config.username, password)
    client.will_set(will_topic, json_bytes(will), qos=1, retain=True)
    return client


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
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


def _resolve(path: Path, base_dir: Path | None) -> Path:
    return path if path.is_absolute() or base_dir is None else base_dir / path


def tls_context(config: MqttConfig, config_dir: Path | None) -> ssl.SSLContext:
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
