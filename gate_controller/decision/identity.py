"""Container identity from the OCR reads of several cameras (ISO 6346), and plate fusion.

A container number is only as good as its evidence. The gate fuses every camera's read of one
container into per-position character probabilities, finds the most probable number that passes
the ISO 6346 check digit, and accepts it only when that number is overwhelmingly more probable than
every other valid number *and* the structural rules below hold. Otherwise the number is not
accepted and ``reason`` says why; nothing downstream may then release the truck.

How a set of reads becomes a number (docs/decisions.md has the worked reasoning):

1. Clean each read (upper case, no separators) and place its characters on the 11 positions:
   directly for an 11-character read that agrees with the others, by edit-distance alignment for
   truncated, padded or shifted reads.
2. Position-aware normalization: positions 1-4 are letters (4 is the category ``U``/``J``/``Z``),
   5-11 digits, so ``O``/``I``/``B``/``S``/``Z`` read in a digit position mean ``0``/``1``/``8``/``5``/``2``
   and the reverse in a letter position (plus a few weaker documented look-alikes). A normalized
   character counts with reduced confidence.
3. Each placed character is evidence about its position: the read character with its (per-character,
   else per-read) confidence, the rest of the probability spread over visually confusable
   characters first. Positions combine independently across reads.
4. The check digit constraint couples the positions; a dynamic programme over the weighted sum
   modulo 11 gives the most probable *valid* number and its exact posterior probability among all
   valid numbers (``confidence``). Candidates from low-confidence characters are enumerated for the
   explanation and to name a rival when the decision is "ambiguous".
5. Acceptance: posterior >= ``min_confidence`` (so exactly one valid candidate has real support), and
   a single read is accepted only as read and only when strong; at most ``max_corrections``
   positions may hold a character no read saw; the check digit itself is never invented; a
   correction never lands in a check digit blind spot (letters of equal value modulo 11, e.g.
   A/K/U; a remainder of 10); no read in the group may be a different valid number.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from stdnum import iso6346
from stdnum.exceptions import ValidationError as StdnumValidationError

__all__ = [
    "ContainerIdentity",
    "IdentityReason",
    "IdentitySettings",
    "OcrRead",
    "PlateRead",
    "check_remainder",
    "fuse_plate",
    "group_container_reads",
    "identify",
    "identify_containers",
    "is_valid_number",
    "reads_from_json",
]

NUMBER_LENGTH: Final = 11
LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS: Final = "0123456789"
CATEGORIES: Final = "UJZ"

# stdnum accepts any word character in the owner code and category R as well; the owner code is
# three capital letters and the categories in use are U, J and Z (ISO 6346:2022).
_NUMBER_RE: Final = re.compile(r"^[A-Z]{3}[UJZ][0-9]{7}$")
_CLEAN_RE: Final = re.compile(r"[^0-9A-Z]")

_OWNER, _CATEGORY, _DIGIT = 0, 1, 2
_KIND: Final = (_OWNER, _OWNER, _OWNER, _CATEGORY) + (_DIGIT,) * 7
_ALPHABET_OF_KIND: Final = (LETTERS, CATEGORIES, DIGITS)

# The check digit's character values, as in stdnum.iso6346.calc_check_digit (which does not expose
# per-position residues; the dynamic programme below needs them). Multiples of 11 are skipped.
# tests/gate_controller/decision/test_identity.py checks this table against stdnum on random numbers.
_CHECK_ALPHABET: Final = "0123456789A BCDEFGHIJK LMNOPQRSTU VWXYZ"
_VALUE: Final = {c: i for i, c in enumerate(_CHECK_ALPHABET) if c != " "}
_RESIDUES: Final = tuple(
    tuple((_VALUE[c] << pos) % 11 for c in _ALPHABET_OF_KIND[_KIND[pos]]) for pos in range(10)
)

# Position-aware normalization. The first five pairs of each table are the classic OCR confusions
# (O0 I1 B8 S5 Z2); the rest are weaker look-alikes and count with less confidence.
_TO_DIGIT: Final = {"O": "0", "I": "1", "B": "8", "S": "5", "Z": "2",
                    "D": "0", "Q": "0", "L": "1", "G": "6", "T": "7", "A": "4"}
_TO_LETTER: Final = {"0": "O", "1": "I", "8": "B", "5": "S", "2": "Z",
                     "6": "G", "7": "T", "4": "A"}
_TO_CATEGORY: Final = {"2": "Z", "V": "U", "1": "J", "I": "J"}
_STRONG_NORMALIZATION: Final = frozenset("OIBSZ01852")
_STRONG_FACTOR: Final = 0.9
_WEAK_FACTOR: Final = 0.75

# Visual confusion pairs (either direction). They shape how an error's probability is spread:
# a misread "8" is far more likely a "3", "6", "0" or "9" than a "4".
_CONFUSABLE_PAIRS: Final = (
    "0O 0D 0Q 0C 0U 08 06 09 OD OQ OC OU DB 1I 1L 17 1T 1J IL IJ IT LT 2Z 27 Z7 38 3B 39 35 4A 49 "
    "5S 56 58 S8 SB 6G 68 6B GC GQ GO 7T 89 8B BE BR BP BD EF FP PR RK KX XY VY UV VW MN NH MW HM "
    "CO QO JU"
)
_CONFUSABLE: Final = frozenset(
    frozenset(pair) for pair in _CONFUSABLE_PAIRS.split()
)
_CONFUSION_SHARE: Final = 0.8  # share of a character's error probability that goes to look-alikes
_NEGLIGIBLE: Final = 1e-15  # per-position probability below which a character is not considered
_ERROR_MIN: Final = 0.002  # no single character observation is ever trusted beyond 99.8 %
_ERROR_MAX: Final = 0.95
# A read placed by alignment (truncated, padded, shifted) may be placed wrongly: its characters
# are weaker evidence than those of a read that lines up with the others as it is.
_ALIGNED_ERROR_MIN: Final = 0.1

# Candidate enumeration for explanations and rivals (the decision itself uses the exact posterior).
_ALT_MIN_P: Final = 1e-4
_ALT_PER_POSITION: Final = 3
_ENUM_POSITIONS: Final = 6
_RIVAL_MIN_POSTERIOR: Final = 1e-3
_MAX_READ_LENGTH: Final = 2 * NUMBER_LENGTH
_DIRECT_MAX_MISMATCH: Final = 3
_END_GAP: Final = 0.9
_VOTE_GAP: Final = 0.5 - 1e-9  # one look-alike substitution (tolerance: costs are float sums)
_VOTE_MIN_CONFIDENCE: Final = 0.3
_UNDOUBTED: Final = 0.5  # a read whose every character is at least this sure can be a second container


class IdentityReason(enum.StrEnum):
    """Why a container number was not accepted (``ContainerIdentity.reason``)."""

    NO_READS = "no_reads"
    """No camera produced any text for this container."""
    INCOMPLETE = "incomplete"
    """No read covers all 11 characters (truncated reads only, or a position nobody read)."""
    CHECK_DIGIT_INVALID = "check_digit_invalid"
    """The most probable reading fails the check digit and no correction is convincing."""
    AMBIGUOUS = "ambiguous"
    """More than one valid number has real support."""
    LOW_CONFIDENCE = "low_confidence"
    """A valid number leads, but not by enough (the reads disagree or are weak)."""
    SINGLE_WEAK_READ = "single_weak_read"
    """Only one read, and it is weak or would need correcting: never invent a number from it."""
    UNSUPPORTED_CORRECTION = "unsupported_correction"
    """The number needs more corrections than allowed, or a check digit no read saw."""
    BLIND_SPOT = "blind_spot"
    """The deciding evidence lies where the check digit cannot see (A/K/U-type letters, remainder 10)."""
    CONFLICTING_READS = "conflicting_reads"
    """Another valid number is shown by two reads, or by one read none of whose characters its
    camera doubted: two containers may be mixed up. (A doubtful lone read that happens to be valid
    is noise, and the posterior weighs it.)"""
    DUPLICATE = "duplicate"
    """Two containers of one truck resolved to the same number."""


class IdentitySettings(BaseModel):
    """Acceptance knobs of the OCR fusion. Bounds keep every setting on the safe side."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_confidence: float = Field(default=0.999, ge=0.99, le=0.999999)
    """Posterior probability the accepted number must reach among all valid numbers."""
    single_read_min_confidence: float = Field(default=0.9, ge=0.7, le=1.0)
    """A lone read (and each of its characters, when reported) must be at least this confident."""
    min_coverage: int = Field(default=2, ge=1, le=3)
    """Reads that must show every character position. 1 lets one strong read decide positions no
    other camera saw (and a lone read a whole number); the benchmark shows what that costs."""
    max_corrections: int = Field(default=1, ge=0, le=2)
    """Positions that may hold a character no read saw there (never the check digit)."""
    blind_spot_margin: int = Field(default=2, ge=1, le=4)
    """Where the check digit is blind (A/K/U-type letters, remainder 10, swapped letters), this many
    more reads must show the accepted character than its twin. 2 means no lone read decides."""
    confidence_gamma: float = Field(default=2.0, ge=1.0, le=3.0)
    """Calibration of the OCR unit's scores: a character reported at confidence c is taken to be
    wrong with probability (1 - c) ** gamma. 1.0 takes the scores as probabilities; calibrate per
    site against operator-confirmed numbers (docs/decisions.md)."""
    group_max_distance: float = Field(default=0.3, ge=0.1, le=0.5)
    """Reads further apart than this (normalized edit distance) are different containers."""


_DEFAULT_SETTINGS: Final = IdentitySettings()


@dataclass(frozen=True, slots=True)
class OcrRead:
    """One camera's read of a container number or plate, as the OCR unit reported it."""

    text: str
    confidence: float
    camera: str
    char_confidence: tuple[float, ...] | None = None
    read_ms: int | None = None
    iso_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError("text must be a string")
        if not _is_unit(self.confidence):
            raise ValueError(f"confidence must be a number in 0..1 (got {self.confidence!r})")
        if self.char_confidence is not None:
            if len(self.char_confidence) != len(self.text):
                raise ValueError(
                    f"char_confidence has {len(self.char_confidence)} values for {len(self.text)} characters"
                )
            if not all(_is_unit(c) for c in self.char_confidence):
                raise ValueError("char_confidence values must be numbers in 0..1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OcrRead:
        """Build from decoded JSON (an OCR_READ payload or a ``smartgate identify`` input read).

        Unknown keys (``kind``, ...) are ignored; a wrong type raises ``TypeError``, a value out of
        range ``ValueError``, each naming the key.
        """
        text = data.get("text")
        if not isinstance(text, str):
            raise TypeError("'text' must be a string")
        confidence = data.get("confidence")
        if not _is_number(confidence):
            raise ValueError("'confidence' must be a number")
        camera = data.get("camera", "")
        if not isinstance(camera, str):
            raise TypeError("'camera' must be a string")
        chars = data.get("char_confidence")
        char_confidence: tuple[float, ...] | None = None
        if chars is not None:
            if not isinstance(chars, list) or not all(_is_number(c) for c in chars):
                raise ValueError("'char_confidence' must be a list of numbers")
            char_confidence = tuple(float(c) for c in chars)
        read_ms = data.get("read_ms")
        if read_ms is not None and (not isinstance(read_ms, int) or isinstance(read_ms, bool)):
            raise ValueError("'read_ms' must be an integer")
        iso_type = data.get("iso_type")
        if iso_type is not None and not isinstance(iso_type, str):
            raise ValueError("'iso_type' must be a string")
        assert isinstance(confidence, int | float)
        return cls(text, float(confidence), camera, char_confidence, read_ms, iso_type)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_unit(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


@dataclass(frozen=True, slots=True)
class ContainerIdentity:
    """The outcome for one container.

    ``reason is None`` exactly when the number was accepted; then ``number`` is a valid ISO 6346
    number and ``check_digit_ok`` is True. When the reads agree on a number that fails the check
    digit, ``number`` carries that reading (for the operator) with ``check_digit_ok`` False and
    reason ``check_digit_invalid``. In every other case ``number`` is None.

    ``confidence``: for an accepted number, its posterior probability among all valid numbers given
    the reads; for ``check_digit_invalid``, how strongly the reads agree on the reported reading;
    otherwise the posterior of the best valid reading, which was not enough.
    """

    number: str | None
    check_digit_ok: bool
    corrected: bool
    confidence: float
    raw: tuple[str, ...]
    reason: IdentityReason | None
    iso_type: str | None = None
    cameras: tuple[str, ...] = ()
    candidates: tuple[tuple[str, float], ...] = ()
    """Valid candidates considered, most probable first, with their posteriors (for explanations)."""
    detail: str | None = None
    """One line a technician can read: which rule decided and on what evidence."""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        """The ``smartgate identify`` output object (and the core of a transaction's container)."""
        out: dict[str, Any] = {
            "number": self.number,
            "check_digit_ok": self.check_digit_ok,
            "corrected": self.corrected,
            "confidence": round(self.confidence, 6),
            "reason": None if self.reason is None else str(self.reason),
        }
        if explain:
            out["detail"] = self.detail
            out["candidates"] = [{"number": n, "posterior": round(p, 6)} for n, p in self.candidates]
            out["raw"] = list(self.raw)
            out["iso_type"] = self.iso_type
        return out


@dataclass(frozen=True, slots=True)
class PlateRead:
    """The fused plate: kept with its confidence, never used to release anything."""

    text: str
    confidence: float
    raw: tuple[str, ...] = field(default=())


def is_valid_number(number: str) -> bool:
    """A complete, correctly formed ISO 6346 number with a valid check digit."""
    if not _NUMBER_RE.match(number):
        return False
    try:
        iso6346.validate(number)
    except StdnumValidationError:
        return False
    return True


def check_remainder(number: str) -> int:
    """The weighted sum of the first 10 characters modulo 11 (10 means check digit 0, a blind spot)."""
    return sum(_VALUE[c] << i for i, c in enumerate(number[:10])) % 11


def clean_text(text: str) -> str:
    """Upper case, separators and anything else outside 0-9/A-Z removed."""
    return _CLEAN_RE.sub("", text.upper())


def _normalize_char(char: str, pos: int) -> tuple[str, float] | None:
    """The character as it must be at ``pos`` and the factor on its confidence; None if unusable."""
    kind = _KIND[pos]
    alphabet = _ALPHABET_OF_KIND[kind]
    if char in alphabet:
        return char, 1.0
    table = _TO_LETTER if kind == _OWNER else _TO_CATEGORY if kind == _CATEGORY else _TO_DIGIT
    mapped = table.get(char)
    if mapped is None:
        return None
    return mapped, _STRONG_FACTOR if char in _STRONG_NORMALIZATION else _WEAK_FACTOR


def normalize_number(text: str) -> str:
    """Position-aware normalization of an 11-character cleaned read ('?' where unusable)."""
    out = []
    for pos, char in enumerate(text[:NUMBER_LENGTH]):
        mapped = _normalize_char(char, pos)
        out.append("?" if mapped is None else mapped[0])
    return "".join(out)


def _build_evidence_tables() -> dict[tuple[int, str], tuple[tuple[int, ...], float, float]]:
    """Per (position kind, observed character): each alphabet entry's class (0 same, 1 look-alike,
    2 other) and the log share of the error mass that one look-alike / one other entry receives."""
    tables = {}
    for kind, alphabet in enumerate(_ALPHABET_OF_KIND):
        for observed in alphabet:
            classes = tuple(
                0 if t == observed else 1 if frozenset((t, observed)) in _CONFUSABLE else 2 for t in alphabet
            )
            n_conf = classes.count(1)
            n_other = classes.count(2)
            conf_mass = _CONFUSION_SHARE if n_conf else 0.0
            other_mass = 1.0 - conf_mass if n_other else 0.0
            if not n_other and n_conf:
                conf_mass = 1.0
            log_conf = math.log(conf_mass / n_conf) if n_conf else -math.inf
            log_other = math.log(other_mass / n_other) if n_other else -math.inf
            tables[(kind, observed)] = (classes, log_conf, log_other)
    return tables


_EVIDENCE: Final = _build_evidence_tables()


@dataclass(slots=True)
class _Observation:
    char: str
    q: float
    read_index: int


@dataclass(slots=True)
class _Fusion:
    probs: list[list[float]]  # per position, over that position's alphabet
    seen: list[set[str]]  # per position, the normalized characters the reads put there
    observations: list[list[_Observation]]
    contributing: list[int]  # indices of reads that placed at least one character
    direct: dict[int, str]  # read index -> its normalized 11-character text (direct placement)
    texts: dict[int, str]  # read index -> cleaned text, for every contributing read
    confs: dict[int, list[float]]  # read index -> confidence of each cleaned character
    placements: dict[int, dict[int, tuple[str, float]]]  # surely placed reads: pos -> (char, confidence)


def _read_char_conf(read: OcrRead, index: int) -> float:
    if read.char_confidence is not None:
        return read.char_confidence[index]
    return read.confidence


def _cleaned_with_conf(read: OcrRead) -> tuple[str, list[float]]:
    """Cleaned text with the confidence of each kept character (separators dropped)."""
    chars: list[str] = []
    confs: list[float] = []
    for i, char in enumerate(read.text.upper()):
        if ("0" <= char <= "9") or ("A" <= char <= "Z"):
            chars.append(char)
            confs.append(_read_char_conf(read, i))
    return "".join(chars), confs


def _build_sub_costs() -> dict[tuple[int, str], dict[str, float]]:
    """Per (position, expected character): the cost of each read character that is not a plain
    mismatch (0 when it normalizes to the expected one, 0.5 for a look-alike). Precomputed because
    the alignments run this lookup in their inner loops."""
    table: dict[tuple[int, str], dict[str, float]] = {}
    for pos in range(NUMBER_LENGTH):
        for expected in _ALPHABET_OF_KIND[_KIND[pos]]:
            costs: dict[str, float] = {}
            for char in LETTERS + DIGITS:
                mapped = _normalize_char(char, pos)
                if mapped is None:
                    continue
                if mapped[0] == expected:
                    costs[char] = 0.0
                elif frozenset((mapped[0], expected)) in _CONFUSABLE:
                    costs[char] = 0.5
            table[(pos, expected)] = costs
    return table


_SUB_COSTS: Final = _build_sub_costs()


def _sub_cost(char: str, pos: int, ref: str) -> float:
    costs = _SUB_COSTS.get((pos, ref[pos]))
    return 1.0 if costs is None else costs.get(char, 1.0)


def _align(text: str, ref: str) -> list[int | None]:
    """For each of the 11 reference positions, the index of the read character placed there.

    Levenshtein alignment with look-alike substitutions at half cost, so a dropped, inserted or
    truncated character shifts only the characters after it instead of the whole read. Gaps at
    either end cost a little less than inside: truncation and leading or trailing junk are far
    more common than a character lost in the middle.
    """
    n, m = len(ref), len(text)
    inf = math.inf
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1 diagonal, 2 skip ref position, 3 skip read char
    cost[0][0] = 0.0
    for i in range(n + 1):
        for j in range(m + 1):
            here = cost[i][j]
            if here == inf:
                continue
            if i < n and j < m:
                c = here + _sub_cost(text[j], i, ref)
                if c < cost[i + 1][j + 1]:
                    cost[i + 1][j + 1], move[i + 1][j + 1] = c, 1
            if i < n:
                c = here + (_END_GAP if j in (0, m) else 1.0)
                if c < cost[i + 1][j]:
                    cost[i + 1][j], move[i + 1][j] = c, 2
            if j < m:
                c = here + (_END_GAP if i in (0, n) else 1.0)
                if c < cost[i][j + 1]:
                    cost[i][j + 1], move[i][j + 1] = c, 3
    placed: list[int | None] = [None] * n
    i, j = n, m
    while i > 0 or j > 0:
        step = move[i][j]
        if step == 1:
            placed[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif step == 2:
            i -= 1
        else:
            j -= 1
    return placed


def _contiguous(placed: Sequence[int | None]) -> bool:
    """True when the placed characters are consecutive in both the read and the number."""
    pairs = [(pos, j) for pos, j in enumerate(placed) if j is not None]
    return bool(pairs) and all(j - pos == pairs[0][1] - pairs[0][0] for pos, j in pairs) and (
        pairs[-1][0] - pairs[0][0] == len(pairs) - 1
    )


def _reference(cleaned: Sequence[tuple[str, list[float]]]) -> str | None:
    """Per-position weighted plurality of the normalized 11-character reads (alignment anchor)."""
    votes: list[dict[str, float]] = [{} for _ in range(NUMBER_LENGTH)]
    any_full = False
    for text, confs in cleaned:
        if len(text) != NUMBER_LENGTH:
            continue
        any_full = True
        for pos, char in enumerate(text):
            mapped = _normalize_char(char, pos)
            if mapped is not None:
                votes[pos][mapped[0]] = votes[pos].get(mapped[0], 0.0) + max(confs[pos], 0.05) * mapped[1]
    if not any_full:
        return None
    return "".join(max(v.items(), key=lambda kv: (kv[1], kv[0]))[0] if v else "?" for v in votes)


def _fuse(reads: Sequence[OcrRead], gamma: float) -> _Fusion | IdentityReason:
    cleaned = [_cleaned_with_conf(r) for r in reads]
    if not any(text for text, _ in cleaned):
        return IdentityReason.NO_READS
    ref = _reference(cleaned)
    if ref is None:
        return IdentityReason.INCOMPLETE
    observations: list[list[_Observation]] = [[] for _ in range(NUMBER_LENGTH)]
    direct: dict[int, str] = {}
    placements: dict[int, dict[int, tuple[str, float]]] = {}
    contributing: list[int] = []
    for index, (text, confs) in enumerate(cleaned):
        if not text or len(text) > _MAX_READ_LENGTH:
            continue
        placed: list[int | None]
        if len(text) == NUMBER_LENGTH and sum(
            _sub_cost(c, pos, ref) > 0 for pos, c in enumerate(text)
        ) <= _DIRECT_MAX_MISMATCH:
            placed = list(range(NUMBER_LENGTH))
            direct[index] = normalize_number(text)
        else:
            placed = _align(text, ref)
        # A read that is only cut or padded at its ends keeps one offset throughout: its placement
        # is as sure as a direct read's. Gaps inside mean the aligner had to guess.
        clean = _contiguous(placed)
        floor = _ERROR_MIN if clean else _ALIGNED_ERROR_MIN
        chars: dict[int, tuple[str, float]] = {}
        for pos, j in enumerate(placed):
            if j is None:
                continue
            mapped = _normalize_char(text[j], pos)
            if mapped is None:
                continue
            error = min(max((1.0 - confs[j]) ** gamma, floor), _ERROR_MAX)
            q = (1.0 - error) * mapped[1]
            observations[pos].append(_Observation(mapped[0], q, index))
            chars[pos] = (mapped[0], confs[j])
        if chars:
            contributing.append(index)
            if clean:
                placements[index] = chars
    if any(not obs for obs in observations):
        return IdentityReason.INCOMPLETE
    probs: list[list[float]] = []
    seen: list[set[str]] = []
    for pos in range(NUMBER_LENGTH):
        kind = _KIND[pos]
        alphabet = _ALPHABET_OF_KIND[kind]
        log_l = [0.0] * len(alphabet)
        for obs in observations[pos]:
            classes, log_conf, log_other = _EVIDENCE[(kind, obs.char)]
            log_err = math.log(1.0 - obs.q)
            by_class = (math.log(obs.q), log_err + log_conf, log_err + log_other)
            for k, cls in enumerate(classes):
                log_l[k] += by_class[cls]
        top = max(log_l)
        weights = [math.exp(v - top) for v in log_l]
        total = sum(weights)
        probs.append([w / total for w in weights])
        seen.append({obs.char for obs in observations[pos]})
    texts = {index: cleaned[index][0] for index in contributing}
    read_confs = {index: cleaned[index][1] for index in contributing}
    return _Fusion(probs, seen, observations, contributing, direct, texts, read_confs, placements)


def _posterior_search(probs: Sequence[Sequence[float]]) -> tuple[str | None, float, float]:
    """Most probable valid number, its unnormalized probability, and the total over valid numbers.

    Dynamic programme over positions 1-10 keeping, per remainder of the weighted sum modulo 11,
    the total probability (for the normalizer) and the best prefix (for the answer); position 11
    must then equal the remainder modulo 10 (stdnum's rule, so remainder 10 means check digit 0).
    """
    total = [0.0] * 11
    total[0] = 1.0
    best = [0.0] * 11
    best[0] = 1.0
    best_prefix = [""] * 11
    for pos in range(10):
        alphabet = _ALPHABET_OF_KIND[_KIND[pos]]
        residues = _RESIDUES[pos]
        new_total = [0.0] * 11
        new_best = [0.0] * 11
        new_prefix = [""] * 11
        sums = [0.0] * 11
        tops = [0.0] * 11
        top_char = [""] * 11
        for k, p in enumerate(probs[pos]):
            if p < _NEGLIGIBLE:
                continue
            r = residues[k]
            sums[r] += p
            if p > tops[r]:
                tops[r], top_char[r] = p, alphabet[k]
        live = [r for r in range(11) if sums[r] > 0.0]
        for prev in range(11):
            t_prev, b_prev = total[prev], best[prev]
            if t_prev == 0.0:
                continue
            for r in live:
                nxt = (prev + r) % 11
                new_total[nxt] += t_prev * sums[r]
                cand = b_prev * tops[r]
                if cand > new_best[nxt]:
                    new_best[nxt] = cand
                    new_prefix[nxt] = best_prefix[prev] + top_char[r]
        total, best, best_prefix = new_total, new_best, new_prefix
    check = probs[10]
    z = 0.0
    winner: str | None = None
    winner_p = 0.0
    for rem in range(11):
        digit = rem % 10
        z += total[rem] * check[digit]
        p = best[rem] * check[digit]
        if p > winner_p:
            winner_p, winner = p, best_prefix[rem] + DIGITS[digit]
    return winner, winner_p, z


def _likelihood(probs: Sequence[Sequence[float]], number: str) -> float:
    out = 1.0
    for pos, char in enumerate(number):
        out *= probs[pos][_ALPHABET_OF_KIND[_KIND[pos]].index(char)]
    return out


def _top_reading(probs: Sequence[Sequence[float]]) -> str:
    return "".join(
        _ALPHABET_OF_KIND[_KIND[pos]][max(range(len(p)), key=p.__getitem__)] for pos, p in enumerate(probs)
    )


def _candidates(probs: Sequence[Sequence[float]], z: float, best: str | None) -> list[tuple[str, float]]:
    """Valid numbers built from the alternatives at the least certain positions, with posteriors."""
    top = _top_reading(probs)
    uncertain = sorted(range(NUMBER_LENGTH), key=lambda pos: max(probs[pos]))[:_ENUM_POSITIONS]
    options: list[list[str]] = []
    for pos in range(NUMBER_LENGTH):
        alphabet = _ALPHABET_OF_KIND[_KIND[pos]]
        if pos not in uncertain:
            options.append([top[pos]])
            continue
        ranked = sorted(range(len(alphabet)), key=lambda k: -probs[pos][k])
        alts = [alphabet[k] for k in ranked[:_ALT_PER_POSITION] if probs[pos][k] >= _ALT_MIN_P]
        options.append(alts or [top[pos]])
    found: dict[str, float] = {}
    for combo in product(*options):
        number = "".join(combo)
        if number[10] == str(check_remainder(number) % 10):
            found[number] = _likelihood(probs, number) / z
    # Every single-character change of the top reading that any read made plausible, too: a
    # check digit 0 often has two such completions (remainders 0 and 10), which must both show.
    for pos in range(NUMBER_LENGTH):
        alphabet = _ALPHABET_OF_KIND[_KIND[pos]]
        for k, char in enumerate(alphabet):
            if char != top[pos] and probs[pos][k] >= _ALT_MIN_P:
                number = top[:pos] + char + top[pos + 1:]
                if number not in found and number[10] == str(check_remainder(number) % 10):
                    found[number] = _likelihood(probs, number) / z
    if best is not None and best not in found:
        found[best] = _likelihood(probs, best) / z
    return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))


def _fuse_iso_type(reads: Sequence[OcrRead]) -> str | None:
    score: dict[str, float] = {}
    for read in reads:
        if read.iso_type:
            score[read.iso_type] = score.get(read.iso_type, 0.0) + read.confidence
    if not score:
        return None
    return max(score.items(), key=lambda kv: (kv[1], kv[0]))[0]


def identify(reads: Sequence[OcrRead], *, settings: IdentitySettings | None = None) -> ContainerIdentity:
    """Fuse the reads of ONE container into an accepted number, or say why not."""
    cfg = settings or _DEFAULT_SETTINGS
    raw = tuple(r.text for r in reads)
    cameras = tuple(sorted({r.camera for r in reads if r.camera}))
    iso_type = _fuse_iso_type(reads)

    def reject(
        reason: IdentityReason, detail: str, *, number: str | None = None, confidence: float = 0.0,
        candidates: Sequence[tuple[str, float]] = (),
    ) -> ContainerIdentity:
        return ContainerIdentity(
            number=number, check_digit_ok=False, corrected=False, confidence=confidence, raw=raw,
            reason=reason, iso_type=iso_type, cameras=cameras, candidates=tuple(candidates), detail=detail,
        )

    fused = _fuse(reads, cfg.confidence_gamma)
    if isinstance(fused, IdentityReason):
        what = "no read has any text" if fused is IdentityReason.NO_READS else "no read covers all 11 characters"
        return reject(fused, what)
    # A lone camera never decides a character on its own (min_coverage 2, the default); where
    # min_coverage 1 lets it, that read must be strong there, and (below) taken as read.
    coverage = [len({obs.read_index for obs in fused.observations[pos]}) for pos in range(NUMBER_LENGTH)]
    thin = [pos for pos in range(NUMBER_LENGTH) if coverage[pos] < cfg.min_coverage]
    if thin:
        return reject(
            IdentityReason.SINGLE_WEAK_READ,
            f"position(s) {', '.join(str(p + 1) for p in thin)} read by fewer than {cfg.min_coverage} "
            "cameras: a lone camera never decides a character",
        )
    lone = [pos for pos in range(NUMBER_LENGTH) if coverage[pos] == 1]
    for pos in lone:
        index = fused.observations[pos][0].read_index
        read = reads[index]
        placed = fused.placements.get(index, {}).get(pos)
        if read.confidence < cfg.single_read_min_confidence or placed is None or (
            placed[1] < cfg.single_read_min_confidence
        ):
            return reject(
                IdentityReason.SINGLE_WEAK_READ,
                f"position {pos + 1} rests on one read ({read.text!r}, confidence {read.confidence:.2f}), "
                "which is weak there",
            )
    best, best_l, z = _posterior_search(fused.probs)
    posterior = best_l / z if z > 0.0 else 0.0
    top = _top_reading(fused.probs)
    top_valid = is_valid_number(top)

    if best is None or posterior < cfg.min_confidence:
        candidates = _candidates(fused.probs, z, best) if z > 0.0 else []
        if not top_valid:
            agreement = _likelihood(fused.probs, top)
            return reject(
                IdentityReason.CHECK_DIGIT_INVALID,
                f"the most probable reading {top} fails the check digit "
                f"(expected {check_remainder(top) % 10}); best valid correction has posterior {posterior:.4f}",
                number=top, confidence=agreement, candidates=candidates,
            )
        rivals = [(n, p) for n, p in candidates if n != best and p >= _RIVAL_MIN_POSTERIOR]
        if rivals:
            return reject(
                IdentityReason.AMBIGUOUS,
                f"{best} ({posterior:.4f}) and {rivals[0][0]} ({rivals[0][1]:.4f}) both pass the check digit",
                confidence=posterior, candidates=candidates,
            )
        return reject(
            IdentityReason.LOW_CONFIDENCE,
            f"{best} leads with posterior {posterior:.6f} < {cfg.min_confidence}",
            confidence=posterior, candidates=candidates,
        )

    candidates = [(best, posterior)]
    corrections = [pos for pos in range(NUMBER_LENGTH) if best[pos] not in fused.seen[pos]]
    read_as_is = any(text == best for text in fused.direct.values())

    for pos in lone:
        # Only reachable with min_coverage 1: what one read alone shows must be taken as read.
        placed = fused.placements.get(fused.observations[pos][0].read_index, {}).get(pos)
        if placed is None or placed[0] != best[pos]:
            return reject(
                IdentityReason.SINGLE_WEAK_READ,
                f"position {pos + 1} rests on one read and would need correcting there",
                confidence=posterior, candidates=candidates,
            )
    if 10 in corrections:
        return reject(
            IdentityReason.UNSUPPORTED_CORRECTION,
            f"no read shows check digit {best[10]} of {best}: a check digit is never invented",
            confidence=posterior, candidates=candidates,
        )
    if len(corrections) > cfg.max_corrections:
        return reject(
            IdentityReason.UNSUPPORTED_CORRECTION,
            f"{best} needs {len(corrections)} characters no read saw (max {cfg.max_corrections})",
            confidence=posterior, candidates=candidates,
        )
    if corrections and check_remainder(best) == 10:
        return reject(
            IdentityReason.BLIND_SPOT,
            f"{best} would be a correction into remainder 10 (check digit 0 then stands for two "
            "remainders); such numbers are accepted only as read",
            confidence=posterior, candidates=candidates,
        )
    neighbours = _blind_neighbours(best)
    blind = _outvoted_blind_neighbour(best, neighbours, fused, cfg.blind_spot_margin)
    if blind is not None:
        return reject(IdentityReason.BLIND_SPOT, blind, confidence=posterior, candidates=candidates)
    shown: dict[str, int] = {}
    strong: set[str] = set()
    for index, text in fused.direct.items():
        shown[text] = shown.get(text, 0) + 1
        if min(fused.confs[index]) >= _UNDOUBTED:
            strong.add(text)
    for text, count in shown.items():
        if (count >= 2 or text in strong) and text != best and text not in neighbours and is_valid_number(text):
            return reject(
                IdentityReason.CONFLICTING_READS,
                f"{count} read(s) show the different valid number {text}; the group may hold two containers",
                confidence=posterior, candidates=candidates,
            )
    rival = _better_explanation(best, fused)
    if rival is not None:
        return reject(IdentityReason.AMBIGUOUS, rival, confidence=posterior, candidates=candidates)
    assert is_valid_number(best)
    cleaned_reads = {clean_text(r.text) for r in reads}
    corrected = best not in cleaned_reads
    how = "as read" if not corrected else (
        "after normalization" if read_as_is and not corrections else
        f"corrected at position(s) {', '.join(str(p + 1) for p in corrections) or 'none'}"
    )
    return ContainerIdentity(
        number=best, check_digit_ok=True, corrected=corrected, confidence=posterior, raw=raw, reason=None,
        iso_type=iso_type, cameras=cameras, candidates=tuple(candidates),
        detail=f"accepted {best} {how} from {len(fused.contributing)} read(s), posterior {posterior:.6f}",
    )


def _blind_neighbours(number: str) -> dict[str, str]:
    """Valid numbers the check digit cannot tell from ``number``, each with how it arises.

    One character replaced by another of equal value modulo 11 at that position (A/K/U, F/P/Z, ...
    in the owner code), one character replaced so that the remainder moves between 0 and 10 (both
    give check digit 0), or two adjacent characters swapped without changing the sum (two letters
    of one class in the owner code).
    """
    out: dict[str, str] = {}
    check = int(number[10])
    remainder = check_remainder(number)
    for pos in range(10):
        alphabet = _ALPHABET_OF_KIND[_KIND[pos]]
        residues = _RESIDUES[pos]
        base = remainder - residues[alphabet.index(number[pos])]
        for k, char in enumerate(alphabet):
            if char != number[pos] and (base + residues[k]) % 11 % 10 == check:
                out[number[:pos] + char + number[pos + 1:]] = f"{number[pos]}/{char} at position {pos + 1}"
    for pos in range(10):
        a, b = number[pos], number[pos + 1]
        if a == b or b not in _ALPHABET_OF_KIND[_KIND[pos]] or a not in _ALPHABET_OF_KIND[_KIND[pos + 1]]:
            continue
        swapped = number[:pos] + b + a + number[pos + 2:]
        if pos == 9:
            ok = int(a) == check_remainder(swapped) % 10
        else:
            delta = _residue(pos, b) + _residue(pos + 1, a) - _residue(pos, a) - _residue(pos + 1, b)
            ok = (remainder + delta) % 11 % 10 == check
        if ok:
            out[swapped] = f"{a}{b} swapped at positions {pos + 1}-{pos + 2}"
    return out


def _residue(pos: int, char: str) -> int:
    return (_VALUE[char] << pos) % 11


def _edit_cost(text: str, ref: str) -> float:
    """Cost of the alignment `_align` would choose (same weights), without the traceback."""
    n, m = len(ref), len(text)
    prev = [0.0] * (m + 1)
    for j in range(1, m + 1):
        prev[j] = prev[j - 1] + _END_GAP
    for i in range(1, n + 1):
        gap_i = _END_GAP if i == n else 1.0
        cur = [prev[0] + _END_GAP] + [0.0] * m
        for j in range(1, m + 1):
            gap_j = _END_GAP if j == m else 1.0
            cur[j] = min(
                prev[j - 1] + _sub_cost(text[j - 1], i - 1, ref),
                prev[j] + gap_j,
                cur[j - 1] + gap_i,
            )
        prev = cur
    return prev[m]


def _outvoted_blind_neighbour(
    number: str, neighbours: Mapping[str, str], fused: _Fusion, margin: int,
) -> str | None:
    """Where the check digit is blind, the reads themselves must carry the decision.

    For every blind-spot neighbour of the accepted number the reads vote. A surely placed read
    (direct, or only cut at its ends) votes with the characters it shows at the differing
    positions, if it covers them and its own camera is at least somewhat sure of them; other reads
    vote for whichever of the two numbers they are clearly closer to in edit cost, or abstain.
    A neighbour that is a likely misread (shown by some read, a look-alike, a swap) must be
    outvoted by ``margin``, so a lone read or a correction into a blind spot never decides
    between them; an unseen twin that is no look-alike needs one vote (the posterior already
    weighs how unlikely that misread is).
    """
    for twin, how in neighbours.items():
        diff = [pos for pos in range(NUMBER_LENGTH) if twin[pos] != number[pos]]
        likely = len(diff) > 1 or any(
            twin[pos] in fused.seen[pos] or frozenset((twin[pos], number[pos])) in _CONFUSABLE for pos in diff
        )
        needed = margin if likely else 1
        mine = theirs = 0
        voters = []
        for index in fused.contributing:
            chars = fused.placements.get(index)
            if chars is None:
                voters.append(index)
                continue
            if any(pos not in chars or chars[pos][1] < _VOTE_MIN_CONFIDENCE for pos in diff):
                continue  # not covered, or a character its own camera doubts: no testimony
            if all(chars[pos][0] == number[pos] for pos in diff):
                mine += 1
            elif all(chars[pos][0] == twin[pos] for pos in diff):
                theirs += 1
        if mine - theirs < needed:  # only then is the slower edit-cost vote worth running
            for index in voters:
                text = fused.texts[index]
                a, b = _edit_cost(text, number), _edit_cost(text, twin)
                if a + _VOTE_GAP <= b:
                    mine += 1
                elif b + _VOTE_GAP <= a:
                    theirs += 1
        if mine - theirs < needed:
            return (
                f"{number} and {twin} ({how}) pass the same check digit; the reads favour {number} "
                f"by {mine} to {theirs}, a margin of {needed} is required"
            )
    return None


def _read_cost(text: str, confs: Sequence[float], ref: str) -> float:
    """How badly ``ref`` explains one whole read: Damerau edit cost, weighted by confidence.

    Disagreeing with a character the camera was sure of costs more than with one it doubted; a
    look-alike costs half; swapping two neighbours is one edit (OCR does swap characters, and a
    per-position model cannot see that). End gaps are slightly cheaper, as in `_align`.
    """
    n, m = len(ref), len(text)
    rows = [[0.0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        rows[0][j] = rows[0][j - 1] + _END_GAP
    weights = [max(c, 0.1) for c in confs]
    tables = [_SUB_COSTS.get((pos, ref[pos]), {}) for pos in range(n)]
    for i in range(1, n + 1):
        rows[i][0] = rows[i - 1][0] + _END_GAP
        gap_i = _END_GAP if i == n else 1.0
        here, above = rows[i], rows[i - 1]
        table = tables[i - 1]
        prev_table = tables[i - 2] if i > 1 else None
        for j in range(1, m + 1):
            char = text[j - 1]
            best = min(
                above[j - 1] + table.get(char, 1.0) * weights[j - 1],
                above[j] + (_END_GAP if j == m else 1.0),
                here[j - 1] + gap_i,
            )
            if (
                prev_table is not None and j > 1
                and prev_table.get(char, 1.0) == 0.0 and table.get(text[j - 2], 1.0) == 0.0
            ):
                best = min(best, rows[i - 2][j - 2] + (confs[j - 1] + confs[j - 2]) / 2)
            here[j] = best
    return rows[n][m]


def _better_explanation(number: str, fused: _Fusion) -> str | None:
    """The accepted number must also be the best explanation of the reads as whole strings.

    The posterior treats positions independently, so characters taken from two reads that each
    swapped a different pair can combine into a valid number no camera saw. Every valid reading a
    read offers (as read, or with one adjacent swap undone) is scored against all reads; one that
    explains them at least as well as the accepted number makes the result ambiguous.
    """
    alternatives: set[str] = set()
    for index in fused.contributing:
        text = fused.texts[index]
        if len(text) != NUMBER_LENGTH:
            continue
        norm = normalize_number(text)
        if norm == number:
            continue  # its swaps are blind-spot neighbours, already outvoted
        options = [norm] + [norm[:p] + norm[p + 1] + norm[p] + norm[p + 2:] for p in range(NUMBER_LENGTH - 1)]
        alternatives.update(o for o in options if o != number and is_valid_number(o))
    if not alternatives:
        return None

    def cost(candidate: str) -> float:
        return sum(_read_cost(fused.texts[i], fused.confs[i], candidate) for i in fused.contributing)

    mine = cost(number)
    for alt in sorted(alternatives):
        theirs = cost(alt)
        if theirs <= mine:
            return (
                f"the reads are explained at least as well by {alt} as by {number} "
                f"(edit cost {theirs:.2f} vs {mine:.2f})"
            )
    return None


# --------------------------------------------------------------------------- two containers


def _pair_distance(a: str, b: str) -> float:
    """Edit distance of two cleaned reads relative to the shorter, end gaps of the shorter free.

    Free end gaps keep a truncated read ("MSKU12345") next to its full read; look-alikes count half.
    """
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return 1.0
    n, m = len(a), len(b)
    prev = [0.0] * (m + 1)  # leading part of b skipped for free
    for i in range(1, n + 1):
        cur = [float(i)] + [0.0] * m
        ca = a[i - 1]
        for j in range(1, m + 1):
            cb = b[j - 1]
            sub = 0.0 if ca == cb else 0.5 if frozenset((ca, cb)) in _CONFUSABLE else 1.0
            cur[j] = min(prev[j - 1] + sub, prev[j] + 1.0, cur[j - 1] + 1.0)
        prev = cur
    return min(prev) / n  # trailing part of b skipped for free


def _canonical(text: str) -> str:
    return normalize_number(text) if len(text) == NUMBER_LENGTH else text


def group_container_reads(
    reads: Sequence[OcrRead], *, max_distance: float | None = None, strong_confidence: float | None = None,
) -> list[list[OcrRead]]:
    """Split the container reads of one passage into one group per physical container.

    The firmware does not say which container a read belongs to. Reads are clustered by average
    linkage on a normalized edit distance. Consecutive serials of a 2 x 20 ft truck may be only two
    characters apart, closer than noise puts two reads of one container, so a valid number that
    two reads show exactly, or one read shows with every character at ``strong_confidence`` or
    more, is a *seed*, and reads of two different seeds (differing in two or more positions) are
    never put in one group. A doubtful lone read that happens to be valid is not a seed: one
    misread camera must not invent a second container. A group that still holds two valid
    numbers, each with reads of its own around it, is split (`_split_two`). Groups are ordered by the median
    ``read_ms`` of their reads (robust to one stray read; groups without times last), then by
    first appearance. Reads with no usable text belong to no group.
    """
    limit = _DEFAULT_SETTINGS.group_max_distance if max_distance is None else max_distance
    items = [(i, _canonical(clean_text(r.text))) for i, r in enumerate(reads)]
    items = [(i, t) for i, t in items if t and len(t) <= _MAX_READ_LENGTH]
    if not items:
        return []
    counts: dict[str, int] = {}
    for _, text in items:
        counts[text] = counts.get(text, 0) + 1
    threshold = _DEFAULT_SETTINGS.single_read_min_confidence if strong_confidence is None else strong_confidence
    valid = {
        i: t for i, t in items
        if len(t) == NUMBER_LENGTH and is_valid_number(t)
        and (counts[t] >= 2 or min(_cleaned_with_conf(reads[i])[1]) >= threshold)
    }
    n = len(items)
    dist = [[0.0] * n for _ in range(n)]
    for x in range(n):
        for y in range(x + 1, n):
            d = _pair_distance(items[x][1], items[y][1])
            dist[x][y] = dist[y][x] = d
    clusters: list[list[int]] = [[k] for k in range(n)]

    def cannot_link(c1: Iterable[int], c2: Iterable[int]) -> bool:
        for k1 in c1:
            v1 = valid.get(items[k1][0])
            if v1 is None:
                continue
            for k2 in c2:
                v2 = valid.get(items[k2][0])
                if v2 is not None and sum(p != q for p, q in zip(v1, v2, strict=True)) >= 2:
                    return True
        return False

    while len(clusters) > 1:
        best_pair: tuple[int, int] | None = None
        best_d = math.inf
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                d = sum(dist[x][y] for x in clusters[a] for y in clusters[b]) / (
                    len(clusters[a]) * len(clusters[b])
                )
                if d < best_d and d <= limit and not cannot_link(clusters[a], clusters[b]):
                    best_d, best_pair = d, (a, b)
        if best_pair is None:
            break
        a, b = best_pair
        clusters[a].extend(clusters[b])
        del clusters[b]
    clusters = [part for cluster in clusters for part in _split_two(cluster, items)]
    groups = [[reads[items[k][0]] for k in sorted(c, key=lambda k: items[k][0])] for c in clusters]

    def order(group_index: int) -> tuple[int, int, int]:
        group = groups[group_index]
        times = sorted(r.read_ms for r in group if r.read_ms is not None)
        first = min(items[k][0] for k in clusters[group_index])
        return (0, times[(len(times) - 1) // 2], first) if times else (1, 0, first)

    return [groups[i] for i in sorted(range(len(groups)), key=order)]


def _split_two(cluster: list[int], items: Sequence[tuple[int, str]]) -> list[list[int]]:
    """Split a cluster that holds two containers with nearby numbers, if the reads say so.

    Each distinct valid number in the cluster is a possible anchor. For two anchors at least two
    characters apart (not blind-spot twins, which are one container misread), every read goes to
    the anchor it is clearly closer to; if both sides then hold two or more reads, they are two
    containers. One misread camera producing a valid number gathers no second read around it, so
    noise does not split a container; a real second container is read by several cameras.
    """
    if len(cluster) < 4:
        return [cluster]
    support: dict[str, int] = {}
    for k in cluster:
        text = items[k][1]
        if len(text) == NUMBER_LENGTH and is_valid_number(text):
            support[text] = support.get(text, 0) + 1
    anchors = sorted(support, key=lambda t: (-support[t], t))
    for x, first in enumerate(anchors):
        twins = _blind_neighbours(first)
        for second in anchors[x + 1:]:
            if second in twins or sum(p != q for p, q in zip(first, second, strict=True)) < 2:
                continue
            sides: tuple[list[int], list[int]] = ([], [])
            undecided: list[int] = []
            for k in cluster:
                d1, d2 = _pair_distance(items[k][1], first), _pair_distance(items[k][1], second)
                if d1 < d2:
                    sides[0].append(k)
                elif d2 < d1:
                    sides[1].append(k)
                else:
                    undecided.append(k)
            if len(sides[0]) >= 2 and len(sides[1]) >= 2:
                # A read that fits both equally stays with the better supported container.
                return [sides[0] + undecided, sides[1]]
    return [cluster]


def identify_containers(
    reads: Sequence[OcrRead], *, settings: IdentitySettings | None = None,
) -> list[ContainerIdentity]:
    """Group the container reads of one passage and identify each group.

    Two groups that resolve to the same number are both downgraded to ``duplicate``: one truck
    cannot carry one container twice, so the grouping (or the reads) cannot be trusted.
    """
    cfg = settings or _DEFAULT_SETTINGS
    groups = group_container_reads(
        reads, max_distance=cfg.group_max_distance, strong_confidence=cfg.single_read_min_confidence,
    )
    identities = [identify(group, settings=cfg) for group in groups]
    counts: dict[str, int] = {}
    for ident in identities:
        if ident.accepted and ident.number is not None:
            counts[ident.number] = counts.get(ident.number, 0) + 1
    out = []
    for ident in identities:
        if ident.accepted and ident.number is not None and counts[ident.number] > 1:
            out.append(ContainerIdentity(
                number=None, check_digit_ok=False, corrected=ident.corrected, confidence=ident.confidence,
                raw=ident.raw, reason=IdentityReason.DUPLICATE, iso_type=ident.iso_type, cameras=ident.cameras,
                candidates=ident.candidates,
                detail=f"{counts[ident.number]} groups of this passage resolved to {ident.number}",
            ))
        else:
            out.append(ident)
    return out


# --------------------------------------------------------------------------- plates


def fuse_plate(reads: Sequence[OcrRead]) -> PlateRead | None:
    """The plate text most reads support, with a confidence that drops when cameras disagree.

    Plates have no check digit, so no correction is attempted: the winner is the cleaned text with
    the largest summed confidence; its confidence is the noisy-OR of the agreeing reads times the
    winner's share of all support. None when no read has text.
    """
    support: dict[str, list[float]] = {}
    for read in reads:
        text = clean_text(read.text)
        if text:
            support.setdefault(text, []).append(read.confidence)
    if not support:
        return None
    text, confs = max(support.items(), key=lambda kv: (sum(kv[1]), len(kv[1]), kv[0]))
    total = sum(sum(c) for c in support.values())
    miss = 1.0
    for c in confs:
        miss *= 1.0 - c
    share = sum(confs) / total if total > 0 else 0.0
    return PlateRead(text=text, confidence=(1.0 - miss) * share, raw=tuple(r.text for r in reads))


# --------------------------------------------------------------------------- JSON input


def reads_from_json(obj: Any) -> list[OcrRead]:
    """The reads of one ``smartgate identify`` input line: ``{"reads": [{"text", "confidence", ...}]}``."""
    if not isinstance(obj, Mapping):
        raise TypeError("each line must be a JSON object with a 'reads' list")
    items = obj.get("reads")
    if not isinstance(items, list):
        raise TypeError("'reads' must be a list")
    reads = []
    for k, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"reads[{k}] must be an object")
        try:
            reads.append(OcrRead.from_mapping(item))
        except (TypeError, ValueError) as err:
            raise type(err)(f"reads[{k}]: {err}") from err
    return reads
