"""Backend selection on a machine without a GPU: the choice and its reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from skyblink.engines.backends import OnnxRuntimeRunner, TorchRunner, select_runner
from skyblink.engines.registry import current_device

pytestmark = pytest.mark.skipif(current_device() is not None, reason="this test is about a machine without a CUDA device")


def test_auto_falls_back_to_onnxruntime_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="skyblink.engines.backends.select"):
        choice = select_runner("classifier")
    assert isinstance(choice.runner, OnnxRuntimeRunner) and choice.backend == "onnxruntime"
    assert "no CUDA device" in choice.reason
    assert "onnxruntime" in caplog.text and "no CUDA device" in caplog.text
    with choice.runner as runner:
        out = runner.infer({"stamps": np.zeros((2, 3, 63, 63), np.float32)})
    assert out["real_bogus"].shape == (2, 1) and out["class_probs"].shape == (2, 7)


def test_forced_backends(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="tensorrt: no CUDA device"):
        select_runner("detector", backend="tensorrt")
    choice = select_runner("detector", backend="torch")
    assert isinstance(choice.runner, TorchRunner) and choice.runner.device == "cpu"
    assert "forced" in choice.reason
