"""Wall-clock timestamps as the hub contract writes them: ISO-8601 UTC with milliseconds and ``Z``.

Only timestamps that leave the process use the wall clock; intervals and timeouts use
`time.monotonic`. Keeping one formatter means every message on the hub link spells time the
same way (``2026-11-22T04:00:00.123Z``), which the JSON Schemas check with a pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["TIMESTAMP_PATTERN", "WallClock", "parse_timestamp", "utc_now", "utc_timestamp"]

WallClock = Callable[[], datetime]
"""An injectable source of aware UTC datetimes (tests pass a fixed or advancing clock)."""

TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"

# What we accept from the hub is a little wider than what we write: any ISO-8601 instant with an
# explicit offset (``Z`` or ``+hh:mm``) and 0..6 fraction digits. A timestamp without an offset is
# refused because its meaning depends on the sender's local time zone.
_ACCEPTED = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_timestamp(when: datetime | None = None) -> str:
    """``when`` (default: now) in the contract's format; naive datetimes are refused."""
    moment = utc_now() if when is None else when
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from a contract timestamp; `ValueError` when it is not one."""
    if not isinstance(text, str) or not _ACCEPTED.match(text):
        raise ValueError(f"not an ISO-8601 UTC timestamp: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
