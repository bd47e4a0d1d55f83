"""Secrets: only ``*_file`` keys name them, resolved against ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential=``); and the effective config with anything secret-looking masked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gate_controller.config.schema import GateConfig
from gate_controller.core.errors import ConfigError

__all__ = ["read_secret", "redacted_dump", "resolve_secret_path"]


def resolve_secret_path(path: Path, *, base_dir: Path | None = None) -> Path:
    """Where a ``*_file`` secret lives.

    Relative paths are looked up in ``$CREDENTIALS_DIRECTORY`` first (systemd ``LoadCredential=``
    puts each credential there under its name), then relative to the config file's directory.
    """
    if path.is_absolute():
        return path
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / path
        if candidate.exists() or base_dir is None:
            return candidate
    return (base_dir or Path.cwd()) / path


def read_secret(path: Path, *, base_dir: Path | None = None) -> bytes:
    """The secret's bytes, without the trailing newline editors add."""
    resolved = resolve_secret_path(path, base_dir=base_dir)
    try:
        data = resolved.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read secret file {resolved}: {err.strerror or err}") from err
    data = data.rstrip(b"\r\n")
    if not data:
        raise ConfigError(f"secret file {resolved} is empty")
    return data


def redacted_dump(config: GateConfig) -> dict[str, Any]:
    """The effective config (defaults filled in) as plain data, with anything secret-looking masked.

    Secrets are only ever file paths, but a technician pastes this output into tickets, so the
    contents of those files are never read here and URL user-info is masked all the same.
    """
    data: dict[str, Any] = _mask(config.model_dump(mode="json"))
    return data


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, str) and key in {"password", "secret", "token"}:
                out[key] = "***"
            else:
                out[key] = _mask(item)
        return out
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return value
