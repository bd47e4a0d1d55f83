"""Fusion of the reads of one container into per-position probabilities, and the posterior.

Each placed character is evidence about its position (steps 1-3 of the package docstring); the
check digit couples the positions, and a dynamic programme over the weighted sum modulo 11 gives
the most probable valid number with its exact posterior among all valid numbers (step 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Final

from gate_controller.decision.identity.alignment import align, contiguous, sub_cost
from gate_controller.decision.identity.number import (
    ALPHABET_OF_KIND,
    CONFUSABLE,
    DIGITS,
    KIND,
    NUMBER_LENGTH,
    RESIDUES,
    check_remainder,
    normalize_char,
    normalize_number,
)
from gate_controller.decision.identity.reads import IdentityReason, OcrRead

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


MAX_READ_LENGTH: Final = 2 * NUMBER_LENGTH
_DIRECT_MAX_MISMATCH: Final = 3


def _build_evidence_tables() -> dict[tuple[int, str], tuple[tuple[int, ...], float, float]]:
    """Per (position kind, observed character): each alphabet entry's class (0 same, 1 look-alike,
    2 other) and the log share of the error mass that one look-alike / one other entry receives."""
    tables = {}
    for kind, alphabet in enumerate(ALPHABET_OF_KIND):
        for observed in alphabet:
            classes = tuple(
                0 if t == observed else 1 if frozenset((t, observed)) in CONFUSABLE else 2 for t in alphabet
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
class Fusion:
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


def cleaned_with_conf(read: OcrRead) -> tuple[str, list[float]]:
    """Cleaned text with the confidence of each kept character (separators dropped)."""
    chars: list[str] = []
    confs: list[float] = []
    for i, char in enumerate(read.text.upper()):
        if ("0" <= char <= "9") or ("A" <= char <= "Z"):
            chars.append(char)
            confs.append(_read_char_conf(read, i))
    return "".join(chars), confs


def _reference(cleaned: Sequence[tuple[str, list[float]]]) -> str | None:
    """Per-position weighted plurality of the normalized 11-character reads (alignment anchor)."""
    votes: list[dict[str, float]] = [{} for _ in range(NUMBER_LENGTH)]
    any_full = False
    for text, confs in cleaned:
        if len(text) != NUMBER_LENGTH:
            continue
        any_full = True
        for pos, char in enumerate(text):
            mapped = normalize_char(char, pos)
            if mapped is not None:
                votes[pos][mapped[0]] = votes[pos].get(mapped[0], 0.0) + max(confs[pos], 0.05) * mapped[1]
    if not any_full:
        return None
    return "".join(max(v.items(), key=lambda kv: (kv[1], kv[0]))[0] if v else "?" for v in votes)


def fuse(reads: Sequence[OcrRead], gamma: float) -> Fusion | IdentityReason:
    cleaned = [cleaned_with_conf(r) for r in reads]
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
        if not text or len(text) > MAX_READ_LENGTH:
            continue
        placed: list[int | None]
        if len(text) == NUMBER_LENGTH and sum(
            sub_cost(c, pos, ref) > 0 for pos, c in enumerate(text)
        ) <= _DIRECT_MAX_MISMATCH:
            placed = list(range(NUMBER_LENGTH))
            direct[index] = normalize_number(text)
        else:
            placed = align(text, ref)
        # A read that is only cut or padded at its ends keeps one offset throughout: its placement
        # is as sure as a direct read's. Gaps inside mean the aligner had to guess.
        clean = contiguous(placed)
        floor = _ERROR_MIN if clean else _ALIGNED_ERROR_MIN
        chars: dict[int, tuple[str, float]] = {}
        for pos, j in enumerate(placed):
            if j is None:
                continue
            mapped = normalize_char(text[j], pos)
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
        kind = KIND[pos]
        alphabet = ALPHABET_OF_KIND[kind]
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
    return Fusion(probs, seen, observations, contributing, direct, texts, read_confs, placements)


def posterior_search(probs: Sequence[Sequence[float]]) -> tuple[str | None, float, float]:
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
        alphabet = ALPHABET_OF_KIND[KIND[pos]]
        residues = RESIDUES[pos]
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


def likelihood(probs: Sequence[Sequence[float]], number: str) -> float:
    out = 1.0
    for pos, char in enumerate(number):
        out *= probs[pos][ALPHABET_OF_KIND[KIND[pos]].index(char)]
    return out


def top_reading(probs: Sequence[Sequence[float]]) -> str:
    return "".join(
        ALPHABET_OF_KIND[KIND[pos]][max(range(len(p)), key=p.__getitem__)] for pos, p in enumerate(probs)
    )


def valid_candidates(probs: Sequence[Sequence[float]], z: float, best: str | None) -> list[tuple[str, float]]:
    """Valid numbers built from the alternatives at the least certain positions, with posteriors."""
    top = top_reading(probs)
    uncertain = sorted(range(NUMBER_LENGTH), key=lambda pos: max(probs[pos]))[:_ENUM_POSITIONS]
    options: list[list[str]] = []
    for pos in range(NUMBER_LENGTH):
        alphabet = ALPHABET_OF_KIND[KIND[pos]]
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
            found[number] = likelihood(probs, number) / z
    # Every single-character change of the top reading that any read made plausible, too: a
    # check digit 0 often has two such completions (remainders 0 and 10), which must both show.
    for pos in range(NUMBER_LENGTH):
        alphabet = ALPHABET_OF_KIND[KIND[pos]]
        for k, char in enumerate(alphabet):
            if char != top[pos] and probs[pos][k] >= _ALT_MIN_P:
                number = top[:pos] + char + top[pos + 1:]
                if number not in found and number[10] == str(check_remainder(number) % 10):
                    found[number] = likelihood(probs, number) / z
    if best is not None and best not in found:
        found[best] = likelihood(probs, best) / z
    return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))


def fuse_iso_type(reads: Sequence[OcrRead]) -> str | None:
    score: dict[str, float] = {}
    for read in reads:
        if read.iso_type:
            score[read.iso_type] = score.get(read.iso_type, 0.0) + read.confidence
    if not score:
        return None
    return max(score.items(), key=lambda kv: (kv[1], kv[0]))[0]
