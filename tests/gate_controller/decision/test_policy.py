"""The release/inspect policy: every reason code, the config guard rails, and release's preconditions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gate_controller.config import parse_config
from gate_controller.core.errors import ConfigError
from gate_controller.decision.identity import ContainerIdentity, IdentityReason, is_valid_number
from gate_controller.decision.notices import Notice
from gate_controller.decision.policy import (
    ACTION_SEVERITY,
    BLOCKING_REASONS,
    DEFAULT_ACTIONS,
    REASON_CODES,
    ContainerFacts,
    Decision,
    DecisionInputs,
    PolicyConfig,
    ScanFacts,
    decide,
)
from tests.support.configs import DEMO
from tests.support.decisions import accepted, at, bad_check_digit, complete, unreadable

A = "MSKU1234565"
B = complete("MSKU123457")
CLEAR = ScanFacts(complete=True, verdict="clear", anomaly_score=0.05, not_empty_score=0.02,
                  not_empty_threshold=0.5)


def released(container: str, **kw: object) -> Notice:
    fields: dict[str, object] = {"container": container, "status": "released", "declared": "general",
                                 "ref": "R1", "expires_at": None, "ts": at(0)}
    fields.update(kw)
    return Notice(**fields)  # type: ignore[arg-type]


def facts(number: str = A, notice: Notice | None = None, *, ident: ContainerIdentity | None = None,
          **kw: object) -> ContainerFacts:
    return ContainerFacts(identity=ident or accepted(number),
                          notice=notice if notice is not None else released(number), **kw)  # type: ignore[arg-type]


def inputs(*containers: ContainerFacts, scan: ScanFacts | None = CLEAR, scanner: bool = True, plc_fault: bool = False,
           **kw: object) -> DecisionInputs:
    return DecisionInputs(containers=containers or (facts(),), scan=scan, lane_has_scanner=scanner,
                          plc_fault=plc_fault, decided_at=at(10), **kw)  # type: ignore[arg-type]


NO_CONTAINERS = DecisionInputs(containers=(), scan=CLEAR, lane_has_scanner=True, plc_fault=False)

# Every reason code `decide` produces, with a passage that produces it.
TABLE: list[tuple[str, DecisionInputs, str, tuple[str, ...]]] = [
    ("all clear", inputs(), "release", ("ALL_RELEASED", "SCAN_CLEAR")),
    ("lane without scanner", inputs(scan=None, scanner=False), "release", ("ALL_RELEASED",)),
    ("two released containers", inputs(facts(A), facts(B)), "release", ("ALL_RELEASED", "SCAN_CLEAR")),
    ("no notice", inputs(ContainerFacts(accepted(A), None)), "hold", ("SCAN_CLEAR", "NOT_RELEASED")),
    ("expired notice", inputs(facts(A, released(A, expires_at=at(5)))), "hold", ("SCAN_CLEAR", "NOT_RELEASED")),
    ("notice of another container", inputs(facts(A, released(B))), "hold", ("SCAN_CLEAR", "NOT_RELEASED")),
    ("on hold", inputs(facts(A, released(A, status="hold"))), "hold", ("SCAN_CLEAR", "ON_HOLD")),
    ("inspection ordered", inputs(facts(A, released(A, status="inspect"))), "inspect",
     ("SCAN_CLEAR", "INSPECTION_ORDERED")),
    ("unreadable", inputs(facts(ident=unreadable())), "manual", ("SCAN_CLEAR", "OCR_UNREADABLE")),
    ("no container read", NO_CONTAINERS, "manual", ("SCAN_CLEAR", "OCR_UNREADABLE")),
    ("same number twice", inputs(facts(A), facts(A)), "manual", ("SCAN_CLEAR", "OCR_UNREADABLE")),
    ("more than the lane's maximum", inputs(facts(A), facts(B), max_containers=1), "manual",
     ("SCAN_CLEAR", "OCR_UNREADABLE")),
    ("fewer than expected", inputs(facts(A), expected_containers=2), "manual", ("SCAN_CLEAR", "OCR_UNREADABLE")),
    ("check digit invalid", inputs(facts(ident=bad_check_digit("MSKU1234566"))), "manual",
     ("SCAN_CLEAR", "CHECK_DIGIT_INVALID")),
    ("no scan", inputs(scan=None), "manual", ("ALL_RELEASED", "NO_SCAN")),
    ("incomplete scan", inputs(scan=replace(CLEAR, complete=False)), "manual", ("ALL_RELEASED", "SCAN_INCOMPLETE")),
    ("suspect scan", inputs(scan=replace(CLEAR, verdict="suspect")), "inspect", ("ALL_RELEASED", "SCAN_SUSPECT")),
    ("declared empty, shows cargo", inputs(facts(A, released(A, declared="empty"), not_empty_score=0.8)), "inspect",
     ("ALL_RELEASED", "SCAN_CLEAR", "DECLARED_EMPTY_NOT_EMPTY")),
    ("declared empty, is empty", inputs(facts(A, released(A, declared="empty"), not_empty_score=0.1)), "release",
     ("ALL_RELEASED", "SCAN_CLEAR")),
    ("declared empty, whole-scan score", inputs(facts(A, released(A, declared="Empty")),
                                                scan=replace(CLEAR, not_empty_score=0.7)), "inspect",
     ("ALL_RELEASED", "SCAN_CLEAR", "DECLARED_EMPTY_NOT_EMPTY")),
    ("declared empty, review's own judgement", inputs(facts(A, released(A, declared="empty"), not_empty=False),
                                                      scan=replace(CLEAR, not_empty_threshold=None)), "release",
     ("ALL_RELEASED", "SCAN_CLEAR")),
    ("declared empty, emptiness unknown", inputs(facts(A, released(A, declared="empty")),
                                                 scan=replace(CLEAR, not_empty_score=None)), "manual",
     ("ALL_RELEASED", "SCAN_CLEAR", "INFERENCE_UNAVAILABLE")),
    ("declared empty, lane without scanner", inputs(facts(A, released(A, declared="empty")), scan=None,
                                                    scanner=False), "manual", ("ALL_RELEASED", "NO_SCAN")),
    ("review unavailable", inputs(scan=replace(CLEAR, verdict="unavailable")), "manual",
     ("ALL_RELEASED", "INFERENCE_UNAVAILABLE")),
    ("PLC fault", inputs(plc_fault=True), "manual", ("ALL_RELEASED", "SCAN_CLEAR", "PLC_FAULT")),
    # Several reasons: the most severe action wins (manual > inspect > hold).
    ("suspect and not released", inputs(ContainerFacts(accepted(A), None), scan=replace(CLEAR, verdict="suspect")),
     "inspect", ("NOT_RELEASED", "SCAN_SUSPECT")),
    ("one released, one on hold", inputs(facts(A), facts(B, released(B, status="hold"))), "hold",
     ("SCAN_CLEAR", "ON_HOLD")),
    ("hold and inspection ordered", inputs(facts(A, released(A, status="hold")),
                                           facts(B, released(B, status="inspect"))), "inspect",
     ("SCAN_CLEAR", "ON_HOLD", "INSPECTION_ORDERED")),
    ("PLC fault beats a suspect scan", inputs(plc_fault=True, scan=replace(CLEAR, verdict="suspect")), "manual",
     ("ALL_RELEASED", "SCAN_SUSPECT", "PLC_FAULT")),
    ("review in shadow, clear scan", inputs(review_shadow=True), "manual",
     ("ALL_RELEASED", "SCAN_CLEAR", "REVIEW_SHADOW")),
    ("review in shadow, suspect scan", inputs(review_shadow=True, scan=replace(CLEAR, verdict="suspect")), "manual",
     ("ALL_RELEASED", "SCAN_SUSPECT", "REVIEW_SHADOW")),
]


def test_shadow_cannot_be_mapped_away_from_manual() -> None:
    with pytest.raises(ValidationError, match="always decided manual"):
        PolicyConfig(actions={"REVIEW_SHADOW": "hold"})
    assert decide(inputs(review_shadow=True, scanner=False, scan=None), PolicyConfig()).action == "release"


@pytest.mark.parametrize(("case", "passage", "action", "reasons"), TABLE, ids=[row[0] for row in TABLE])
def test_every_reason_code(case: str, passage: DecisionInputs, action: str, reasons: tuple[str, ...]) -> None:
    decision = decide(passage, PolicyConfig())
    assert (decision.action, decision.reasons) == (action, reasons)


def test_the_table_covers_every_code_the_policy_decides() -> None:
    produced = {code for _, _, _, reasons in TABLE for code in reasons}
    assert produced == set(REASON_CODES) - {"MANUAL_OVERRIDE", "CANCELLED"}
    assert set(DEFAULT_ACTIONS) == set(BLOCKING_REASONS)


def test_decision_json_is_the_contract_object() -> None:
    assert decide(inputs(), PolicyConfig()).to_json() == {
        "action": "release", "reasons": ["ALL_RELEASED", "SCAN_CLEAR"], "by": "auto", "operator": None,
    }


# --------------------------------------------------------------------------- configuration


def test_actions_can_be_remapped_among_non_release_actions() -> None:
    passage = inputs(ContainerFacts(accepted(A), None))
    assert decide(passage, PolicyConfig(actions={"NOT_RELEASED": "manual"})).action == "manual"
    assert decide(inputs(plc_fault=True), PolicyConfig(actions={"PLC_FAULT": "hold"})).action == "hold"


@pytest.mark.parametrize("reason", BLOCKING_REASONS)
def test_a_release_mapping_is_refused(reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        PolicyConfig(actions={reason: "release"})  # type: ignore[dict-item]
    assert "'release' would" in str(info.value)


def test_config_wording_for_the_two_named_guarantees() -> None:
    with pytest.raises(ValidationError, match="without a valid check digit"):
        PolicyConfig(actions={"CHECK_DIGIT_INVALID": "release"})
    with pytest.raises(ValidationError, match="incomplete scan"):
        PolicyConfig(actions={"SCAN_INCOMPLETE": "release"})
    with pytest.raises(ValidationError, match="incomplete scan"):
        PolicyConfig(require_scan=False)


@pytest.mark.parametrize(
    "data",
    [
        {"actions": {"ALL_RELEASED": "hold"}},
        {"actions": {"SCAN_CLEAR": "manual"}},
        {"actions": {"MANUAL_OVERRIDE": "manual"}},
        {"actions": {"CANCELLED": "hold"}},
        {"actions": {"NOT_A_REASON": "hold"}},
        {"actions": {"NOT_RELEASED": "ignore"}},
        {"suspect_threshold": 0.0},
        {"suspect_threshold": 1.0},
        {"not_empty_threshold": 1.5},
        {"identity": {"min_confidence": 0.5}},
        {"identity": {"max_corrections": 3}},
        {"identity": {"min_coverage": 0}},
        {"unknown": 1},
    ],
)
def test_unsafe_or_unknown_settings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PolicyConfig.model_validate(data)


def test_a_site_file_with_a_release_mapping_fails_at_its_line() -> None:
    text = DEMO.read_text(encoding="utf-8").rstrip("\n") + "\npolicy:\n  actions:\n    CHECK_DIGIT_INVALID: release\n"
    line = text.count("\n")  # the last line holds the offending key
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="site.yaml")
    issues = [i for i in info.value.issues if i.path.startswith("policy")]
    assert [(i.path, i.line) for i in issues] == [("policy.actions.CHECK_DIGIT_INVALID", line)]
    assert "valid check digit" in issues[0].message


def test_suspect_threshold_override_uses_the_anomaly_score() -> None:
    scan = replace(CLEAR, anomaly_score=0.3)
    assert decide(inputs(scan=scan), PolicyConfig()).action == "release"
    assert decide(inputs(scan=scan), PolicyConfig(suspect_threshold=0.25)).reasons == ("ALL_RELEASED", "SCAN_SUSPECT")
    flagged = replace(scan, verdict="suspect")
    assert decide(inputs(scan=flagged), PolicyConfig(suspect_threshold=0.5)).action == "release"
    unavailable = replace(scan, verdict="unavailable")
    assert decide(inputs(scan=unavailable), PolicyConfig(suspect_threshold=0.5)).action == "manual"


def test_not_empty_threshold_override() -> None:
    passage = inputs(facts(A, released(A, declared="empty"), not_empty_score=0.4))
    assert decide(passage, PolicyConfig()).action == "release"  # model threshold 0.5
    assert decide(passage, PolicyConfig(not_empty_threshold=0.3)).action == "inspect"


# --------------------------------------------------------------------------- property: release's preconditions


def _holds(passage: DecisionInputs, config: PolicyConfig) -> bool:
    """The issue's preconditions for release, restated independently of `decide`."""
    containers = passage.containers
    if not containers:
        return False
    if passage.max_containers is not None and len(containers) > passage.max_containers:
        return False
    if passage.expected_containers is not None and len(containers) != passage.expected_containers:
        return False
    numbers = []
    scan = passage.scan
    for c in containers:
        ident = c.identity
        if ident.reason is not None or not ident.check_digit_ok or ident.number is None:
            return False
        if not is_valid_number(ident.number):
            return False
        numbers.append(ident.number)
        n = c.notice
        if n is None or n.container != ident.number or n.status != "released":
            return False
        if passage.decided_at is not None and n.expires_at is not None and n.expires_at <= passage.decided_at:
            return False
        if (n.declared or "").strip().lower() == "empty":
            if not passage.lane_has_scanner or scan is None:
                return False
            score = c.not_empty_score if c.not_empty_score is not None else scan.not_empty_score
            limit = config.not_empty_threshold if config.not_empty_threshold is not None else scan.not_empty_threshold
            if score is not None and limit is not None:
                if score >= limit:
                    return False
            elif c.not_empty is None or config.not_empty_threshold is not None or c.not_empty:
                return False
    if len(set(numbers)) != len(numbers):
        return False
    if passage.lane_has_scanner:
        if scan is None or not scan.complete:
            return False
        verdict = scan.verdict
        if verdict != "unavailable" and config.suspect_threshold is not None and scan.anomaly_score is not None:
            verdict = "suspect" if scan.anomaly_score >= config.suspect_threshold or scan.opaque else "clear"
        if verdict != "clear":
            return False
    return not passage.plc_fault


NUMBERS = [A, B, "CSQU3054383", "MSKU1234566"]  # the last fails the check digit
unit = st.floats(0.0, 1.0)
maybe_unit = st.none() | unit

identities = st.one_of(
    st.sampled_from(NUMBERS).map(accepted),
    st.builds(unreadable, st.sampled_from(list(IdentityReason))),
    st.sampled_from(NUMBERS).map(bad_check_digit),
    # Inconsistent records a buggy caller might build: never trusted.
    st.builds(ContainerIdentity, number=st.sampled_from(NUMBERS) | st.none(), check_digit_ok=st.booleans(),
              corrected=st.booleans(), confidence=unit, raw=st.just(()),
              reason=st.none() | st.sampled_from(list(IdentityReason))),
)
notices = st.none() | st.builds(
    Notice, container=st.sampled_from(NUMBERS), status=st.sampled_from(["released", "hold", "inspect", "other"]),
    declared=st.sampled_from([None, "general", "empty", " EMPTY ", "reefer"]), ref=st.none(),
    expires_at=st.none() | st.integers(-5, 30).map(at), ts=st.just(at(0)),
)
container_facts = st.builds(ContainerFacts, identity=identities, notice=notices, not_empty_score=maybe_unit,
                            not_empty=st.none() | st.booleans())
scans = st.none() | st.builds(ScanFacts, complete=st.booleans(),
                              verdict=st.sampled_from(["clear", "suspect", "unavailable", "bogus"]),
                              anomaly_score=maybe_unit, not_empty_score=maybe_unit,
                              not_empty_threshold=st.none() | st.floats(0.01, 0.99),
                              opaque=st.booleans(), opaque_only=st.booleans())
passages = st.builds(
    DecisionInputs, containers=st.lists(container_facts, max_size=3).map(tuple), scan=scans,
    lane_has_scanner=st.booleans(), plc_fault=st.booleans(), max_containers=st.none() | st.integers(1, 2),
    expected_containers=st.none() | st.integers(0, 3), decided_at=st.none() | st.integers(0, 20).map(at),
)
configs = st.builds(
    PolicyConfig,
    actions=st.dictionaries(st.sampled_from(BLOCKING_REASONS), st.sampled_from(["inspect", "hold", "manual"])),
    suspect_threshold=st.none() | st.floats(0.01, 0.99), not_empty_threshold=st.none() | st.floats(0.01, 0.99),
    opaque_action=st.sampled_from(["inspect", "manual"]),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passages, configs)
def test_release_if_and_only_if_every_precondition_holds(passage: DecisionInputs, config: PolicyConfig) -> None:
    decision = decide(passage, config)
    assert isinstance(decision, Decision)
    assert (decision.action == "release") == _holds(passage, config)
    # Reasons: never empty, never repeated, in the contract's order, only codes the policy decides.
    assert decision.reasons
    assert list(decision.reasons) == sorted(set(decision.reasons), key=REASON_CODES.index)
    assert not {"MANUAL_OVERRIDE", "CANCELLED"} & set(decision.reasons)
    blocking = [r for r in decision.reasons if r in BLOCKING_REASONS]
    if decision.action == "release":
        assert not blocking
        expected = ("ALL_RELEASED", "SCAN_CLEAR") if passage.lane_has_scanner else ("ALL_RELEASED",)
        assert decision.reasons == expected
    else:
        assert blocking
        actions = [config.action_for(r) for r in blocking]  # type: ignore[arg-type]
        if decision.extra == {"review": "opaque"}:  # suspect for an opaque area alone
            assert passage.scan is not None
            assert passage.scan.opaque
            actions = [config.opaque_action] + [config.action_for(r) for r in blocking  # type: ignore[arg-type]
                                                if r != "SCAN_SUSPECT"]
        worst = max(actions, key=ACTION_SEVERITY.__getitem__)
        assert decision.action == worst


def test_a_decision_is_a_pure_function() -> None:
    passage = inputs(facts(A), facts(B, released(B, status="hold")))
    assert decide(passage, PolicyConfig()) == decide(passage, PolicyConfig())


def test_naive_datetimes_are_not_used_for_expiry() -> None:
    # Expiry is compared with aware datetimes only; a naive decided_at is a caller bug that fails loudly.
    passage = replace(inputs(facts(A, released(A, expires_at=at(100)))), decided_at=datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        decide(passage, PolicyConfig())


def test_an_unfamiliar_scan_is_manual_whatever_the_action_map_says() -> None:
    """A scan outside the review model's training envelope is not evidence for an inspection:
    INFERENCE_UNAVAILABLE and manual, even where a site maps that reason to inspect or hold."""
    unfamiliar = replace(CLEAR, verdict="unavailable", anomaly_score=None, unfamiliar=True)
    for actions in ({}, {"INFERENCE_UNAVAILABLE": "inspect"}, {"INFERENCE_UNAVAILABLE": "hold"}):
        config = PolicyConfig(actions=actions)  # type: ignore[arg-type]
        decision = decide(inputs(scan=unfamiliar), config)
        assert decision.action == "manual"
        assert decision.reasons == ("ALL_RELEASED", "INFERENCE_UNAVAILABLE")
        assert decision.extra == {"review": "unfamiliar"}
    # Any other unavailable review follows the configured action.
    failed = replace(CLEAR, verdict="unavailable", anomaly_score=None)
    assert decide(inputs(scan=failed), PolicyConfig(actions={"INFERENCE_UNAVAILABLE": "inspect"})).action == "inspect"


def test_a_scan_suspect_only_for_an_opaque_area_goes_to_an_officer() -> None:
    """An area the beam did not cross is SCAN_SUSPECT, never release, and by default manual: an
    officer reads the image with the declaration. The model's own suspicion keeps its action."""
    opaque = replace(CLEAR, verdict="suspect", opaque=True, opaque_only=True)
    decision = decide(inputs(scan=opaque), PolicyConfig())
    assert (decision.action, decision.reasons, decision.extra) == (
        "manual", ("ALL_RELEASED", "SCAN_SUSPECT"), {"review": "opaque"})
    assert decide(inputs(scan=opaque), PolicyConfig(opaque_action="inspect")).action == "inspect"
    # Other reasons keep theirs; the most severe wins.
    held = inputs(facts(A, released(A, status="hold")), scan=opaque)
    assert decide(held, PolicyConfig(opaque_action="inspect")).action == "inspect"
    assert decide(held, PolicyConfig(actions={"ON_HOLD": "manual"}, opaque_action="inspect")).action == "manual"
    # Suspect for the model too: the SCAN_SUSPECT action (inspect), not the opacity's.
    both = replace(opaque, opaque_only=False, anomaly_score=0.9)
    assert decide(inputs(scan=both), PolicyConfig()).action == "inspect"
    # A threshold override cannot clear an opaque scan; it decides whether the model also suspects it.
    assert decide(inputs(scan=opaque), PolicyConfig(suspect_threshold=0.5)).action == "manual"
    assert decide(inputs(scan=both), PolicyConfig(suspect_threshold=0.95)).extra == {"review": "opaque"}
    assert decide(inputs(scan=both), PolicyConfig(suspect_threshold=0.5)).action == "inspect"
    # The setting is bounded and typed.
    with pytest.raises(ValidationError):
        PolicyConfig(opaque_action="release")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        PolicyConfig(opaque_area_m2=-0.1)


def test_the_review_result_tells_the_policy_whether_opacity_alone_made_it_suspect() -> None:
    from gate_controller.core.ports import ScanObservation
    from gate_controller.decision.decider import _scan_facts
    from inference.result import ReviewRegion, ReviewResult

    obs = ScanObservation(link="scanner", scan_id="S-1", scan_no=1, complete=True, columns=10, rows=10,
                          channels=2, sha256=None, reason=None, scan_end=0.0)
    dark = ReviewRegion(x=0, y=0, w=5, h=5, score=1.0, label="opaque")
    gun = ReviewRegion(x=6, y=0, w=2, h=2, score=0.9, label="weapon")
    only = ReviewResult(verdict="suspect", score=0.1, not_empty_score=0.9, regions=(dark,), opaque_m2=2.0,
                        anomaly_score=0.1)
    facts = _scan_facts(obs, only)
    assert facts is not None
    assert (facts.opaque, facts.opaque_only) == (True, True)
    with_model = replace(only, regions=(gun, dark), anomaly_score=0.9)
    facts = _scan_facts(obs, with_model)
    assert facts is not None
    assert (facts.opaque, facts.opaque_only) == (True, False)
    facts = _scan_facts(obs, replace(only, declared_empty_violation=True))
    assert facts is not None
    assert not facts.opaque_only
    facts = _scan_facts(obs, replace(only, regions=(), opaque_m2=0.0, verdict="clear"))
    assert facts is not None
    assert not facts.opaque
