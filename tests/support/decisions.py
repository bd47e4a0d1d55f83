"""Builders for the decision tests: valid container numbers, OCR reads, signed release notices."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from stdnum import iso6346

from gate_controller.decision.identity import ContainerIdentity, IdentityReason, OcrRead

ROOT = Path(__file__).resolve().parents[2]
KEY = b"site-command-key-for-tests"
T0 = datetime(2026, 11, 22, 4, 0, 0, tzinfo=UTC)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CHECK_ALPHABET = "0123456789A BCDEFGHIJK LMNOPQRSTU VWXYZ"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    """The contract's timestamp form for T0 + seconds."""
    return at(seconds).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def complete(stem: str) -> str:
    """A 10-character owner code + serial with its check digit (stdnum, independent of our code)."""
    return stem + iso6346.calc_check_digit(stem)


def remainder(number: str) -> int:
    """The raw weighted sum modulo 11, computed from ISO 6346 directly (not from our module)."""
    return sum(_CHECK_ALPHABET.index(c) * 2**i for i, c in enumerate(number[:10])) % 11


def random_number(rng: random.Random, *, rem: int | None = None) -> str:
    """A random valid number; ``rem`` asks for a given remainder (10: check digit 0, the blind spot)."""
    while True:
        stem = "".join(rng.choice(LETTERS) for _ in range(3)) + "U" + f"{rng.randrange(1_000_000):06d}"
        number = complete(stem)
        if rem is None or remainder(number) == rem:
            return number


def read(text: str, confidence: float = 0.95, camera: str = "left", chars: list[float] | None = None,
         read_ms: int | None = None) -> OcrRead:
    return OcrRead(text, confidence, camera, tuple(chars) if chars is not None else None, read_ms)


def reads(*texts: str, confidence: float = 0.95) -> list[OcrRead]:
    cameras = ["left", "right", "rear", "top", "front", "extra"]
    return [read(t, confidence, cameras[i % len(cameras)]) for i, t in enumerate(texts)]


def low_at(text: str, positions: set[int], low: float = 0.3, high: float = 0.95,
           camera: str = "left") -> OcrRead:
    """A read whose characters at ``positions`` carry a low confidence."""
    chars = [low if i in positions else high for i in range(len(text))]
    return OcrRead(text, sum(chars) / len(chars), camera, tuple(chars))


def accepted(number: str, confidence: float = 0.9999) -> ContainerIdentity:
    return ContainerIdentity(number=number, check_digit_ok=True, corrected=False, confidence=confidence,
                             raw=(number, number), reason=None)


def unreadable(reason: IdentityReason = IdentityReason.AMBIGUOUS) -> ContainerIdentity:
    return ContainerIdentity(number=None, check_digit_ok=False, corrected=False, confidence=0.4,
                             raw=("M?KU12",), reason=reason)


def bad_check_digit(number: str) -> ContainerIdentity:
    return ContainerIdentity(number=number, check_digit_ok=False, corrected=False, confidence=0.99,
                             raw=(number,), reason=IdentityReason.CHECK_DIGIT_INVALID)


def hub_sign(obj: dict[str, Any], key: bytes = KEY) -> str:
    """The contract's signature, computed here from its own words rather than with our module."""
    body = json.dumps({k: v for k, v in obj.items() if k != "sig"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def notice_obj(container: str, status: str = "released", *, at_s: float = 0.0, expires_s: float | None = None,
               declared: str | None = "general", ref: str | None = "REF-1", key: bytes | None = KEY,
               **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "container": container, "status": status, "declared": declared, "ref": ref,
        "expires_at": None if expires_s is None else ts(expires_s), "ts": ts(at_s), **extra,
    }
    if key is not None:
        obj["sig"] = hub_sign(obj, key)
    return obj


def notice_payload(container: str, status: str = "released", **kwargs: Any) -> bytes:
    return json.dumps(notice_obj(container, status, **kwargs)).encode("utf-8")


def load_benchmark() -> ModuleType:
    """benchmarks/bench_identity.py as a module (benchmarks/ is not a package)."""
    name = "bench_identity_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "bench_identity.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
