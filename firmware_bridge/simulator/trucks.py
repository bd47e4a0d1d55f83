"""Trucks for the virtual gate: plates, ISO 6346 containers, and how OCR cameras misread them.

Container numbers carry correct check digits (python-stdnum's ``iso6346``); the OCR model then
damages some reads the way plate/container OCR really fails: visually confusable characters
(O/0, I/1, B/8, S/5, Z/2, G/6, D/0), a dropped or an extra character, a partial read, low
confidence, occasionally nothing readable. Everything is drawn from the truck's seed.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from stdnum import iso6346

from firmware_bridge.messages import OcrRead

__all__ = [
    "ANOMALY_CLASSES",
    "CARGO_KINDS",
    "ContainerSpec",
    "TruckSpec",
    "container_number",
    "ocr_reads",
    "random_container_number",
    "random_plate",
    "random_truck",
]

# Mirrors inference.synthetic (imported lazily there: numpy/OpenCV are not needed for OCR alone).
CARGO_KINDS: tuple[str, ...] = ("empty", "cartons", "bags", "bulk", "machinery", "drums", "vehicles", "mixed")
ANOMALY_CLASSES: tuple[str, ...] = ("dense_object", "weapon", "vehicle", "organic_mass")

_OWNERS = ("MSCU", "MAEU", "CMAU", "HLXU", "OOLU", "CSQU", "TGHU", "TCNU", "GESU", "SEGU", "TEMU",
           "EGHU", "YMLU", "ONEU", "ZIMU", "HASU", "BMOU", "TRHU", "FCIU", "CAIU")
_ISO_TYPES: dict[int, tuple[str, ...]] = {20: ("22G1", "22G1", "22R1", "22U1"),
                                          40: ("42G1", "45G1", "45G1", "45R1"), 45: ("L5G1",)}
_CONFUSIONS: dict[str, str] = {"O": "0", "0": "O", "I": "1", "1": "I", "B": "8", "8": "B", "S": "5",
                               "5": "S", "Z": "2", "2": "Z", "G": "6", "6": "G", "D": "0"}


@dataclass(frozen=True)
class ContainerSpec:
    """One container on the truck, with what the scan should show and what was declared."""

    number: str
    """ISO 6346, 11 characters with a valid check digit."""
    iso_type: str = "42G1"
    length_ft: int = 40
    cargo: str | None = None
    """A cargo kind of the synthetic generator (None: the generator picks)."""
    anomalies: tuple[str, ...] = ()
    declared: str | None = None

    def __post_init__(self) -> None:
        if not iso6346.is_valid(self.number):
            raise ValueError(f"{self.number!r} is not a valid ISO 6346 container number")
        if self.length_ft not in (20, 40, 45):
            raise ValueError(f"length_ft must be 20, 40 or 45 (got {self.length_ft})")
        if self.cargo is not None and self.cargo not in CARGO_KINDS:
            raise ValueError(f"unknown cargo {self.cargo!r}; known: {', '.join(CARGO_KINDS)}")
        for anomaly in self.anomalies:
            if anomaly not in ANOMALY_CLASSES:
                raise ValueError(f"unknown anomaly {anomaly!r}; known: {', '.join(ANOMALY_CLASSES)}")


@dataclass(frozen=True)
class TruckSpec:
    """A truck passing the lane: one container, or two 20 ft containers on one chassis."""

    plate: str
    containers: tuple[ContainerSpec, ...]
    seed: int = 0
    speed_kmh: float = 6.0
    ocr_quality: float = 0.8
    """Probability that a camera read is clean; the rest carry errors of the OCR model."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.containers) <= 2:
            raise ValueError(f"a truck carries 1 or 2 containers (got {len(self.containers)})")
        if len(self.containers) == 2 and any(c.length_ft != 20 for c in self.containers):
            raise ValueError("two containers on one truck must both be 20 ft")
        if not self.plate:
            raise ValueError("plate must not be empty")
        if not 0.0 <= self.ocr_quality <= 1.0:
            raise ValueError("ocr_quality must be within 0..1")


def container_number(owner: str, serial: int) -> str:
    """Owner code (3 letters + category letter) and 6-digit serial, with the ISO 6346 check digit."""
    body = f"{owner}{serial:06d}"
    return body + iso6346.calc_check_digit(body)


def random_container_number(rng: random.Random) -> str:
    while True:
        owner = rng.choice(_OWNERS) if rng.random() < 0.8 else (
            "".join(rng.choice(string.ascii_uppercase) for _ in range(3)) + "U")
        body = f"{owner}{rng.randrange(1_000_000):06d}"
        # Serials whose remainder is 10 give the ambiguous check digit 0; ISO 6346 advises
        # owners not to issue them, so real fleets (and we) avoid them.
        if _raw_remainder(body) != 10:
            return body + iso6346.calc_check_digit(body)


def _raw_remainder(body: str) -> int:
    values = "0123456789A BCDEFGHIJK LMNOPQRSTU VWXYZ"
    total = sum(values.index(c) << i for i, c in enumerate(body))
    return total % 11


def random_plate(rng: random.Random) -> str:
    letters = string.ascii_uppercase.replace("I", "").replace("O", "").replace("Q", "")
    pattern = rng.choice(("LL-NNN-LL", "LLL NNNN", "LL NNNN LL", "NLLL NNN"))
    return "".join(rng.choice(letters) if ch == "L" else str(rng.randrange(10)) if ch == "N" else ch
                   for ch in pattern)


def random_truck(
    seed: int,
    *,
    containers: int | None = None,
    anomaly_rate: float = 0.15,
    empty_rate: float = 0.15,
    misdeclared_rate: float = 0.05,
    ocr_quality: float = 0.8,
) -> TruckSpec:
    """A plausible truck from a seed: 1 or 2 containers, cargo, sometimes an anomaly.

    ``declared`` is ``"empty"`` for containers declared empty (the generator's vocabulary), which
    a loaded container sometimes is (``misdeclared_rate``); otherwise None.
    """
    rng = random.Random(seed)
    count = containers if containers is not None else (2 if rng.random() < 0.25 else 1)
    specs: list[ContainerSpec] = []
    for _ in range(count):
        length = 20 if count == 2 else rng.choice((20, 40, 40, 45))
        roll = rng.random()
        anomalies: tuple[str, ...] = ()
        declared: str | None = None
        if roll < empty_rate:
            cargo, declared = "empty", "empty"
        else:
            cargo = rng.choice(CARGO_KINDS[1:])
            if roll < empty_rate + misdeclared_rate:
                declared = "empty"
            elif roll > 1.0 - anomaly_rate:
                anomalies = (rng.choice(ANOMALY_CLASSES),)
        specs.append(ContainerSpec(number=random_container_number(rng), iso_type=rng.choice(_ISO_TYPES[length]),
                                   length_ft=length, cargo=cargo, anomalies=anomalies, declared=declared))
    return TruckSpec(plate=random_plate(rng), containers=tuple(specs), seed=seed,
                     speed_kmh=round(rng.uniform(3.0, 9.0), 1), ocr_quality=ocr_quality)


# --------------------------------------------------------------------------- OCR error model


def _misread(text: str, rng: random.Random, *, allow_format: bool) -> tuple[str, list[float], float]:
    """Damage ``text`` like a real OCR engine; returns (text, per-char confidence, confidence)."""
    chars = list(text)
    confs = [rng.uniform(0.9, 0.995) for _ in chars]
    roll = rng.random()
    if roll < 0.55:
        # Visual confusion of one or two characters.
        candidates = [i for i, c in enumerate(chars) if c in _CONFUSIONS]
        for i in rng.sample(candidates, min(len(candidates), 1 if rng.random() < 0.7 else 2)):
            chars[i] = _CONFUSIONS[chars[i]]
            confs[i] = rng.uniform(0.35, 0.75)
    elif roll < 0.7 and len(chars) > 4:
        i = rng.randrange(len(chars))
        del chars[i]
        del confs[i]
    elif roll < 0.82:
        i = rng.randrange(len(chars) + 1)
        chars.insert(i, rng.choice("1I7LJ-."))
        confs.insert(i, rng.uniform(0.2, 0.6))
    elif roll < 0.94 and len(chars) > 5:
        keep = rng.randrange(max(3, len(chars) // 2), len(chars) - 1)
        chars, confs = chars[:keep], confs[:keep]
    else:
        # Nothing readable: dirt, glare, a tarpaulin strap across the number.
        chars = [rng.choice(string.ascii_uppercase + string.digits) for _ in range(rng.randint(3, 9))]
        confs = [rng.uniform(0.05, 0.4) for _ in chars]
    if allow_format and len(chars) == 11 and rng.random() < 0.2:
        chars.insert(10, " ")
        confs.insert(10, rng.uniform(0.9, 0.99))
        chars.insert(4, " ")
        confs.insert(4, rng.uniform(0.9, 0.99))
    overall = min(confs) * 0.5 + (sum(confs) / len(confs)) * 0.5 if confs else 0.0
    return "".join(chars), confs, round(min(1.0, max(0.0, overall)), 3)


def _read(kind: str, camera: str, truth: str, rng: random.Random, *, quality: float, read_ms: int,
          iso_type: str | None = None) -> OcrRead:
    if rng.random() < quality:
        text = truth
        confs = [rng.uniform(0.9, 0.999) for _ in text]
        confidence = round(rng.uniform(0.86, 0.99), 3)
        if kind == "container" and rng.random() < 0.15:
            text = f"{truth[:4]} {truth[4:10]} {truth[10:]}"
            confs = [*confs[:4], 0.99, *confs[4:10], 0.99, *confs[10:]]
    else:
        text, confs, confidence = _misread(truth, rng, allow_format=kind == "container")
    if iso_type is not None and rng.random() < 0.1:
        iso_type = iso_type[:2] + _CONFUSIONS.get(iso_type[2], iso_type[2]) + iso_type[3:]
    return OcrRead(kind=kind, camera=camera, text=text, confidence=confidence,
                   char_confidence=tuple(round(c, 3) for c in confs) if rng.random() < 0.6 else None,
                   iso_type=iso_type, read_ms=read_ms)


def ocr_reads(truck: TruckSpec, *, now_ms: int, rng: random.Random | None = None) -> list[OcrRead]:
    """The OCR unit's reads for one truck, in the order the cameras see it (plate first)."""
    rng = rng or random.Random(truck.seed ^ 0x0C0FFEE)
    reads: list[OcrRead] = []
    t = now_ms
    reads.append(_read("plate", "front", truck.plate, rng, quality=truck.ocr_quality, read_ms=t))
    n = len(truck.containers)
    for index, container in enumerate(truck.containers):
        # The front container's doors face the rear one; only the last container shows the rear camera.
        cameras = ["left", "right", "top"] + (["rear"] if index == n - 1 else [])
        for camera in cameras:
            if rng.random() < 0.08:
                continue  # this camera did not fire (occlusion, trigger timing)
            t += rng.randint(80, 900)
            iso = container.iso_type if camera in ("left", "right", "rear") and rng.random() < 0.7 else None
            reads.append(_read("container", camera, container.number, rng, quality=truck.ocr_quality, read_ms=t,
                               iso_type=iso))
    if rng.random() < 0.5:
        t += rng.randint(200, 1500)
        reads.append(_read("plate", "rear", truck.plate, rng, quality=truck.ocr_quality, read_ms=t))
    return reads
