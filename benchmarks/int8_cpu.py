"""
ONNX Runtime CPU: INT8 (Q/DQ, stratified calibration) against fp32 — speed and the accuracy gate.

Prints ms per 1024x1024 detector tile and per 256-stamp classifier batch for both graphs, the
speed-up, and the gate's numbers (completeness per magnitude bin, ROC AUC) for INT8 calibrated on
the stratified set and on bright, crowded fields only, with the gate's run time: fp32's reference
metrics (cached by graph sha256 and validation-set id in ``--cache-dir``) and each candidate's.

    .venv/bin/python benchmarks/int8_cpu.py [--image-size 1024] [--validation-exposures 10] [--dark-deep 10]
        [--injection-spacing 32] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from skyblink.engines.backends import OnnxRuntimeRunner
from skyblink.engines.calibration_set import (
    bright_crowded_spec,
    build_calibration_set,
    stratified_spec,
)
from skyblink.engines.catalog import onnx_path
from skyblink.engines.gate import (
    ValidationSpec,
    compare,
    evaluate,
    reference_metrics,
    validation_stamps,
)
from skyblink.engines.quantize import quantize_int8


def _ms(path: Path, name: str, x: np.ndarray, repeats: int) -> float:
    with OnnxRuntimeRunner(path) as runner:
        runner.infer({name: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner.infer({name: x})
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--validation-exposures", type=int, default=10)
    parser.add_argument("--dark-deep", type=int, default=10)
    parser.add_argument("--injection-spacing", type=int, default=ValidationSpec().injection_spacing_px)
    parser.add_argument("--cache-dir", type=Path, default=None, help="fp32 metrics cache (default: a temporary folder, cold).")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    validation = ValidationSpec(exposures=args.validation_exposures, image_size=args.image_size, dark_deep_exposures=args.dark_deep,
                                injection_spacing_px=args.injection_spacing)
    out: dict = {"speed": {}, "gate": {}}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for label, spec in (("stratified", stratified_spec()), ("bright-crowded", bright_crowded_spec())):
            calib = build_calibration_set(spec)
            for model in ("detector", "classifier"):
                with contextlib.redirect_stdout(io.StringIO()):
                    graphs[label, model] = quantize_int8(model, onnx_path(model), Path(tmp) / f"{model}-{label}.onnx", calib)
            out["gate"][label] = {"calibration_set": calib.id}
        rng = np.random.default_rng(0)
        tile = rng.normal(size=(1, 3, 1024, 1024)).astype(np.float32)
        stamps = rng.normal(size=(256, 3, 63, 63)).astype(np.float32)
        for model, name, x, unit in (("detector", "tiles", tile, "ms per 1024x1024 tile"), ("classifier", "stamps", stamps, "ms per 256 stamps")):
            fp32 = _ms(onnx_path(model), name, x, args.repeats)
            int8 = _ms(graphs["stratified", model], name, x, args.repeats)
            out["speed"][model] = {"unit": unit, "fp32": round(fp32, 1), "int8": round(int8, 1), "speedup": round(fp32 / int8, 2)}
            print(f"{model}: fp32 {fp32:.1f} {unit}, int8 {int8:.1f}, speed-up x{fp32 / int8:.2f}", flush=True)
        cache = args.cache_dir or Path(tmp) / "gate-cache"
        start = time.perf_counter()
        fp32_det = reference_metrics("detector", onnx_path("detector"), validation, cache_dir=cache)
        stamps_val = validation_stamps(validation)
        fp32_cls = reference_metrics("classifier", onnx_path("classifier"), validation, stamps=stamps_val, cache_dir=cache)
        out["gate_seconds"] = {"fp32_reference": round(time.perf_counter() - start, 1)}
        print(f"validation set {validation.id}: fp32 reference {out['gate_seconds']['fp32_reference']} s "
              f"({fp32_det['events']} detector events)", flush=True)
        for label in ("stratified", "bright-crowded"):
            start = time.perf_counter()
            det = compare("detector", fp32_det, evaluate("detector", graphs[label, "detector"], validation))
            cls = compare("classifier", fp32_cls, evaluate("classifier", graphs[label, "classifier"], validation, stamps=stamps_val))
            out["gate_seconds"][label] = round(time.perf_counter() - start, 1)
            print(f"--- INT8 calibrated on {label} ({out['gate'][label]['calibration_set']}), candidate {out['gate_seconds'][label]} s\n"
                  f"{det.report()}\n{cls.report()}", flush=True)
            out["gate"][label].update(detector_passed=det.passed, classifier_passed=cls.passed, detector_rows=det.rows, classifier=cls.rows)
    print(json.dumps({"speed": out["speed"], "gate_seconds": out["gate_seconds"], "validation": validation.id}))


if __name__ == "__main__":
    main()
