"""
The only module that imports TensorRT.

`tensorrt` (full TensorRT, the production builder and runtime on data-center GPUs) is used when
it is installed, else `tensorrt_rtx` (TensorRT-RTX, which installs from PyPI and builds engines
on a machine without a GPU). Both share the Python API used here. Written for TensorRT 11:
strongly typed networks only (precision comes from the ONNX types), no precision builder flags,
no calibrators.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["TensorRTUnavailableError", "TrtFlavour", "load_trt"]


class TensorRTUnavailableError(ImportError):
    """Neither tensorrt nor tensorrt_rtx can be imported."""


@dataclass(frozen=True, slots=True)
class TrtFlavour:
    """Which TensorRT is in hand: module, name (``tensorrt`` or ``tensorrt_rtx``) and version."""

    module: ModuleType
    name: str
    version: str

    @property
    def is_rtx(self) -> bool:
        """True for TensorRT-RTX."""
        return self.name == "tensorrt_rtx"


_CACHE: dict[str, TrtFlavour] = {}


def load_trt(prefer: str | None = None) -> TrtFlavour:
    """
    Import TensorRT lazily: full TensorRT if installed, else TensorRT-RTX.

    Parameters
    ----------
    prefer : {"tensorrt", "tensorrt_rtx"}, optional
        Import only this flavour.

    Raises
    ------
    TensorRTUnavailableError
        No flavour can be imported; the message says how to install one.
    """
    names = [prefer] if prefer else ["tensorrt", "tensorrt_rtx"]
    key = ",".join(names)
    if key in _CACHE:
        return _CACHE[key]
    errors = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        flavour = TrtFlavour(module, name, str(module.__version__))
        _CACHE[key] = flavour
        return flavour
    msg = (
        "no TensorRT builder is installed (" + "; ".join(errors) + "). Install the `tensorrt` extra "
        "(`pip install 'skyblink[tensorrt]'`, TensorRT-RTX, builds without a GPU) or NVIDIA's full TensorRT."
    )
    raise TensorRTUnavailableError(msg)
