"""GPU backends against ONNX Runtime on the shipped detector and both classifiers (run on a CUDA machine)."""

from __future__ import annotations

import numpy as np
import pytest

from skyblink.engines.backends import OnnxRuntimeRunner, TorchRunner
from skyblink.engines.catalog import load_network, onnx_path
from skyblink.model_io import CLASSIFIER_MODELS, IO_NAMES

pytestmark = pytest.mark.gpu


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def inputs(model: str, rng: np.random.Generator) -> np.ndarray:
    shape = (2, 3, 512, 512) if model == "detector" else (64, 3, 63, 63)
    x = rng.normal(0.0, 1.0, shape).astype(np.float32)
    x[:, :, ::37, ::41] += rng.uniform(5, 300, x[:, :, ::37, ::41].shape).astype(np.float32)  # sources
    return x


@pytest.mark.parametrize("model", ["detector", *CLASSIFIER_MODELS])
# fp32 on CUDA runs its convolutions in TF32 by default (torch.backends.cudnn.allow_tf32): ~1e-3.
@pytest.mark.parametrize(("mode", "precision", "channels_last", "tolerance"), [
    ("eager", "fp32", False, 5e-3), ("eager", "fp16", False, 1e-2), ("cuda-graphs", "fp16", True, 1e-2),
])
def test_torch_cuda_matches_onnxruntime(model: str, mode: str, precision: str, channels_last: bool, tolerance: float) -> None:
    names = IO_NAMES[model]
    x = inputs(model, np.random.default_rng(1))
    with OnnxRuntimeRunner(onnx_path(model, "fp32")) as reference_runner:
        reference = reference_runner.infer({names.inputs[0]: x})
    runner = TorchRunner(load_network(model), input_name=names.inputs[0], output_names=names.outputs,
                         device="cuda", precision=precision, mode=mode, channels_last=channels_last)
    with runner:
        first = runner.infer({names.inputs[0]: x})
        again = runner.infer({names.inputs[0]: x})  # a replayed CUDA graph gives the same answer
    for name in names.outputs:
        assert np.isfinite(first[name]).all()
        assert rel_err(first[name], reference[name]) <= tolerance, name
        np.testing.assert_array_equal(first[name], again[name])


@pytest.mark.parametrize("model", ["detector", *CLASSIFIER_MODELS])
def test_actor_torch_runner_is_compiled_once_and_matches_onnxruntime(model: str) -> None:
    # What a GPU actor starts without TensorRT (`start_runner(..., compiled=night.compile_device_program)`):
    # the detector compiled by Inductor in NHWC fp16, warmed on the worker's one padded batch shape, so
    # the first batch of the night compiles nothing more; its answer is ONNX Runtime's within fp16 rounding.
    import torch._dynamo

    from skyblink.config import Backend
    from skyblink.engines.backends import start_runner

    torch._dynamo.reset()
    names = IO_NAMES[model]
    x = inputs(model, np.random.default_rng(2))
    choice = start_runner(model, backend=Backend.TORCH, precision="fp16", shapes=(x.shape,), compiled=True)
    runner = choice.runner
    assert isinstance(runner, TorchRunner) and runner.channels_last
    assert runner.mode == ("compile" if model == "detector" else "eager")
    compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    try:
        got = runner.infer({names.inputs[0]: x})
    finally:
        runner.deactivate()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled_before  # the warm-up compiled it
    with OnnxRuntimeRunner(onnx_path(model, "fp32")) as reference_runner:
        reference = reference_runner.infer({names.inputs[0]: x})
    for name in names.outputs:
        assert rel_err(got[name], reference[name]) <= 1e-2, name
