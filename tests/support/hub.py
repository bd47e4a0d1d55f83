"""Test peers for the hub link: a hub-side collector, a recording command target, sample records.

The collector is a real MQTT client with a persistent session (so the broker queues for it while
it reconnects after a broker restart) that validates every message it receives against the
contract's JSON Schemas.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ulid import ULID

from gate_controller.config import MqttConfig
from gate_controller.core.ports import CommandRefused
from gate_controller.core.timestamps import utc_timestamp
from gate_controller.hub.hub_side import HubClient, ReceivedMessage, contract_errors
from tests.support.broker import HUB_USER, MosquittoBroker

__all__ = [
    "COMMAND_KEY",
    "GATE",
    "SITE",
    "Collector",
    "RecordingTarget",
    "mqtt_config",
    "transaction_record",
    "write_key",
]

SITE = "PORTA"
GATE = "G03"
ROOT = f"smartgate/v1/{SITE}/{GATE}"
COMMAND_KEY = b"test-site-command-key-0123456789abcdef"


def write_key(directory: Path, key: bytes = COMMAND_KEY) -> Path:
    path = directory / "command-key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return path


def mqtt_config(broker: MosquittoBroker, key_file: Path, **overrides: Any) -> MqttConfig:
    """Fast-reconnecting settings for tests (the production defaults back off to 30 s)."""
    settings = broker.mqtt_settings(
        "gate", command_key_file=str(key_file), reconnect_initial_s=0.05, reconnect_max_s=0.3, keepalive_s=5,
    )
    settings.update(overrides)
    return MqttConfig.model_validate(settings)


def transaction_record(n: int = 0, *, lane: str = "L1", site: str = SITE, gate: str = GATE,
                       scan_id: str | None = None) -> dict[str, Any]:
    """A complete, contract-valid transaction as a lane would hand it to the journal."""
    ts = utc_timestamp()
    return {
        "transaction_id": str(ULID()),
        "site": site, "gate": gate, "lane": lane,
        "arrived_at": ts, "decided_at": ts, "completed_at": ts,
        "plate": {"text": f"AB{n:04d}CD", "confidence": 0.93},
        "containers": [{
            "number": "MSKU1234565", "raw": ["MSKU1234565", "MSKU123456S"], "confidence": 0.98,
            "check_digit_ok": True, "corrected": False, "iso_type": "45G1",
            "release": {"status": "released", "ref": f"CUS-{n}", "declared": "general"},
        }],
        "scan": {
            "scan_id": scan_id or f"SCAN-{n:06d}", "columns": 120, "rows": 64, "channels": 2, "complete": True,
            "sha256": "ab" * 32,
            "inference": {"model": "cargo-anomaly", "version": "1.0.0", "score": 0.02, "verdict": "clear",
                          "regions": [{"x": 1, "y": 2, "w": 3, "h": 4, "score": 0.1, "label": "organic"}],
                          "latency_ms": 41.5},
        },
        "decision": {"action": "release", "reasons": ["ALL_RELEASED", "SCAN_CLEAR"], "by": "auto",
                     "operator": None},
        "barrier": {"raised_at": ts, "lowered_at": ts},
        "timings_ms": {"scan_end_to_decision": 120, "arrival_to_decision": 9000, "arrival_to_complete": 30000},
    }


@dataclass
class Collector:
    """A hub-side subscriber to one site; thread-safe accumulation of everything received."""

    broker: MosquittoBroker
    site: str = SITE
    client_id: str = "test-collector"
    messages: list[ReceivedMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.broker.tls is not None
        user, password = HUB_USER
        self.client = HubClient(self.broker.url, username=user, password=password,
                                ca_file=str(self.broker.tls.ca_file), client_id=self.client_id,
                                clean_session=False, reconnect=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Collector:
        self.client.connect()
        self.client.subscribe(f"smartgate/v1/{self.site}/#")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def pump(self, wait: float = 0.0) -> list[ReceivedMessage]:
        """Move received messages into ``messages``; returns the new ones."""
        new: list[ReceivedMessage] = []
        deadline = time.monotonic() + wait
        while True:
            message = self.client.receive(max(0.0, deadline - time.monotonic()) if not new else 0.0)
            if message is None:
                break
            new.append(message)
        with self._lock:
            self.messages.extend(new)
        return new

    def on(self, suffix: str) -> list[ReceivedMessage]:
        self.pump()
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def json_on(self, suffix: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.on(suffix) if m.payload]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.05)
            if predicate(self):
                return
        raise AssertionError(f"condition not met within {timeout} s; got {len(self.messages)} messages")

    def sequenced(self) -> dict[int, set[str]]:
        """seq -> msg_ids seen for it (transactions and events)."""
        out: dict[int, set[str]] = {}
        for suffix in ("/transactions", "/events"):
            for doc in self.json_on(suffix):
                out.setdefault(doc["seq"], set()).add(doc["msg_id"])
        return out

    def contract_problems(self, ignore: Sequence[str] = ()) -> list[str]:
        """Every received message that breaks the contract (topics containing ``ignore`` skipped)."""
        self.pump()
        problems = []
        for message in self.messages:
            if any(part in message.topic for part in ignore):
                continue
            for problem in contract_errors(message.topic, message.payload):
                problems.append(f"{message.topic}: {problem}: {message.payload[:300]!r}")
        return problems


class RecordingTarget:
    """A `CommandTarget` that records what it was asked to do (and can refuse)."""

    def __init__(self, lanes: Sequence[str] = ("L1", "L2")) -> None:
        self.lanes = tuple(lanes)
        self.calls: list[tuple[str, Mapping[str, Any]]] = []
        self.refuse: str | None = None

    def lane_ids(self) -> Sequence[str]:
        return self.lanes

    def _record(self, command: str, /, **kwargs: Any) -> None:
        if self.refuse is not None:
            raise CommandRefused(self.refuse)
        self.calls.append((command, kwargs))

    async def barrier_command(self, *, lane: str, action: Literal["open", "close"], reason: str,
                              operator: str) -> None:
        await asyncio.sleep(0)
        self._record("barrier", lane=lane, action=action, reason=reason, operator=operator)

    async def lane_mode_command(self, *, lane: str, mode: Literal["auto", "manual", "closed"]) -> None:
        await asyncio.sleep(0)
        self._record("lane.mode", lane=lane, mode=mode)

    async def reload_config(self) -> None:
        await asyncio.sleep(0)
        self._record("config.reload")

    async def review_mode_command(self, *, lane: str, mode: Literal["live", "shadow"], operator: str) -> None:
        await asyncio.sleep(0)
        self._record("review.mode", lane=lane, mode=mode, operator=operator)

    async def samples_upload_command(self, *, since: str | None, operator: str) -> None:
        await asyncio.sleep(0)
        self._record("samples.upload", since=since, operator=operator)

    async def model_activate_command(self, *, name: str, version: str, sha256: str, operator: str) -> None:
        await asyncio.sleep(0)
        self._record("model.activate", name=name, version=version, sha256=sha256, operator=operator)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode("utf-8")
