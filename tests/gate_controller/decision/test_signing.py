"""Canonical JSON and HMAC signatures (MQTT contract section 8)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate_controller.decision.signing import canonical_json, sign, verify
from tests.support.decisions import KEY, hub_sign

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def test_canonical_json_is_the_contract_expression() -> None:
    obj = {"ts": "2026-11-22T04:00:00.123Z", "args": {"lane": "L1", "b": [1, 2]}, "request_id": "r1"}
    assert canonical_json(obj) == b'{"args":{"b":[1,2],"lane":"L1"},"request_id":"r1","ts":"2026-11-22T04:00:00.123Z"}'


def test_canonical_json_escapes_non_ascii_like_json_dumps() -> None:
    assert canonical_json({"ref": "Zoll-Ä"}) == b'{"ref":"Zoll-\\u00c4"}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_non_json_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": value})


@given(JSON.filter(lambda v: isinstance(v, dict)))
def test_sign_matches_an_independent_implementation(obj: dict[str, object]) -> None:
    assert sign(obj, KEY) == hub_sign(obj)  # type: ignore[arg-type]
    assert verify({**obj, "sig": hub_sign(obj)}, KEY)  # type: ignore[arg-type]


def test_sig_is_excluded_and_key_order_irrelevant() -> None:
    obj = {"b": 1, "a": "x"}
    signed = {"a": "x", "b": 1, "sig": sign(obj, KEY)}
    assert sign(signed, KEY) == sign(obj, KEY)
    assert verify(signed, KEY)
    # A round trip through JSON text (what MQTT carries) keeps it valid.
    assert verify(json.loads(json.dumps(signed)), KEY)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(b=2),  # tampered value
        lambda o: o.update(extra=True),  # added key
        lambda o: o.pop("a"),  # removed key
        lambda o: o.update(sig=o["sig"].upper()),  # contract: lowercase hex
        lambda o: o.update(sig=o["sig"][:-1]),
        lambda o: o.update(sig=""),
        lambda o: o.update(sig=None),
        lambda o: o.update(sig=12),
        lambda o: o.update(sig="é" * 64),
        lambda o: o.pop("sig"),
    ],
)
def test_verify_rejects_anything_but_the_exact_signature(mutate: object) -> None:
    obj = {"a": "x", "b": 1}
    obj["sig"] = sign(obj, KEY)
    assert verify(obj, KEY)
    mutate(obj)  # type: ignore[operator]
    assert not verify(obj, KEY)


def test_verify_rejects_wrong_key_and_non_objects() -> None:
    obj = {"a": 1}
    obj["sig"] = sign(obj, KEY)  # type: ignore[assignment]
    assert not verify(obj, b"another-key")
    for thing in (None, [], "text", 3, [obj]):
        assert not verify(thing, KEY)
    assert not verify({"a": math.nan, "sig": "0" * 64}, KEY)


def test_empty_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        sign({"a": 1}, b"")
    with pytest.raises(ValueError):
        verify({"a": 1, "sig": "00"}, b"")
