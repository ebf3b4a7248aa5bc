"""
Fused kernels for the device program: a pure tensor function compiled by ``torch.compile``
(Inductor, whole graph, static shapes) when it runs on CUDA tensors, and run eagerly elsewhere.

The per-pixel steps of the tile program (the cosmic-ray pass with its medians, the blurs, the
background's mesh sums, the triplet's normalisation, the peaks) are chains of elementwise
operations on shifted views: eagerly each operation reads and writes the whole batch (a pass of
L.A.Cosmic is about 300 of them); compiled, a chain is one kernel that reads its inputs once.
The same Python function is the CPU implementation, so there is one implementation of each step.

Notes
-----
A function is compiled once per input shape and dtype (the first call on CUDA pays for it: the
actors do so in their warm-up, before the first exposure). Per-field numbers must reach these
functions as tensors, not Python floats, or each new value would compile again.
`set_fusion(False)` runs everything eagerly in this process (the configuration's
``night.compile_device_program = false``, or a benchmark measuring what fusion buys).
Thread-safe as torch.compile is.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["fused", "fusion_enabled", "set_fusion"]

_FUSION = {"enabled": True}  # per process: an actor holds one configuration

F = TypeVar("F", bound=Callable[..., Any])


def fusion_enabled() -> bool:
    """Whether `fused` functions compile on CUDA in this process (`set_fusion`; default on)."""
    return _FUSION["enabled"]


def set_fusion(enabled: bool) -> None:
    """Compile `fused` functions on CUDA (``True``, the default) or run them eagerly, in this process."""
    _FUSION["enabled"] = bool(enabled)


def fused(fn: F) -> F:
    """
    Decorate a pure tensor function: compiled (``fullgraph=True, dynamic=False``) when its first
    tensor argument is on CUDA and fusion is enabled, eager otherwise.

    Raises
    ------
    torch._dynamo.exc.Unsupported
        At the first CUDA call, if the function cannot be captured as one graph (a host sync).
    """
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A tensor argument means torch is imported: without it (the driver, the numpy paths)
        # there is nothing to compile, and this module never imports torch itself.
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is None or not first.is_cuda or not fusion_enabled():
            return fn(*args, **kwargs)
        if not compiled:
            compiled.append(torch.compile(fn, fullgraph=True, dynamic=False))
        return compiled[0](*args, **kwargs)

    return wrapper  # type: ignore[return-value]
