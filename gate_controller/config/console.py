"""The ``console:`` section: the technician's web page served by the daemon.

Off unless ``listen`` is set. A listen address other than loopback needs ``auth`` (a page that
shows the gate and, with ``allow_commands``, moves barriers is never open to the lane network
without a password), and commands always need a logged-in user.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gate_controller.config.sections import FilePath, Section

__all__ = ["ConsoleAuthConfig", "ConsoleConfig", "ConsoleTlsConfig", "is_loopback", "split_listen"]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); raises ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:47880 (got {value!r})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, e.g. [::1]:47880 (got {value!r})")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be between 1 and 65535 (got {port_text!r})")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleAuthConfig(Section):
    """The one console account: a user name and an argon2 password hash kept in a file."""

    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] = "technician"
    """Login name of the console account."""
    password_hash_file: FilePath
    """File holding the argon2 hash of the password (`smartgate console hash-password`; a secret)."""
    session_ttl_s: Annotated[float, Field(ge=60.0, le=7 * 86400.0)] = 8 * 3600.0
    """A login lasts this long (a lane shift)."""
    login_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    """Failed logins allowed per client address within login_window_s before further tries are refused."""
    login_window_s: Annotated[float, Field(ge=1.0, le=86400.0)] = 60.0
    """Window of the login rate limit."""


class ConsoleTlsConfig(Section):
    """HTTPS for the console (session cookies are then also Secure)."""

    cert_file: FilePath
    """Server certificate (PEM, with its chain)."""
    key_file: FilePath
    """Server private key (a secret: relative paths resolve in $CREDENTIALS_DIRECTORY)."""


class ConsoleConfig(Section):
    """The technician console: a local web page of the gate (overview, feed, alarms, diagnostics)."""

    listen: Annotated[str, Field(min_length=3, max_length=300)] | None = None
    """host:port the console listens on, e.g. 127.0.0.1:47880; null (the default) keeps it off."""
    auth: ConsoleAuthConfig | None = None
    """Login for the console; required for a non-loopback listen address and for allow_commands."""
    allow_commands: bool = False
    """Let a logged-in user set lane modes and open or close barriers (audited like hub commands)."""
    tls: ConsoleTlsConfig | None = None
    """Serve HTTPS with this certificate; null serves plain HTTP."""
    feed_size: Annotated[int, Field(ge=10, le=1000)] = 100
    """Transactions, previews and cleared alarms the console keeps in memory."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    @model_validator(mode="after")
    def _auth_needed(self) -> ConsoleConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.listen is not None and self.auth is None and not is_loopback(split_listen(self.listen)[0]):
            problems.append((("listen",), "a non-loopback listen address needs auth (a password hash file)"))
        if self.allow_commands and self.auth is None:
            problems.append((("allow_commands",), "commands need a logged-in user: configure auth"))
        if problems:
            summary = "; ".join(message for _, message in problems)
            raise PydanticCustomError("located", "{summary}", {"summary": summary, "problems": problems})
        return self

    @property
    def address(self) -> tuple[str, int] | None:
        return split_listen(self.listen) if self.listen is not None else None

    @property
    def url(self) -> str | None:
        if self.listen is None:
            return None
        host, port = split_listen(self.listen)
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls is not None else 'http'}://{shown}:{port}/"
