"""The INT8 accuracy gate: fp32 vs INT8 per magnitude bin and ROC AUC; careless calibration is caught."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from skyblink.engines.calibration_set import bright_crowded_spec, build_calibration_set, stratified_spec
from skyblink.engines.catalog import onnx_path
from skyblink.engines.gate import AccuracyGateError, GateResult, GateTolerances, ValidationSpec, compare, evaluate
from skyblink.engines.quantize import quantize_int8

pytestmark = pytest.mark.slow

#: Small but with dark deep fields: 5 median exposures and 10 dark deep ones of 512x512.
VALIDATION = ValidationSpec(exposures=5, image_size=512, dark_deep_exposures=10, workers=1)


def _quantized(model: str, spec, out: Path) -> Path:  # noqa: ANN001
    calib = build_calibration_set(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        return quantize_int8(model, onnx_path(model), out, calib, method="percentile")  # type: ignore[arg-type]


def _faint_found(result: GateResult) -> tuple[int, int]:
    """(fp32, int8) sources found in the two faintest bins where fp32 finds any."""
    rows = [r for r in result.rows if r["found_fp32"]][-2:]
    return sum(r["found_fp32"] for r in rows), sum(r["found_int8"] for r in rows)


def test_bright_crowded_calibration_is_caught_or_loses_faint_sources(tmp_path: Path) -> None:
    small = {"image_size": 256}
    stratified = _quantized("detector", stratified_spec(**small), tmp_path / "strat.onnx")
    careless = _quantized("detector", bright_crowded_spec(**small), tmp_path / "bc.onnx")
    fp32 = evaluate("detector", onnx_path("detector"), VALIDATION)
    good = compare("detector", fp32, evaluate("detector", stratified, VALIDATION))
    bad = compare("detector", fp32, evaluate("detector", careless, VALIDATION))
    print("stratified\n" + good.report() + "\nbright-crowded\n" + bad.report())
    assert [r["n"] for r in good.rows] == [r["n"] for r in bad.rows]  # the same truth events in both
    faint_good, faint_bad = _faint_found(good)[1], _faint_found(bad)[1]
    assert (not bad.passed) or faint_bad < faint_good, "bright-crowded calibration neither refused nor lost faint sources"
    if not bad.passed:
        with pytest.raises(AccuracyGateError, match="FAIL") as info:
            raise AccuracyGateError(bad)
        assert all(f"{r['mag_lo']:.1f}-{r['mag_hi']:.1f}" in str(info.value) for r in bad.failures)


def test_classifier_gate_on_auc(tmp_path: Path) -> None:
    int8 = _quantized("classifier", stratified_spec(image_size=256), tmp_path / "cls.onnx")
    from skyblink.engines.gate import _validation_stamps  # noqa: PLC0415

    stamps = _validation_stamps(VALIDATION)
    fp32 = evaluate("classifier", onnx_path("classifier"), VALIDATION, stamps=stamps)
    ours = evaluate("classifier", int8, VALIDATION, stamps=stamps)
    result = compare("classifier", fp32, ours)
    print(result.report())
    assert result.passed, result.report()
    # The same graphs against an impossible tolerance: refused, with the AUC line printed.
    strict = compare("classifier", fp32, {**ours, "roc_auc": fp32["roc_auc"] - 0.01}, GateTolerances(auc=0.005))
    assert not strict.passed and "FAIL" in strict.report(failures_only=True)
