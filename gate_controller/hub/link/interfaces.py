"""What the hub link takes from the daemon and reports back: birth, notice sink, command handler, status."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

SCAN_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A scan id that is safe as one MQTT topic level and as a file name."""


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


class ModelSink(Protocol):
    """Where model packages published by the hub go (`lifecycle.fleet.ModelManager`): it verifies
    and installs them; a refused package is its own alarm, never an exception here."""

    async def receive_package(self, name: str, version: str, payload: bytes) -> None: ...


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


def check_scan_id(scan_id: str) -> None:
    if not SCAN_ID_PATTERN.match(scan_id):
        raise ValueError(f"scan id {scan_id!r} is not usable in a topic (needs [A-Za-z0-9_.-]{{1,64}})")
