"""
TensorRT (or TensorRT-RTX) runtime: deserialize an engine from the registry and run it with
``execute_async_v3`` on a CUDA stream. Device memory, copies and the stream go through
cuda-python (NVIDIA's maintained bindings); torch is not needed.

Notes
-----
The optimization profile is chosen per call from the engine's manifest: the first profile whose
[min, max] covers the input shape. Device buffers grow to the largest shape seen and are freed at
``deactivate()``; with ``SKYBLINK_DEBUG_CHECKS=1`` deactivation checks that every cudaMalloc
was matched by a cudaFree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skyblink.lazy_import import lazy_module
from skyblink.model_io import IO_NAMES

from .._trt import load_trt
from ..manifest import EngineManifest
from .base import InferenceRunner

if TYPE_CHECKING:
    import torch
    from cuda.bindings import runtime as cuda_runtime
else:
    # cuda-python (the `gpu` extra) when an engine activates; torch only for the device program's
    # `infer_tensors`, which runs on torch's streams.
    cuda_runtime = lazy_module("cuda.bindings.runtime")
    torch = lazy_module("torch")

__all__ = ["CudaError", "TensorRTRunner"]


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the error."""



def _check(result: Any, call: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        msg = f"{call} failed: {err}"
        raise CudaError(msg)
    return rest[0] if len(rest) == 1 else tuple(rest)


def _torch_dtype(torch: Any, trt: Any, dtype: Any) -> Any:
    """The torch dtype of a TensorRT tensor type."""
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    if getattr(trt.DataType, "BF16", None) is not None:
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        msg = f"no torch dtype for TensorRT type {dtype}"
        raise TypeError(msg)
    return table[dtype]


class TensorRTRunner(InferenceRunner):
    """
    Run one engine file on one CUDA stream. Experimental.

    Parameters
    ----------
    engine_path : Path
        The serialized engine (from the registry).
    manifest : EngineManifest
        Its manifest (profiles, input name).
    device : int
        CUDA device ordinal.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: Path | str, manifest: EngineManifest, *, device: int = 0, name: str | None = None) -> None:
        super().__init__(name or f"{manifest.model}/{manifest.builder}-{manifest.precision}")
        self.engine_path = Path(engine_path)
        self.manifest = manifest
        self.device = device
        self._buffers: dict[str, tuple[int, int]] = {}
        self._live_allocations = 0  # cudaMalloc minus cudaFree, for the debug leak check
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._profile = -1

    def _activate(self) -> None:
        flavour = load_trt(self.manifest.builder)
        trt = flavour.module
        self._trt = trt
        self._cuda = cuda_runtime
        _check(self._cuda.cudaSetDevice(self.device), "cudaSetDevice")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            msg = f"{self.name}: {flavour.name} {flavour.version} could not deserialize {self.engine_path} on device {self.device}"
            raise RuntimeError(msg)
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cuda.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]

    def _deactivate(self) -> None:
        for ptr, _ in self._buffers.values():
            self._free(ptr)
        self._buffers.clear()
        if self._stream is not None:
            _check(self._cuda.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        self._context = self._engine = self._stream = None
        if os.environ.get("SKYBLINK_DEBUG_CHECKS") == "1" and self._live_allocations:
            msg = f"{self.name}: {self._live_allocations} device buffer(s) not freed at deactivate"
            raise RuntimeError(msg)

    def _free(self, ptr: int) -> None:
        _check(self._cuda.cudaFree(ptr), "cudaFree")
        self._live_allocations -= 1

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._free(ptr)
            ptr = _check(self._cuda.cudaMalloc(nbytes), "cudaMalloc")
            self._live_allocations += 1
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _select_profile(self, shape: tuple[int, ...], stream: Any = None) -> None:
        for index, spec in enumerate(self.manifest.profiles):
            if spec.covers(shape):
                if index != self._profile:
                    self._context.set_optimization_profile_async(index, self._stream if stream is None else stream)
                    self._profile = index
                return
        shapes = ", ".join(f"{p.name} {p.min}..{p.max}" for p in self.manifest.profiles)
        msg = f"{self.name}: input shape {shape} is outside every optimization profile ({shapes}); rebuild with a profile covering it"
        raise ValueError(msg)

    def infer_tensors(self, x: Any) -> tuple[Any, ...]:
        """
        Run on a torch CUDA tensor and return torch CUDA tensors: the device program's path.

        The engine reads the tensor's device memory and writes outputs allocated by torch on the
        same device, and runs on torch's current stream (the caller's compute stream): no host
        round trip, no copy but a cast where the engine's input type differs. Nothing is waited
        for; the outputs are ready in stream order, as torch's own kernels' would be. Outputs come
        in the order of the model's ONNX outputs (`skyblink.model_io.IO_NAMES`).
        """
        name = self._inputs[0]
        x = x.to(_torch_dtype(torch, self._trt, self._engine.get_tensor_dtype(name))).contiguous()
        stream = torch.cuda.current_stream(x.device).cuda_stream
        self._select_profile(tuple(x.shape), stream)
        self._context.set_input_shape(name, tuple(x.shape))
        self._context.set_tensor_address(name, x.data_ptr())
        outputs = []
        for out_name in self._output_order():
            shape = tuple(self._context.get_tensor_shape(out_name))
            out = torch.empty(shape, dtype=_torch_dtype(torch, self._trt, self._engine.get_tensor_dtype(out_name)),
                              device=x.device)
            self._context.set_tensor_address(out_name, out.data_ptr())
            outputs.append(out)
        if not self._context.execute_async_v3(stream):
            msg = f"{self.name}: execute_async_v3 failed for input shape {tuple(x.shape)}"
            raise RuntimeError(msg)
        return tuple(outputs)

    def _output_order(self) -> list[str]:
        names = IO_NAMES.get(self.manifest.model)
        if names is None or set(names.outputs) != set(self._outputs):
            return list(self._outputs)
        return list(names.outputs)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, trt = self._cuda, self._trt
        h2d, d2h = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice, cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost
        first = np.ascontiguousarray(inputs[self._inputs[0]])
        self._select_profile(tuple(first.shape))
        hosts = {}
        for name in self._inputs:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            host = np.ascontiguousarray(inputs[name], dtype=dtype)
            hosts[name] = host
            self._context.set_input_shape(name, host.shape)
            ptr = self._buffer(name, host.nbytes)
            _check(cuda.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream), "cudaMemcpyAsync H2D")
            self._context.set_tensor_address(name, ptr)
        results = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            out = np.empty(shape, dtype=dtype)
            self._context.set_tensor_address(name, self._buffer(name, out.nbytes))
            results[name] = out
        if not self._context.execute_async_v3(self._stream):
            msg = f"{self.name}: execute_async_v3 failed for input shape {first.shape}"
            raise RuntimeError(msg)
        for name, out in results.items():
            ptr, _ = self._buffers[name]
            _check(cuda.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream), "cudaMemcpyAsync D2H")
        _check(cuda.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return results
