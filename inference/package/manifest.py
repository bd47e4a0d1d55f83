"""The manifest of a model package: what it holds, where it came from, and how it is signed.

A model package is one directory::

    manifest.json     this document (format ``smartgate.package/1``)
    manifest.sig      Ed25519 signature over the canonical manifest (see `inference.package.keys`)
    <model>.tflite    the network
    <model>.json      its metadata (`inference.model_spec`)
    ...               any fitted arrays (``adaptation.npz``) and the package report

The manifest lists every other file with its SHA-256 and size, so the signature over the manifest
covers every byte of the package. The canonical form is the one the hub link already uses for
HMAC-signed messages: ``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` in UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.errors import ModelError

__all__ = [
    "MANIFEST_FILE",
    "PACKAGE_FORMAT",
    "SIGNATURE_FILE",
    "FileEntry",
    "Manifest",
    "PackageError",
    "canonical_json",
    "file_sha256",
    "load_manifest",
    "parse_version",
]

PACKAGE_FORMAT = "smartgate.package/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
_VERSION = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class PackageError(ModelError):
    """A model package is malformed, tampered with, unsigned, untrusted or older than allowed."""


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.10.2"`` -> ``(1, 10, 2)``; trailing zeros do not count (``1.1 == 1.1.0``)."""
    if not _VERSION.match(version):
        raise PackageError(f"version {version!r} is not dotted numbers (e.g. 1.2.0)")
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """``provenance``: training seed and data, adaptation samples, base package; ``figures``: the
    measured false-alarm rate and detection the package was accepted with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["smartgate.package/1"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    version: str
    created: str
    model_file: str
    metadata_file: str
    files: dict[str, FileEntry] = Field(min_length=1)
    provenance: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, Any] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            parse_version(value)
        except PackageError as err:
            raise ValueError(str(err)) from err
        return value

    @field_validator("files")
    @classmethod
    def _names(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in value:
            # Flat directory, no path tricks: a manifest can never point outside its package.
            if not _FILE_NAME.match(name) or name in (MANIFEST_FILE, SIGNATURE_FILE):
                raise ValueError(f"file name {name!r} is not allowed in a package")
        return value

    @property
    def version_key(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical manifest: the package's identity (``model.activate`` names it)."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def canonical(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def check_files(self, directory: Path) -> None:
        """Every listed file present with its size and hash, and nothing unlisted beside them."""
        if self.model_file not in self.files or self.metadata_file not in self.files:
            raise PackageError(f"{directory}: manifest does not list its model and metadata files")
        present = {p.name for p in directory.iterdir() if p.name not in (MANIFEST_FILE, SIGNATURE_FILE)}
        extra = sorted(present - set(self.files))
        if extra:
            raise PackageError(f"{directory}: files not in the manifest: {', '.join(extra)}")
        for name, entry in sorted(self.files.items()):
            path = directory / name
            if not path.is_file():
                raise PackageError(f"{directory}: {name} is missing")
            size = path.stat().st_size
            if size != entry.bytes:
                raise PackageError(f"{directory}: {name} has {size} bytes, the manifest says {entry.bytes} "
                                   "(truncated or replaced)")
            digest = file_sha256(path)
            if digest != entry.sha256:
                raise PackageError(f"{directory}: {name} SHA-256 {digest[:16]}... does not match the manifest "
                                   f"({entry.sha256[:16]}...)")


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PackageError(f"{directory}: no {MANIFEST_FILE} (not a model package)") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PackageError(f"{path}: unreadable: {err}") from err
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        raise PackageError(f"{path}: invalid manifest: {err}") from err
