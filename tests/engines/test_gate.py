"""The INT8 accuracy gate: fp32 vs INT8 per magnitude bin and ROC AUC; careless calibration is caught."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from skyblink.engines.calibration_set import (
    bright_crowded_spec,
    build_calibration_set,
    stratified_spec,
)
from skyblink.engines.catalog import onnx_path
from skyblink.engines.gate import (
    AccuracyGateError,
    GateResult,
    GateTolerances,
    ValidationSpec,
    _injected_triplet,
    compare,
    evaluate,
    reference_metrics,
)
from skyblink.engines.quantize import quantize_int8
from skyblink.engines.training.dataset import exposure_triplet

#: Small but with dark deep fields and injected events: 5 median exposures and 10 dark deep ones
#: of 512x512, 3 passes of 100 injected transients each (48 px spacing): ~4,500 events.
VALIDATION = ValidationSpec(exposures=5, image_size=512, dark_deep_exposures=10, workers=1, injection_passes=3)


def _quantized(model: str, spec, out: Path) -> Path:
    calib = build_calibration_set(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        return quantize_int8(model, onnx_path(model), out, calib, method="percentile")  # type: ignore[arg-type]


def _faint_found(result: GateResult) -> tuple[int, int]:
    """(fp32, int8) sources found in the two faintest bins where fp32 finds any."""
    rows = [r for r in result.rows if r["found_fp32"]][-2:]
    return sum(r["found_fp32"] for r in rows), sum(r["found_int8"] for r in rows)


def _bins(*found: tuple[int, int, int]) -> tuple[dict, dict]:
    """fp32 and int8 metrics with one 0.5-mag bin per (n, found fp32, found int8), from 24.0 on."""
    def side(i: int) -> dict:
        return {"completeness_by_magnitude": [
            {"mag_lo": 24.0 + k / 2, "mag_hi": 24.5 + k / 2, "n": f[0], "found": f[i], "completeness": f[i] / f[0]}
            for k, f in enumerate(found)]}
    return side(1), side(2)


def test_small_bins_are_reported_not_judged() -> None:
    fp32, int8 = _bins((400, 300, 298), (30, 15, 12))  # 0.5 pp: ok; 10 pp but only 30 events: not judged
    result = compare("detector", fp32, int8)
    assert result.passed and [r["judged"] for r in result.rows] == [True, False]
    assert "24.5-25.0 (30)" in result.unjudged_note() and "not judged" in result.report()
    fp32, int8 = _bins((400, 300, 290), (30, 15, 12))  # 2.5 pp over 400 events: refused, the bin named
    with pytest.raises(AccuracyGateError, match=r"24\.0-24\.5 .*FAIL") as info:
        raise AccuracyGateError(compare("detector", fp32, int8))
    assert "reported but not judged: 24.5-25.0 (30)" in str(info.value)
    strict = compare("detector", *_bins((30, 15, 12)), GateTolerances(min_events=10))
    assert not strict.passed


def test_injection_adds_events_and_keeps_the_simulators_triplet() -> None:
    spec = ValidationSpec(exposures=5, image_size=256, dark_deep_exposures=1, injection_spacing_px=32)
    sim, f, e = spec.detector_exposures()[-1]
    plain, truth0, limit0 = exposure_triplet(sim, f, e)
    same, truth1, limit1 = _injected_triplet(sim, f, e, spacing=0, seed=spec.injection_seed)
    np.testing.assert_array_equal(plain, same)
    assert limit0 == limit1 and len(truth0["x"]) == len(truth1["x"])
    injected, truth, limit = spec.render(sim, f, e)
    extra = len(truth["x"]) - len(truth0["x"])
    assert extra == ((256 - 32) // 32) ** 2 and not np.array_equal(injected[2], plain[2])
    mags = truth["mag"][-extra:]
    assert (truth["type"][-extra:] == "transient").all() and limit - 3 <= mags.min() and mags.max() <= limit + 1
    np.testing.assert_array_equal(spec.render(sim, f, e)[0], injected)  # seeded
    assert spec.id == ValidationSpec(exposures=5, image_size=256, dark_deep_exposures=1, injection_spacing_px=32, workers=7).id
    assert spec.id != ValidationSpec(exposures=5, image_size=256, dark_deep_exposures=1).id


def test_fp32_metrics_are_cached_by_graph_and_validation_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skyblink.engines import gate

    calls = []
    monkeypatch.setattr(gate, "evaluate", lambda model, onnx, validation, stamps=None: calls.append(onnx) or {"roc_auc": 0.9})
    spec = ValidationSpec(exposures=5, image_size=256)
    for _ in range(2):
        assert reference_metrics("classifier", onnx_path("classifier"), spec, cache_dir=tmp_path) == {"roc_auc": 0.9}
    assert len(calls) == 1 and len(list(tmp_path.glob("classifier-*-val-*.json"))) == 1
    reference_metrics("classifier", onnx_path("classifier"), ValidationSpec(exposures=10), cache_dir=tmp_path)
    assert len(calls) == 2  # another validation set: evaluated again


@pytest.mark.slow
def test_bright_crowded_calibration_is_caught_or_loses_faint_sources(tmp_path: Path) -> None:
    small = {"image_size": 256}
    stratified = _quantized("detector", stratified_spec(**small), tmp_path / "strat.onnx")
    careless = _quantized("detector", bright_crowded_spec(**small), tmp_path / "bc.onnx")
    fp32 = evaluate("detector", onnx_path("detector"), VALIDATION)
    good = compare("detector", fp32, evaluate("detector", stratified, VALIDATION))
    bad = compare("detector", fp32, evaluate("detector", careless, VALIDATION))
    print("stratified\n" + good.report() + "\nbright-crowded\n" + bad.report())
    assert [r["n"] for r in good.rows] == [r["n"] for r in bad.rows]  # the same truth events in both
    faint = [r for r in good.rows if r["found_fp32"]][-2:]
    assert all(r["n"] >= 150 for r in faint), "the faint bins are not populated"
    faint_good, faint_bad = _faint_found(good)[1], _faint_found(bad)[1]
    assert (not bad.passed) or faint_bad < faint_good, "bright-crowded calibration neither refused nor lost faint sources"
    if not bad.passed:
        with pytest.raises(AccuracyGateError, match="FAIL") as info:
            raise AccuracyGateError(bad)
        assert all(f"{r['mag_lo']:.1f}-{r['mag_hi']:.1f}" in str(info.value) for r in bad.failures)


@pytest.mark.slow
def test_classifier_gate_on_auc(tmp_path: Path) -> None:
    int8 = _quantized("classifier", stratified_spec(image_size=256), tmp_path / "cls.onnx")
    from skyblink.engines.gate import validation_stamps

    stamps = validation_stamps(VALIDATION)
    fp32 = evaluate("classifier", onnx_path("classifier"), VALIDATION, stamps=stamps)
    ours = evaluate("classifier", int8, VALIDATION, stamps=stamps)
    result = compare("classifier", fp32, ours)
    print(result.report())
    assert result.passed, result.report()
    # The same graphs against an impossible tolerance: refused, with the AUC line printed.
    strict = compare("classifier", fp32, {**ours, "roc_auc": fp32["roc_auc"] - 0.01}, GateTolerances(auc=0.005))
    assert not strict.passed and "FAIL" in strict.report(failures_only=True)
