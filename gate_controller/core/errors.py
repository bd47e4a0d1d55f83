"""The daemon's exceptions, under the shared `SmartGateError` root."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inference.errors import SmartGateError

__all__ = [
    "ArchiveError",
    "ConfigError",
    "ConfigIssue",
    "HubConnectError",
    "HubError",
    "OutboxError",
    "PlcError",
    "PlcInterlockError",
    "PlcTimeoutError",
    "PlcVerificationError",
    "SmartGateError",
]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem, located in the YAML source."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(SmartGateError):
    """The configuration is invalid; ``issues`` holds every located problem."""

    def __init__(self, message: str, issues: Sequence[ConfigIssue] = ()) -> None:
        super().__init__(message)
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)

    @classmethod
    def from_issues(cls, issues: Sequence[ConfigIssue]) -> ConfigError:
        return cls("\n".join(str(issue) for issue in issues), issues)


class PlcError(SmartGateError):
    """The lane PLC did not answer, answered with an exception, or failed a verification."""


class PlcTimeoutError(PlcError, TimeoutError):
    """A Modbus request to the lane PLC timed out."""


class PlcInterlockError(PlcError):
    """A write was refused before it reached the PLC because a safety rule forbids it right now.

    Raised for any coil other than ``alarm`` while ``estop`` or ``local_manual`` is set, and for
    lowering the barrier while ``loop_safety`` is set. Nothing was written.
    """


class PlcVerificationError(PlcError):
    """The PLC acknowledged a write but reading the point back shows a different value."""


class HubError(SmartGateError):
    """The hub link (MQTT) failed in a way the caller must handle."""


class HubConnectError(HubError):
    """One attempt to reach the MQTT broker failed (refused, TLS, authentication, no CONNACK)."""


class OutboxError(HubError):
    """The durable outbox could not commit (disk full, I/O error): nothing was recorded."""


class ArchiveError(SmartGateError):
    """The scan archive has no such scan or transaction, or cannot store a sample."""
