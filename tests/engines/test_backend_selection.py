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


def test_start_runner_hands_the_actor_a_warmed_runner_for_its_shapes(tmp_path) -> None:
    # What the driver hands each TileWorker (skyblink.cluster.WorkerPool): a runner already active
    # and run once on the program's input shape, with the choice's reason for the health check.
    from skyblink.config import Backend
    from skyblink.engines.backends import start_runner

    choice = start_runner("classifier", backend=Backend.AUTO, precision="fp32", registry=str(tmp_path / "engines"),
                          shapes=((8, 3, 63, 63),))
    assert choice.backend == "onnxruntime" and choice.runner.is_active
    assert choice.describe()["reason"] == choice.reason and "no CUDA device" in choice.reason
    out = choice.runner.infer({"stamps": np.zeros((8, 3, 63, 63), np.float32)})
    assert out["real_bogus"].shape == (8, 1)
    choice.runner.deactivate()
    with pytest.raises(RuntimeError, match="tensorrt: no CUDA device"):
        start_runner("detector", backend=Backend.TENSORRT, precision="fp16")
    # A CPU actor's share of the cores (WorkerConfig.cpu_threads) reaches its ONNX Runtime session.
    shared = start_runner("classifier", backend=Backend.AUTO, precision="fp32", shapes=((8, 3, 63, 63),), cpu_threads=1)
    assert shared.reason.endswith("1 thread(s)")
    assert shared.runner._session.get_session_options().intra_op_num_threads == 1  # the session ONNX Runtime runs
    shared.runner.deactivate()
