"""Container identity benchmark: read rate and wrong-number rate of the OCR fusion.

Generates noisy multi-camera read sets of random valid ISO 6346 numbers (visual-confusion
substitutions, letter/digit look-alikes, dropped cameras, truncations, swapped and lost
characters, spurious separators, low and misleadingly high confidences), runs each set through the
same code path as ``smartgate identify`` (JSON in, ``reads_from_json`` -> ``identify`` -> ``to_json``),
and counts:

- read rate: sets where a number was accepted;
- wrong-number rate: sets where the accepted number is not the truth (per set, not per read).

A sample is also piped through the real ``smartgate identify`` command, and its output must be
identical to the in-process result. The noise model is this file's own (its confusion table was
written independently of the one in ``gate_controller/decision/identity/``), so the benchmark does not
simply replay the fusion's assumptions.

    .venv/bin/python benchmarks/bench_identity.py                 # 100,000 sets, the reference figures
    .venv/bin/python benchmarks/bench_identity.py --sets 20000 --seed 7 --sweep
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stdnum import iso6346  # noqa: E402

from gate_controller.decision.identity import (  # noqa: E402
    IdentitySettings,
    identify,
    identify_containers,
    reads_from_json,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"

# Look-alikes by glyph shape (stroke fonts on container doors), written for this benchmark.
LOOKALIKE: dict[str, str] = {
    "0": "8D6O9Q", "1": "7IL4", "2": "7Z3", "3": "8952", "4": "1A9", "5": "6S3", "6": "85G0", "7": "12T",
    "8": "3B609", "9": "8035", "A": "4RH", "B": "8ERD", "C": "GOU", "D": "0OB", "E": "FBL", "F": "EPT",
    "G": "6CO", "H": "NMK", "I": "1LTJ", "J": "IU", "K": "XRH", "L": "IE1", "M": "NWH", "N": "MHW",
    "O": "0QDC", "P": "RFB", "Q": "O0G", "R": "PBK", "S": "5B8", "T": "7I1", "U": "VJO", "V": "UY",
    "W": "MV", "X": "KY", "Y": "VX", "Z": "27",
}
# What a letter-trained or digit-trained engine prints for a glyph of the other kind.
CROSS_CLASS: dict[str, str] = {"0": "O", "1": "I", "2": "Z", "5": "S", "8": "B", "6": "G",
                               "O": "0", "I": "1", "Z": "2", "S": "5", "B": "8"}


@dataclass(frozen=True)
class Noise:
    """Noise per read set. Defaults are the benchmark's reference level."""

    cameras_min: int = 4  # cameras that see the container (side, side, rear or front, top)
    cameras_max: int = 5
    drop: float = 0.05  # a camera that sees the container returns no read
    substitution: float = 0.012  # per character: a different glyph is read
    lookalike_share: float = 0.85  # of substitutions: a visual look-alike (else any character)
    cross_class: float = 0.03  # per character: a letter/digit look-alike (O for 0 in the serial)
    swap: float = 0.02  # per read: two adjacent characters swapped
    deletion: float = 0.02  # per read: one inner character lost
    insertion: float = 0.03  # per read: a spurious character or separator
    truncation: float = 0.05  # per read: 1-4 characters missing at one end
    separators: float = 0.10  # per read: printed as "MSKU 123456 5"
    confident_error: float = 0.25  # a wrong character still gets a high confidence
    uncertain_correct: float = 0.03  # a right character gets a low confidence
    weak_read: float = 0.05  # the whole read is blurred: every confidence scaled down
    char_confidence: float = 0.7  # the read reports per-character confidences
    damaged: float = 0.0  # per set: one painted character damaged alike for every camera


def scaled(noise: Noise, factor: float) -> Noise:
    """The same noise mix with every error probability multiplied by ``factor``."""
    return replace(
        noise,
        drop=min(noise.drop * factor, 0.9), substitution=noise.substitution * factor,
        cross_class=noise.cross_class * factor, swap=noise.swap * factor, deletion=noise.deletion * factor,
        insertion=noise.insertion * factor, truncation=noise.truncation * factor,
        weak_read=min(noise.weak_read * factor, 0.9),
    )


def random_number(rng: random.Random) -> str:
    owner = "".join(rng.choice(LETTERS) for _ in range(3))
    category = rng.choices("UJZ", weights=(90, 5, 5))[0]
    serial = "".join(rng.choice(DIGITS) for _ in range(6))
    stem = owner + category + serial
    return stem + iso6346.calc_check_digit(stem)


def _wrong_glyph(rng: random.Random, char: str, noise: Noise) -> str:
    if rng.random() < noise.lookalike_share:
        return rng.choice(LOOKALIKE[char])
    pool = DIGITS if char.isdigit() else LETTERS
    return rng.choice([c for c in pool if c != char])


def noisy_read(rng: random.Random, truth: str, camera: str, noise: Noise,
               damage: tuple[int, str] | None = None) -> dict[str, Any]:
    chars: list[str] = []
    confs: list[float] = []
    for pos, char in enumerate(truth):
        if damage is not None and damage[0] == pos and rng.random() < 0.7:
            chars.append(damage[1])
            confs.append(rng.uniform(0.6, 0.95))
        elif rng.random() < noise.substitution:
            chars.append(_wrong_glyph(rng, char, noise))
            confs.append(rng.uniform(0.85, 0.99) if rng.random() < noise.confident_error else rng.uniform(0.2, 0.75))
        elif char in CROSS_CLASS and rng.random() < noise.cross_class:
            chars.append(CROSS_CLASS[char])
            confs.append(rng.uniform(0.6, 0.98))
        else:
            chars.append(char)
            confs.append(rng.uniform(0.3, 0.8) if rng.random() < noise.uncertain_correct else rng.uniform(0.85, 1.0))
    if rng.random() < noise.swap:
        i = rng.randrange(len(chars) - 1)
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        confs[i], confs[i + 1] = confs[i + 1], confs[i]
    if rng.random() < noise.deletion:
        i = rng.randrange(1, len(chars) - 1)
        del chars[i], confs[i]
    if rng.random() < noise.separators and len(chars) == 11:
        chars[4:4] = [" "]
        confs[4:4] = [1.0]
        chars[11:11] = [" "]
        confs[11:11] = [1.0]
    if rng.random() < noise.insertion:
        i = rng.randrange(len(chars) + 1)
        chars.insert(i, rng.choice("-. " + LETTERS + DIGITS))
        confs.insert(i, rng.uniform(0.2, 0.9))
    if rng.random() < noise.truncation:
        k = rng.randint(1, 4)
        if rng.random() < 0.7:
            del chars[-k:], confs[-k:]
        else:
            del chars[:k], confs[:k]
    if rng.random() < noise.weak_read:
        factor = rng.uniform(0.3, 0.7)
        confs = [c * factor for c in confs]
    read: dict[str, Any] = {
        "text": "".join(chars),
        "confidence": round(sum(confs) / len(confs), 4) if confs else 0.0,
        "camera": camera,
    }
    if rng.random() < noise.char_confidence:
        read["char_confidence"] = [round(c, 4) for c in confs]
    return read


def read_set(rng: random.Random, truth: str, noise: Noise) -> dict[str, Any]:
    cameras = ["left", "right", "rear", "top", "front"][: rng.randint(noise.cameras_min, noise.cameras_max)]
    damage = None
    if rng.random() < noise.damaged:
        pos = rng.randrange(11)
        damage = (pos, rng.choice(LOOKALIKE[truth[pos]]))
    reads = [noisy_read(rng, truth, cam, noise, damage) for cam in cameras if rng.random() >= noise.drop]
    return {"reads": reads}


def generate(seed: int, count: int, noise: Noise) -> Iterator[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    for _ in range(count):
        truth = random_number(rng)
        yield truth, read_set(rng, truth, noise)


def identify_json(obj: dict[str, Any], settings: IdentitySettings | None = None) -> dict[str, Any]:
    """What ``smartgate identify`` prints for one input line."""
    return identify(reads_from_json(obj), settings=settings).to_json()


@dataclass
class Tally:
    sets: int = 0
    accepted: int = 0
    wrong: int = 0
    seconds: float = 0.0
    reasons: Counter[str] | None = None
    wrong_examples: list[tuple[str, dict[str, Any]]] | None = None

    @property
    def read_rate(self) -> float:
        return self.accepted / self.sets if self.sets else 0.0

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.sets if self.sets else 0.0


def run(seed: int, count: int, noise: Noise, settings: IdentitySettings | None = None) -> Tally:
    tally = Tally(reasons=Counter(), wrong_examples=[])
    assert tally.reasons is not None
    assert tally.wrong_examples is not None
    start = time.perf_counter()
    for truth, obj in generate(seed, count, noise):
        out = identify_json(obj, settings)
        tally.sets += 1
        if out["reason"] is None:
            tally.accepted += 1
            if out["number"] != truth:
                tally.wrong += 1
                tally.wrong_examples.append((truth, obj))
        else:
            tally.reasons[out["reason"]] += 1
    tally.seconds = time.perf_counter() - start
    return tally


def run_trucks(seed: int, count: int, noise: Noise, consecutive: float = 0.5) -> tuple[int, int, int, int]:
    """2 x 20 ft trucks: reads of both containers mixed, grouped, identified.

    Half of the trucks carry consecutive serials (the hard case for grouping). Returns
    (containers, accepted, wrong, trucks with both containers accepted and in the right order).
    """
    rng = random.Random(seed)
    containers = accepted = wrong = both = 0
    for truck in range(count):
        first = random_number(rng)
        if rng.random() < consecutive:
            stem = first[:4] + f"{(int(first[4:10]) + 1) % 1_000_000:06d}"
            second = stem + iso6346.calc_check_digit(stem)
        else:
            second = random_number(rng)
        reads = []
        for order, truth in enumerate((first, second)):
            for read in read_set(rng, truth, noise)["reads"]:
                read["read_ms"] = truck * 10_000 + order * 1_000 + rng.randrange(900)
                reads.append(read)
        rng.shuffle(reads)
        identities = identify_containers(reads_from_json({"reads": reads}))
        containers += 2
        got = [i.number for i in identities if i.accepted]
        accepted += len(got)
        wrong += sum(1 for n in got if n not in (first, second))
        if [i.number for i in identities] == [first, second]:
            both += 1
    return containers, accepted, wrong, both


def check_cli(seed: int, count: int, noise: Noise) -> int:
    """Pipe ``count`` sets through ``smartgate identify``; return how many outputs differ."""
    sets = [obj for _, obj in generate(seed, count, noise)]
    stdin = "".join(json.dumps(obj) + "\n" for obj in sets)
    proc = subprocess.run(
        [sys.executable, "-m", "gate_controller", "identify"], input=stdin, capture_output=True, text=True,
        check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"smartgate identify failed ({proc.returncode}): {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    if len(lines) != len(sets):
        raise SystemExit(f"smartgate identify printed {len(lines)} lines for {len(sets)} inputs")
    return sum(1 for line, obj in zip(lines, sets, strict=True) if json.loads(line) != identify_json(obj))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=100_000, help="read sets at the reference noise level")
    parser.add_argument("--seed", type=int, default=6346)
    parser.add_argument("--cli-sample", type=int, default=2_000, help="sets also piped through the CLI")
    parser.add_argument("--trucks", type=int, default=10_000, help="2 x 20 ft trucks (grouping + identity)")
    parser.add_argument("--sweep", action="store_true", help="also run 0.5x, 2x and 3x the noise (20%% of --sets)")
    parser.add_argument("--damaged", type=int, default=20_000,
                        help="sets where one painted character is damaged alike for every camera")
    args = parser.parse_args(argv)

    noise = Noise()
    print(f"reference noise: {noise}")
    tally = run(args.seed, args.sets, noise)
    print(f"sets {tally.sets}  read rate {tally.read_rate:.4%}  wrong {tally.wrong} "
          f"({tally.wrong_rate:.2e})  {tally.seconds / tally.sets * 1e6:.0f} us/set")
    print(f"not accepted by reason: {dict(tally.reasons.most_common()) if tally.reasons else {}}")
    for truth, obj in (tally.wrong_examples or [])[:5]:
        print(f"  WRONG truth={truth} -> {identify_json(obj)}  reads={json.dumps(obj)}")
    ok = tally.wrong_rate <= 1e-5 and tally.read_rate >= 0.99

    if args.cli_sample:
        start = time.perf_counter()
        diff = check_cli(args.seed + 1, args.cli_sample, noise)
        print(f"CLI sample: {args.cli_sample} sets through 'smartgate identify', {diff} differ from in-process "
              f"({time.perf_counter() - start:.1f} s)")
        ok = ok and diff == 0
    if args.trucks:
        containers, accepted, wrong, both = run_trucks(args.seed + 2, args.trucks, noise)
        print(f"2 x 20 ft trucks {args.trucks}: containers {containers}  read rate {accepted / containers:.4%}  "
              f"wrong {wrong}  both right and in order {both / args.trucks:.4%}")
        ok = ok and wrong == 0
    if args.damaged:
        damaged = run(args.seed + 3, args.damaged, replace(noise, damaged=1.0))
        print(f"damaged marking (every set): sets {damaged.sets}  read rate {damaged.read_rate:.4%}  "
              f"wrong {damaged.wrong} ({damaged.wrong_rate:.2e})")
        for truth, obj in (damaged.wrong_examples or [])[:3]:
            print(f"  WRONG truth={truth} -> {identify_json(obj)['number']}  reads={json.dumps(obj)}")
    if args.sweep:
        for factor in (0.5, 2.0, 3.0):
            t = run(args.seed + int(factor * 10), max(args.sets // 5, 1), scaled(noise, factor))
            print(f"noise x{factor}: sets {t.sets}  read rate {t.read_rate:.4%}  wrong {t.wrong} ({t.wrong_rate:.2e})")
    print("targets (wrong <= 1e-5, read rate >= 99%, CLI identical, no wrong truck container):",
          "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
