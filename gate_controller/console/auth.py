"""Console logins: one account checked against an argon2 hash, sessions in memory, CSRF tokens and a
per-address login rate limit.

Sessions live only in the daemon's memory (a restart logs everyone out). The cookie holds a random
token and nothing else; it is HttpOnly and SameSite=Strict, and Secure when the console serves
HTTPS. Every session carries its own CSRF token, which each form posts back. Password checks run
in a worker thread, one at a time, so a flood of logins can neither stall the event loop nor eat
both cores; failed logins are limited per client address.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gate_controller.core.errors import ConfigError

__all__ = ["COOKIE", "Authenticator", "LoginLimiter", "Session", "SessionStore", "check_hash"]

COOKIE = "smartgate_console"
_MAX_SESSIONS = 64


def check_hash(encoded: bytes, *, where: str) -> str:
    """The argon2 hash as text, or a ConfigError saying why the file does not hold one."""
    try:
        text = encoded.decode("ascii").strip()
    except UnicodeDecodeError as err:
        raise ConfigError(f"console password hash file {where} is not text") from err
    if not text.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        raise ConfigError(
            f"console password hash file {where} does not hold an argon2 hash "
            "(make one with: smartgate console hash-password)")
    try:
        PasswordHasher().check_needs_rehash(text)
    except (InvalidHashError, ValueError) as err:
        raise ConfigError(f"console password hash file {where} holds a malformed argon2 hash "
                          "(make a new one with: smartgate console hash-password)") from err
    return text


@dataclass
class Session:
    token: str
    user: str
    csrf: str
    expires: float
    created: float
    flash: list[str] = field(default_factory=list)


class SessionStore:
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, user: str) -> Session:
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= _MAX_SESSIONS:  # the oldest login gives way
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            del self._sessions[oldest.token]
        session = Session(token=secrets.token_urlsafe(32), user=user, csrf=secrets.token_urlsafe(32),
                          expires=now + self.ttl_s, created=now)
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[token]
            return None
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[token]


class LoginLimiter:
    """At most ``attempts`` failed logins per client address within ``window_s``."""

    def __init__(self, attempts: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.attempts:
            return None
        return max(0.0, failures[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        if len(self._failures) > 4096:  # bounded memory under a scan of many addresses
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class Authenticator:
    """Checks the one console account; the hash is read once, when the console starts."""

    def __init__(self, username: str, password_hash: str) -> None:
        self.username = username
        self._hash = password_hash
        self._hasher = PasswordHasher()
        self._one_at_a_time = asyncio.Lock()

    async def verify(self, username: str, password: str) -> bool:
        if len(password) > 1024 or len(username) > 128:
            return False
        user_ok = hmac.compare_digest(username.encode("utf-8"), self.username.encode("utf-8"))
        async with self._one_at_a_time:
            # Verified even for a wrong user name, so the answer takes as long either way.
            password_ok = await asyncio.to_thread(self._check, password)
        return user_ok and password_ok

    def _check(self, password: str) -> bool:
        try:
            return self._hasher.verify(self._hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def same_token(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
