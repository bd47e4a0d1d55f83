"""The daemon's typed configuration: the site file as a whole, its sections, bounds and cross-field checks.

Cross-field problems are reported with their location inside the document, so that `loading`
can point each one at its YAML line. Secrets never live in the YAML: only ``*_file`` keys name
them (see `secrets`).

The PLC section (`plc`), the hub link (`mqtt`) and the console (`console`) have modules of their own;
what every section shares is in `sections`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gate_controller.config.console import ConsoleConfig
from gate_controller.config.mqtt import MqttConfig
from gate_controller.config.plc import PlcConfig
from gate_controller.config.sections import FilePath, Name, Section, did_you_mean, reject
from gate_controller.decision.policy import PolicyConfig

# --------------------------------------------------------------------------- firmware links

__all__ = [
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
    "ReviewMode",
    "StorageConfig",
    "TelemetryConfig",
]


class LinkConfig(Section):
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
        reject(problems)
        return self


# --------------------------------------------------------------------------- lanes


class LaneTimeouts(Section):
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
    reverse_min_s: Annotated[float, Field(ge=0.0, le=60.0)] = 2.5
    """Least time a vehicle backing out needs from the stop line to the entry loop: an entry loop rising
    sooner after the vehicle left the stop line is the next vehicle arriving, not it reversing (0: off)."""


class LaneConfig(Section):
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
            reject([(("plc", "exit_loop"), "exit_detection needs plc.exit_loop (the exit detector input)")])
        return self


# --------------------------------------------------------------------------- the rest


ReviewMode = Literal["live", "shadow"]


class LiveBarConfig(Section):
    """What a lane's shadow record must show before it goes live (`smartgate model report`)."""

    max_false_alarm: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.02
    """Upper 95 % (Wilson) bound of the false-alarm rate on officer-confirmed clean scans."""
    min_detection: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.90
    """Lower 95 % (Wilson) bound of the detection rate on officer-confirmed anomalies."""
    min_clean: Annotated[int, Field(ge=1, le=100_000)] = 150
    """Confirmed clean scans needed before the bar can be met."""
    min_anomalies: Annotated[int, Field(ge=1, le=100_000)] = 30
    """Confirmed anomalies (real or projected test objects) needed before the bar can be met."""


class CanaryConfig(Section):
    """Checks around a model switch (`model.activate`, `smartgate model activate`)."""

    min_samples: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Labelled samples the canary replay needs; with fewer the switch is refused (0: replay what there is)."""
    watch_scans: Annotated[int, Field(ge=1, le=100_000)] = 50
    """After a switch, scans over which the live suspect share is watched."""
    max_suspect_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Suspect share over ``watch_scans`` above which the switch is rolled back automatically."""


class DriftConfig(Section):
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


class InferenceConfig(Section):
    model_path: FilePath | None = None
    """A .tflite with its metadata .json beside it, or a model package directory (signed by one of
    ``trusted_keys``); null uses the model shipped with smartgate. A package activated in
    ``storage.state_dir``/models takes precedence."""
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
    sample_upload_interval_s: Annotated[float, Field(ge=60.0, le=604800.0)] | None = None
    """Upload new labelled samples to the hub this often (low priority); null: only on the hub's samples.upload."""
    threads: Annotated[int, Field(ge=1, le=16)] = 1
    """Interpreter threads for the image review."""
    timeout_s: Annotated[float, Field(ge=0.1, le=60.0)] = 3.0
    """Past this the verdict is unavailable (which never leads to automatic release)."""
    preview_max_width: Annotated[int, Field(ge=128, le=4096)] = 1024
    """Width of the preview JPEG in pixels."""


class StorageConfig(Section):
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
    def uploads_path(self) -> Path:
        """How far each labelled sample's upload to the hub got (resumes after a restart)."""
        return self.state_dir / "uploads.json"

    @property
    def review_modes_path(self) -> Path:
        """Lanes the hub put in review shadow or live (``review.mode``), kept across restarts."""
        return self.state_dir / "review_modes.json"


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level logged."""
    format: Literal["journald", "text", "json"] = "journald"
    """journald (syslog priority prefixes for journald), text, or json lines."""


class TelemetryConfig(Section):
    prometheus_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Serve Prometheus text metrics on this port; null (the default) keeps the endpoint off."""
    prometheus_host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    """Address the Prometheus endpoint binds to."""


class ControlConfig(Section):
    socket_path: FilePath = Path("/run/smartgate/control.sock")
    """Local socket that `smartgate status` reads."""
    watchdog_progress_s: Annotated[float, Field(ge=1.0, le=600.0)] = 10.0
    """The systemd watchdog is fed only while every pipeline stage made progress this recently."""


class GateConfig(Section):
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
        reject(problems)
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
