"""Edit-distance placement of OCR reads on the 11 positions of a number, and their costs.

Substitution costs know the position-aware normalization (a character that normalizes to the
expected one is free, a look-alike costs half); gaps at either end cost a little less than inside,
because truncation and leading or trailing junk are more common than a character lost inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from gate_controller.decision.identity.number import (
    ALPHABET_OF_KIND,
    CONFUSABLE,
    DIGITS,
    KIND,
    LETTERS,
    NUMBER_LENGTH,
    normalize_char,
)

_END_GAP: Final = 0.9


def _build_sub_costs() -> dict[tuple[int, str], dict[str, float]]:
    """Per (position, expected character): the cost of each read character that is not a plain
    mismatch (0 when it normalizes to the expected one, 0.5 for a look-alike). Precomputed because
    the alignments run this lookup in their inner loops."""
    table: dict[tuple[int, str], dict[str, float]] = {}
    for pos in range(NUMBER_LENGTH):
        for expected in ALPHABET_OF_KIND[KIND[pos]]:
            costs: dict[str, float] = {}
            for char in LETTERS + DIGITS:
                mapped = normalize_char(char, pos)
                if mapped is None:
                    continue
                if mapped[0] == expected:
                    costs[char] = 0.0
                elif frozenset((mapped[0], expected)) in CONFUSABLE:
                    costs[char] = 0.5
            table[(pos, expected)] = costs
    return table


_SUB_COSTS: Final = _build_sub_costs()


def sub_cost(char: str, pos: int, ref: str) -> float:
    costs = _SUB_COSTS.get((pos, ref[pos]))
    return 1.0 if costs is None else costs.get(char, 1.0)


def align(text: str, ref: str) -> list[int | None]:
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
                c = here + sub_cost(text[j], i, ref)
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


def contiguous(placed: Sequence[int | None]) -> bool:
    """True when the placed characters are consecutive in both the read and the number."""
    pairs = [(pos, j) for pos, j in enumerate(placed) if j is not None]
    return bool(pairs) and all(j - pos == pairs[0][1] - pairs[0][0] for pos, j in pairs) and (
        pairs[-1][0] - pairs[0][0] == len(pairs) - 1
    )


def edit_cost(text: str, ref: str) -> float:
    """Cost of the alignment `align` would choose (same weights), without the traceback."""
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
                prev[j - 1] + sub_cost(text[j - 1], i - 1, ref),
                prev[j] + gap_j,
                cur[j - 1] + gap_i,
            )
        prev = cur
    return prev[m]


def read_cost(text: str, confs: Sequence[float], ref: str) -> float:
    """How badly ``ref`` explains one whole read: Damerau edit cost, weighted by confidence.

    Disagreeing with a character the camera was sure of costs more than with one it doubted; a
    look-alike costs half; swapping two neighbours is one edit (OCR does swap characters, and a
    per-position model cannot see that). End gaps are slightly cheaper, as in `align`.
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
