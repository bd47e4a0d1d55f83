"""Signed model packages: build, verify, install, activate, roll back (docs/commissioning.md).

The review runtime (`inference.package.loader`) only checks a package's hashes; signatures are
checked where packages enter the gate (`PackageStore.install_archive`), again on activation, and
by the review worker before it loads a package (``ReviewWorker(trusted_keys=...)``).
"""

from __future__ import annotations

from inference.package.build import MAX_PACKAGE_BYTES, VerifiedPackage, build_package, pack, unpack, verify_package
from inference.package.keys import TrustedKey, generate_key, load_private_key, load_public_keys
from inference.package.manifest import MANIFEST_FILE, Manifest, PackageError, load_manifest, parse_version
from inference.package.store import ActiveRef, PackageStore

__all__ = [
    "MANIFEST_FILE",
    "MAX_PACKAGE_BYTES",
    "ActiveRef",
    "Manifest",
    "PackageError",
    "PackageStore",
    "TrustedKey",
    "VerifiedPackage",
    "build_package",
    "generate_key",
    "load_manifest",
    "load_private_key",
    "load_public_keys",
    "pack",
    "parse_version",
    "unpack",
    "verify_package",
]
