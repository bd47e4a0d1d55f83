"""ISO 6346 container numbers: format, check digit arithmetic, position-aware normalization.

The character values and per-position residues of the check digit, the OCR look-alikes that shape
both normalization and the evidence model, and the check digit's blind spots: the valid numbers
it cannot tell from a given one.
"""

from __future__ import annotations

import re
from typing import Final

from stdnum import iso6346
from stdnum.exceptions import ValidationError as StdnumValidationError

NUMBER_LENGTH: Final = 11
LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS: Final = "0123456789"
CATEGORIES: Final = "UJZ"

# stdnum accepts any word character in the owner code and category R as well; the owner code is
# three capital letters and the categories in use are U, J and Z (ISO 6346:2022).
_NUMBER_RE: Final = re.compile(r"^[A-Z]{3}[UJZ][0-9]{7}$")
_CLEAN_RE: Final = re.compile(r"[^0-9A-Z]")

_OWNER, _CATEGORY, _DIGIT = 0, 1, 2
KIND: Final = (_OWNER, _OWNER, _OWNER, _CATEGORY) + (_DIGIT,) * 7
ALPHABET_OF_KIND: Final = (LETTERS, CATEGORIES, DIGITS)

# The check digit's character values, as in stdnum.iso6346.calc_check_digit (which does not expose
# per-position residues; the dynamic programme of `fusion` needs them). Multiples of 11 are skipped.
# tests/gate_controller/decision/test_identity.py checks this table against stdnum on random numbers.
_CHECK_ALPHABET: Final = "0123456789A BCDEFGHIJK LMNOPQRSTU VWXYZ"
_VALUE: Final = {c: i for i, c in enumerate(_CHECK_ALPHABET) if c != " "}
RESIDUES: Final = tuple(
    tuple((_VALUE[c] << pos) % 11 for c in ALPHABET_OF_KIND[KIND[pos]]) for pos in range(10)
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
CONFUSABLE: Final = frozenset(
    frozenset(pair) for pair in _CONFUSABLE_PAIRS.split()
)


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


def normalize_char(char: str, pos: int) -> tuple[str, float] | None:
    """The character as it must be at ``pos`` and the factor on its confidence; None if unusable."""
    kind = KIND[pos]
    alphabet = ALPHABET_OF_KIND[kind]
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
        mapped = normalize_char(char, pos)
        out.append("?" if mapped is None else mapped[0])
    return "".join(out)


def blind_neighbours(number: str) -> dict[str, str]:
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
        alphabet = ALPHABET_OF_KIND[KIND[pos]]
        residues = RESIDUES[pos]
        base = remainder - residues[alphabet.index(number[pos])]
        for k, char in enumerate(alphabet):
            if char != number[pos] and (base + residues[k]) % 11 % 10 == check:
                out[number[:pos] + char + number[pos + 1:]] = f"{number[pos]}/{char} at position {pos + 1}"
    for pos in range(10):
        a, b = number[pos], number[pos + 1]
        if a == b or b not in ALPHABET_OF_KIND[KIND[pos]] or a not in ALPHABET_OF_KIND[KIND[pos + 1]]:
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
