"""The hub's side of the contract, for field tools, tests and the demo's simulated hub.

`HubClient` is a small synchronous MQTT client (paho on its own thread) that can watch a site,
publish signed retained release notices and send signed commands and wait for their replies.
`describe` renders any gate message as one readable line (``smartgate hub watch``).
Signing uses the same `signing` module as the gate, so a tool and a gate can never disagree
about canonical JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import re
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from ulid import ULID

from gate_controller.core.errors import HubConnectError, HubError
from gate_controller.core.timestamps import utc_timestamp
from gate_controller.decision.signing import sign

__all__ = [
    "SCHEMA_NAMES",
    "HubClient",
    "ReceivedMessage",
    "contract_errors",
    "contract_schema",
    "describe",
    "make_command",
    "make_notice",
    "schema_name_for",
]

SCHEMA_NAMES = ("transaction", "event", "telemetry", "status", "reply", "command", "release-notice")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def contract_schema(name: str) -> dict[str, Any]:
    """One of the JSON Schemas shipped in ``gate_controller/hub/schemas`` (also in docs/mqtt/asyncapi.yaml)."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"no contract schema {name!r} (have {', '.join(SCHEMA_NAMES)})")
    text = resources.files("gate_controller.hub").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_name_for(topic: str) -> str | None:
    """The schema of a contract topic; None for binary payloads (previews, images) and foreign topics."""
    _, _, kind = _kind_of(topic)
    return {"transactions": "transaction", "events": "event", "telemetry": "telemetry", "status": "status",
            "reply": "reply", "cmd": "command", "release": "release-notice"}.get(kind)


def contract_errors(topic: str, payload: bytes) -> list[str]:
    """Why a message does not conform to the contract (empty when it does). Needs ``jsonschema``."""
    import jsonschema  # a dev/tool dependency: the daemon never needs it

    _, _, kind = _kind_of(topic)
    if kind == "scan-preview":
        return [] if payload.startswith(_JPEG_MAGIC) else ["preview is not a JPEG"]
    if kind == "scan-image":
        return [] if payload.startswith(_PNG_MAGIC) else ["image is not a PNG"]
    if kind == "model-package":
        # A tar (ustar magic at offset 257), or empty: the hub withdrawing a retained package.
        return [] if payload == b"" or payload[257:262] == b"ustar" else ["model package is not a tar archive"]
    if kind == "sample-chunk":
        head, sep, _ = payload.partition(b"\n")
        try:
            header = json.loads(head) if sep else None
        except ValueError:
            header = None
        ok = isinstance(header, dict) and header.get("format") == "smartgate.sample-chunk/1"
        return [] if ok else ["sample chunk without its smartgate.sample-chunk/1 header line"]
    name = schema_name_for(topic)
    if name is None:
        return [f"{topic} is not a topic of the contract"]
    if name == "release-notice" and payload == b"":
        return []
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return [f"not UTF-8 JSON: {err}"]
    validator = jsonschema.Draft7Validator(contract_schema(name))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]


def make_command(name: str, args: Mapping[str, Any], *, key: bytes, issued_by: str = "hub",
                 request_id: str | None = None, ts: str | None = None) -> dict[str, Any]:
    """A signed command payload (contract section 7); ``name`` only goes into the topic."""
    del name  # the name is the topic level; the payload does not carry it
    body: dict[str, Any] = {
        "request_id": request_id or str(ULID()),
        "ts": ts or utc_timestamp(),
        "issued_by": issued_by,
        "args": dict(args),
    }
    body["sig"] = sign(body, key)
    return body


def make_notice(container: str, status: str, *, key: bytes, declared: str | None = None, ref: str | None = None,
                expires_at: str | None = None, ts: str | None = None) -> dict[str, Any]:
    """A signed release notice (contract section 7)."""
    body: dict[str, Any] = {
        "container": container, "status": status, "declared": declared, "ref": ref,
        "expires_at": expires_at, "ts": ts or utc_timestamp(),
    }
    body["sig"] = sign(body, key)
    return body


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received: float

    def json(self) -> Any:
        return json.loads(self.payload.decode("utf-8"))


class HubClient:
    """A hub-side MQTT connection. Use as a context manager; every method blocks at most ``timeout``.

    By default the session is persistent (``clean_session=False``) and subscriptions are QoS 1, so
    the broker keeps every message for the client while it reconnects, also across a broker restart
    when the broker persists its sessions: a watcher misses nothing the gate published. Give a
    stable ``client_id`` to resume the same session from the next run of a tool; without one the
    client gets a fresh id whose session it discards again on `close` (nobody could resume it).
    ``clean_session=True`` gives a throw-away session (messages published while away are lost).
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_id: str | None = None,
        clean_session: bool = False,
        topic_prefix: str = "smartgate/v1",
        reconnect: bool = False,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"URL must be mqtt://host:port or mqtts://host:port (got {url!r})")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.prefix = topic_prefix
        self.messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self.client_id = client_id or f"smartgate-hub-tool-{ULID()}"
        self.clean_session = clean_session
        self._own_id = client_id is None
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "mqtts":
            self._tls = ssl.create_default_context(cafile=ca_file)
            if cert_file is not None:
                self._tls.load_cert_chain(cert_file, key_file)
        self._credentials = (username, password)
        self._client = self._new_client(clean_session, reconnect=reconnect)
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._subacked: set[int] = set()
        self._connack: str | None = None
        self._connected = False
        self._subscriptions: list[tuple[str, int]] = []
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _new_client(self, clean_session: bool, *, reconnect: bool) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311, reconnect_on_failure=reconnect,
        )
        client.max_inflight_messages_set(0)
        # paho computes with float seconds although it annotates int; sub-second retries keep a
        # watcher close behind a restarting broker.
        client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self._credentials[0] is not None:
            client.username_pw_set(*self._credentials)
        return client

    # ------------------------------------------------------------------ paho thread

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self._connack = str(reason)
            self._connected = not reason.is_failure
            self._cond.notify_all()
        if not reason.is_failure and self._subscriptions and not flags.session_present:
            # The broker forgot the session (clean session, or it lost its state): subscribe again.
            client.subscribe(self._subscriptions)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._cond:
            self._subacked.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(ReceivedMessage(message.topic, bytes(message.payload), bool(message.retain),
                                          int(message.qos), time.monotonic()))

    # ------------------------------------------------------------------ lifecycle

    def connect(self, timeout: float = 10.0) -> HubClient:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as err:
            raise HubConnectError(f"cannot connect to {self.host}:{self.port}: {err}") from err
        self._client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack is not None, timeout):
                self.close()
                raise HubConnectError(f"no CONNACK from {self.host}:{self.port} within {timeout:g} s")
            if not self._connected:
                reason = self._connack
                self.close()
                raise HubConnectError(f"broker refused the connection: {reason}")
        return self

    def close(self, *, discard_session: bool | None = None) -> None:
        """Disconnect; ``discard_session`` (default: when the id was generated) also ends the
        persistent session at the broker, so it stops queueing messages for this client."""
        self._client.disconnect()
        self._client.loop_stop()
        if discard_session if discard_session is not None else (self._own_id and not self.clean_session):
            with contextlib.suppress(HubError):  # the broker is away; it expires the session by its own rules
                self.discard_session(timeout=2.0)

    def discard_session(self, timeout: float = 10.0) -> None:
        """End this client id's session at the broker (a clean connect and disconnect).

        Call it before `connect` to start without what a previous run left queued, or after
        `close` (which does it by itself for a generated id).
        """
        client = self._new_client(True, reconnect=False)
        done = threading.Event()
        outcome: list[str] = []

        def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            outcome.append("" if not reason.is_failure else str(reason))
            done.set()

        client.on_connect = on_connect
        try:
            client.connect_async(self.host, self.port, keepalive=30)  # bounded by the wait below
        except (OSError, ValueError) as err:
            raise HubConnectError(f"cannot connect to {self.host}:{self.port}: {err}") from err
        client.loop_start()
        try:
            if not done.wait(timeout):
                raise HubConnectError(f"no CONNACK from {self.host}:{self.port} within {timeout:g} s")
            if outcome[0]:
                raise HubConnectError(f"broker refused the connection: {outcome[0]}")
        finally:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> HubClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._connected, timeout)

    # ------------------------------------------------------------------ primitives

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        self._subscriptions.append((topic, qos))
        result, mid = self._client.subscribe(topic, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise HubError(f"subscribe {topic} failed: {mqtt.error_string(result)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacked, timeout):
                raise HubError(f"no SUBACK for {topic} within {timeout:g} s")
            self._subacked.discard(mid)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                timeout: float = 10.0) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise HubError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._acked, timeout):
                raise HubError(f"no PUBACK for {topic} within {timeout:g} s")
            self._acked.discard(info.mid)

    def receive(self, timeout: float) -> ReceivedMessage | None:
        try:
            return self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    # ------------------------------------------------------------------ contract helpers

    def gate_root(self, site: str, gate: str) -> str:
        return f"{self.prefix}/{site}/{gate}"

    def publish_model(self, site: str, name: str, version: str, archive: bytes, *, timeout: float = 30.0) -> str:
        """Publish a model package (the tar of `inference.package.pack`) retained for every gate of
        ``site``; returns the topic. Gates install it, and switch only on ``model.activate``."""
        topic = f"{self.prefix}/{site}/models/{name}/{version}"
        self.publish(topic, archive, retain=True, timeout=timeout)
        return topic

    def publish_notice(self, site: str, container: str, status: str, *, key: bytes, declared: str | None = None,
                       ref: str | None = None, expires_at: str | None = None, ts: str | None = None,
                       timeout: float = 10.0) -> dict[str, Any]:
        notice = make_notice(container, status, key=key, declared=declared, ref=ref, expires_at=expires_at, ts=ts)
        self.publish(f"{self.prefix}/{site}/release/{container}", json.dumps(notice), retain=True,
                     timeout=timeout)
        return notice

    def delete_notice(self, site: str, container: str, timeout: float = 10.0) -> None:
        """An empty retained payload deletes the notice (contract section 7)."""
        self.publish(f"{self.prefix}/{site}/release/{container}", b"", retain=True, timeout=timeout)

    def send_command(self, site: str, gate: str, name: str, payload: Mapping[str, Any] | bytes,
                     timeout: float = 10.0) -> dict[str, Any] | None:
        """Publish a (signed or deliberately broken) command and wait for the reply to it.

        The reply is matched by ``request_id``; for a payload without a usable one the first reply
        with ``request_id: null`` counts. Returns None when no reply came within ``timeout``.
        """
        root = self.gate_root(site, gate)
        if (f"{root}/reply", 1) not in self._subscriptions:
            self.subscribe(f"{root}/reply")
        data = payload if isinstance(payload, bytes) else json.dumps(dict(payload)).encode("utf-8")
        request_id = payload.get("request_id") if isinstance(payload, Mapping) else _request_id_of(data)
        self.publish(f"{root}/cmd/{name}", data, timeout=timeout)
        deadline = time.monotonic() + timeout
        skipped: list[ReceivedMessage] = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self.receive(left)
                if message is None:
                    break
                if message.topic != f"{root}/reply":
                    skipped.append(message)
                    continue
                reply = message.json()
                if isinstance(reply, dict) and reply.get("request_id") == (
                        request_id if isinstance(request_id, str) else None):
                    return reply
                skipped.append(message)
        finally:
            for message in skipped:
                self.messages.put(message)
        return None

    def command(self, site: str, gate: str, name: str, args: Mapping[str, Any], *, key: bytes,
                issued_by: str = "hub", timeout: float = 10.0) -> dict[str, Any] | None:
        return self.send_command(site, gate, name, make_command(name, args, key=key, issued_by=issued_by),
                                 timeout=timeout)

    def watch(self, site: str, gate: str = "+", timeout: float | None = None) -> Iterator[ReceivedMessage]:
        """Subscribe to a site (or one gate) and yield messages until ``timeout`` of silence."""
        self.subscribe(f"{self.prefix}/{site}/{gate}/#")
        while True:
            message = self.receive(timeout if timeout is not None else 3600.0)
            if message is None:
                if timeout is not None:
                    return
                continue
            yield message


def _request_id_of(data: bytes) -> str | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    value = obj.get("request_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------- readable lines


def _kind_of(topic: str) -> tuple[str, str, str]:
    """(site, gate, kind) of a gate topic ``prefix/site/gate/kind...``; kind '' when unknown."""
    parts = topic.split("/")
    if len(parts) >= 5 and parts[-3] == "scans":
        return parts[-5], parts[-4], f"scan-{parts[-1]}"
    if len(parts) >= 5 and parts[-3] == "samples":
        return parts[-5], parts[-4], "sample-chunk"
    if len(parts) >= 4 and parts[-3] == "models":
        return parts[-4], "", "model-package"
    if len(parts) >= 4 and parts[-2] == "release":
        return parts[-3], "", "release"
    if len(parts) >= 5 and parts[-2] == "cmd":
        return parts[-4], parts[-3], "cmd"
    if len(parts) >= 4:
        return parts[-3], parts[-2], parts[-1]
    return "", "", ""


def describe(topic: str, payload: bytes) -> str:
    """One human line for a message of the contract (unknown or broken payloads are shown raw)."""
    site, gate, kind = _kind_of(topic)
    where = f"{site}/{gate}" if gate else site
    if kind.startswith("scan-"):
        return f"{kind.upper():<11} {where} {topic.split('/')[-2]} ({len(payload)} bytes)"
    if kind in ("sample-chunk", "model-package"):
        return f"{kind.upper():<11} {where} {'/'.join(topic.split('/')[-2:])} ({len(payload)} bytes)"
    try:
        msg = json.loads(payload.decode("utf-8")) if payload else None
    except (UnicodeDecodeError, ValueError):
        return f"{kind.upper() or 'MESSAGE':<11} {where} {topic}: {len(payload)} bytes (not JSON)"
    if not isinstance(msg, dict):
        return f"{kind.upper() or 'MESSAGE':<11} {where} {topic}: {msg!r}"
    tag = " (historical)" if msg.get("historical") else ""
    if kind == "transactions":
        decision = msg.get("decision") or {}
        boxes = []
        for c in msg.get("containers") or []:
            release = (c.get("release") or {}).get("status")
            ok = "" if c.get("check_digit_ok") else " check-digit!"
            boxes.append(f"{c.get('number') or '?'}[{release}{ok}]")
        plate = (msg.get("plate") or {}).get("text") or "-"
        scan = msg.get("scan")
        scan_text = "no scan"
        if isinstance(scan, dict):
            inference = scan.get("inference") or {}
            scan_text = f"scan {inference.get('verdict', '?')} {inference.get('score', '?')}"
            if not scan.get("complete", True):
                scan_text += " INCOMPLETE"
        by = decision.get("by", "auto")
        if decision.get("operator"):
            by += f":{decision['operator']}"
        return (f"TRANSACTION {where} lane {msg.get('lane')} seq {msg.get('seq')}: "
                f"{str(decision.get('action', '?')).upper()} by {by} "
                f"[{', '.join(decision.get('reasons') or [])}] {' '.join(boxes) or 'no containers'} "
                f"plate {plate}, {scan_text}{tag}")
    if kind == "events":
        state = "ACTIVE" if msg.get("active") else "cleared"
        lane = f" lane {msg['lane']}" if msg.get("lane") else ""
        detail = json.dumps(msg.get("detail") or {}, separators=(",", ":"))
        return (f"{str(msg.get('type', 'event')).upper():<11} {where}{lane} seq {msg.get('seq')}: "
                f"{msg.get('code')} {msg.get('severity')} {state} {detail}{tag}")
    if kind == "status":
        if msg.get("state") == "online":
            links = ", ".join(f"{k}={v}" for k, v in sorted((msg.get("links") or {}).items()))
            model = msg.get("model") or {}
            return (f"STATUS      {where}: ONLINE boot {msg.get('boot_id')} sw {msg.get('sw_version')} "
                    f"lanes {','.join(msg.get('lanes') or [])} model {model.get('name', '-')} "
                    f"{model.get('version', '')} links {links or '-'}")
        return f"STATUS      {where}: OFFLINE ({msg.get('reason')}) boot {msg.get('boot_id')}"
    if kind == "reply":
        outcome = "ok" if msg.get("ok") else f"REFUSED: {msg.get('error')}"
        return f"REPLY       {where}: {msg.get('request_id')} {outcome}"
    if kind == "telemetry":
        backlog = msg.get("backlog") or {}
        return (f"TELEMETRY   {where}: up {msg.get('uptime_s')} s, backlog {backlog.get('pending')}, "
                f"cpu {msg.get('cpu_percent')} %, rss {msg.get('rss_mb')} MB, disk free {msg.get('disk_free_mb')} MB")
    if kind == "release":
        return (f"NOTICE      {site}: {msg.get('container')} {msg.get('status')} "
                f"declared {msg.get('declared')} ref {msg.get('ref')}")
    if kind == "cmd":
        name = topic.rsplit("/", maxsplit=1)[-1]
        return f"COMMAND     {where} {name}: {msg.get('request_id')} by {msg.get('issued_by')}"
    return f"MESSAGE     {topic}: {json.dumps(msg)[:200]}"


class SampleAssembler:
    """The hub's side of the sample upload: chunks from ``{root}/samples/{name}/{index}`` back into
    ``NAME.json`` + ``NAME.npz`` in ``out_dir`` (the layout ``inference.training train --samples``
    reads). Chunks may arrive twice (re-sent after a reconnect) and in any order; a sample is
    written once every chunk is there and the SHA-256 of the whole matches."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._parts: dict[tuple[str, str], dict[int, bytes]] = {}
        self.completed: list[str] = []
        self.duplicates = 0

    def add(self, payload: bytes) -> str | None:
        """One chunk; returns the sample's name when this chunk completed it."""
        head, sep, body = payload.partition(b"\n")
        if not sep:
            raise ValueError("sample chunk without a header line")
        header = json.loads(head)
        if header.get("format") != "smartgate.sample-chunk/1":
            raise ValueError(f"unknown sample chunk format {header.get('format')!r}")
        name, digest = str(header["sample"]), str(header["sha256"])
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", name):
            raise ValueError(f"bad sample name {name!r}")
        parts = self._parts.setdefault((name, digest), {})
        if int(header["chunk"]) in parts:
            self.duplicates += 1
        parts[int(header["chunk"])] = body
        if len(parts) < int(header["chunks"]):
            return None
        data = b"".join(parts[i] for i in range(int(header["chunks"])))
        if len(data) != int(header["bytes"]) or hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"sample {name}: reassembled bytes do not match the announced SHA-256")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise ValueError(f"sample {name}: archive member {member.name!r} is not a plain file")
                source = tar.extractfile(member)
                if source is not None:
                    (self.out_dir / member.name).write_bytes(source.read())
        del self._parts[(name, digest)]
        self.completed.append(name)
        return name
