"""Log output for journald and for people: one event per line, with level, lane and transaction.

journald reads a ``<N>`` syslog priority prefix on each stderr line (``SyslogLevelPrefix=`` is on
by default), so the ``journald`` format lets ``journalctl -p warning`` filter by level without a
journald client library. The lane and transaction of the task that logs travel in context
variables: a lane's tasks set them once and every line they produce carries them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TextIO

__all__ = ["bind", "configure_logging", "current_lane", "current_transaction"]

current_lane: contextvars.ContextVar[str | None] = contextvars.ContextVar("smartgate_lane", default=None)
current_transaction: contextvars.ContextVar[str | None] = contextvars.ContextVar("smartgate_txn", default=None)

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


@contextmanager
def bind(*, lane: str | None = None, transaction: str | None = None) -> Iterator[None]:
    """Tag every log line emitted inside the block (and tasks created in it) with lane/transaction."""
    tokens = []
    if lane is not None:
        tokens.append((current_lane, current_lane.set(lane)))
    if transaction is not None:
        tokens.append((current_transaction, current_transaction.set(transaction)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "lane"):
            setattr(record, "lane", current_lane.get())  # noqa: B010  (LogRecord has no declared attribute)
        if not hasattr(record, "txn"):
            setattr(record, "txn", current_transaction.get())  # noqa: B010
        return True


class _LineFormatter(logging.Formatter):
    """``<6>INFO gate_controller.lane.machine [lane=L1 txn=01J…] message`` (prefix only for journald)."""

    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        tags = []
        lane, txn = getattr(record, "lane", None), getattr(record, "txn", None)
        if lane:
            tags.append(f"lane={lane}")
        if txn:
            tags.append(f"txn={txn}")
        message = record.getMessage()
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        message = message.replace("\n", " | ")
        body = f"{record.levelname} {record.name}{' [' + ' '.join(tags) + ']' if tags else ''} {message}"
        if self._journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{body}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {body}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "lane": getattr(record, "lane", None),
            "transaction_id": getattr(record, "txn", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def configure_logging(
    level: str = "INFO",
    fmt: Literal["journald", "text", "json"] = "journald",
    stream: TextIO | None = None,
) -> None:
    """Route every smartgate logger to stderr in the chosen format (idempotent: reload-safe)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LineFormatter(journald=fmt == "journald"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (pymodbus logs every reconnect attempt at ERROR) stays at WARNING and above
    # unless the site asks for DEBUG; our own loggers report state changes once.
    for name in ("pymodbus", "paho", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    if level != "DEBUG":
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
