"""Two containers on one truck: grouping a passage's reads by container, then identifying each.

The firmware does not say which container a read belongs to; reads are clustered by a
normalized edit distance, kept apart where two valid numbers are each well supported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from gate_controller.decision.identity.acceptance import identify
from gate_controller.decision.identity.fusion import MAX_READ_LENGTH, cleaned_with_conf
from gate_controller.decision.identity.number import (
    CONFUSABLE,
    NUMBER_LENGTH,
    blind_neighbours,
    clean_text,
    is_valid_number,
    normalize_number,
)
from gate_controller.decision.identity.reads import (
    DEFAULT_SETTINGS,
    ContainerIdentity,
    IdentityReason,
    IdentitySettings,
    OcrRead,
)


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
            sub = 0.0 if ca == cb else 0.5 if frozenset((ca, cb)) in CONFUSABLE else 1.0
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
    limit = DEFAULT_SETTINGS.group_max_distance if max_distance is None else max_distance
    items = [(i, _canonical(clean_text(r.text))) for i, r in enumerate(reads)]
    items = [(i, t) for i, t in items if t and len(t) <= MAX_READ_LENGTH]
    if not items:
        return []
    counts: dict[str, int] = {}
    for _, text in items:
        counts[text] = counts.get(text, 0) + 1
    threshold = DEFAULT_SETTINGS.single_read_min_confidence if strong_confidence is None else strong_confidence
    valid = {
        i: t for i, t in items
        if len(t) == NUMBER_LENGTH and is_valid_number(t)
        and (counts[t] >= 2 or min(cleaned_with_conf(reads[i])[1]) >= threshold)
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
        twins = blind_neighbours(first)
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
    cfg = settings or DEFAULT_SETTINGS
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
