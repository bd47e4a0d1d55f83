"""Release notices: verification, ordering, expiry, deletion, durability (MQTT contract section 7)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gate_controller.decision.notices import NoticeResult, NoticeStore, format_ts, parse_ts
from tests.support.decisions import KEY, at, complete, hub_sign, notice_obj, notice_payload, ts

C = "MSKU1234565"
OTHER = "CSQU3054383"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NoticeStore]:
    with NoticeStore(tmp_path / "state" / "notices.sqlite") as s:
        yield s


def _apply(store: NoticeStore, payload: bytes, *, now_s: float = 10.0, container: str = C) -> NoticeResult:
    return store.apply(container, payload, key=KEY, now=at(now_s)).result


def test_a_signed_notice_is_stored_and_looked_up(store: NoticeStore) -> None:
    outcome = store.apply(C, notice_payload(C, "released", ref="T-17", declared="empty"), key=KEY, now=at(1))
    assert outcome.result is NoticeResult.STORED
    assert outcome.changed
    notice = store.lookup(C, at(2))
    assert notice is not None
    assert (notice.container, notice.status, notice.ref, notice.declared) == (C, "released", "T-17", "empty")
    assert notice.ts == at(0)
    assert store.lookup(OTHER, at(2)) is None
    assert store.count(at(2)) == 1


def test_notices_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "notices.sqlite"
    with NoticeStore(path) as first:
        first.apply(C, notice_payload(C, "hold", at_s=5), key=KEY, now=at(6))
    with NoticeStore(path) as second:
        notice = second.lookup(C, at(7))
        assert notice is not None
        assert notice.status == "hold"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --------------------------------------------------------------------------- ordering


def test_a_later_ts_wins_and_an_older_one_is_ignored(store: NoticeStore) -> None:
    assert _apply(store, notice_payload(C, "hold", at_s=20)) is NoticeResult.STORED
    # Out of order: the earlier release arrives after the hold.
    assert _apply(store, notice_payload(C, "released", at_s=10)) is NoticeResult.STALE
    notice = store.lookup(C, at(30))
    assert notice is not None
    assert notice.status == "hold"
    # A newer release lifts the hold.
    assert _apply(store, notice_payload(C, "released", at_s=30)) is NoticeResult.STORED
    assert store.lookup(C, at(31)).status == "released"  # type: ignore[union-attr]


@pytest.mark.parametrize("strict", ["hold", "inspect"])
@pytest.mark.parametrize("release_first", [True, False])
def test_at_the_same_instant_hold_or_inspect_beats_release(store: NoticeStore, strict: str,
                                                            release_first: bool) -> None:
    release = notice_payload(C, "released", at_s=50, ref="R")
    order = notice_payload(C, strict, at_s=50, ref="S")
    for payload in (release, order) if release_first else (order, release):
        _apply(store, payload)
    assert store.lookup(C, at(60)).status == strict  # type: ignore[union-attr]


def test_inspect_beats_hold_at_the_same_instant(store: NoticeStore) -> None:
    _apply(store, notice_payload(C, "inspect", at_s=50))
    assert _apply(store, notice_payload(C, "hold", at_s=50)) is NoticeResult.STALE
    assert store.lookup(C, at(60)).status == "inspect"  # type: ignore[union-attr]


def test_a_replayed_notice_is_harmless(store: NoticeStore) -> None:
    payload = notice_payload(C, "released", at_s=5)
    assert _apply(store, payload) is NoticeResult.STORED
    assert _apply(store, payload) is NoticeResult.UNCHANGED
    # Re-serialized differently (key order, whitespace): still the same notice.
    obj = json.loads(payload)
    assert _apply(store, json.dumps(dict(reversed(list(obj.items()))), indent=2).encode()) is NoticeResult.UNCHANGED
    # Replayed after a newer notice: ignored.
    _apply(store, notice_payload(C, "hold", at_s=9))
    assert _apply(store, payload) is NoticeResult.STALE
    assert store.lookup(C, at(10)).status == "hold"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- expiry


def test_an_expired_notice_is_not_in_force_but_still_orders(store: NoticeStore) -> None:
    _apply(store, notice_payload(C, "released", at_s=10, expires_s=100))
    assert store.lookup(C, at(99)) is not None
    assert store.lookup(C, at(100)) is None
    assert store.lookup_any(C) is not None
    assert store.count(at(101)) == 0
    # An older notice cannot take its place after it expired.
    assert _apply(store, notice_payload(C, "released", at_s=5), now_s=150) is NoticeResult.STALE
    assert store.lookup(C, at(150)) is None


def test_a_notice_already_expired_on_arrival_is_stored_but_not_in_force(store: NoticeStore) -> None:
    assert _apply(store, notice_payload(C, "released", at_s=0, expires_s=5), now_s=10) is NoticeResult.STORED
    assert store.lookup(C, at(10)) is None


# --------------------------------------------------------------------------- deletion


def test_an_empty_payload_deletes_and_a_tombstone_blocks_resurrection(store: NoticeStore) -> None:
    release = notice_payload(C, "released", at_s=10)
    _apply(store, release)
    assert _apply(store, b"") is NoticeResult.DELETED
    assert store.lookup(C, at(20)) is None
    assert _apply(store, b"") is NoticeResult.UNCHANGED  # deleting twice is harmless
    # A late re-delivery of the deleted notice, or anything older, does not come back.
    assert _apply(store, release) is NoticeResult.STALE
    assert _apply(store, notice_payload(C, "released", at_s=3)) is NoticeResult.STALE
    assert store.lookup(C, at(20)) is None
    # A newer notice does.
    assert _apply(store, notice_payload(C, "inspect", at_s=11)) is NoticeResult.STORED
    assert store.lookup(C, at(20)).status == "inspect"  # type: ignore[union-attr]


def test_deleting_an_unknown_container_changes_nothing(store: NoticeStore) -> None:
    outcome = store.apply(OTHER, b"", key=KEY, now=at(1))
    assert outcome.result is NoticeResult.UNCHANGED
    assert not outcome.changed


def test_prune_forgets_old_tombstones_and_expired_notices(store: NoticeStore) -> None:
    _apply(store, notice_payload(C, "released", at_s=0), now_s=0)
    _apply(store, b"", now_s=1)
    _apply(store, notice_payload(OTHER, "released", at_s=0, expires_s=10), now_s=0, container=OTHER)
    live = complete("TGHU987654")
    _apply(store, notice_payload(live, "hold", at_s=0), now_s=0, container=live)
    assert store.prune(at(0) + timedelta(days=40), keep=timedelta(days=30)) == 2
    assert store.lookup(live, at(0) + timedelta(days=40)) is not None


# --------------------------------------------------------------------------- rejection


def _forged() -> bytes:
    return notice_payload(C, "released", key=b"not-the-site-key")


def _tampered() -> bytes:
    obj = notice_obj(C, "hold")
    obj["status"] = "released"  # signature was made over "hold"
    return json.dumps(obj).encode()


def _unsigned() -> bytes:
    return notice_payload(C, "released", key=None)


def _signed(obj: dict[str, object]) -> bytes:
    obj = dict(obj)
    obj["sig"] = hub_sign(obj)
    return json.dumps(obj).encode()


MALFORMED = {
    "forged": _forged(),
    "tampered": _tampered(),
    "unsigned": _unsigned(),
    "not json": b"released!",
    "not utf-8": b"\xff\xfe{}",
    "json array": b"[1, 2]",
    "NaN constant": b'{"container": "MSKU1234565", "status": "released", "ts": NaN, "sig": "00"}',
    "other container": notice_payload(OTHER, "released"),
    "unknown status": _signed({"container": C, "status": "cleared", "declared": None, "ref": None,
                               "expires_at": None, "ts": ts(0)}),
    "status not a string": _signed({"container": C, "status": 1, "declared": None, "ref": None,
                                    "expires_at": None, "ts": ts(0)}),
    "missing ts": _signed({"container": C, "status": "released", "declared": None, "ref": None, "expires_at": None}),
    "naive ts": _signed({"container": C, "status": "released", "declared": None, "ref": None, "expires_at": None,
                         "ts": "2026-11-22T04:00:00.000"}),
    "garbage ts": _signed({"container": C, "status": "released", "declared": None, "ref": None,
                           "expires_at": None, "ts": "yesterday"}),
    "bad expiry": _signed({"container": C, "status": "released", "declared": None, "ref": None,
                           "expires_at": 17, "ts": ts(0)}),
    "declared not a string": _signed({"container": C, "status": "released", "declared": ["empty"], "ref": None,
                                      "expires_at": None, "ts": ts(0)}),
}


@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
def test_forged_or_malformed_notices_change_nothing(store: NoticeStore, payload: bytes) -> None:
    _apply(store, notice_payload(C, "hold", at_s=-100))
    outcome = store.apply(C, payload, key=KEY, now=at(10))
    assert outcome.result is NoticeResult.REJECTED
    assert outcome.detail
    assert not outcome.changed
    notice = store.lookup(C, at(10))
    assert notice is not None
    assert notice.status == "hold"


def test_an_invalid_topic_container_is_rejected(store: NoticeStore) -> None:
    bad = "MSKU1234566"
    outcome = store.apply(bad, notice_payload(bad, "released"), key=KEY, now=at(1))
    assert outcome.result is NoticeResult.REJECTED
    assert store.apply("../../x", b"", key=KEY, now=at(1)).result is NoticeResult.REJECTED


def test_extra_signed_fields_are_tolerated(store: NoticeStore) -> None:
    assert _apply(store, notice_payload(C, "released", at_s=1, lane_hint="L2")) is NoticeResult.STORED


def test_naive_now_is_refused(store: NoticeStore) -> None:
    with pytest.raises(ValueError):
        store.apply(C, notice_payload(C), key=KEY, now=datetime(2026, 1, 1))


def test_timestamps_round_trip() -> None:
    assert format_ts(parse_ts("2026-11-22T04:00:00.123Z")) == "2026-11-22T04:00:00.123Z"
    assert parse_ts("2026-11-22T05:00:00.000+01:00") == parse_ts("2026-11-22T04:00:00Z")
    for bad in ("2026-11-22T04:00:00", "", None, 5, "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_ts(bad)


def test_applies_from_several_threads_are_serialized(store: NoticeStore) -> None:
    containers = [complete(f"MSKU{n:06d}") for n in range(100_000, 100_040)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i, container in enumerate(containers):
                status = "hold" if (i + offset) % 2 else "released"
                store.apply(container, notice_payload(container, status, at_s=offset), key=KEY, now=at(100))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,), name=f"notice-writer-{k}") for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, container in enumerate(containers):
        notice = store.lookup(container, at(100))
        assert notice is not None
        assert notice.ts == at(3)  # the latest ts of the four writers won, whatever the interleaving
        assert notice.status == ("hold" if (i + 3) % 2 else "released")
