"""
INT8 by explicit quantization: ONNX Runtime's ``quantize_static`` writes a Q/DQ graph from the
fp32 export, calibrated on a `skyblink.engines.calibration_set.CalibrationSet`.

The recipe is the one TensorRT-RTX's strongly typed parser accepts (ARCHITECTURE.md): QDQ format,
symmetric int8 activations and weights (zero point 0, as TensorRT requires), per-channel weight
scales, and biases left in float (``QuantizeBias`` off: the default int32 bias DequantizeLinear is
rejected). The same graph runs in ONNX Runtime on the CPU (its int8 kernels) and is the input of
`skyblink.engines.build.build_engine` for an INT8 engine. No range collection is written here:
ONNX Runtime's calibrators collect the ranges.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skyblink.lazy_import import lazy_module

from .calibration_set import CalibrationSet

if TYPE_CHECKING:
    import onnx
    from onnxruntime import quantization as ort_quantization
    from onnxruntime.quantization import shape_inference as ort_shape_inference
else:
    # Quantization-time dependencies (the ML extra).
    onnx = lazy_module("onnx")
    ort_quantization = lazy_module("onnxruntime.quantization")
    ort_shape_inference = lazy_module("onnxruntime.quantization.shape_inference")

__all__ = ["CalibrationMethod", "QUANTIZED_OPS", "quantize_int8"]

log = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
#: Operators given Q/DQ pairs: the convolutions and matrix products, and the data movement around
#: them (so TensorRT keeps the tensors in int8 between layers). Asinh at the input, the output
#: Sigmoid and Softmax stay in float: the scores are thresholded, and their precision is cheap.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "MaxPool", "Resize", "Concat")
#: Layers kept in float by default, by weight-name prefix (see the module notes).
KEEP_FLOAT: dict[str, tuple[str, ...]] = {"detector": (), "classifier": ()}
#: Percentile of |activation| taken as the range by the ``percentile`` method.
PERCENTILE = 99.999


def _nodes_with_weights(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Names of the nodes whose weight initializer starts with one of ``prefixes``."""
    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if len(n.input) > 1 and n.input[1].startswith(prefixes)] if prefixes else []


def _reader(model: str, samples: np.ndarray, batch: int) -> Any:
    name = {"detector": "tiles", "classifier": "stamps"}[model]

    class _Samples(ort_quantization.CalibrationDataReader):
        """Feeds the calibration samples to ONNX Runtime's calibrator in batches."""

        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {name: np.ascontiguousarray(samples[i : i + batch], dtype=np.float32)} for i in range(0, len(samples), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Samples()


def quantize_int8(
    model: Literal["detector", "classifier"],
    fp32_onnx: Path | str,
    out_path: Path | str,
    calibration: CalibrationSet,
    *,
    method: CalibrationMethod = "percentile",
    per_channel: bool = True,
    keep_float: tuple[str, ...] | None = None,
) -> Path:
    """
    Write the Q/DQ INT8 graph of ``fp32_onnx`` calibrated on ``calibration``.

    Parameters
    ----------
    model : {"detector", "classifier"}
        Which network (picks the calibration samples: whole tiles or stamps).
    fp32_onnx : Path
        The fp32 export (dynamic axes are kept).
    out_path : Path
        The ``.onnx`` to write.
    calibration : CalibrationSet
    method : {"minmax", "percentile", "entropy"}
        ONNX Runtime's calibrator. ``percentile`` (99.999 % of |x|) keeps a handful of saturated
        star cores from stretching every step; ``minmax`` is the careless default.
    per_channel : bool
        Per-output-channel weight scales.
    keep_float : tuple of str, optional
        Layers left in float, by weight-name prefix (default `KEEP_FLOAT` of the model).

    Returns
    -------
    Path
        ``out_path``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    samples, batch = (calibration.tiles, 1) if model == "detector" else (calibration.stamps, 64)
    methods = ort_quantization.CalibrationMethod
    ort_method = {"minmax": methods.MinMax, "percentile": methods.Percentile, "entropy": methods.Entropy}[method]
    extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="skyblink-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        ort_shape_inference.quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        excluded = _nodes_with_weights(prepared, KEEP_FLOAT[model] if keep_float is None else keep_float)
        ort_quantization.quantize_static(
            str(prepared),
            str(out_path),
            _reader(model, samples, batch),
            quant_format=ort_quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=excluded,
            per_channel=per_channel,
            activation_type=ort_quantization.QuantType.QInt8,
            weight_type=ort_quantization.QuantType.QInt8,
            calibrate_method=ort_method,
            extra_options=extra,
        )
    log.info("quantized %s to %s with %s calibration on %s", model, out_path, method, calibration.id)
    return out_path
