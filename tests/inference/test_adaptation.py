"""Site adaptation without TensorFlow: the normal-traffic model, the envelope, TIP, and the whole run."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from inference.adaptation import Envelope
from inference.adaptation.adapt import AdaptOptions, adapt
from inference.adaptation.normal import NormalAccumulator, NormalModel
from inference.adaptation.reviewer import AdaptedReviewer
from inference.adaptation.tip import extract_threats, project
from inference.errors import ModelError
from inference.package import build_package, generate_key, load_private_key, load_public_keys, verify_package
from inference.package.loader import open_reviewer
from inference.reviewer import Reviewer
from inference.scan import Scan, save_scan
from inference.synthetic import generate_scan
from inference.worker import ReviewWorker


def test_normal_model_is_the_shrunk_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 500, 4)).astype(np.float32) * np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    acc = NormalAccumulator(2, 4)
    acc.add(feats[:, :250])
    acc.add(feats[:, 250:])
    model = acc.model()
    x = rng.normal(size=(2, 7, 4)).astype(np.float32)
    got = model.distance(x)
    for row in range(2):
        f = feats[row].astype(np.float64)
        mean = f.mean(axis=0)
        cov = np.cov(f, rowvar=False, bias=True)
        cov = 0.95 * cov + (0.05 * np.trace(cov) / 4 + 1e-4) * np.eye(4)
        diff = x[row] - mean
        want = np.sqrt(np.einsum("cd,de,ce->c", diff, np.linalg.inv(cov), diff))
        np.testing.assert_allclose(got[row], want, rtol=1e-4)
    again = NormalModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(again.whiten, model.whiten)
    with pytest.raises(ModelError):
        NormalModel.from_bytes(b"not an npz")
    # Fold arithmetic: total minus a part equals the rest fitted alone.
    part = NormalAccumulator(2, 4)
    part.add(feats[:, :250])
    rest = NormalAccumulator(2, 4)
    rest.add(feats[:, 250:])
    np.testing.assert_allclose(acc.minus(part).model().mean, rest.model().mean, rtol=1e-5)


def test_envelope_distance_and_roundtrip(tmp_path: Path) -> None:
    rows = [{"mean_high": 0.10 + 0.01 * i, "air_share": 0.2} for i in range(10)]
    env = Envelope.fit(rows, source="t")
    assert env.distance(rows)[0] < 0.1
    far, which = env.distance([{"mean_high": 0.30, "air_share": 0.2}])
    assert which == "mean_high"
    assert far > 5
    path = tmp_path / "envelope.json"
    path.write_text(env.to_json())
    assert Envelope.load(path).mean == pytest.approx(env.mean)
    path.write_text("{}")
    with pytest.raises(ModelError):
        Envelope.load(path)


def test_tip_multiplies_the_threat_into_the_scan() -> None:
    threats = extract_threats(("weapon", "dense_object"), 1, seed=5)
    assert {t.label for t in threats} == {"weapon", "dense_object"}
    scan = generate_scan(11, cargo="cartons").scan
    result = project(scan, threats[0], np.random.default_rng(1))
    assert result is not None
    out, (x, y, w, h) = result
    assert x >= 0
    assert y >= 0
    assert x + w <= scan.columns
    assert y + h <= scan.rows
    before, after = scan.pixels.astype(np.int64), out.pixels.astype(np.int64)
    assert (after <= before + 1).all()  # transmission only ever multiplies by <= 1
    inside = np.zeros(scan.pixels.shape[1:], dtype=bool)
    inside[y:y + h, x:x + w] = True
    assert (after[:, inside] < before[:, inside]).mean() > 0.2
    outside = ~inside
    outside[max(y - 2, 0):y + h + 2, max(x - 2, 0):x + w + 2] = False
    assert (after[:, outside] == before[:, outside]).all()


def _site(scan: Scan, rng: np.random.Generator) -> Scan:
    """A scanner the shipped model never saw: row gain striping and extra noise."""
    p = scan.pixels.astype(np.float64) * (1 + rng.normal(0, 0.04, size=(scan.channels, scan.rows, 1)))
    p += rng.normal(0, 1, size=p.shape) * np.sqrt(np.maximum(p, 0) * 6)
    return Scan(pixels=np.clip(p, 0, 65535).astype(np.uint16), scan_id=f"site-{scan.scan_id}", bits=16,
                pixel_mm=scan.pixel_mm)


def test_adapt_writes_a_signed_package_the_worker_reviews_with(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(24):
        save_scan(_site(generate_scan(600 + i, length_ft=20).scan, rng), clean / f"s{i}.npz")
    generate_key(tmp_path / "k", tmp_path / "k.pub")
    out = tmp_path / "pkg"
    report = adapt(None, clean, out, sign=functools.partial(build_package, key=load_private_key(tmp_path / "k")),
                   name="site", version="1.1.0.1",
                   options=AdaptOptions(folds=3, threats_per_class=1, min_scans=20, holdout=0.3))
    package = verify_package(out, load_public_keys([tmp_path / "k.pub"]))
    assert {"adaptation.json", "adaptation.npz", "envelope.json", "report.json"} <= set(package.manifest.files)
    assert package.manifest.provenance["clean_scans"] == 24
    assert report["fit_scans"] + report["validation_scans"] == 24
    assert report["features"]["kind"] == "intermediate"
    assert set(report["validation"]["tip_detection"]) == {"dense_object", "weapon", "vehicle", "organic_mass"}
    assert json.loads((out / "report.json").read_text()) == report
    assert package.spec.thresholds.suspect == 0.5
    # Striping and noise leave the average attenuation alone: the normalization is not touched.
    assert report["normalization"]["after"] == report["normalization"]["before"]
    reviewer = open_reviewer(out)
    assert isinstance(reviewer, AdaptedReviewer)
    scan = _site(generate_scan(700, length_ft=20).scan, rng)
    direct = reviewer.review(scan)
    assert direct.version == "1.1.0.1"
    assert 0.0 <= (direct.score or 0.0) < 1.0
    assert "max_distance" in direct.extra
    # The guard is the shipped model's, widened (never narrowed) to the site's held-out clean
    # scans, which it therefore lets through; the adapted review reports conditioning and signals.
    shipped = Reviewer().spec.envelope
    envelope = package.spec.envelope
    assert envelope.max_noise >= shipped.max_noise
    assert envelope.max_flagged_share >= shipped.max_flagged_share
    assert envelope.min_air_fraction <= shipped.min_air_fraction
    assert (envelope.max_inverted_share, envelope.max_repaired_share) == (shipped.max_inverted_share,
                                                                         shipped.max_repaired_share)
    assert "widened to the site's scans" in envelope.basis
    assert report["guard"]["of"] == report["validation_scans"]
    assert report["guard"]["unavailable"] == 0, report["guard"]
    assert direct.verdict != "unavailable"
    assert direct.conditioning["flat_field"] == "per_row"
    assert set(direct.envelope) == {"flagged_share", "noise", "air_fraction", "repaired_share", "covered_share",
                                    "inverted_share"}
    # A detector fault or a wiring fault is not the site's character: the adapted review sends
    # such scans to an officer as the shipped model does, naming the signal.
    dead = scan.pixels.copy()
    dead[:, ::5] = 0  # every fifth detector row dead: 20 % repaired
    swapped = np.ascontiguousarray(scan.pixels[::-1])
    for pixels, signal in ((dead, "repaired_share"), (swapped, "inverted_share")):
        faulty = reviewer.review(Scan(pixels=pixels, scan_id="fault", bits=16, pixel_mm=scan.pixel_mm))
        assert faulty.verdict == "unavailable", (signal, faulty)
        assert faulty.reason == "unfamiliar"
        assert signal in (faulty.error or ""), faulty.error
        assert faulty.conditioning

    async def via_worker() -> None:
        async with ReviewWorker(out) as worker:
            result = await worker.review(scan)
            assert result.error is None
            assert result.verdict == direct.verdict
            assert result.score == pytest.approx(direct.score, abs=1e-4)

    asyncio.run(via_worker())
    with pytest.raises(ModelError, match="at least 30"):
        adapt(None, clean, tmp_path / "never", sign=functools.partial(build_package,
              key=load_private_key(tmp_path / "k")), name="site", version="1.1.0.2",
              options=AdaptOptions(min_scans=30))


def test_normalization_fit_undoes_a_harder_spectrum(tmp_path: Path) -> None:
    from inference.adaptation.adapt import _fit_normalization
    from inference.reviewer import Reviewer

    clean = []
    for i in range(12):
        scan = generate_scan(800 + i, length_ft=20).scan
        p = scan.pixels.astype(np.float64)
        air = np.percentile(p[1], 99.5)
        p[1] = air * np.clip(p[1] / air, 1e-6, 1.0) ** 1.5  # the low channel attenuates 1.5x as much
        path = tmp_path / f"h{i}.npz"
        save_scan(Scan(pixels=np.clip(p, 0, 65535).astype(np.uint16), scan_id=f"h{i}", bits=16,
                       pixel_mm=scan.pixel_mm), path)
        clean.append(path)
    base = Reviewer()
    norm = _fit_normalization(base, clean, AdaptOptions(reference_scans=12))
    high, diff = (n / b for n, b in zip(norm.scale, base.spec.normalization.scale, strict=True))
    assert diff > 1.8  # low - high grows much more than 1.5x: the high channel does not move with it
    assert high == 1.0  # the first channel is the reference


def test_site_thresholds_move_up_only_on_evidence_of_over_flagging() -> None:
    from inference.adaptation.adapt import _site_threshold, _wilson_low

    assert _wilson_low(0, 64) == 0.0
    assert 0.0 < _wilson_low(3, 64) < 3 / 64 < 0.1
    quiet = [0.1 + 0.001 * i for i in range(64)]  # every clean maximum below the shipped 0.9
    assert _site_threshold(0.9, quiet, 0.005)[0] == 0.9
    one = [*quiet[:-1], 0.95]  # one of 64 flagged: no evidence the rate exceeds 0.5 %
    threshold, fit = _site_threshold(0.9, one, 0.005)
    assert threshold == 0.9
    assert fit["site_flagged"] == 1
    assert not fit["raised"]
    loud = [*quiet[:50], *[0.91 + 0.005 * i for i in range(14)]]  # 14 of 64 flagged
    threshold, fit = _site_threshold(0.9, loud, 0.005)
    assert fit["raised"]
    assert threshold > 0.97
    assert _site_threshold(0.999, loud, 0.005)[0] == 0.999  # never below the shipped threshold
    assert _site_threshold(0.9, [], 0.01)[0] == 0.9  # nothing to judge by: unchanged
