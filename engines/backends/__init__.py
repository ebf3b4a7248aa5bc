"""Inference backends behind one interface: ONNX Runtime (CPU), torch (CUDA), TensorRT."""

from .base import InferenceRunner, RunnerStateError
from .onnxruntime_runner import OnnxRuntimeRunner
from .select import BackendChoice, BackendName, select_runner, torch_runner
from .startup import start_runner, warm_up
from .tensorrt_runner import CudaError, TensorRTRunner
from .torch_runner import TorchMode, TorchRunner

__all__ = [
    "BackendChoice",
    "BackendName",
    "CudaError",
    "InferenceRunner",
    "OnnxRuntimeRunner",
    "RunnerStateError",
    "TensorRTRunner",
    "TorchMode",
    "TorchRunner",
    "select_runner",
    "start_runner",
    "torch_runner",
    "warm_up",
]
