"""Acceptance of a fused number: the structural rules after the posterior (step 5).

``identify`` turns the reads of one container into a ``ContainerIdentity``: coverage, the
posterior threshold, corrections, blind spots outvoted by the reads, conflicting valid reads, and
whether the number is also the best explanation of the reads as whole strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from gate_controller.decision.identity.alignment import edit_cost, read_cost
from gate_controller.decision.identity.fusion import (
    Fusion,
    fuse,
    fuse_iso_type,
    likelihood,
    posterior_search,
    top_reading,
    valid_candidates,
)
from gate_controller.decision.identity.number import (
    CONFUSABLE,
    NUMBER_LENGTH,
    blind_neighbours,
    check_remainder,
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

_RIVAL_MIN_POSTERIOR: Final = 1e-3


_VOTE_GAP: Final = 0.5 - 1e-9  # one look-alike substitution (tolerance: costs are float sums)
_VOTE_MIN_CONFIDENCE: Final = 0.3
_UNDOUBTED: Final = 0.5  # a read whose every character is at least this sure can be a second container


def identify(reads: Sequence[OcrRead], *, settings: IdentitySettings | None = None) -> ContainerIdentity:
    """Fuse the reads of ONE container into an accepted number, or say why not."""
    cfg = settings or DEFAULT_SETTINGS
    raw = tuple(r.text for r in reads)
    cameras = tuple(sorted({r.camera for r in reads if r.camera}))
    iso_type = fuse_iso_type(reads)

    def reject(
        reason: IdentityReason, detail: str, *, number: str | None = None, confidence: float = 0.0,
        candidates: Sequence[tuple[str, float]] = (),
    ) -> ContainerIdentity:
        return ContainerIdentity(
            number=number, check_digit_ok=False, corrected=False, confidence=confidence, raw=raw,
            reason=reason, iso_type=iso_type, cameras=cameras, candidates=tuple(candidates), detail=detail,
        )

    fused = fuse(reads, cfg.confidence_gamma)
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
    best, best_l, z = posterior_search(fused.probs)
    posterior = best_l / z if z > 0.0 else 0.0
    top = top_reading(fused.probs)
    top_valid = is_valid_number(top)

    if best is None or posterior < cfg.min_confidence:
        candidates = valid_candidates(fused.probs, z, best) if z > 0.0 else []
        if not top_valid:
            agreement = likelihood(fused.probs, top)
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
    neighbours = blind_neighbours(best)
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


def _outvoted_blind_neighbour(
    number: str, neighbours: Mapping[str, str], fused: Fusion, margin: int,
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
            twin[pos] in fused.seen[pos] or frozenset((twin[pos], number[pos])) in CONFUSABLE for pos in diff
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
                a, b = edit_cost(text, number), edit_cost(text, twin)
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


def _better_explanation(number: str, fused: Fusion) -> str | None:
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
        return sum(read_cost(fused.texts[i], fused.confs[i], candidate) for i in fused.contributing)

    mine = cost(number)
    for alt in sorted(alternatives):
        theirs = cost(alt)
        if theirs <= mine:
            return (
                f"the reads are explained at least as well by {alt} as by {number} "
                f"(edit cost {theirs:.2f} vs {mine:.2f})"
            )
    return None
