"""
ONNX export of the networks with dynamic batch (and, for the detector, spatial) axes.

fp16 graphs are exported from the half-precision torch module, so every tensor in the graph is
typed fp16: that is what TensorRT's strongly typed networks need (a float16 conversion pass over
an fp32 graph leaves mixed-type elementwise ops that the strongly typed parser rejects).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from skyblink.lazy_import import lazy_module
from skyblink.model_io import IO_NAMES, STAMP_SIZE

from .manifest import file_sha256
from .networks import Braai, BraaiClassifier, Classifier, Detector

if TYPE_CHECKING:
    import onnx
    from torch import export as torch_export
else:
    onnx = lazy_module("onnx")  # export-time dependency
    torch_export = lazy_module("torch.export")

__all__ = ["IO_NAMES", "ModelKind", "Precision", "export_onnx", "file_sha256"]  # file_sha256 re-exported

ModelKind = Literal["detector", "classifier", "braai"]
Precision = Literal["fp32", "fp16"]


log = logging.getLogger(__name__)


def _kind_of(model: nn.Module) -> ModelKind:
    if isinstance(model, Detector):
        return "detector"
    if isinstance(model, (Classifier, BraaiClassifier)):  # the same stamps in, the same outputs
        return "classifier"
    if isinstance(model, Braai):
        return "braai"
    msg = f"cannot export {type(model).__name__}: expected Detector, Classifier, BraaiClassifier or Braai"
    raise TypeError(msg)


def export_onnx(model: nn.Module, path: Path | str, *, precision: Precision = "fp32", opset: int = 18) -> Path:
    """
    Export a network to a single-file ONNX graph and check it.

    Parameters
    ----------
    model : Detector, Classifier, BraaiClassifier or Braai
        The network (its weights are copied; the module passed in is not modified).
    path : Path or str
        Output ``.onnx`` file.
    precision : {"fp32", "fp16"}
        Type of every tensor in the graph; fp16 exports ``model.half()``.
    opset : int
        ONNX opset.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        ``model`` is not one of the project's networks.
    onnx.checker.ValidationError
        The exported graph does not pass the ONNX checker.
    """
    kind = _kind_of(model)
    names = IO_NAMES[kind]
    net = copy.deepcopy(model).eval().cpu()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    net = net.to(dtype)
    batch = torch_export.Dim("batch", min=1, max=4096)
    if kind == "detector":
        example = torch.zeros(2, 3, 64, 96, dtype=dtype)
        shapes = {"x": {0: batch, 2: 32 * torch_export.Dim("h32", min=1, max=512), 3: 32 * torch_export.Dim("w32", min=1, max=512)}}
    else:
        example = torch.zeros(2, 3, STAMP_SIZE, STAMP_SIZE, dtype=dtype)
        shapes = {"x": {0: batch}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's own deprecation and registry notes are not about our graph.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=list(names.inputs),
            output_names=list(names.outputs),
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            opset_version=opset,
            verbose=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    log.info("exported %s (%s) to %s", kind, precision, path)
    return path
