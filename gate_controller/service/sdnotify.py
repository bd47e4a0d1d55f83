"""The service manager notification protocol (``sd_notify``), without libsystemd.

systemd starts the daemon with ``Type=notify`` and ``WatchdogSec=``: it waits for ``READY=1``
before calling the start successful, shows ``STATUS=`` in ``systemctl status``, and kills and
restarts the daemon when ``WATCHDOG=1`` stops arriving. The protocol is one AF_UNIX datagram of
newline-separated ``KEY=VALUE`` assignments sent to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace); the kernel attaches our credentials, which is how ``NotifyAccess=main``
knows the sender is the main process. A dependency on libsystemd for that would be a C
extension to build on every gate computer, so this module speaks it directly.

This module only sends. *When* to send is the daemon's decision: ``READY=1`` once startup is
done, ``WATCHDOG=1`` only while the pipeline is making progress (a stuck pipeline must stop
feeding the watchdog so that systemd restarts it), ``RELOADING=1``/``READY=1`` around a
configuration reload and ``STOPPING=1`` when a safe shutdown begins.

Outside systemd (no ``$NOTIFY_SOCKET``: tests, a technician's shell, ``smartgate demo``) every
call is a no-op that returns False, so callers never need to ask whether they run under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = [
    "Notifier",
    "extend_timeout",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval_s",
]

logger = logging.getLogger(__name__)

# systemd truncates STATUS= in `systemctl status`; a long one only costs journal space.
_STATUS_MAX_CHARS = 200


def _encode_address(address: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None if it is not an AF_UNIX address.

    ``@name`` means the Linux abstract namespace (leading NUL byte). Newer systemd versions
    also accept ``vsock:CID:PORT`` for virtual machines; a gate computer never gets one.
    """
    if address.startswith("@") and len(address) > 1:
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None


def _one_line(text: str) -> str:
    """Free text made safe to send as one assignment: newlines would start new assignments."""
    flat = " ".join(text.split())
    return flat[:_STATUS_MAX_CHARS]


class Notifier:
    """Sends notifications to one service manager socket.

    ``address`` is the raw ``$NOTIFY_SOCKET`` value; None (or an unusable value) makes every
    call a no-op returning False. A send failure is logged once when it starts and once when
    sending works again, and reported by the return value; it never raises, because losing a
    notification must not take the gate down (a lost ``WATCHDOG=1`` is caught by systemd itself).
    """

    def __init__(self, address: str | None, *, send_timeout_s: float = 1.0) -> None:
        if send_timeout_s <= 0:
            raise ValueError("send_timeout_s must be positive")
        self._address = address
        self._target = _encode_address(address) if address else None
        self._send_timeout_s = send_timeout_s
        self._lock = threading.Lock()
        self._failing = False
        if address and self._target is None:
            logger.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address; service notifications are off", address)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET`` as systemd set it (or as ``environ`` gives it)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def address(self) -> str | None:
        return self._address

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening (``$NOTIFY_SOCKET`` was a usable address)."""
        return self._target is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if the manager received it.

        All assignments of one call are applied together by systemd (for example ``READY=1``
        with the ``STATUS=`` that describes it). A line must not contain a newline.
        """
        if not lines:
            raise ValueError("notify() needs at least one KEY=VALUE assignment")
        for line in lines:
            key, sep, _ = line.partition("=")
            if not sep or not key or "\n" in line:
                raise ValueError(f"not a single KEY=VALUE assignment: {line!r}")
        if self._target is None:
            return False
        payload = "\n".join(lines).encode("utf-8")
        # A fresh socket per message, as libsystemd does: no state to share between threads,
        # and nothing to repair after the manager re-executes. The timeout bounds the rare case
        # of a service manager too busy to drain its socket, so the caller's loop cannot hang.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._send_timeout_s)
                sent = sock.sendto(payload, self._target)
        except OSError as err:
            self._record(ok=False, error=err)
            return False
        if sent != len(payload):
            # Datagrams are all or nothing; a short count would mean a kernel surprise.
            self._record(ok=False, error=OSError(f"short datagram: {sent} of {len(payload)} bytes"))
            return False
        self._record(ok=True, error=None)
        return True

    def _record(self, *, ok: bool, error: OSError | None) -> None:
        with self._lock:
            was_failing, self._failing = self._failing, not ok
        if not ok and not was_failing:
            logger.warning("cannot notify the service manager at %s: %s", self._address, error)
        elif ok and was_failing:
            logger.info("service manager notifications work again (%s)", self._address)

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete: systemd marks the service started and begins ordering units after it."""
        return self.notify("READY=1", *self._status_lines(status))

    def status(self, text: str) -> bool:
        """One line of free text for ``systemctl status`` (newlines are flattened, length capped)."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Feed the watchdog. Call only while the pipeline is known to make progress."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """A shutdown has begun; systemd stops expecting watchdog pings from now on."""
        return self.notify("STOPPING=1", *self._status_lines(status))

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload has begun; send `ready` when it is done (applied or rolled back).

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, microseconds) is required by systemd 253 and later
        to order the reload against ``systemctl reload``; systemd 252 ignores it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", *self._status_lines(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more from now before the start/stop/reload timeout fires.

        For a startup or a safe shutdown that legitimately takes longer than
        ``TimeoutStartSec=``/``TimeoutStopSec=`` (a vehicle still under a raised barrier);
        send it again before it runs out.
        """
        if not seconds > 0:
            raise ValueError("seconds must be positive")
        return self.notify(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    @staticmethod
    def _status_lines(status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={_one_line(status)}",)


def watchdog_interval_s(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd enforces on this process, in seconds; None if there is none.

    From ``$WATCHDOG_USEC`` (``WatchdogSec=``), honoured only when ``$WATCHDOG_PID`` is absent or
    names this process, so a child that inherited the environment does not think it must ping.
    Ping at half this interval or more often, and only while making progress.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            return None
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


# Module-level shortcuts for the common case: one notifier for the process's $NOTIFY_SOCKET,
# re-created if the environment changes (tests, or a daemon that clears it).
_default_lock = threading.Lock()
_default: Notifier | None = None


def _default_notifier() -> Notifier:
    global _default  # noqa: PLW0603 - a per-process cache keyed by the environment
    address = os.environ.get("NOTIFY_SOCKET") or None
    with _default_lock:
        if _default is None or _default.address != address:
            _default = Notifier(address)
        return _default


def notify(*lines: str) -> bool:
    """Send ``KEY=VALUE`` assignments to ``$NOTIFY_SOCKET``; False outside systemd or on failure."""
    return _default_notifier().notify(*lines)


def ready(status: str | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=``) to ``$NOTIFY_SOCKET``."""
    return _default_notifier().ready(status)


def status(text: str) -> bool:
    """``STATUS=text`` to ``$NOTIFY_SOCKET``."""
    return _default_notifier().status(text)


def watchdog() -> bool:
    """``WATCHDOG=1`` to ``$NOTIFY_SOCKET``; call only while the pipeline makes progress."""
    return _default_notifier().watchdog()


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1`` (with an optional ``STATUS=``) to ``$NOTIFY_SOCKET``."""
    return _default_notifier().stopping(status)


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` and ``MONOTONIC_USEC=`` (with an optional ``STATUS=``) to ``$NOTIFY_SOCKET``."""
    return _default_notifier().reloading(status)


def extend_timeout(seconds: float) -> bool:
    """``EXTEND_TIMEOUT_USEC=`` to ``$NOTIFY_SOCKET``."""
    return _default_notifier().extend_timeout(seconds)
