"""Can a TensorRT runtime run here? (Imports TensorRT only through `skyblink.engines._trt`.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skyblink.lazy_import import lazy_module

from .._trt import TensorRTUnavailableError, load_trt

if TYPE_CHECKING:
    from cuda.bindings import runtime as cuda_runtime
else:
    cuda_runtime = lazy_module("cuda.bindings.runtime")  # the `gpu` extra

__all__ = ["trt_runtime_available"]


def trt_runtime_available() -> str | None:
    """Return None when a TensorRT runtime and cuda-python import, else the reason they do not."""
    try:
        load_trt()
    except TensorRTUnavailableError as exc:
        return str(exc)
    try:
        _ = cuda_runtime.cudaGetDeviceCount  # imports cuda-python here
    except ImportError:
        return "cuda-python is not installed (the `gpu` extra)"
    return None
