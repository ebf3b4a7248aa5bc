"""Fixtures of the worker tests: the shipped networks, active, on ONNX Runtime or on torch on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def _active(backend: str) -> Iterator[tuple[Any, Any]]:
    from skyblink.engines.backends import select_runner

    det = select_runner("detector", backend=backend).runner
    cls = select_runner("classifier", backend=backend).runner
    with det, cls:
        yield det, cls


@pytest.fixture(scope="module")
def runners() -> Iterator[tuple[Any, Any]]:
    """The detector's and the classifier's runners on ONNX Runtime (the CPU path's), active."""
    pytest.importorskip("onnxruntime")
    yield from _active("onnxruntime")


@pytest.fixture(scope="module")
def torch_runners() -> Iterator[tuple[Any, Any]]:
    """The detector's and the classifier's torch runners on the CPU (the device program's), active."""
    pytest.importorskip("torch")
    yield from _active("torch")
