"""The gate's installed model packages, which one is active, and the version floor.

Layout under the store root (``storage.state_dir/models`` on a gate)::

    <name>/<version>/      one verified package per directory (never modified once installed)
    state.json             {"active", "previous", "highest", "history"}

* `install` verifies a package (trusted signature, every hash) in a staging directory beside its
  final place and renames it in; a crash leaves either nothing or the whole package.
* ``highest`` records, per model name, the highest version ever installed. A package whose
  version is not above it is refused: an old (validly signed) package cannot be replayed, even
  after it was deleted. Installing the very same package again is a no-op (a retained message
  delivered again after a reconnect).
* `activate` re-verifies the package on disk and swaps ``active`` in one atomic write of
  ``state.json``; the package it replaces becomes ``previous`` and stays on disk.
  `rollback` swaps back. The review worker watches ``state.json`` (`active_signature`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.package.build import VerifiedPackage, unpack, verify_package
from inference.package.keys import TrustedKey
from inference.package.manifest import PackageError, load_manifest, parse_version

__all__ = ["ActiveRef", "PackageStore"]

_log = logging.getLogger(__name__)
_STATE = "state.json"
_HISTORY = 50
_KEEP = 3


@dataclass(frozen=True)
class ActiveRef:
    name: str
    version: str
    digest: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "digest": self.digest}

    @classmethod
    def from_dict(cls, raw: Any) -> ActiveRef | None:
        if not isinstance(raw, dict):
            return None
        return cls(name=str(raw["name"]), version=str(raw["version"]), digest=str(raw["digest"]))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PackageStore:
    """Blocking file operations: call from a worker thread in async code."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.root / _STATE

    def _state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"active": None, "previous": None, "highest": {}, "history": []}
        except (OSError, ValueError) as err:
            raise PackageError(f"{self.state_path} unreadable: {err}") from err
        if not isinstance(raw, dict):
            raise PackageError(f"{self.state_path} is not a JSON object")
        raw.setdefault("highest", {})
        raw.setdefault("history", [])
        return raw

    def _write(self, state: dict[str, Any]) -> None:
        state["history"] = state["history"][-_HISTORY:]
        tmp = self.state_path.with_name(_STATE + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.state_path)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def active(self) -> ActiveRef | None:
        return ActiveRef.from_dict(self._state().get("active"))

    def previous(self) -> ActiveRef | None:
        return ActiveRef.from_dict(self._state().get("previous"))

    def history(self) -> list[dict[str, Any]]:
        return list(self._state()["history"])

    def active_signature(self) -> tuple[int, int] | None:
        """Changes whenever ``state.json`` is replaced (cheap to poll)."""
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def path_of(self, name: str, version: str) -> Path:
        parse_version(version)
        if "/" in name or name.startswith("."):
            raise PackageError(f"bad package name {name!r}")
        return self.root / name / version

    def installed(self) -> list[dict[str, Any]]:
        """Every installed package: name, version, digest, created, figures, and its role."""
        state = self._state()
        active = ActiveRef.from_dict(state.get("active"))
        previous = ActiveRef.from_dict(state.get("previous"))
        out: list[dict[str, Any]] = []
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in name_dir.iterdir():
                if not version_dir.is_dir() or version_dir.name.startswith("."):
                    continue
                try:
                    m = load_manifest(version_dir)
                except PackageError as err:
                    out.append({"name": name_dir.name, "version": version_dir.name, "error": str(err)})
                    continue
                role = ("active" if active and active.digest == m.digest else
                        "previous" if previous and previous.digest == m.digest else "")
                out.append({"name": m.name, "version": m.version, "digest": m.digest, "created": m.created,
                            "role": role, "figures": m.figures, "provenance": m.provenance})
        out.sort(key=lambda r: (r["name"], parse_version(r["version"]) if "error" not in r else ()))
        return out

    # ------------------------------------------------------------------ install

    def install_archive(self, data: bytes, keys: list[TrustedKey], expect: tuple[str, str] | None = None,
                        ) -> VerifiedPackage:
        """Unpack, verify and install; ``expect`` = (name, version) the package must have (the
        topic it was published on), so a validly signed package cannot pose as another."""
        staging = self.root / f".incoming-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            unpack(data, staging)
            if expect is not None:
                m = verify_package(staging, keys).manifest
                if (m.name, parse_version(m.version)) != (expect[0], parse_version(expect[1])):
                    raise PackageError(f"package is {m.name} {m.version}, published as {expect[0]} {expect[1]}")
            return self._install_staged(staging, keys)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def install_dir(self, source: Path, keys: list[TrustedKey]) -> VerifiedPackage:
        staging = self.root / f".incoming-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            verify_package(source, keys)  # refuse before copying anything
            shutil.copytree(source, staging)
            return self._install_staged(staging, keys)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _install_staged(self, staging: Path, keys: list[TrustedKey]) -> VerifiedPackage:
        package = verify_package(staging, keys)
        m = package.manifest
        target = self.path_of(m.name, m.version)
        with self._lock:
            state = self._state()
            if target.is_dir():
                with contextlib.suppress(PackageError):
                    existing = load_manifest(target)
                    if existing.digest == m.digest:
                        return verify_package(target, keys)
                raise PackageError(f"{m.name} {m.version} is already installed with different content")
            highest = state["highest"].get(m.name)
            if highest is not None and m.version_key <= parse_version(highest):
                raise PackageError(f"{m.name} {m.version} is not newer than {highest}, the highest version "
                                   "this gate ever installed (an old package cannot be replayed)")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
            state["highest"][m.name] = m.version
            state["history"].append({"at": _now(), "step": "installed", "name": m.name, "version": m.version,
                                     "digest": m.digest, "signed_by": package.signed_by})
            self._write(state)
            self._prune(state)
        _log.info("model package %s %s installed (signed by %s)", m.name, m.version, package.signed_by)
        return VerifiedPackage(directory=target, manifest=m, signed_by=package.signed_by)

    def _prune(self, state: dict[str, Any]) -> None:
        keep = {ActiveRef.from_dict(state.get(k)) for k in ("active", "previous")}
        keep_digests = {r.digest for r in keep if r is not None}
        for name_dir in self.root.iterdir():
            if not name_dir.is_dir() or name_dir.name.startswith("."):
                continue
            versions = []
            for d in name_dir.iterdir():
                with contextlib.suppress(PackageError):
                    versions.append((parse_version(d.name), d))
            versions.sort(reverse=True)
            for _, d in versions[_KEEP:]:
                with contextlib.suppress(PackageError):
                    if load_manifest(d).digest in keep_digests:
                        continue
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ activation

    def verified(self, name: str, version: str, keys: list[TrustedKey], digest: str | None = None
                 ) -> VerifiedPackage:
        """An installed package, verified again (disks rot, people edit files)."""
        path = self.path_of(name, version)
        if not path.is_dir():
            raise PackageError(f"{name} {version} is not installed")
        package = verify_package(path, keys)
        if digest is not None and package.manifest.digest != digest:
            raise PackageError(f"{name} {version} has digest {package.manifest.digest[:16]}..., "
                               f"not {digest[:16]}...")
        return package

    def activate(self, package: VerifiedPackage, *, reason: str) -> ActiveRef | None:
        """Make ``package`` active; returns what was active before (now ``previous``)."""
        m = package.manifest
        ref = ActiveRef(m.name, m.version, m.digest)
        with self._lock:
            state = self._state()
            old = ActiveRef.from_dict(state.get("active"))
            if old == ref:
                return old
            state["previous"] = old.as_dict() if old is not None else None
            state["active"] = ref.as_dict()
            state["history"].append({"at": _now(), "step": "activated", **ref.as_dict(), "reason": reason})
            self._write(state)
        return old

    def rollback(self, *, reason: str) -> tuple[ActiveRef | None, ActiveRef | None]:
        """Back to the previous package (or to the model from the config when there is none).
        Returns ``(rolled back from, now active)``."""
        with self._lock:
            state = self._state()
            current = ActiveRef.from_dict(state.get("active"))
            if current is None:
                raise PackageError("no active package to roll back from")
            previous = ActiveRef.from_dict(state.get("previous"))
            state["active"] = previous.as_dict() if previous is not None else None
            state["previous"] = None
            state["history"].append({"at": _now(), "step": "rolled_back", "from": current.as_dict(),
                                     "to": previous.as_dict() if previous else None, "reason": reason})
            self._write(state)
        return current, previous

    def active_path(self) -> Path | None:
        ref = self.active()
        return self.path_of(ref.name, ref.version) if ref is not None else None
