"""The daemon's exceptions, under the shared `SmartGateError` root."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from inference.errors import SmartGateError

if TYPE_CHECKING:
    from gate_controller.config import ConfigIssue

__all__ = [
    "ConfigError",
    "HubError",
    "PlcError",
    "PlcTimeoutError",
    "SmartGateError",
]


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


class HubError(SmartGateError):
    """The hub link (MQTT) failed in a way the caller must handle."""
