"""The daemon's typed configuration: every section of the site file, its bounds and cross-field checks.

Cross-field problems are reported with their location inside the document, so that `loading`
can point each one at its YAML line. Secrets never live in the YAML: only ``*_file`` keys name
them (see `secrets`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gate_controller.config.console import ConsoleConfig
from gate_controller.decision.policy import PolicyConfig

__all__ = [
    "BacklogConfig",
    "CanaryConfig",
    "ControlConfig",
    "DriftConfig",
    "GateConfig",
    "InferenceConfig",
    "LaneConfig",
    "LaneTimeouts",
    "LinkConfig",
    "LiveBarConfig",
    "LoggingConfig",
    "MqttConfig",
    "PlcConfig",
    "PointConfig",
    "PointMap",
    "ReviewMode",
    "StorageConfig",
    "TelemetryConfig",
    "TlsConfig",
]

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# Paths come from YAML strings; strict mode would refuse the str -> Path conversion.
FilePath = Annotated[Path, Field(strict=False)]
Seconds = Annotated[float, Field(gt=0)]


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """A hint for a misspelt key or name, or nothing when no option is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


def _reject(problems: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
    """Fail cross-field validation, keeping where in the section each problem is.

    The locations travel in the error context so that `parse_config` can point at the exact
    YAML line of each offending key instead of the section as a whole.
    """
    if problems:
        summary = "; ".join(message for _, message in problems)
        raise PydanticCustomError("located", "{summary}", {"summary": summary, "problems": list(problems)})


# --------------------------------------------------------------------------- firmware links


class LinkConfig(_Section):
    """One GFP/1 byte stream to the gate firmware (scanner, OCR unit or combo device)."""

    name: Name
    """Link name; lanes refer to it, events and telemetry report it."""
    url: Annotated[str, Field(min_length=1, max_length=512)]
    """Device path (/dev/ttyUSB0, /dev/serial/by-id/...), socket://host:port or rfc2217://host:port."""
    baudrate: Annotated[int, Field(ge=1200, le=4_000_000)] = 115200
    """Serial speed; ignored by socket:// links."""
    parity: Literal["N", "E", "O"] = "N"
    """Serial parity: N(one), E(ven), O(dd)."""
    bytesize: Literal[7, 8] = 8
    """Data bits per character."""
    stopbits: Literal[1, 2] = 1
    """Stop bits."""
    heartbeat_interval_s: Annotated[float, Field(ge=0.2, le=2.0)] = 1.0
    """Period of our HEARTBEAT to the firmware (GFP/1 asks for at least every 2 s)."""
    link_timeout_s: Annotated[float, Field(ge=1.0, le=60.0)] = 5.0
    """No valid frame for this long and the link is down (GFP/1: 5 s)."""
    partial_frame_timeout_s: Annotated[float, Field(ge=0.1, le=30.0)] = 2.0
    """A partial frame followed by this much silence is discarded (GFP/1: 2 s)."""
    reconnect_initial_s: Annotated[float, Field(ge=0.05, le=10.0)] = 0.5
    """First reconnect delay; doubles up to reconnect_max_s, with jitter."""
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=300.0)] = 10.0
    """Longest reconnect delay."""
    resend_rounds: Annotated[int, Field(ge=0, le=10)] = 3
    """RESEND rounds for missing scan columns (GFP/1: 3)."""
    resend_interval_s: Annotated[float, Field(ge=0.1, le=10.0)] = 1.0
    """Time between RESEND rounds (GFP/1: 1 s)."""
    scan_timeout_s: Annotated[float, Field(ge=1.0, le=600.0)] = 60.0
    """A scan without SCAN_END this long after its last frame is dropped (GFP/1: 60 s)."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if "://" in value:
            scheme = value.split("://", 1)[0]
            if scheme not in {"socket", "rfc2217", "loop", "spy", "alt", "hwgrep"}:
                raise ValueError(
                    f"serial URL scheme must be socket://, rfc2217:// or loop:// or a device path (got {scheme}://)"
                )
        elif not value.startswith("/"):
            raise ValueError(
                f"must be a device path like /dev/ttyUSB0 or a URL like socket://host:port (got {value!r})"
            )
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> LinkConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.reconnect_max_s < self.reconnect_initial_s:
            problems.append((("reconnect_max_s",), "must be >= reconnect_initial_s"))
        if self.link_timeout_s <= self.heartbeat_interval_s * 2:
            problems.append((("link_timeout_s",), "must exceed twice heartbeat_interval_s"))
        _reject(problems)
        return self


# --------------------------------------------------------------------------- PLC

PointTable = Literal["coil", "discrete_input", "holding_register", "input_register"]


class PointConfig(_Section):
    """Where one logical signal lives on the lane PLC."""

    table: PointTable
    """Modbus table of the point."""
    address: Annotated[int, Field(ge=0, le=65535)]
    """Zero-based address in that table."""
    inverted: bool = False
    """The signal is active-low (e.g. a normally-closed estop contact); bits only."""


def _point(table: PointTable, address: int) -> Any:
    return Field(default_factory=lambda: PointConfig(table=table, address=address))


# Which tables may carry which kind of signal: readable bits, writable bits, registers.
_INPUT_BITS = ("loop_entry", "loop_stop", "loop_safety", "barrier_up", "barrier_down", "estop", "local_manual")
_OUTPUT_BITS = ("barrier_raise", "light_green", "light_red", "sign_inspection", "alarm", "scan_permit")
_OUTPUT_REGS = ("host_heartbeat", "lane_state", "display_message")
_INPUT_REGS = ("plc_version", "plc_watchdog", "barrier_cycles")


class PointMap(_Section):
    """The lane's Modbus points; defaults are those of docs/plc-points.md (the shared register map)."""

    loop_entry: PointConfig = _point("discrete_input", 0)
    """Vehicle on the entry loop (start of the scan zone)."""
    loop_stop: PointConfig = _point("discrete_input", 1)
    """Vehicle at the stop line in front of the barrier."""
    loop_safety: PointConfig = _point("discrete_input", 2)
    """Vehicle under the barrier arm; the barrier is never lowered while it is set."""
    barrier_up: PointConfig = _point("discrete_input", 3)
    """Barrier fully raised (limit switch)."""
    barrier_down: PointConfig = _point("discrete_input", 4)
    """Barrier fully lowered (limit switch)."""
    estop: PointConfig = _point("discrete_input", 5)
    """Emergency stop pressed; the daemon then writes no coil but alarm."""
    local_manual: PointConfig = _point("discrete_input", 6)
    """Lane key switch in local/manual mode; the daemon then writes no coil but alarm."""
    barrier_raise: PointConfig = _point("coil", 0)
    """1 = raise and hold raised, 0 = lower (level, never a pulse)."""
    light_green: PointConfig = _point("coil", 1)
    """Green traffic light."""
    light_red: PointConfig = _point("coil", 2)
    """Red traffic light."""
    sign_inspection: PointConfig = _point("coil", 3)
    """GO TO INSPECTION sign."""
    alarm: PointConfig = _point("coil", 4)
    """Beacon/buzzer."""
    scan_permit: PointConfig = _point("coil", 5)
    """Scanner may fire (only while the lane is in automatic operation)."""
    host_heartbeat: PointConfig = _point("holding_register", 0)
    """Counter the daemon increments at least once per second while healthy."""
    lane_state: PointConfig = _point("holding_register", 1)
    """Written by the daemon: 0 offline, 1 automatic, 2 manual, 3 fault, 4 closed."""
    display_message: PointConfig = _point("holding_register", 2)
    """0 blank, 1 PROCEED, 2 STOP-WAIT, 3 GO TO INSPECTION, 4 LANE CLOSED."""
    plc_version: PointConfig = _point("input_register", 0)
    """PLC program version (read)."""
    plc_watchdog: PointConfig = _point("input_register", 1)
    """0 ok, 1 tripped (host heartbeat stale) (read)."""
    barrier_cycles: PointConfig = _point("input_register", 2)
    """Barrier cycle counter, low 16 bits (read)."""

    @model_validator(mode="after")
    def _tables_fit_signals(self) -> PointMap:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name in _INPUT_BITS:
            if getattr(self, name).table not in ("discrete_input", "coil"):
                problems.append(((name, "table"), "a bit input: table must be discrete_input or coil"))
        for name in _OUTPUT_BITS:
            if getattr(self, name).table != "coil":
                problems.append(((name, "table"), "written by the daemon: table must be coil"))
        for name in _OUTPUT_REGS + _INPUT_REGS:
            point = getattr(self, name)
            allowed = ("holding_register",) if name in _OUTPUT_REGS else ("input_register", "holding_register")
            if point.table not in allowed:
                problems.append(((name, "table"), f"a register: table must be {' or '.join(allowed)}"))
            if point.inverted:
                problems.append(((name, "inverted"), "a register: inverted applies to bits only"))
        seen: dict[tuple[str, int], str] = {}
        for name in type(self).model_fields:
            point = getattr(self, name)
            slot = (point.table, point.address)
            if slot in seen:
                problems.append(((name, "address"), f"{point.table} {point.address} is already used by {seen[slot]}"))
            seen[slot] = name
        _reject(problems)
        return self


class PlcConfig(_Section):
    """The lane PLC connection (Modbus TCP, or Modbus RTU over a serial URL)."""

    transport: Literal["tcp", "rtu"] = "tcp"
    """tcp (Modbus TCP) or rtu (Modbus RTU on a serial URL)."""
    host: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """tcp: PLC address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    """tcp: PLC port."""
    serial_url: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """rtu: serial device or URL (/dev/ttyS1, rfc2217://...)."""
    baudrate: Annotated[int, Field(ge=1200, le=921600)] = 19200
    """rtu: serial speed."""
    parity: Literal["N", "E", "O"] = "E"
    """rtu: parity."""
    bytesize: Literal[7, 8] = 8
    """rtu: data bits."""
    stopbits: Literal[1, 2] = 1
    """rtu: stop bits."""
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    """Modbus device (unit) id."""
    timeout_s: Annotated[float, Field(ge=0.05, le=5.0)] = 0.5
    """Per-request timeout; writes are never blindly retried."""
    poll_hz: Annotated[float, Field(ge=1.0, le=50.0)] = 10.0
    """Input polling rate."""
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=30.0)] = 2.0
    """Reconnect backoff cap (the register map asks for about 2 s)."""
    heartbeat_interval_s: Annotated[float, Field(ge=0.1, le=1.0)] = 0.5
    """host_heartbeat write period; the PLC watchdog trips after 3 s without a change."""
    barrier_travel_s: Annotated[float, Field(ge=1.0, le=30.0)] = 6.0
    """Time allowed for the limit switch after a barrier command before BARRIER_FAULT."""
    link_loss_s: Annotated[float, Field(ge=0.2, le=1.5)] = 1.0
    """No good answer from the PLC for this long means the link is lost and the lane goes to fault."""
    points: PointMap = Field(default_factory=PointMap)
    """The point map: logical signal -> table, address, polarity."""
    exit_loop: PointConfig | None = None
    """Exit detector beyond the barrier (a bit input); needed when the lane has exit_detection."""

    @model_validator(mode="after")
    def _transport_needs(self) -> PlcConfig:
        if self.transport == "tcp" and self.host is None:
            _reject([(("host",), "transport tcp needs host")])
        if self.transport == "rtu" and self.serial_url is None:
            _reject([(("serial_url",), "transport rtu needs serial_url")])
        problems: list[tuple[tuple[str | int, ...], str]] = []
        # Register map rule 7: the lane must be in fault within 2 s of losing the PLC.
        if self.link_loss_s + self.timeout_s > 2.0:
            problems.append((("link_loss_s",), "link_loss_s + timeout_s must not exceed 2.0 s"))
        if self.exit_loop is not None:
            if self.exit_loop.table not in ("discrete_input", "coil"):
                problems.append((("exit_loop", "table"), "a bit input: table must be discrete_input or coil"))
            for name in type(self.points).model_fields:
                point = getattr(self.points, name)
                if (point.table, point.address) == (self.exit_loop.table, self.exit_loop.address):
                    problems.append((("exit_loop", "address"),
                                     f"{point.table} {point.address} is already used by {name}"))
        _reject(problems)
        return self


# --------------------------------------------------------------------------- lanes


class LaneTimeouts(_Section):
    """How long each phase of a passage may take before the lane gives up on it."""

    arrival_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 120.0
    """From the entry loop to the stop line; longer means the vehicle backed out or stalled."""
    collect_s: Annotated[float, Field(ge=1.0, le=600.0)] = 30.0
    """From arrival at the stop line until scan and OCR reads must be in."""
    ocr_settle_s: Annotated[float, Field(ge=0.0, le=60.0)] = 1.5
    """Quiet time after the last OCR read before the reads of a container are final."""
    decision_s: Annotated[float, Field(ge=0.1, le=60.0)] = 5.0
    """Upper bound for image review plus policy; past it the decision is manual."""
    pass_s: Annotated[float, Field(ge=5.0, le=3600.0)] = 120.0
    """After release: time for the vehicle to pass under the barrier."""
    clear_s: Annotated[float, Field(ge=0.0, le=60.0)] = 1.0
    """Time the safety loop must stay clear before the barrier is lowered."""
    hold_s: Annotated[float, Field(ge=5.0, le=86400.0)] = 900.0
    """How long a stopped (not released) vehicle may wait before the transaction closes as manual."""
    pre_arrival_s: Annotated[float, Field(ge=0.0, le=60.0)] = 5.0
    """OCR reads this long before the entry loop still belong to the arriving vehicle."""
    entry_gap_s: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    """A loop must stay clear this long before it counts a new vehicle (gaps between tractor and trailer)."""
    backout_s: Annotated[float, Field(ge=0.5, le=60.0)] = 3.0
    """Stop loop clear this long with the barrier down: the vehicle left the stop line without passing."""


class LaneConfig(_Section):
    id: Name
    """Lane id; part of telemetry, events and transactions."""
    scanner: bool = True
    """Whether the lane has a drive-through X-ray scanner (a scan is then required for release)."""
    links: Annotated[list[Name], Field(min_length=1, max_length=8)]
    """Names of the firmware links (scanner, OCR unit) that feed this lane."""
    plc: PlcConfig
    """The lane PLC connection and point map."""
    timeouts: LaneTimeouts = Field(default_factory=LaneTimeouts)
    """Phase timeouts of the lane state machine."""
    exit_detection: bool = False
    """Wait for the exit loop (loop_entry of the next zone wired as exit) before lowering."""
    max_containers: Annotated[int, Field(ge=1, le=2)] = 2
    """Most containers one truck carries through this lane (2 x 20 ft = 2)."""

    @model_validator(mode="after")
    def _exit_detector(self) -> LaneConfig:
        if self.exit_detection and self.plc.exit_loop is None:
            _reject([(("plc", "exit_loop"), "exit_detection needs plc.exit_loop (the exit detector input)")])
        return self


# --------------------------------------------------------------------------- hub link


class TlsConfig(_Section):
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
            _reject([((missing,), "cert_file and key_file go together")])
        return self


class BacklogConfig(_Section):
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


class MqttConfig(_Section):
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
        _reject(problems)
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


# --------------------------------------------------------------------------- the rest


ReviewMode = Literal["live", "shadow"]


class LiveBarConfig(_Section):
    """What a lane's shadow record must show before it goes live (`smartgate model report`)."""

    max_false_alarm: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.02
    """Upper 95 % (Wilson) bound of the false-alarm rate on officer-confirmed clean scans."""
    min_detection: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.90
    """Lower 95 % (Wilson) bound of the detection rate on officer-confirmed anomalies."""
    min_clean: Annotated[int, Field(ge=1, le=100_000)] = 150
    """Confirmed clean scans needed before the bar can be met."""
    min_anomalies: Annotated[int, Field(ge=1, le=100_000)] = 30
    """Confirmed anomalies (real or projected test objects) needed before the bar can be met."""


class CanaryConfig(_Section):
    """Checks around a model switch (`model.activate`, `smartgate model activate`)."""

    min_samples: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Labelled samples the canary replay needs; with fewer the switch is refused (0: replay what there is)."""
    watch_scans: Annotated[int, Field(ge=1, le=100_000)] = 50
    """After a switch, scans over which the live suspect share is watched."""
    max_suspect_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Suspect share over ``watch_scans`` above which the switch is rolled back automatically."""


class DriftConfig(_Section):
    """Bounds of the per-lane figures that raise ``MODEL_DRIFT`` (and clear it on return)."""

    window: Annotated[int, Field(ge=5, le=10_000)] = 200
    """Reviewed scans per lane the rolling figures are computed over."""
    min_scans: Annotated[int, Field(ge=1, le=10_000)] = 20
    """Scans a lane needs in its window before drift is judged."""
    max_suspect_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    """Rolling suspect share above this is drift."""
    max_unavailable_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """Rolling share of scans without a verdict above this is drift."""
    max_input_distance: Annotated[float, Field(gt=0.0, le=1000.0)] = 3.0
    """Distance (in training standard deviations) of the recent input statistics from the model's envelope."""


class InferenceConfig(_Section):
    model_path: FilePath | None = None
    """A .tflite with its metadata .json beside it, or a model package directory; null uses the model
    shipped with smartgate. A package activated in ``storage.state_dir``/models takes precedence."""
    mode: ReviewMode = "live"
    """live: review verdicts decide; shadow: the review runs and is published, every scan goes to an officer."""
    lane_modes: dict[Name, ReviewMode] = Field(default_factory=dict)
    """Per-lane override of ``mode`` (lane id -> live/shadow); the hub's ``review.mode`` overrides both."""
    trusted_keys: Annotated[list[FilePath], Field(max_length=16)] = Field(default_factory=list)
    """Ed25519 public keys (PEM) a model package must be signed with; none: no package can be installed."""
    live_bar: LiveBarConfig = Field(default_factory=LiveBarConfig)
    """The figures a lane in shadow must reach for live."""
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    """Canary replay and automatic rollback of model switches."""
    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Drift alarm bounds."""
    threads: Annotated[int, Field(ge=1, le=16)] = 1
    """Interpreter threads for the image review."""
    timeout_s: Annotated[float, Field(ge=0.1, le=60.0)] = 3.0
    """Past this the verdict is unavailable (which never leads to automatic release)."""
    preview_max_width: Annotated[int, Field(ge=128, le=4096)] = 1024
    """Width of the preview JPEG in pixels."""


class StorageConfig(_Section):
    state_dir: FilePath = Path("/var/lib/smartgate")
    """Outbox, notice store, sequence counters, hub lane modes, scan archive and labelled samples live here."""
    archive_scans: bool = True
    """Keep received scans on disk (for scan.fetch and inspection feedback)."""
    archive_max_mb: Annotated[int, Field(ge=0, le=10_000_000)] = 20_000
    """Scan archive size; the oldest scans are pruned beyond it."""

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    @property
    def notices_path(self) -> Path:
        return self.state_dir / "notices.sqlite3"

    @property
    def lane_modes_path(self) -> Path:
        """Lanes the hub closed or put in manual (kept across restarts until ``lane.mode auto``)."""
        return self.state_dir / "lane_modes.json"

    @property
    def replay_path(self) -> Path:
        """Request ids of hub commands seen in the replay window (survives restarts)."""
        return self.state_dir / "replay.sqlite3"

    @property
    def archive_dir(self) -> Path:
        return self.state_dir / "scans"

    @property
    def samples_dir(self) -> Path:
        return self.state_dir / "samples"

    @property
    def models_dir(self) -> Path:
        """Installed model packages and which one is active."""
        return self.state_dir / "models"

    @property
    def review_modes_path(self) -> Path:
        """Lanes the hub put in review shadow or live (``review.mode``), kept across restarts."""
        return self.state_dir / "review_modes.json"


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level logged."""
    format: Literal["journald", "text", "json"] = "journald"
    """journald (syslog priority prefixes for journald), text, or json lines."""


class TelemetryConfig(_Section):
    prometheus_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Serve Prometheus text metrics on this port; null (the default) keeps the endpoint off."""
    prometheus_host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    """Address the Prometheus endpoint binds to."""


class ControlConfig(_Section):
    socket_path: FilePath = Path("/run/smartgate/control.sock")
    """Local socket that `smartgate status` reads."""
    watchdog_progress_s: Annotated[float, Field(ge=1.0, le=600.0)] = 10.0
    """The systemd watchdog is fed only while every pipeline stage made progress this recently."""


class GateConfig(_Section):
    """The whole daemon configuration (one YAML file)."""

    site: Name
    """Site id; part of every MQTT topic."""
    gate: Name
    """Gate id within the site."""
    links: Annotated[list[LinkConfig], Field(min_length=1, max_length=32)]
    """Firmware links (GFP/1 byte streams)."""
    lanes: Annotated[list[LaneConfig], Field(min_length=1, max_length=16)]
    """Lanes of this gate."""
    mqtt: MqttConfig
    """The hub link."""
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    """Image review."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """Decision policy."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Durable state on disk."""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Log output."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    """Telemetry outputs besides MQTT."""
    control: ControlConfig = Field(default_factory=ControlConfig)
    """Local control socket and watchdog."""
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    """The technician console (a local web page); off by default."""

    @model_validator(mode="after")
    def _references(self) -> GateConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        link_names = [link.name for link in self.links]
        first_link: dict[str, int] = {}
        first_url: dict[str, int] = {}
        for i, link in enumerate(self.links):
            if link.name in first_link:
                problems.append((("links", i, "name"), f"duplicate link name {link.name!r}"))
            first_link.setdefault(link.name, i)
            if link.url in first_url:
                problems.append((("links", i, "url"), f"links[{first_url[link.url]}] already opens {link.url!r}"))
            first_url.setdefault(link.url, i)
        first_lane: dict[str, int] = {}
        owner: dict[str, str] = {}
        for i, lane in enumerate(self.lanes):
            if lane.id in first_lane:
                problems.append((("lanes", i, "id"), f"duplicate lane id {lane.id!r}"))
            first_lane.setdefault(lane.id, i)
            for j, name in enumerate(lane.links):
                if name not in first_link:
                    hint = did_you_mean(name, link_names)
                    problems.append((("lanes", i, "links", j), f"unknown link {name!r}{hint}"))
                elif name in owner and owner[name] != lane.id:
                    problems.append((("lanes", i, "links", j), f"link {name!r} already feeds lane {owner[name]!r}"))
                owner.setdefault(name, lane.id)
        endpoints: dict[tuple[str, str, int, int], str] = {}
        for i, lane in enumerate(self.lanes):
            plc = lane.plc
            key = (plc.transport, plc.host or plc.serial_url or "", plc.port if plc.transport == "tcp" else 0,
                   plc.unit_id)
            if key in endpoints:
                problems.append((("lanes", i, "plc", "unit_id"),
                                 f"lane {endpoints[key]!r} already uses this PLC endpoint and unit id"))
            endpoints.setdefault(key, lane.id)
        for lane_id in self.inference.lane_modes:
            if lane_id not in first_lane:
                hint = did_you_mean(lane_id, list(first_lane))
                problems.append((("inference", "lane_modes", lane_id), f"unknown lane {lane_id!r}{hint}"))
        _reject(problems)
        return self

    def review_mode(self, lane_id: str) -> ReviewMode:
        """The configured review mode of a lane (before any hub ``review.mode``)."""
        return self.inference.lane_modes.get(lane_id, self.inference.mode)

    @property
    def root_topic(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.site}/{self.gate}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"smartgate-{self.site}-{self.gate}"

    def lane(self, lane_id: str) -> LaneConfig:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise KeyError(lane_id)

    def link(self, name: str) -> LinkConfig:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)
