"""ONNX Runtime on the CPU: the backend of laptops and CI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skyblink.lazy_import import lazy_module

from .base import InferenceRunner

if TYPE_CHECKING:
    import onnxruntime as ort
else:
    ort = lazy_module("onnxruntime")  # imported when a session starts

__all__ = ["OnnxRuntimeRunner"]


class OnnxRuntimeRunner(InferenceRunner):
    """
    Run an ONNX graph with ONNX Runtime's CPU provider. Stable.

    Parameters
    ----------
    onnx_path : Path
        The graph.
    threads : int, optional
        Intra-op threads (default: ONNX Runtime's choice).
    name : str, optional
    """

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path | str, *, threads: int | None = None, name: str | None = None) -> None:
        super().__init__(name or f"{Path(onnx_path).stem}/onnxruntime")
        self.onnx_path = Path(onnx_path)
        self.threads = threads
        self._session: Any = None  # an onnxruntime.InferenceSession while active
        self.output_names: list[str] = []

    def _activate(self) -> None:
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        # INT8 graphs computed exactly on every x86 CPU. Without AVX512-VNNI, AVX-VNNI or AMX, ONNX Runtime's
        # integer kernels take a faster instruction whose 16-bit sums saturate: on an AVX2-only EPYC the
        # INT8 classifier's scores moved up to 0.235 from fp32 (0.042 exact), its AUC by +0.0068, and the
        # accuracy gate and the canary refused a release that CPUs with VNNI accepted. fp32 graphs are not
        # affected; INT8 ones cost some speed on such CPUs.
        options.add_session_config_entry("session.x64quantprecision", "1")
        self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self._session.get_outputs()]

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, outputs, strict=True))
