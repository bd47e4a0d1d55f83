"""The ``mqtt:`` section: the hub link's broker, credentials, TLS, timing and outbox limits."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gate_controller.config.sections import FilePath, Section, reject


class TlsConfig(Section):
    ca_file: FilePath
    """CA certificate(s) that signed the broker certificate."""
    cert_file: FilePath | None = None
    """Client certificate (optional; goes with key_file)."""
    key_file: FilePath | None = None
    """Client private key (a secret: relative paths resolve in $CREDENTIALS_DIRECTORY)."""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            reject([((missing,), "cert_file and key_file go together")])
        return self


class BacklogConfig(Section):
    """Limits of the durable outbox while the broker is unreachable."""

    max_messages: Annotated[int, Field(ge=10, le=100_000_000)] = 2_000_000
    """Transactions and events kept while the hub is unreachable before BACKLOG_FULL."""
    max_mb: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    """Outbox size before BACKLOG_FULL (previews and telemetry are dropped first)."""
    max_previews: Annotated[int, Field(ge=0, le=1_000_000)] = 2000
    """Preview images kept in the backlog; the oldest are dropped beyond this."""
    max_telemetry: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    """Telemetry messages kept in the backlog; dropped first."""
    min_free_disk_mb: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    """BACKLOG_FULL alarm when free disk falls below this."""


class MqttConfig(Section):
    url: Annotated[str, Field(min_length=1, max_length=512)]
    """mqtts://host:8883 (TLS) or mqtt://host:1883 (plain, only with allow_insecure)."""
    client_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    """MQTT client id; null derives smartgate-<site>-<gate>."""
    username: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Broker account; goes with password_file."""
    password_file: FilePath | None = None
    """File holding the broker password (a secret)."""
    tls: TlsConfig | None = None
    """TLS settings; required for mqtts://."""
    allow_insecure: bool = False
    """Permit plain mqtt:// (loopback demos and labs only)."""
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_/-]{1,64}$")] = "smartgate/v1"
    """Contract root; topics are <prefix>/<site>/<gate>/..."""
    keepalive_s: Annotated[int, Field(ge=5, le=600)] = 30
    """MQTT keepalive."""
    command_key_file: FilePath
    """File holding the site HMAC key that signs commands and release notices (a secret)."""
    clock_skew_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 300.0
    """Commands whose ts is further from the gate clock are rejected."""
    replay_window_s: Annotated[float, Field(ge=60.0, le=7 * 86400.0)] = 86400.0
    """Command request_ids are remembered this long (replay protection)."""
    telemetry_interval_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 30.0
    """Telemetry period."""
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 32
    """QoS 1 messages awaiting PUBACK at once."""
    reconnect_initial_s: Annotated[float, Field(ge=0.05, le=60.0)] = 0.5
    """First reconnect delay; doubles up to reconnect_max_s, with jitter."""
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=600.0)] = 30.0
    """Longest reconnect delay."""
    publish_previews: bool = True
    """Publish a JPEG preview for every scan."""
    backlog: BacklogConfig = Field(default_factory=BacklogConfig)
    """Outbox limits."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts:// (got {value!r})")
        if not parts.hostname:
            raise ValueError(f"needs a host (got {value!r})")
        if parts.username or parts.password:
            raise ValueError("credentials must not be inline: use username and password_file")
        try:
            port = parts.port
        except ValueError as err:
            raise ValueError(f"bad port in {value!r}") from err
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {port})")
        return value

    @model_validator(mode="after")
    def _security(self) -> MqttConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        scheme = urlsplit(self.url).scheme
        if scheme == "mqtts" and self.tls is None:
            problems.append((("url",), "mqtts:// needs a tls section (at least ca_file)"))
        if scheme == "mqtt" and self.tls is not None:
            problems.append((("tls",), "a tls section needs an mqtts:// url"))
        if scheme == "mqtt" and not self.allow_insecure:
            problems.append((("url",), "plain mqtt:// is refused: use mqtts:// or set allow_insecure: true"))
        if (self.username is None) != (self.password_file is None):
            problems.append((("username" if self.username is None else "password_file",),
                             "username and password_file go together"))
        if self.reconnect_max_s < self.reconnect_initial_s:
            problems.append((("reconnect_max_s",), "must be >= reconnect_initial_s"))
        reject(problems)
        return self

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)
