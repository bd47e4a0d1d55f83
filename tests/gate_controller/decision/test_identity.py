"""Container identity from OCR reads: ISO 6346, fusion, corrections, blind spots, two containers."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import iso6346

from gate_controller.decision.identity import (
    ContainerIdentity,
    IdentityReason,
    IdentitySettings,
    OcrRead,
    check_remainder,
    fuse_plate,
    group_container_reads,
    identify,
    identify_containers,
    is_valid_number,
    reads_from_json,
)
from tests.support.decisions import complete, load_benchmark, low_at, random_number, read, reads, remainder

NUMBER = "MSKU1234565"  # a valid number (stdnum's own doc example family)


def _residue(pos: int, digit: int) -> int:
    return (digit << pos) % 11


def _corrupt(number: str, pos: int, rng: random.Random) -> str:
    choices = [d for d in "0123456789" if d != number[pos]]
    return number[:pos] + rng.choice(choices) + number[pos + 1:]


# --------------------------------------------------------------------------- ISO 6346 basics


def test_check_digit_table_agrees_with_stdnum() -> None:
    rng = random.Random(6346)
    for _ in range(3000):
        number = random_number(rng)
        assert is_valid_number(number)
        assert str(check_remainder(number) % 10) == iso6346.calc_check_digit(number[:10])
        assert check_remainder(number) == remainder(number)
        wrong = number[:10] + str((int(number[10]) + 1 + rng.randrange(9)) % 10)
        assert not is_valid_number(wrong)


@pytest.mark.parametrize(
    "text",
    [
        "MSKR1234565",  # category R: stdnum accepts it, ISO 6346:2022 and the gate do not
        "M5KU1234565",  # a digit in the owner code
        "MSKU123456",  # short
        "msku1234565",  # not normalized: the caller cleans first
        "MSKU12345655",
    ],
)
def test_is_valid_number_is_strict(text: str) -> None:
    assert not is_valid_number(text)


# --------------------------------------------------------------------------- fusion


def test_agreeing_reads_are_accepted_as_read() -> None:
    ident = identify(reads(NUMBER, NUMBER, NUMBER))
    assert ident.accepted
    assert ident.number == NUMBER
    assert ident.check_digit_ok
    assert not ident.corrected
    assert ident.confidence >= 0.999
    assert ident.raw == (NUMBER, NUMBER, NUMBER)
    assert ident.cameras == ("left", "rear", "right")


def test_position_aware_normalization_counts_as_correction_of_the_raw_text() -> None:
    # O/I/B/S/Z in digit positions and digits in letter positions, plus separators.
    ident = identify(reads("MSKU I23456 5", "M5KU12345G5", "MSKU1Z3456S", "MSKU 1234S6 5"))
    assert ident.number == NUMBER
    assert ident.corrected  # the literal text "MSKU1234565" was never read...
    assert "normalization" in (ident.detail or "")  # ...but no character had to be invented


def test_a_low_confidence_character_is_corrected_by_the_check_digit() -> None:
    wrong = NUMBER[:9] + "8" + NUMBER[10]  # position 10 misread 6 -> 8, and the cameras doubt it
    ident = identify([low_at(wrong, {9}, camera=c) for c in ("left", "right", "rear")])
    assert ident.accepted
    assert ident.number == NUMBER
    assert ident.corrected


def test_a_confident_majority_outvotes_a_confident_misread() -> None:
    wrong = NUMBER[:5] + "7" + NUMBER[6:]
    assert identify(reads(NUMBER, NUMBER, wrong, NUMBER)).number == NUMBER


def test_reads_agreeing_on_a_bad_check_digit_report_it() -> None:
    bad = NUMBER[:10] + "6"
    ident = identify(reads(bad, bad, bad))
    assert ident.reason is IdentityReason.CHECK_DIGIT_INVALID
    assert ident.number == bad  # shown to the operator, flagged
    assert not ident.check_digit_ok
    assert not ident.accepted


def test_the_check_digit_itself_is_never_invented() -> None:
    bad = NUMBER[:10] + "7"
    ident = identify([low_at(bad, {10}, camera=c) for c in ("left", "right", "rear")])
    assert not ident.accepted
    assert ident.number is None or not ident.check_digit_ok


def test_two_doubted_positions_are_not_both_invented() -> None:
    bad = NUMBER[:6] + "9" + NUMBER[7:8] + "1" + NUMBER[9:]
    ident = identify([low_at(bad, {6, 8}, camera=c) for c in ("left", "right", "rear")])
    assert not ident.accepted


def test_truncated_and_padded_reads_are_aligned() -> None:
    ident = identify(reads("MSKU123456", "SKU1234565", "X MSKU1234565", "MSKU1234565"))
    assert ident.number == NUMBER


def test_no_reads_and_incomplete_reads() -> None:
    assert identify([]).reason is IdentityReason.NO_READS
    assert identify(reads("", " - ")).reason is IdentityReason.NO_READS
    assert identify(reads("MSKU12345", "U1234565")).reason is IdentityReason.INCOMPLETE


def test_iso_type_is_fused_from_the_reads() -> None:
    group = [OcrRead(NUMBER, 0.9, "left", iso_type="22G1"), OcrRead(NUMBER, 0.95, "right", iso_type="22G1"),
             OcrRead(NUMBER, 0.6, "top", iso_type="42G1")]
    assert identify(group).iso_type == "22G1"


# --------------------------------------------------------------------------- never from a lone read


def test_a_single_read_is_never_enough_by_default() -> None:
    ident = identify([read(NUMBER, 0.99)])
    assert ident.reason is IdentityReason.SINGLE_WEAK_READ
    assert ident.number is None


def test_a_single_weak_read_is_rejected_even_when_lone_reads_are_allowed() -> None:
    lenient = IdentitySettings(min_coverage=1, blind_spot_margin=1)
    strong = complete("BDEU310442")  # no look-alike twin in the owner code, check digit not 0
    assert is_valid_number(strong)
    assert identify([read(strong, 0.99, chars=[0.99] * 11)], settings=lenient).number == strong
    weak = identify([read(strong, 0.6)], settings=lenient)
    assert weak.reason is IdentityReason.SINGLE_WEAK_READ
    doubted = identify([read(strong, 0.97, chars=[0.99] * 5 + [0.5] + [0.99] * 5)], settings=lenient)
    assert not doubted.accepted


def test_positions_only_one_camera_saw_do_not_decide() -> None:
    # Three reads, but the check digit and the digit before it come from one read only.
    ident = identify(reads(NUMBER, "MSKU12345", "MSKU12345"))
    assert ident.reason is IdentityReason.SINGLE_WEAK_READ


# --------------------------------------------------------------------------- blind spots


def test_letters_of_equal_value_need_a_clear_majority() -> None:
    pee = complete("PSKU123456")
    eff = "F" + pee[1:]  # F and P are worth the same modulo 11: both numbers are valid
    assert is_valid_number(eff)
    ident = identify(reads(pee, pee, eff))
    assert ident.reason is IdentityReason.BLIND_SPOT
    assert "F" in (ident.detail or "")
    assert identify(reads(pee, pee, pee, eff)).number == pee


def test_a_correction_never_lands_on_an_equal_value_letter() -> None:
    # All reads doubt the first letter; the reads split between the two twins.
    pee = complete("PSKU123456")
    eff = "F" + pee[1:]
    ident = identify([low_at(pee, {0}, camera="left"), low_at(eff, {0}, camera="right"),
                      low_at(pee, {0}, camera="rear"), low_at(eff, {0}, camera="top")])
    assert not ident.accepted


def test_swapped_letters_of_one_class_need_a_clear_majority() -> None:
    number = complete("AKXU123456")
    swapped = "KAXU" + number[4:]  # A and K are worth the same modulo 11
    assert is_valid_number(swapped)
    assert identify(reads(number, number, swapped)).reason is IdentityReason.BLIND_SPOT
    assert identify(reads(number, number, number, swapped)).number == number


def _remainder_ten_case(rng: random.Random) -> tuple[str, int]:
    """A number with remainder 10 and a serial position where only a remainder-10 fix exists."""
    while True:
        number = random_number(rng, rem=10)
        for pos in range(4, 10):
            here = int(number[pos])
            if not any((10 - _residue(pos, here) + _residue(pos, d)) % 11 == 0 for d in range(10) if d != here):
                return number, pos


def test_no_correction_into_remainder_ten() -> None:
    rng = random.Random(10)
    number, pos = _remainder_ten_case(rng)
    assert remainder(number) == 10
    assert number[10] == "0"
    wrong = _corrupt(number, pos, rng)
    ident = identify([low_at(wrong, {pos}, camera=c) for c in ("left", "right", "rear")])
    assert ident.reason is IdentityReason.BLIND_SPOT
    assert ident.number is None
    # Read as it is, by several cameras, the same number is accepted.
    assert identify(reads(number, number, number)).number == number


def test_check_digit_zero_with_two_valid_fixes_is_not_guessed() -> None:
    rng = random.Random(0)
    for _ in range(20):
        number = random_number(rng, rem=0)
        pos = 7
        wrong = _corrupt(number, pos, rng)
        ident = identify([low_at(wrong, {pos}, camera=c) for c in ("left", "right", "rear")])
        assert ident.number != number or ident.accepted  # consistency
        if ident.accepted:
            # Only a fix whose remainder is 0 can be accepted, and it must be the truth's remainder.
            assert remainder(ident.number or "") == 0
            assert ident.number == number


# --------------------------------------------------------------------------- two containers


def _consecutive(rng: random.Random) -> tuple[str, str]:
    first = random_number(rng)
    stem = first[:4] + f"{(int(first[4:10]) + 1) % 1_000_000:06d}"
    return first, complete(stem)


def test_two_containers_with_consecutive_serials_become_two_identities_in_read_order() -> None:
    rng = random.Random(2)
    first, second = _consecutive(rng)
    mixed = [read(second, 0.93, "left", read_ms=1200), read(first, 0.94, "left", read_ms=100),
             read(second, 0.9, "right", read_ms=1300), read(first, 0.92, "right", read_ms=150),
             read(first, 0.95, "top", read_ms=200), read(second, 0.91, "top", read_ms=1250)]
    groups = group_container_reads(mixed)
    assert [[r.text for r in g] for g in groups] == [[first] * 3, [second] * 3]
    identities = identify_containers(mixed)
    assert [i.number for i in identities] == [first, second]


def test_a_lone_noisy_valid_read_does_not_invent_a_second_container() -> None:
    rng = random.Random(4)
    number = random_number(rng)
    noisy = next(
        t for t in (number[:7] + a + b + number[9:] for a in "0123456789" for b in "0123456789")
        if t != number and is_valid_number(t)
    )
    group = [read(number, 0.95, "left"), read(number, 0.95, "right"), read(number, 0.95, "rear"),
             read(noisy, 0.6, "top", chars=[0.95] * 7 + [0.35, 0.4] + [0.95] * 2)]
    assert len(group_container_reads(group)) == 1
    assert identify(group).number == number


def test_reads_of_two_containers_in_one_group_are_not_fused() -> None:
    rng = random.Random(5)
    first, second = _consecutive(rng)
    ident = identify(reads(first, first, first, second, second))
    assert ident.reason is IdentityReason.CONFLICTING_READS
    assert ident.number is None


def test_reads_without_text_belong_to_no_group() -> None:
    assert group_container_reads(reads("", "  ")) == []
    assert identify_containers([]) == []


# --------------------------------------------------------------------------- properties


TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -O", min_size=0, max_size=14)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXT, st.floats(0.0, 1.0)), max_size=6))
def test_identify_never_accepts_an_unverified_number(raw: list[tuple[str, float]]) -> None:
    group = [OcrRead(text, conf, f"cam{i}") for i, (text, conf) in enumerate(raw)]
    ident = identify(group)
    assert isinstance(ident, ContainerIdentity)
    assert ident.raw == tuple(text for text, _ in raw)
    assert 0.0 <= ident.confidence <= 1.0
    if ident.accepted:
        assert ident.number is not None
        assert is_valid_number(ident.number)
        assert ident.check_digit_ok
        # No lone camera decided: every position was read by two reads or more.
        assert len([t for t, _ in raw if t.strip()]) >= 2
    else:
        assert ident.reason is not None
        assert not ident.check_digit_ok


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 5), st.floats(0.0, 1.0))
def test_noisy_copies_of_a_number_never_yield_another_number(seed: int, n: int, doubt: float) -> None:
    rng = random.Random(seed)
    truth = random_number(rng)
    group = []
    for i in range(n):
        text = list(truth)
        chars = [0.95] * 11
        for pos in range(11):
            if rng.random() < 0.08:
                text[pos] = rng.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
                chars[pos] = doubt
        group.append(OcrRead("".join(text), 0.9, f"cam{i}", tuple(chars)))
    ident = identify(group)
    assert ident.number in (None, truth) or not ident.accepted


# --------------------------------------------------------------------------- inputs and plates


def test_ocr_read_validation() -> None:
    with pytest.raises(ValueError):
        OcrRead(NUMBER, 1.5, "left")
    with pytest.raises(ValueError):
        OcrRead(NUMBER, float("nan"), "left")
    with pytest.raises(ValueError):
        OcrRead(NUMBER, 0.9, "left", (0.9,) * 3)
    with pytest.raises(TypeError):
        reads_from_json({"reads": [{"text": 5, "confidence": 0.9}]})
    with pytest.raises(ValueError):
        reads_from_json({"reads": [{"text": "A", "confidence": "high"}]})
    with pytest.raises(TypeError):
        reads_from_json({"reads": "MSKU"})
    parsed = reads_from_json({"reads": [{"text": NUMBER, "confidence": 1, "camera": "top", "kind": "container",
                                         "char_confidence": [1] * 11, "read_ms": 5, "iso_type": "45G1"}]})
    assert parsed == [OcrRead(NUMBER, 1.0, "top", (1.0,) * 11, 5, "45G1")]


def test_plate_fusion_keeps_its_confidence() -> None:
    assert fuse_plate([]) is None
    assert fuse_plate(reads("", " ")) is None
    agreed = fuse_plate([read("B-AB 123", 0.9), read("BAB123", 0.8, "rear")])
    assert agreed is not None
    assert agreed.text == "BAB123"
    assert agreed.confidence == pytest.approx(1 - 0.1 * 0.2)
    split = fuse_plate([read("BAB123", 0.9), read("BA8123", 0.9, "rear")])
    assert split is not None
    assert split.confidence < agreed.confidence


# --------------------------------------------------------------------------- the benchmark's generator


def test_benchmark_generator_sample_reads_well_and_never_wrong() -> None:
    bench = load_benchmark()
    tally = bench.run(99, 1500, bench.Noise())
    assert tally.wrong == 0
    assert tally.read_rate >= 0.97
