"""Build, sign, verify, pack and unpack model packages (layout: `inference.package.manifest`)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference.errors import ModelError
from inference.model_spec import ModelSpec, load_spec, metadata_path_for
from inference.package.keys import TrustedKey, sign_manifest, verify_signature
from inference.package.manifest import (
    MANIFEST_FILE,
    PACKAGE_FORMAT,
    SIGNATURE_FILE,
    FileEntry,
    Manifest,
    PackageError,
    file_sha256,
    load_manifest,
)

__all__ = ["MAX_PACKAGE_BYTES", "VerifiedPackage", "build_package", "pack", "unpack", "verify_package"]

MAX_PACKAGE_BYTES = 64 * 1024 * 1024
"""Largest package accepted (archive and unpacked): a tflite of a few MB plus arrays fits easily."""


@dataclass(frozen=True)
class VerifiedPackage:
    directory: Path
    manifest: Manifest
    signed_by: str | None
    """Key id of the trusted key that signed it (None: hashes checked, signature not)."""

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @property
    def spec(self) -> ModelSpec:
        return load_spec(self.directory / self.manifest.metadata_file)


def build_package(model_path: Path, out: Path, *, key: Ed25519PrivateKey, name: str | None = None,
                  version: str | None = None, files: Mapping[str, bytes] | None = None,
                  provenance: Mapping[str, Any] | None = None, figures: Mapping[str, Any] | None = None,
                  spec_update: Mapping[str, Any] | None = None) -> Manifest:
    """Write a signed package into the empty (or new) directory ``out``.

    The model's metadata is copied with the package's name and version (so the gate reports
    what it runs), plus ``spec_update`` (e.g. adapted thresholds). ``files`` adds fitted arrays
    and reports by name.
    """
    model_path = Path(model_path)
    spec = load_spec(metadata_path_for(model_path))
    if file_sha256(model_path) != spec.sha256:
        raise ModelError(f"{model_path}: SHA-256 does not match its metadata")
    name = name or spec.name
    version = version or spec.version
    update: dict[str, Any] = {"name": name, "version": version, "model_file": model_path.name}
    update.update(spec_update or {})
    new_spec = ModelSpec.model_validate({**spec.model_dump(mode="json"), **update})
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PackageError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, out / model_path.name)
    metadata_name = metadata_path_for(model_path).name
    (out / metadata_name).write_text(new_spec.to_json(), encoding="utf-8")
    for file_name, data in (files or {}).items():
        if file_name in (model_path.name, metadata_name, MANIFEST_FILE, SIGNATURE_FILE):
            raise PackageError(f"extra file {file_name!r} clashes with a package file")
        (out / file_name).write_bytes(data)
    entries = {p.name: FileEntry(sha256=file_sha256(p), bytes=p.stat().st_size)
               for p in sorted(out.iterdir()) if p.is_file()}
    manifest = Manifest(
        format=PACKAGE_FORMAT, name=name, version=version,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), model_file=model_path.name,
        metadata_file=metadata_name, files=entries, provenance=dict(provenance or {}), figures=dict(figures or {}))
    (out / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n",
                                     encoding="utf-8")
    (out / SIGNATURE_FILE).write_bytes(sign_manifest(manifest, key))
    return manifest


def verify_package(directory: Path, keys: list[TrustedKey] | None) -> VerifiedPackage:
    """Manifest valid, signed by a trusted key (skipped when ``keys`` is None), every hash right,
    and the metadata consistent with the manifest. Any defect is a `PackageError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PackageError(f"{directory} is not a package directory")
    manifest = load_manifest(directory)
    signed_by = None
    if keys is not None:
        sig_path = directory / SIGNATURE_FILE
        if not sig_path.is_file():
            raise PackageError(f"{directory}: unsigned (no {SIGNATURE_FILE})")
        signed_by = verify_signature(manifest, sig_path.read_bytes(), keys).key_id
    manifest.check_files(directory)
    spec = load_spec(directory / manifest.metadata_file)
    if spec.model_file != manifest.model_file or spec.sha256 != manifest.files[manifest.model_file].sha256:
        raise PackageError(f"{directory}: metadata does not describe the package's model file")
    if (spec.name, spec.version) != (manifest.name, manifest.version):
        raise PackageError(f"{directory}: metadata names {spec.name} {spec.version}, the manifest "
                           f"{manifest.name} {manifest.version}")
    return VerifiedPackage(directory=directory, manifest=manifest, signed_by=signed_by)


def pack(directory: Path) -> bytes:
    """The package as one uncompressed tar (what the hub publishes). Deterministic: sorted names,
    fixed owner, mode and mtime, so the same package always gives the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(Path(directory).iterdir()):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def unpack(data: bytes, out: Path) -> None:
    """Unpack an archive from `pack` into the new directory ``out``: regular files with flat,
    plain names only (no links, devices or paths), within `MAX_PACKAGE_BYTES`."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageError(f"package archive of {len(data)} bytes exceeds {MAX_PACKAGE_BYTES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or "/" in name or name in ("", ".", "..") or name.startswith("."):
                    raise PackageError(f"package archive member {name!r} is not a plain file")
                total += member.size
                if total > MAX_PACKAGE_BYTES:
                    raise PackageError("package archive unpacks beyond the size limit")
                source = tar.extractfile(member)
                if source is None:
                    raise PackageError(f"package archive member {name!r} is unreadable")
                target = out / name
                if target.exists():
                    raise PackageError(f"package archive holds {name!r} twice")
                with target.open("wb") as fh:
                    shutil.copyfileobj(source, fh)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise PackageError(f"package archive unreadable (truncated or not a tar): {err}") from err
