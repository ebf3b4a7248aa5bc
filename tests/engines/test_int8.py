"""INT8 by explicit quantization: the stratified calibration set, the Q/DQ graph, its engine, select_runner."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from skyblink.engines.calibration_set import (
    DENSITY_RANGES,
    SEEING_RANGES,
    SKY_BANDS,
    bright_crowded_spec,
    build_calibration_set,
    stratified_spec,
)
from skyblink.engines.catalog import onnx_path
from skyblink.engines.quantize import quantize_int8
from skyblink.engines.registry import current_device

SMALL = {"image_size": 128}


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory):
    return build_calibration_set(stratified_spec(**SMALL), cache_dir=tmp_path_factory.mktemp("cal"))


@pytest.fixture(scope="module")
def classifier_int8(calib, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        return quantize_int8("classifier", onnx_path("classifier"), tmp_path_factory.mktemp("q") / "c.onnx", calib)


def test_calibration_set_is_stratified_with_dark_deep_fields(calib, tmp_path: Path) -> None:
    spec = calib.spec
    assert len(spec.strata) == 16 and len(set(spec.strata)) == 16
    assert any(s.sky == "dark" and s.depth == "deep" for s in spec.strata)
    assert spec.id == stratified_spec(**SMALL).id != bright_crowded_spec(**SMALL).id
    assert spec.id.startswith("cal-") and len(calib.tiles) == 16 and len(calib.stamps) == 16 * spec.stamps_per_exposure
    for e, stratum in zip(calib.exposures, spec.strata, strict=True):
        assert e["stratum"] == stratum.label and e["band"] == SKY_BANDS[stratum.sky]
        assert DENSITY_RANGES[stratum.density][0] <= e["density_factor"] < DENSITY_RANGES[stratum.density][1]
        assert SEEING_RANGES[stratum.seeing][0] <= e["fwhm_arcsec"] < SEEING_RANGES[stratum.seeing][1]
    dark_deep = [e for e in calib.exposures if e["stratum"].startswith("dark") and e["stratum"].endswith("deep")]
    assert min(e["limiting_mag"] for e in dark_deep) > max(e["limiting_mag"] for e in calib.exposures if e["band"] == "z")
    again = build_calibration_set(spec, cache_dir=tmp_path)  # deterministic: the same pixels from scratch
    np.testing.assert_array_equal(again.tiles, calib.tiles)
    assert set(calib.manifest_strata()) >= {"strata", "axes", "exposures"}


def test_qdq_graph_is_symmetric_without_int32_bias(classifier_int8: Path) -> None:
    model = onnx.load(str(classifier_int8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 6 and "DequantizeLinear" in ops
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in init:
            zero = init[node.input[2]]
            assert zero.dtype == np.int8 and not zero.any(), f"{node.name}: not symmetric"
    assert not any(v.dtype == np.int32 for v in init.values()), "an int32 bias: TensorRT-RTX rejects it"


def test_ort_runs_int8_close_to_fp32(classifier_int8: Path, calib) -> None:
    from skyblink.engines.backends import OnnxRuntimeRunner

    stamps = calib.stamps[:128]
    with OnnxRuntimeRunner(onnx_path("classifier")) as fp32, OnnxRuntimeRunner(classifier_int8) as int8:
        a, b = fp32.infer({"stamps": stamps}), int8.infer({"stamps": stamps})
    assert np.abs(a["real_bogus"] - b["real_bogus"]).max() < 0.15
    assert np.mean((a["real_bogus"] > 0.5) == (b["real_bogus"] > 0.5)) > 0.95


def test_tensorrt_rtx_builds_int8_engine_on_cpu(classifier_int8: Path, calib, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    from skyblink.engines.build import build_engine
    from skyblink.engines.manifest import EngineManifest

    manifest = build_engine(classifier_int8, tmp_path, model="classifier", model_version="1.0", precision="int8",
                            builder="tensorrt_rtx", calibration_set=calib.id, calibration_strata=calib.manifest_strata())
    assert (tmp_path / manifest.engine_file).stat().st_size == manifest.engine_bytes > 0
    back = EngineManifest.read(tmp_path / (manifest.engine_file + ".manifest.json"))
    assert back.precision == "int8" and back.calibration_set == calib.id
    assert "dark-sparse-good-deep" in back.calibration_strata["strata"]
    # The inspector's layer summary, or where it cannot run (no GPU here) why not.
    assert back.inspection == manifest.inspection
    if current_device() is None:
        assert "without a CUDA device" in back.inspection["unavailable"]
    else:
        assert back.inspection["precisions"].get("int8", 0) > 0, back.inspection


@pytest.mark.gpu
def test_engines_hold_layers_of_their_precision(classifier_int8: Path, tmp_path: Path) -> None:
    """On a GPU the inspector sees the precision of the graph: INT8 layers in INT8, fp16 in fp16."""
    from skyblink.engines._trt import TensorRTUnavailableError, load_trt
    from skyblink.engines.build import build_engine

    try:
        flavour = load_trt()
    except TensorRTUnavailableError as exc:
        pytest.skip(f"no TensorRT on this GPU node: {exc}")
    device = current_device()
    assert device is not None
    if flavour.is_rtx and "SM" + device.compute_capability.replace(".", "") not in flavour.module.ComputeCapability.__members__:
        pytest.skip(f"{flavour.name} has no compute capability {device.compute_capability} target ({device.name})")
    targets = [device.compute_capability]
    int8 = build_engine(classifier_int8, tmp_path, model="classifier", model_version="1.0", precision="int8",
                        compute_capabilities=targets)
    fp16 = build_engine(onnx_path("classifier", "fp16"), tmp_path, model="classifier", model_version="1.0",
                        precision="fp16", compute_capabilities=targets)
    assert int8.inspection["layers"] > 0 and int8.inspection["precisions"].get("int8", 0) > 0, int8.inspection
    assert fp16.inspection["precisions"].get("fp16", 0) > 0 and "int8" not in fp16.inspection["precisions"], fp16.inspection


def test_select_runner_runs_int8_production_release(classifier_int8: Path, tmp_path: Path) -> None:
    from skyblink.engines.backends import select_runner
    from skyblink.engines.channels import Channels, register_release
    from skyblink.engines.registry import EngineRegistry

    registry = EngineRegistry(tmp_path / "reg")
    with pytest.raises(RuntimeError, match="no INT8 release"):
        select_runner("classifier", backend="onnxruntime", precision="int8", registry=registry)
    channels = Channels(registry.root)
    channels.set_candidate(register_release(registry.root, "classifier", classifier_int8, model_version="1.0", precision="int8"))
    channels.advance("classifier", "canary")
    channels.advance("classifier", "production")
    choice = select_runner("classifier", backend="onnxruntime", registry=registry)
    assert choice.runner.onnx_path.parent == registry.root and "int8" in choice.runner.onnx_path.name
    assert "production release classifier 1.0 int8" in choice.reason
    with choice.runner as runner:
        out = runner.infer({"stamps": np.zeros((2, 3, 63, 63), np.float32)})
    assert out["real_bogus"].shape == (2, 1)
    # The detector has no release: the shipped fp32 graph.
    assert select_runner("detector", backend="onnxruntime", registry=registry).runner.onnx_path == onnx_path("detector")


@pytest.mark.slow
def test_quantize_candidate_end_to_end_for_the_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quantize -> gate -> candidate -> engine (when tensorrt_rtx is installed), on a small config."""
    import json

    from skyblink.engines.channels import Channels
    from skyblink.engines.gate import ValidationSpec
    from skyblink.engines.lifecycle import describe, quantize_candidate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # never the user's cache
    registry = tmp_path / "reg"
    validation = ValidationSpec(exposures=5, image_size=256, workers=1)
    result = quantize_candidate("classifier", registry, calibration=stratified_spec(**SMALL), validation=validation,
                                cache_dir=tmp_path / "cal")
    assert result.gate.passed and result.gate.rows[0]["metric"] == "roc_auc"
    assert (registry / result.release.onnx_file).is_file() and result.release.precision == "int8"
    assert result.release.calibration_set == stratified_spec(**SMALL).id
    assert result.release.validation["passed"] and result.release.validation["calibration_method"] == "percentile"
    candidate = Channels(registry).get("classifier", "candidate")
    assert candidate is not None and candidate.label == result.release.label
    assert len(list((tmp_path / "skyblink" / "gate").glob("classifier-*.json"))) == 1  # fp32's metrics cached
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        assert result.engine is None and result.engine_error
    else:
        assert result.engine is not None and (registry / result.engine.engine_file).is_file(), result.engine_error
        assert result.engine.precision == "int8" and result.engine.validation["passed"]
    assert json.dumps(describe(result))
