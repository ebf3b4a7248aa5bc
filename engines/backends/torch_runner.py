"""
torch on a CUDA GPU (or the CPU): eager, ``torch.compile``, and CUDA graphs for fixed shapes.

Modes:

* ``eager``: the module as written;
* ``compile``: ``torch.compile`` (Inductor) with dynamic shapes off, one graph per input shape;
* ``cuda-graphs``: eager kernels captured once per input shape into a CUDA graph and replayed
  (launch overhead gone; static input and output buffers);
* ``compile+cuda-graphs``: both.

Every mode runs the network with each batch normalisation folded into the convolution before it
(`fold_batch_norms`): inference only, the same function, one kernel fewer per layer.

`infer_tensors` keeps data on the device for the worker's tile program; `infer` is the
numpy-in, numpy-out interface shared with the other backends.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skyblink.lazy_import import lazy_module

from .base import InferenceRunner

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # imported when the runner activates

__all__ = ["TorchMode", "TorchRunner", "fold_batch_norms"]

TorchMode = Literal["eager", "compile", "cuda-graphs", "compile+cuda-graphs"]


def fold_batch_norms(network: Any) -> Any:
    """
    An inference copy of ``network`` (a ``torch.nn.Module``; the original is left as it is) in
    eval mode, each ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential`` folded
    into that convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and
    replaced by an identity. The same function up to float rounding; the normalisation's own
    pass over the activations is gone.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval  # noqa: PLC0415 - torch only where a runner activates

    folded = copy.deepcopy(network).eval()
    for block in folded.modules():
        if not isinstance(block, torch.nn.Sequential):
            continue
        names = list(block._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = block._modules[first], block._modules[second]
            if (isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d)
                    and norm.track_running_stats and norm.running_mean is not None):
                block._modules[first] = fuse_conv_bn_eval(conv, norm)
                block._modules[second] = torch.nn.Identity()
    return folded


class TorchRunner(InferenceRunner):
    """
    Run a network with torch. Experimental.

    Parameters
    ----------
    network : torch.nn.Module
        The network with its weights (e.g. `skyblink.engines.catalog.load_network`).
    input_name : str
        Name of its input tensor (``tiles`` or ``stamps``).
    output_names : tuple of str
        Names of its outputs, in the order the module returns them.
    device : str
        ``cuda``, ``cuda:1`` or ``cpu``.
    precision : {"fp32", "fp16"}
        fp16 runs the half-precision module (inputs are cast on the device).
    mode : TorchMode
    channels_last : bool
        Keep activations in NHWC, the layout cuDNN's tensor-core convolutions read directly, and give the
        detector's stem zero input channels up to a multiple of 8 (`Detector.pad_stem_channels`).
    """

    backend = "torch"

    def __init__(self, network: Any, *, input_name: str, output_names: tuple[str, ...], device: str = "cuda",
                 precision: Literal["fp32", "fp16"] = "fp32", mode: TorchMode = "eager", channels_last: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name or f"{type(network).__name__.lower()}/torch-{mode}-{precision}{'-nhwc' if channels_last else ''}")
        self.channels_last = channels_last
        self.network = network
        self.input_name = input_name
        self.output_names = output_names
        self.device = device
        self.precision = precision
        self.mode = mode
        if mode != "eager" and mode != "compile" and not device.startswith("cuda"):
            msg = f"mode {mode!r} needs a CUDA device, got device={device!r}"
            raise ValueError(msg)
        self._module: Any = None
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, tuple[Any, ...]]] = {}
        self._torch: Any = None

    def _activate(self) -> None:
        self._torch = torch
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            msg = f"{self.name}: no CUDA device is visible"
            raise RuntimeError(msg)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        module = fold_batch_norms(self.network).to(self.device, dtype)
        if self.channels_last:
            if hasattr(module, "pad_stem_channels"):  # the detector: tensor cores read 8 channels at a time
                module.pad_stem_channels(8)
            module = module.to(memory_format=torch.channels_last)
        if self.mode.startswith("compile"):
            module = torch.compile(module, dynamic=False)
        self._module = module

    def _deactivate(self) -> None:
        self._graphs.clear()
        self._module = None
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)
            self._torch.cuda.empty_cache()

    def infer_tensors(self, x: Any) -> tuple[Any, ...]:
        """
        Run on a device tensor and return device tensors (no host copies).

        With CUDA graphs the returned tensors are the graph's static outputs: copy them before
        the next call if they must be kept.
        """
        torch = self._torch
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        x = x.to(self.device, dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if not self.mode.endswith("cuda-graphs"):
                out = self._module(x)
                return out if isinstance(out, tuple) else (out,)
            key = tuple(x.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(x)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out

    def _capture(self, x: Any) -> tuple[Any, Any, tuple[Any, ...]]:
        torch = self._torch
        static_in = x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up: compilation, cuDNN autotuning, allocator
                self._module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._module(static_in)
        return graph, static_in, out if isinstance(out, tuple) else (out,)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._torch.from_numpy(np.ascontiguousarray(inputs[self.input_name]))
        outs = self.infer_tensors(x)
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, outs, strict=True)}
