"""Typed GFP/1 payloads (spec section 3): strict decoding and canonical encoding.

Decoding follows the section's rules literally: unknown keys are ignored; a missing required key,
a wrong JSON type or a value outside a listed set raises `PayloadError`. Integers must be JSON
integers, floats JSON integers or floats, and neither accepts booleans or strings. NaN and
Infinity are not JSON and are rejected too.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, cast

from firmware_bridge.errors import PayloadError
from firmware_bridge.frame import MAX_PAYLOAD, Frame, FrameType

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "COLUMN_HEADER_SIZE",
    "Control",
    "DaemonHeartbeat",
    "DaemonMessage",
    "Fault",
    "FirmwareHeartbeat",
    "FirmwareMessage",
    "Hello",
    "OcrRead",
    "Resend",
    "ScanAbort",
    "ScanAck",
    "ScanBegin",
    "ScanEnd",
    "ScanLines",
    "column_bytes",
    "decode_daemon_message",
    "decode_firmware_message",
]

UINT32_MAX = 0xFFFF_FFFF
COLUMN_HEADER_SIZE = 10  # SCAN_LINES: scan_no u32, first_column u32, column_count u16
_LINES_HEADER = struct.Struct("<IIH")

DEVICES = ("scanner", "ocr", "combo")
SCANNER_DEVICES = ("scanner", "combo")
FIRMWARE_STATES = ("idle", "scanning", "fault")
DAEMON_STATES = ("ready", "degraded")
OCR_KINDS = ("container", "plate")
SEVERITIES = ("warning", "error", "critical")
ACK_STATUSES = ("complete", "rejected")
COMMANDS = ("hello", "time_sync", "arm", "disarm")


def column_bytes(rows: int, channels: int, bits: int) -> int:
    """Bytes of one scan column on the wire."""
    return rows * channels * (2 if bits == 16 else 1)


# The largest detector column that still fits one SCAN_LINES frame (2 channels, 16 bits).
_MAX_ROWS = (MAX_PAYLOAD - COLUMN_HEADER_SIZE) // 4


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Fields:
    """Typed accessors over one decoded JSON object; every failure names a stable kind."""

    def __init__(self, frame_type: int, payload: bytes) -> None:
        self.frame_type = frame_type
        try:
            obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as err:
            raise PayloadError(frame_type, "bad_utf8", str(err)) from err
        except (ValueError, RecursionError) as err:
            raise PayloadError(frame_type, "bad_json", str(err)) from err
        if not isinstance(obj, dict):
            raise PayloadError(frame_type, "not_object", type(obj).__name__)
        self.obj: dict[str, Any] = obj

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.obj:
            if required:
                raise PayloadError(self.frame_type, f"missing:{key}")
            return None
        return self.obj[key]

    def _bad(self, key: str, kind: str, value: Any) -> PayloadError:
        return PayloadError(self.frame_type, f"{kind}:{key}", repr(value)[:80])

    def integer_opt(self, key: str, *, lo: int | None = None, hi: int | None = None,
                required: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "type", value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(key, "range", value)
        return value

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.integer_opt(key, lo=lo, hi=hi, required=True)
        assert value is not None
        return value

    def number_opt(self, key: str, *, lo: float | None = None, hi: float | None = None,
                  gt: float | None = None, required: bool = False) -> float | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._bad(key, "type", value)
        result = float(value)
        if not math.isfinite(result):
            raise self._bad(key, "range", value)
        if (lo is not None and result < lo) or (hi is not None and result > hi) or (
                gt is not None and result <= gt):
            raise self._bad(key, "range", value)
        return result

    def number(self, key: str, *, lo: float | None = None, hi: float | None = None,
              gt: float | None = None) -> float:
        value = self.number_opt(key, lo=lo, hi=hi, gt=gt, required=True)
        assert value is not None
        return value

    def text_opt(self, key: str, *, choices: Sequence[str] | None = None, min_len: int = 0,
                max_len: int | None = None, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self._bad(key, "type", value)
        if choices is not None and value not in choices:
            raise self._bad(key, "value", value)
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            raise self._bad(key, "range", value)
        return value

    def text(self, key: str, *, choices: Sequence[str] | None = None, min_len: int = 0,
            max_len: int | None = None) -> str:
        value = self.text_opt(key, choices=choices, min_len=min_len, max_len=max_len, required=True)
        assert value is not None
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, True)
        if not isinstance(value, bool):
            raise self._bad(key, "type", value)
        return value

    def number_list_opt(self, key: str, *, lo: float, hi: float) -> tuple[float, ...] | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._bad(key, "type", value)
        out: list[float] = []
        for item in value:
            if not isinstance(item, int | float) or isinstance(item, bool):
                raise self._bad(key, "type", item)
            number = float(item)
            if not math.isfinite(number) or not lo <= number <= hi:
                raise self._bad(key, "range", item)
            out.append(number)
        return tuple(out)


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


class _JsonMessage:
    """A JSON payload whose keys are its dataclass fields."""

    __slots__ = ()

    def to_payload(self) -> bytes:
        """The canonical payload: every field in declaration order, absent (None) ones left out."""
        message = cast("DataclassInstance", self)
        return _json({f.name: getattr(message, f.name) for f in fields(message)})


# --------------------------------------------------------------------------- firmware -> daemon


@dataclass(frozen=True, slots=True)
class Hello(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.HELLO
    device: str
    fw_version: str
    serial_no: str
    protocol: int = 1
    rows: int | None = None
    channels: int | None = None
    bits: int | None = None

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        f = _Fields(cls.frame_type, payload)
        device = f.text("device", choices=DEVICES)
        hello = cls(
            device=device,
            fw_version=f.text("fw_version"),
            serial_no=f.text("serial_no"),
            protocol=f.integer("protocol", lo=1, hi=1),
            rows=f.integer_opt("rows", lo=1, hi=_MAX_ROWS, required=device in SCANNER_DEVICES),
            channels=f.integer_opt("channels", lo=1, hi=2, required=device in SCANNER_DEVICES),
            bits=f.integer_opt("bits", required=device in SCANNER_DEVICES),
        )
        if hello.bits is not None and hello.bits not in (8, 16):
            raise PayloadError(cls.frame_type, "value:bits", repr(hello.bits))
        return hello


@dataclass(frozen=True, slots=True)
class FirmwareHeartbeat(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.HEARTBEAT
    uptime_ms: int
    state: str

    @classmethod
    def decode(cls, payload: bytes) -> FirmwareHeartbeat:
        f = _Fields(cls.frame_type, payload)
        return cls(uptime_ms=f.integer("uptime_ms"), state=f.text("state", choices=FIRMWARE_STATES))


@dataclass(frozen=True, slots=True)
class ScanBegin(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.SCAN_BEGIN
    scan_no: int
    scan_id: str
    rows: int
    channels: int
    bits: int
    pixel_mm: float
    started_ms: int
    expected_columns: int | None = None

    @property
    def column_bytes(self) -> int:
        return column_bytes(self.rows, self.channels, self.bits)

    @classmethod
    def decode(cls, payload: bytes) -> ScanBegin:
        f = _Fields(cls.frame_type, payload)
        begin = cls(
            scan_no=f.integer("scan_no", lo=0, hi=UINT32_MAX),
            scan_id=f.text("scan_id", min_len=1, max_len=64),
            rows=f.integer("rows", lo=1, hi=_MAX_ROWS),
            channels=f.integer("channels", lo=1, hi=2),
            bits=f.integer("bits"),
            pixel_mm=f.number("pixel_mm", gt=0.0),
            started_ms=f.integer("started_ms"),
            expected_columns=f.integer_opt("expected_columns", lo=0),
        )
        if begin.bits not in (8, 16):
            raise PayloadError(cls.frame_type, "value:bits", repr(begin.bits))
        return begin


@dataclass(frozen=True, slots=True)
class ScanLines:
    """Binary SCAN_LINES; ``data`` is the pixel bytes of ``column_count`` consecutive columns."""

    frame_type: ClassVar[int] = FrameType.SCAN_LINES
    scan_no: int
    first_column: int
    column_count: int
    data: bytes | memoryview
    """Pixel bytes; decoding gives a view into the frame payload (no copy on the hot path)."""

    @classmethod
    def decode(cls, payload: bytes) -> ScanLines:
        if len(payload) < COLUMN_HEADER_SIZE:
            raise PayloadError(cls.frame_type, "short", f"{len(payload)} bytes")
        scan_no, first, count = _LINES_HEADER.unpack_from(payload)
        return cls(scan_no=scan_no, first_column=first, column_count=count,
                   data=memoryview(payload)[COLUMN_HEADER_SIZE:])

    def to_payload(self) -> bytes:
        return _LINES_HEADER.pack(self.scan_no, self.first_column, self.column_count) + bytes(self.data)


@dataclass(frozen=True, slots=True)
class ScanEnd(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.SCAN_END
    scan_no: int
    scan_id: str
    columns: int
    data_crc32: int
    ended_ms: int
    speed_kmh: float | None = None

    @classmethod
    def decode(cls, payload: bytes) -> ScanEnd:
        f = _Fields(cls.frame_type, payload)
        return cls(
            scan_no=f.integer("scan_no", lo=0, hi=UINT32_MAX),
            scan_id=f.text("scan_id"),
            columns=f.integer("columns", lo=0),
            data_crc32=f.integer("data_crc32", lo=0, hi=UINT32_MAX),
            ended_ms=f.integer("ended_ms"),
            speed_kmh=f.number_opt("speed_kmh"),
        )


@dataclass(frozen=True, slots=True)
class ScanAbort(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.SCAN_ABORT
    scan_no: int
    reason: str

    @classmethod
    def decode(cls, payload: bytes) -> ScanAbort:
        f = _Fields(cls.frame_type, payload)
        return cls(scan_no=f.integer("scan_no", lo=0, hi=UINT32_MAX), reason=f.text("reason"))


@dataclass(frozen=True, slots=True)
class OcrRead(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.OCR_READ
    kind: str
    camera: str
    text: str
    confidence: float
    char_confidence: tuple[float, ...] | None = None
    iso_type: str | None = None
    read_ms: int | None = None

    @classmethod
    def decode(cls, payload: bytes) -> OcrRead:
        f = _Fields(cls.frame_type, payload)
        read = cls(
            kind=f.text("kind", choices=OCR_KINDS),
            camera=f.text("camera"),
            text=f.text("text"),
            confidence=f.number("confidence", lo=0.0, hi=1.0),
            char_confidence=f.number_list_opt("char_confidence", lo=0.0, hi=1.0),
            iso_type=f.text_opt("iso_type"),
            read_ms=f.integer_opt("read_ms"),
        )
        if read.char_confidence is not None and len(read.char_confidence) != len(read.text):
            raise PayloadError(cls.frame_type, "range:char_confidence",
                               f"{len(read.char_confidence)} values for {len(read.text)} characters")
        return read


@dataclass(frozen=True, slots=True)
class Fault(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.FAULT
    code: str
    severity: str
    active: bool
    message: str

    @classmethod
    def decode(cls, payload: bytes) -> Fault:
        f = _Fields(cls.frame_type, payload)
        return cls(code=f.text("code"), severity=f.text("severity", choices=SEVERITIES),
                   active=f.flag("active"), message=f.text("message"))


FirmwareMessage = Hello | FirmwareHeartbeat | ScanBegin | ScanLines | ScanEnd | ScanAbort | OcrRead | Fault

_FIRMWARE_DECODERS: dict[int, Any] = {
    FrameType.HELLO: Hello.decode,
    FrameType.HEARTBEAT: FirmwareHeartbeat.decode,
    FrameType.SCAN_BEGIN: ScanBegin.decode,
    FrameType.SCAN_LINES: ScanLines.decode,
    FrameType.SCAN_END: ScanEnd.decode,
    FrameType.SCAN_ABORT: ScanAbort.decode,
    FrameType.OCR_READ: OcrRead.decode,
    FrameType.FAULT: Fault.decode,
}


def _decode(decoders: dict[int, Any], frame: Frame) -> Any:
    decoder = decoders.get(frame.type)
    if decoder is None:
        raise PayloadError(frame.type, "unknown_type")
    return decoder(frame.payload)


def decode_firmware_message(frame: Frame) -> FirmwareMessage:
    """Decode a frame received by the daemon; `PayloadError` if section 3 rejects it."""
    message: FirmwareMessage = _decode(_FIRMWARE_DECODERS, frame)
    return message


# --------------------------------------------------------------------------- daemon -> firmware


@dataclass(frozen=True, slots=True)
class DaemonHeartbeat(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.HEARTBEAT
    uptime_ms: int
    state: str

    @classmethod
    def decode(cls, payload: bytes) -> DaemonHeartbeat:
        f = _Fields(cls.frame_type, payload)
        return cls(uptime_ms=f.integer("uptime_ms"), state=f.text("state", choices=DAEMON_STATES))


@dataclass(frozen=True, slots=True)
class ScanAck(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.SCAN_ACK
    scan_no: int
    status: str
    reason: str | None = None

    @classmethod
    def decode(cls, payload: bytes) -> ScanAck:
        f = _Fields(cls.frame_type, payload)
        return cls(scan_no=f.integer("scan_no", lo=0, hi=UINT32_MAX), status=f.text("status", choices=ACK_STATUSES),
                   reason=f.text_opt("reason"))


@dataclass(frozen=True, slots=True)
class Resend(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.RESEND
    scan_no: int
    from_column: int
    count: int

    @classmethod
    def decode(cls, payload: bytes) -> Resend:
        f = _Fields(cls.frame_type, payload)
        return cls(scan_no=f.integer("scan_no", lo=0, hi=UINT32_MAX), from_column=f.integer("from_column", lo=0),
                   count=f.integer("count", lo=1))


@dataclass(frozen=True, slots=True)
class Control(_JsonMessage):
    frame_type: ClassVar[int] = FrameType.CONTROL
    command: str
    now_ms: int | None = None

    @classmethod
    def decode(cls, payload: bytes) -> Control:
        f = _Fields(cls.frame_type, payload)
        command = f.text("command", choices=COMMANDS)
        return cls(command=command, now_ms=f.integer_opt("now_ms", required=command == "time_sync"))


DaemonMessage = DaemonHeartbeat | ScanAck | Resend | Control

_DAEMON_DECODERS: dict[int, Any] = {
    FrameType.HEARTBEAT: DaemonHeartbeat.decode,
    FrameType.SCAN_ACK: ScanAck.decode,
    FrameType.RESEND: Resend.decode,
    FrameType.CONTROL: Control.decode,
}


def decode_daemon_message(frame: Frame) -> DaemonMessage:
    """Decode a frame received by the firmware side (the simulator); `PayloadError` if rejected."""
    message: DaemonMessage = _decode(_DAEMON_DECODERS, frame)
    return message
