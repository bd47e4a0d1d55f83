"""Message authenticity on the hub link (MQTT contract section 8).

Every signed hub message (release notices, commands) carries ``sig``: the lowercase hex
HMAC-SHA256, keyed with the site's command key, over the canonical JSON of the message
without ``sig``. Canonical JSON is exactly what the contract spells out,
``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` encoded as UTF-8; with the default
``ensure_ascii=True`` that text is plain ASCII (non-ASCII characters become ``\\uXXXX`` escapes),
which is what a hub following the contract's expression literally produces.

This module knows nothing about notices or commands, so the release-notice store and the
command handler share one implementation of the rule.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["SIG_FIELD", "canonical_json", "sign", "verify"]

SIG_FIELD = "sig"


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8.

    NaN and infinities are refused (``ValueError``): they are not JSON, and a hub on another
    platform could never produce the same bytes for them.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _unsigned(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key != SIG_FIELD}


def _check_key(key: bytes) -> None:
    # An empty HMAC key is accepted by hashlib but authenticates nothing: anyone can compute it.
    if not isinstance(key, bytes | bytearray) or not key:
        raise ValueError("the signing key must be non-empty bytes")


def sign(obj: Mapping[str, Any], key: bytes) -> str:
    """The ``sig`` value for ``obj``; a ``sig`` key already present is left out of the digest."""
    _check_key(key)
    return hmac.new(bytes(key), canonical_json(_unsigned(obj)), hashlib.sha256).hexdigest()


def verify(obj: Any, key: bytes) -> bool:
    """True only when ``obj`` is a JSON object whose ``sig`` is the right lowercase hex digest.

    Anything else (not a mapping, missing or non-string ``sig``, wrong digest, a value that has no
    canonical JSON form) is False. The comparison runs in constant time so that a forger learns
    nothing from response timing.
    """
    _check_key(key)
    if not isinstance(obj, Mapping):
        return False
    claimed = obj.get(SIG_FIELD)
    if not isinstance(claimed, str):
        return False
    try:
        expected = sign(obj, key)
    except (TypeError, ValueError):
        return False
    # compare_digest needs ASCII str on both sides; a non-ASCII claim cannot be a hex digest anyway.
    if not claimed.isascii():
        return False
    return hmac.compare_digest(expected, claimed)
