"""Can a TensorRT runtime run here? (Imports TensorRT only through `skyblink.engines._trt`.)"""

from __future__ import annotations

from .._trt import TensorRTUnavailableError, load_trt

__all__ = ["trt_runtime_available"]


def trt_runtime_available() -> str | None:
    """Return None when a TensorRT runtime and cuda-python import, else the reason they do not."""
    try:
        load_trt()
    except TensorRTUnavailableError as exc:
        return str(exc)
    try:
        from cuda.bindings import runtime  # noqa: F401, PLC0415
    except ImportError:
        return "cuda-python is not installed (the `gpu` extra)"
    return None
