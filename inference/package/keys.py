"""Ed25519 signatures over package manifests (`cryptography`).

Why Ed25519 over the canonical manifest rather than OpenSSF model-signing: the manifest already
is what an OMS in-toto statement holds (every file with its SHA-256), and a bare-key OMS bundle
adds a DSSE envelope plus the sigstore client stack to the gate's runtime dependencies for no
extra guarantee with a bare key. Ed25519 keys are 32 bytes, signatures are deterministic (the
same manifest always gives the same signature, so a package rebuilt from the same inputs is
byte-identical) and verification takes well under a millisecond on the gate computer.

Keys are PEM files: the private key (PKCS#8, never leaves the hub or the technician's laptop)
and the public key (SubjectPublicKeyInfo) that the gate lists in ``inference.trusted_keys``.
A key is known by its id: the first 16 hex digits of the SHA-256 of its raw 32 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from inference.package.manifest import Manifest, PackageError

__all__ = ["SIGNATURE_FORMAT", "TrustedKey", "generate_key", "load_private_key", "load_public_keys", "sign_manifest",
           "verify_signature"]

SIGNATURE_FORMAT = "smartgate.signature/1"


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    key: Ed25519PublicKey
    source: str


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private file mode 0600); returns the key id."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return _key_id(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise PackageError(f"signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"signing key {path} is not an Ed25519 private key")
    return key


def load_public_keys(paths: list[Path]) -> list[TrustedKey]:
    """The trusted public keys; an unreadable or non-Ed25519 file is an error, never skipped."""
    out: list[TrustedKey] = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as err:
            raise PackageError(f"trusted key {path}: {err}") from err
        if not isinstance(key, Ed25519PublicKey):
            raise PackageError(f"trusted key {path} is not an Ed25519 public key")
        out.append(TrustedKey(key_id=_key_id(key), key=key, source=str(path)))
    return out


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` document for ``manifest``."""
    doc = {
        "format": SIGNATURE_FORMAT,
        "alg": "ed25519",
        "key_id": _key_id(key.public_key()),
        "manifest_sha256": manifest.digest,
        "signature": base64.b64encode(key.sign(manifest.canonical())).decode("ascii"),
    }
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def verify_signature(manifest: Manifest, signature_doc: bytes, keys: list[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``manifest``; `PackageError` when none did."""
    if not keys:
        raise PackageError("no trusted keys configured: a package cannot be verified")
    try:
        doc: Any = json.loads(signature_doc.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise PackageError(f"signature unreadable: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT or doc.get("alg") != "ed25519":
        raise PackageError("signature unreadable: not a smartgate Ed25519 signature document")
    try:
        sig = base64.b64decode(str(doc.get("signature")), validate=True)
    except ValueError as err:
        raise PackageError(f"signature unreadable: {err}") from err
    data = manifest.canonical()
    # Try the named key first, then every trusted key: the id is a hint, not a trust decision.
    ordered = sorted(keys, key=lambda k: k.key_id != doc.get("key_id"))
    for trusted in ordered:
        try:
            trusted.key.verify(sig, data)
        except InvalidSignature:
            continue
        return trusted
    raise PackageError(f"signature does not verify with any trusted key (signed by key {doc.get('key_id')!r}, "
                       f"trusted: {', '.join(k.key_id for k in keys)})")
