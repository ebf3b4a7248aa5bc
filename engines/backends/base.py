"""
The interface every inference backend implements.

A runner owns its resources (a session, a CUDA context's buffers, a compiled module) between
``activate()`` and ``deactivate()``; both are explicit and idempotent-checked, and a runner is a
context manager. ``infer`` takes and returns numpy arrays by tensor name, so the CPU and GPU
backends are interchangeable and comparable output for output.

Notes
-----
A runner is not thread-safe: one runner per thread (per CUDA stream).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import numpy as np

__all__ = ["InferenceRunner", "RunnerStateError"]


class RunnerStateError(RuntimeError):
    """A runner was used while inactive, or activated twice."""


class InferenceRunner:
    """
    Base class of the backends. Experimental.

    Parameters
    ----------
    name : str
        Shown in logs and errors (e.g. ``"detector/onnxruntime"``).
    """

    backend = "base"

    def __init__(self, name: str) -> None:
        self.name = name
        self._active = False

    @property
    def is_active(self) -> bool:
        """True between `activate` and `deactivate`."""
        return self._active

    def activate(self) -> None:
        """Acquire the runner's resources; raises RunnerStateError if already active."""
        if self._active:
            msg = f"{self.name}: runner is already active"
            raise RunnerStateError(msg)
        self._activate()
        self._active = True

    def deactivate(self) -> None:
        """Release the runner's resources; raises RunnerStateError if not active."""
        if not self._active:
            msg = f"{self.name}: runner is not active"
            raise RunnerStateError(msg)
        try:
            self._deactivate()
        finally:
            self._active = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """
        Run the network.

        Parameters
        ----------
        inputs : mapping of str to ndarray
            Input tensors by name (e.g. ``{"tiles": (B, 3, H, W) float32}``).

        Returns
        -------
        dict of str to ndarray
            Output tensors by name, as numpy arrays on the host.

        Raises
        ------
        RunnerStateError
            The runner is not active.
        """
        if not self._active:
            msg = f"{self.name}: activate the runner (or use it in a `with` block) before infer()"
            raise RunnerStateError(msg)
        return self._infer(inputs)

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # Subclasses implement these three.
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
