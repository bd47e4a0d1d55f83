"""Payload rules of spec section 3: strict types, listed values, unknown keys ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from firmware_bridge.errors import PayloadError
from firmware_bridge.frame import Frame, FrameType
from firmware_bridge.messages import (
    Control,
    DaemonHeartbeat,
    Fault,
    FirmwareHeartbeat,
    Hello,
    OcrRead,
    Resend,
    ScanAbort,
    ScanAck,
    ScanBegin,
    ScanEnd,
    ScanLines,
    decode_daemon_message,
    decode_firmware_message,
)

BEGIN = {"scan_no": 7, "scan_id": "S-7", "rows": 256, "channels": 2, "bits": 16, "pixel_mm": 5.2,
         "started_ms": 1_700_000_000_000}
OCR = {"kind": "container", "camera": "left", "text": "MSCU1234565", "confidence": 0.9}
HELLO = {"device": "scanner", "fw_version": "1.2", "serial_no": "X1", "protocol": 1, "rows": 256, "channels": 2,
         "bits": 16}


def fw(ftype: int, obj: Any) -> Any:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return decode_firmware_message(Frame(ftype, 0, raw))


def rejected(ftype: int, obj: Any) -> str:
    with pytest.raises(PayloadError) as err:
        fw(ftype, obj)
    return err.value.kind


def test_roundtrip_of_every_message() -> None:
    msgs = [
        Hello("combo", "1.0", "S1", 1, 256, 2, 16), Hello("ocr", "1.0", "S2"),
        FirmwareHeartbeat(123, "idle"),
        ScanBegin(1, "A", 256, 2, 16, 5.0, 10, 2400), ScanBegin(2, "B", 8, 1, 8, 1.5, 11),
        ScanLines(3, 4, 1, b"\x01\x02"),
        ScanEnd(1, "A", 2400, 0xFFFFFFFF, 12, 6.5), ScanEnd(1, "A", 1, 0, 12),
        ScanAbort(1, "x"),
        OcrRead("plate", "front", "AB 123", 0.5, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), None, 99),
        Fault("T", "critical", True, "m"),
    ]
    for msg in msgs:
        assert decode_firmware_message(Frame(msg.frame_type, 0, msg.to_payload())) == msg
    daemon = [DaemonHeartbeat(5, "degraded"), ScanAck(1, "complete"), ScanAck(2, "rejected", "timeout"),
              Resend(1, 0, 5), Control("hello"), Control("time_sync", 1_700_000_000_000), Control("disarm")]
    for msg in daemon:
        assert decode_daemon_message(Frame(msg.frame_type, 0, msg.to_payload())) == msg


def test_unknown_keys_are_ignored() -> None:
    assert fw(FrameType.SCAN_BEGIN, {**BEGIN, "vendor_field": [1, 2], "x": None}).scan_no == 7


@pytest.mark.parametrize("key", sorted(BEGIN))
def test_missing_required_key_rejects(key: str) -> None:
    obj = {k: v for k, v in BEGIN.items() if k != key}
    assert rejected(FrameType.SCAN_BEGIN, obj) == f"missing:{key}"


@pytest.mark.parametrize(("key", "value"), [
    ("scan_no", True), ("scan_no", "7"), ("scan_no", 7.0), ("rows", False), ("started_ms", 1.5),
    ("pixel_mm", True), ("pixel_mm", "5.2"), ("scan_id", 7), ("expected_columns", 1.0),
])
def test_wrong_json_type_rejects(key: str, value: Any) -> None:
    assert rejected(FrameType.SCAN_BEGIN, {**BEGIN, key: value}) == f"type:{key}"


def test_float_fields_take_integers() -> None:
    assert fw(FrameType.SCAN_BEGIN, {**BEGIN, "pixel_mm": 5}).pixel_mm == 5.0
    assert fw(FrameType.OCR_READ, {**OCR, "confidence": 1}).confidence == 1.0


@pytest.mark.parametrize(("ftype", "obj", "kind"), [
    (FrameType.SCAN_BEGIN, {**BEGIN, "channels": 3}, "range:channels"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "bits": 12}, "value:bits"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "scan_no": -1}, "range:scan_no"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "scan_no": 2**32}, "range:scan_no"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "scan_id": "x" * 65}, "range:scan_id"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "scan_id": ""}, "range:scan_id"),
    (FrameType.SCAN_BEGIN, {**BEGIN, "pixel_mm": 0}, "range:pixel_mm"),
    (FrameType.HEARTBEAT, {"uptime_ms": 1, "state": "ready"}, "value:state"),
    (FrameType.OCR_READ, {**OCR, "kind": "vehicle"}, "value:kind"),
    (FrameType.OCR_READ, {**OCR, "confidence": 1.01}, "range:confidence"),
    (FrameType.OCR_READ, {**OCR, "char_confidence": [0.5] * 3}, "range:char_confidence"),
    (FrameType.OCR_READ, {**OCR, "char_confidence": [True] * 11}, "type:char_confidence"),
    (FrameType.FAULT, {"code": "X", "severity": "info", "active": True, "message": ""}, "value:severity"),
    (FrameType.FAULT, {"code": "X", "severity": "error", "active": 1, "message": ""}, "type:active"),
    (FrameType.HELLO, {**HELLO, "device": "plc"}, "value:device"),
    (FrameType.HELLO, {**HELLO, "protocol": 2}, "range:protocol"),
    (FrameType.HELLO, {k: v for k, v in HELLO.items() if k != "rows"}, "missing:rows"),
    (FrameType.SCAN_END, {"scan_no": 1, "scan_id": "a", "columns": 5, "data_crc32": 2**32, "ended_ms": 1},
     "range:data_crc32"),
])
def test_values_outside_the_listed_set_reject(ftype: int, obj: dict[str, Any], kind: str) -> None:
    assert rejected(ftype, obj) == kind


def test_ocr_only_hello_needs_no_geometry() -> None:
    hello = fw(FrameType.HELLO, {"device": "ocr", "fw_version": "1", "serial_no": "o", "protocol": 1})
    assert hello.rows is None


@pytest.mark.parametrize(("raw", "kind"), [
    (b"\xff\xfe", "bad_utf8"), (b"{", "bad_json"), (b"[1, 2]", "not_object"), (b"", "bad_json"),
    (b'{"uptime_ms": NaN, "state": "idle"}', "bad_json"),
])
def test_malformed_json_rejects(raw: bytes, kind: str) -> None:
    assert rejected(FrameType.HEARTBEAT, raw) == kind


def test_scan_lines_needs_its_ten_byte_header() -> None:
    assert rejected(FrameType.SCAN_LINES, b"\x00" * 9) == "short"
    lines = fw(FrameType.SCAN_LINES, b"\x05\x00\x00\x00\x02\x00\x00\x00\x01\x00" + b"ab")
    assert (lines.scan_no, lines.first_column, lines.column_count, lines.data) == (5, 2, 1, b"ab")


def test_daemon_side_rules() -> None:
    with pytest.raises(PayloadError):
        decode_daemon_message(Frame(FrameType.CONTROL, 0, b'{"command": "time_sync"}'))
    with pytest.raises(PayloadError):
        decode_daemon_message(Frame(FrameType.RESEND, 0, b'{"scan_no": 1, "from_column": 0, "count": 0}'))
    with pytest.raises(PayloadError):
        decode_daemon_message(Frame(FrameType.SCAN_ACK, 0, b'{"scan_no": 1, "status": "ok"}'))
