"""The site configuration: the typed schema, loading with located errors, secrets read from files,
and the generated key reference.

May import ``core`` and the policy settings of ``decision``; nothing else of ``gate_controller``.
"""

from gate_controller.config.console import ConsoleAuthConfig, ConsoleConfig, ConsoleTlsConfig
from gate_controller.config.loading import load_config, parse_config
from gate_controller.config.mqtt import BacklogConfig, MqttConfig, TlsConfig
from gate_controller.config.plc import PlcConfig, PointConfig, PointMap
from gate_controller.config.schema import (
    ControlConfig,
    GateConfig,
    InferenceConfig,
    LaneConfig,
    LaneTimeouts,
    LinkConfig,
    LoggingConfig,
    StorageConfig,
    TelemetryConfig,
)
from gate_controller.config.secrets import read_secret, redacted_dump, resolve_secret_path
from gate_controller.core.errors import ConfigError, ConfigIssue

__all__ = [
    "BacklogConfig",
    "ConfigError",
    "ConfigIssue",
    "ConsoleAuthConfig",
    "ConsoleConfig",
    "ConsoleTlsConfig",
    "ControlConfig",
    "GateConfig",
    "InferenceConfig",
    "LaneConfig",
    "LaneTimeouts",
    "LinkConfig",
    "LoggingConfig",
    "MqttConfig",
    "PlcConfig",
    "PointConfig",
    "PointMap",
    "StorageConfig",
    "TelemetryConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
    "read_secret",
    "redacted_dump",
    "resolve_secret_path",
]
