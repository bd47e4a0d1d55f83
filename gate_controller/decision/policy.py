"""The release/inspect policy: from the facts of one passage to an action and its reason codes.

`decide` is a pure function of `DecisionInputs` and `PolicyConfig`, so every decision can be
replayed and explained. The reason codes are exactly those of the MQTT contract (section 4), in
the contract's order. ``release`` is returned only when every precondition holds:

- at least one container, each identified (accepted by `gate_controller.decision.identity`, valid check
  digit), no container twice, no more than the lane's maximum, and as many as the lane expects
  when it knows;
- each has a release notice in force whose status is ``released``;
- on a lane with a scanner: a scan, complete, with verdict ``clear``;
- each container declared ``empty`` shows no cargo (``not_empty_score`` below its threshold);
- the lane's image review is live, not in shadow mode (``REVIEW_SHADOW``, always ``manual``).

A scan the image review calls *unfamiliar* (verdict ``unavailable``: the scan lies outside the
model's training envelope, e.g. a scanner it never saw) is ``INFERENCE_UNAVAILABLE`` and always
``manual``, whatever ``actions`` maps that reason to: it is the gate's own input it cannot trust,
not evidence for an inspection.

Anything else maps each failed condition to a reason, each reason to an action (configurable
among inspect/hold/manual), and takes the most severe: manual > inspect > hold. ``manual`` comes
first because the gate cannot trust its own inputs; ``inspect`` before ``hold`` because a suspect
scan or an inspection order must reach the inspection bay even when paperwork is also missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gate_controller.decision.identity import ContainerIdentity, IdentityReason, IdentitySettings, is_valid_number
from gate_controller.decision.notices import Notice
from inference.result import DEFAULT_OPAQUE_AREA_M2

__all__ = [
    "ACTION_SEVERITY",
    "BLOCKING_REASONS",
    "DEFAULT_ACTIONS",
    "REASON_CODES",
    "Action",
    "ContainerFacts",
    "Decision",
    "DecisionInputs",
    "PolicyConfig",
    "ReasonCode",
    "ScanFacts",
    "Verdict",
    "decide",
]

Action = Literal["release", "inspect", "hold", "manual"]
Verdict = Literal["clear", "suspect", "unavailable"]
ReasonCode = Literal[
    "ALL_RELEASED", "SCAN_CLEAR", "NOT_RELEASED", "ON_HOLD", "INSPECTION_ORDERED", "OCR_UNREADABLE",
    "CHECK_DIGIT_INVALID", "NO_SCAN", "SCAN_INCOMPLETE", "SCAN_SUSPECT", "DECLARED_EMPTY_NOT_EMPTY",
    "INFERENCE_UNAVAILABLE", "REVIEW_SHADOW", "PLC_FAULT", "MANUAL_OVERRIDE", "CANCELLED",
]
REASON_CODES: Final[tuple[str, ...]] = get_args(ReasonCode)
"""Every contract reason code, in the contract's order (the order reasons are reported in)."""
_ORDER: Final = {code: i for i, code in enumerate(REASON_CODES)}
_VERDICTS: Final[frozenset[str]] = frozenset(get_args(Verdict))

BLOCKING_REASONS: Final[tuple[str, ...]] = (
    "NOT_RELEASED", "ON_HOLD", "INSPECTION_ORDERED", "OCR_UNREADABLE", "CHECK_DIGIT_INVALID", "NO_SCAN",
    "SCAN_INCOMPLETE", "SCAN_SUSPECT", "DECLARED_EMPTY_NOT_EMPTY", "INFERENCE_UNAVAILABLE", "PLC_FAULT",
)
"""Reasons `decide` produces that stand in the way of release; each maps to an action."""
_INFORMATIVE: Final = ("ALL_RELEASED", "SCAN_CLEAR")
_NOT_DECIDED_HERE: Final = ("MANUAL_OVERRIDE", "CANCELLED")  # set by the operator path and the lane
_ALWAYS_MANUAL: Final = ("REVIEW_SHADOW",)  # officers decide every scan of a lane whose review is in shadow

DEFAULT_ACTIONS: Final[Mapping[ReasonCode, Action]] = {
    "NOT_RELEASED": "hold",
    "ON_HOLD": "hold",
    "INSPECTION_ORDERED": "inspect",
    "OCR_UNREADABLE": "manual",
    "CHECK_DIGIT_INVALID": "manual",
    "NO_SCAN": "manual",
    "SCAN_INCOMPLETE": "manual",
    "SCAN_SUSPECT": "inspect",
    "DECLARED_EMPTY_NOT_EMPTY": "inspect",
    "INFERENCE_UNAVAILABLE": "manual",
    "PLC_FAULT": "manual",
}
ACTION_SEVERITY: Final[Mapping[str, int]] = {"release": 0, "hold": 1, "inspect": 2, "manual": 3}

Threshold = Annotated[float, Field(gt=0.0, lt=1.0)]

# What a release would mean for each reason, to say precisely why a mapping is refused.
_RELEASE_MEANS: Final = {
    "NOT_RELEASED": "release a container customs has not released",
    "ON_HOLD": "release a container on customs hold",
    "INSPECTION_ORDERED": "release a container with an inspection order",
    "OCR_UNREADABLE": "release a container whose number was not read",
    "CHECK_DIGIT_INVALID": "allow release without a valid check digit",
    "NO_SCAN": "allow release without a scan on a scanner lane",
    "SCAN_INCOMPLETE": "allow release with an incomplete scan",
    "SCAN_SUSPECT": "release a suspect scan",
    "DECLARED_EMPTY_NOT_EMPTY": "release a declared-empty container that shows cargo",
    "INFERENCE_UNAVAILABLE": "allow release without an image review",
    "PLC_FAULT": "release with a PLC fault",
}


class PolicyConfig(BaseModel):
    """The ``policy:`` section: OCR acceptance, thresholds, and which reason leads to which action.

    Every knob is bounded; no value can make `decide` release a truck that fails a precondition.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    """When a container number is accepted from the OCR reads (gate_controller.decision.identity)."""
    suspect_threshold: Threshold | None = None
    """Scan score at or above which the scan is suspect; null uses the model's verdict (its metadata)."""
    not_empty_threshold: Threshold | None = None
    """Cargo score at or above which a declared-empty container is not empty; null: model metadata."""
    opaque_area_m2: Annotated[float, Field(ge=0.0, le=100.0)] = DEFAULT_OPAQUE_AREA_M2
    """Smallest area of the scan the beam did not cross (m2) that makes the scan suspect
    (`inference.opacity`); 0 turns the test off. Such a scan is ``SCAN_SUSPECT`` with a region
    labelled ``opaque``."""
    opaque_action: Literal["inspect", "manual"] = "manual"
    """What a scan suspect only for an opaque area leads to: an officer reads the image with the
    declaration (``manual``, the default: a dense liquid declared as such is released by hand),
    or the inspection bay (``inspect``). A scan the model also finds suspect follows ``actions``."""
    require_scan: bool = True
    """Scanner lanes need a complete, clear scan for release. Stated for the reader of a site file;
    it cannot be false (a lane whose scanner is out of service is configured as a lane without one,
    and its transactions then say ``scan: null``)."""
    actions: dict[ReasonCode, Action] = Field(default_factory=dict)
    """Overrides of the default action per reason, e.g. ``{NOT_RELEASED: manual}``. Only inspect,
    hold and manual are allowed, and only for reasons that block release."""

    @model_validator(mode="after")
    def _never_release(self) -> PolicyConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if not self.require_scan:
            problems.append((
                ("require_scan",),
                "cannot be false: it would allow release with an incomplete scan or none; configure a lane "
                "whose scanner is out of service with 'scanner: false' instead",
            ))
        for reason, action in self.actions.items():
            if reason in _INFORMATIVE:
                problems.append((("actions", reason), f"{reason} is not a reason against release; it has no action"))
            elif reason in _NOT_DECIDED_HERE:
                problems.append((("actions", reason), f"{reason} is set by the operator or the lane, not the policy"))
            elif reason in _ALWAYS_MANUAL:
                problems.append((("actions", reason), f"{reason}: a lane in review shadow mode is always decided "
                                                      "manual; it has no configurable action"))
            elif action == "release":
                problems.append((
                    ("actions", reason),
                    f"'release' would {_RELEASE_MEANS[reason]}; choose inspect, hold or manual",
                ))
        if problems:
            # Same error shape as the daemon config's own cross-field checks: parse_config expands
            # each problem to the YAML line of the offending key.
            summary = "; ".join(message for _, message in problems)
            raise PydanticCustomError("located", "{summary}", {"summary": summary, "problems": problems})
        return self

    def action_for(self, reason: ReasonCode) -> Action:
        """The action for a blocking reason (KeyError for a reason that does not block release)."""
        action = self.actions.get(reason, DEFAULT_ACTIONS[reason])
        assert action != "release"
        return action


@dataclass(frozen=True, slots=True)
class ScanFacts:
    """What the scanner and the image review said about this passage."""

    complete: bool
    verdict: Verdict
    anomaly_score: float | None = None
    """The review's anomaly score 0..1 (needed only for a ``suspect_threshold`` override)."""
    not_empty_score: float | None = None
    """Cargo score of the whole scan, used for a container that has no score of its own."""
    not_empty_threshold: float | None = None
    """The model's own not-empty threshold (its metadata); ``policy.not_empty_threshold`` overrides."""
    unfamiliar: bool = False
    """The review found the scan outside its training envelope (verdict ``unavailable``)."""
    opaque: bool = False
    """The scan has an area the beam did not cross, of at least ``policy.opaque_area_m2``."""
    opaque_only: bool = False
    """The verdict is ``suspect`` for that area alone (no region of the model's, no declared-empty
    violation)."""


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    identity: ContainerIdentity
    notice: Notice | None
    """The release notice in force for ``identity.number`` (NoticeStore.lookup), or None."""
    not_empty_score: float | None = None
    """Cargo score of this container's part of the scan, when the review can tell containers apart."""
    not_empty: bool | None = None
    """The review's own judgement of that score at the model's threshold; used only when no numeric
    threshold is known (neither ``policy.not_empty_threshold`` nor ``ScanFacts.not_empty_threshold``)."""


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    containers: tuple[ContainerFacts, ...]
    scan: ScanFacts | None
    lane_has_scanner: bool
    plc_fault: bool
    max_containers: int | None = None
    """The most containers a vehicle can carry in this lane; more identities mean mixed-up reads."""
    expected_containers: int | None = None
    """How many containers the lane knows the vehicle carries (e.g. from the scan), if it knows."""
    decided_at: datetime | None = None
    """Timezone-aware; a notice that expired by then counts as absent (None: as looked up)."""
    review_shadow: bool = False
    """The lane's image review runs in shadow mode: its verdict is published, never acted on."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reasons: tuple[ReasonCode, ...]
    by: Literal["auto", "operator"] = "auto"
    operator: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The transaction's ``decision`` object."""
        return {"action": self.action, "reasons": list(self.reasons), "by": self.by, "operator": self.operator}


def _identified(identity: ContainerIdentity) -> bool:
    return (
        identity.reason is None and identity.check_digit_ok and identity.number is not None
        and is_valid_number(identity.number)
    )


def decide(inputs: DecisionInputs, config: PolicyConfig) -> Decision:
    """The action for one passage and every reason behind it, in contract order."""
    reasons: set[ReasonCode] = set()
    containers = inputs.containers
    all_released = bool(containers)
    if not containers:
        reasons.add("OCR_UNREADABLE")  # no number at all: never release an unread truck
    if (inputs.expected_containers is not None and len(containers) != inputs.expected_containers) or (
        inputs.max_containers is not None and len(containers) > inputs.max_containers
    ):
        reasons.add("OCR_UNREADABLE")
        all_released = False
    numbers = [c.identity.number for c in containers if _identified(c.identity)]
    if len(numbers) != len(set(numbers)):
        reasons.add("OCR_UNREADABLE")
        all_released = False

    scan = inputs.scan
    for facts in containers:
        ident = facts.identity
        if not _identified(ident):
            all_released = False
            if ident.reason is IdentityReason.CHECK_DIGIT_INVALID or (
                ident.number is not None and not ident.check_digit_ok
            ):
                reasons.add("CHECK_DIGIT_INVALID")
            else:
                reasons.add("OCR_UNREADABLE")
            continue
        notice = facts.notice
        if notice is None or notice.container != ident.number or (
            inputs.decided_at is not None and not notice.active(inputs.decided_at)
        ):
            reasons.add("NOT_RELEASED")
            all_released = False
            continue
        status: str = notice.status
        if status == "hold":
            reasons.add("ON_HOLD")
            all_released = False
        elif status == "inspect":
            reasons.add("INSPECTION_ORDERED")
            all_released = False
        elif status != "released":  # not a contract status: treat as no release
            reasons.add("NOT_RELEASED")
            all_released = False
        if notice.declared is not None and notice.declared.strip().lower() == "empty":
            reasons.update(_empty_check(facts, scan, inputs.lane_has_scanner, config))
    if all_released:
        reasons.add("ALL_RELEASED")

    opaque_only = False
    if inputs.lane_has_scanner:
        if scan is None:
            reasons.add("NO_SCAN")
        else:
            if not scan.complete:
                reasons.add("SCAN_INCOMPLETE")
            verdict: str = scan.verdict
            if verdict not in _VERDICTS:
                verdict = "unavailable"  # an unknown verdict is no verdict
            opaque_only = verdict == "suspect" and scan.opaque and scan.opaque_only
            if verdict != "unavailable" and config.suspect_threshold is not None and scan.anomaly_score is not None:
                model_suspect = scan.anomaly_score >= config.suspect_threshold
                verdict = "suspect" if model_suspect or scan.opaque else "clear"
                opaque_only = scan.opaque and not model_suspect
            if verdict == "unavailable":
                reasons.add("INFERENCE_UNAVAILABLE")
            elif verdict == "suspect":
                reasons.add("SCAN_SUSPECT")
            elif scan.complete:
                reasons.add("SCAN_CLEAR")
    if inputs.review_shadow and inputs.lane_has_scanner:
        # Decided as a gate without image review would be: an officer looks at every scan.
        reasons.add("REVIEW_SHADOW")
    if inputs.plc_fault:
        reasons.add("PLC_FAULT")

    ordered = tuple(sorted(reasons, key=_ORDER.__getitem__))
    if any(r in _ALWAYS_MANUAL for r in ordered):
        return Decision(action="manual", reasons=ordered)
    blocking = [r for r in ordered if r in DEFAULT_ACTIONS]
    if blocking:
        action = max((config.action_for(r) for r in blocking), key=ACTION_SEVERITY.__getitem__)
        if scan is not None and scan.unfamiliar and "INFERENCE_UNAVAILABLE" in reasons:
            return Decision(action="manual", reasons=ordered, extra={"review": "unfamiliar"})
        if opaque_only:
            # The scan is suspect only because the beam did not cross part of it: that reason
            # takes the opacity action; every other blocking reason keeps its own.
            others = [config.action_for(r) for r in blocking if r != "SCAN_SUSPECT"]
            action = max([config.opaque_action, *others], key=ACTION_SEVERITY.__getitem__)
            return Decision(action=action, reasons=ordered, extra={"review": "opaque"})
        return Decision(action=action, reasons=ordered)
    # Defence in depth: the code above cannot get here without every precondition, but a release
    # is re-derived from the positive reasons alone before it is returned.
    if "ALL_RELEASED" not in reasons or (inputs.lane_has_scanner and "SCAN_CLEAR" not in reasons):
        return Decision(action="manual", reasons=ordered or ("OCR_UNREADABLE",))
    return Decision(action="release", reasons=ordered)


def _empty_check(
    facts: ContainerFacts, scan: ScanFacts | None, lane_has_scanner: bool, config: PolicyConfig,
) -> set[ReasonCode]:
    """A container declared empty must be seen empty; without a scan that cannot be shown."""
    if not lane_has_scanner or scan is None:
        return {"NO_SCAN"}
    score = facts.not_empty_score if facts.not_empty_score is not None else scan.not_empty_score
    threshold = config.not_empty_threshold if config.not_empty_threshold is not None else scan.not_empty_threshold
    if score is not None and threshold is not None:
        return {"DECLARED_EMPTY_NOT_EMPTY"} if score >= threshold else set()
    if facts.not_empty is not None and config.not_empty_threshold is None:
        return {"DECLARED_EMPTY_NOT_EMPTY"} if facts.not_empty else set()
    return {"INFERENCE_UNAVAILABLE"}  # emptiness cannot be shown: never assume it
