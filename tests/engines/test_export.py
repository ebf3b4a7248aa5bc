"""ONNX export: dynamic axes, the checker, and ONNX Runtime equal to torch within 1e-4 (fp32)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from skyblink.engines.backends import OnnxRuntimeRunner, RunnerStateError, TorchRunner


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_detector_graph_has_dynamic_batch_and_spatial_axes(exported) -> None:
    model = onnx.load(str(exported["detector_fp32"]))
    onnx.checker.check_model(model, full_check=True)
    (tiles,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in tiles.type.tensor_type.shape.dim]
    assert dims[1] == 3
    assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims
    assert tiles.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fp16 = onnx.load(str(exported["detector_fp16"]))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # strongly typed fp16


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 96, 160), (2, 3, 256, 128)])
def test_onnxruntime_matches_torch_detector(exported, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(0, 3, shape).astype(np.float32)  # sigma-unit pixels
    with torch.no_grad():
        heat, off = exported["detector"](torch.from_numpy(x))
    with OnnxRuntimeRunner(exported["detector_fp32"]) as runner:
        out = runner.infer({"tiles": x})
    assert out["heatmaps"].shape == (shape[0], 4, shape[2], shape[3])
    assert rel_err(out["heatmaps"], heat.numpy()) < 1e-4
    assert rel_err(out["offsets"], off.numpy()) < 1e-4


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_matches_torch_classifier(exported, batch: int) -> None:
    x = np.random.default_rng(batch).normal(0, 3, (batch, 3, 63, 63)).astype(np.float32)
    with torch.no_grad():
        rb, probs = exported["classifier"](torch.from_numpy(x))
    with OnnxRuntimeRunner(exported["classifier_fp32"]) as runner:
        out = runner.infer({"stamps": x})
    assert rel_err(out["real_bogus"], rb.numpy()) < 1e-4
    assert rel_err(out["class_probs"], probs.numpy()) < 1e-4
    np.testing.assert_allclose(out["class_probs"].sum(axis=1), 1.0, atol=1e-5)


def test_torch_cpu_runner_gives_the_onnxruntime_outputs(exported) -> None:
    x = np.random.default_rng(5).normal(0, 3, (2, 3, 64, 96)).astype(np.float32)
    runner = TorchRunner(exported["detector"], input_name="tiles", output_names=("heatmaps", "offsets"), device="cpu")
    with pytest.raises(RunnerStateError, match="activate"):
        runner.infer({"tiles": x})
    with runner:
        assert runner.is_active
        torch_out = runner.infer({"tiles": x})
    assert not runner.is_active
    with OnnxRuntimeRunner(exported["detector_fp32"]) as ort_runner:
        ort_out = ort_runner.infer({"tiles": x})
    for name in ("heatmaps", "offsets"):
        assert rel_err(torch_out[name], ort_out[name]) < 1e-4


@pytest.mark.parametrize("model", ["detector", "classifier"])
def test_the_torch_runner_folds_batch_norms_and_keeps_the_networks_outputs(exported, model: str) -> None:
    from skyblink.engines.backends.torch_runner import fold_batch_norms

    network = exported[model]
    folded = fold_batch_norms(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())  # the caller's network unchanged
    shape = (2, 3, 64, 96) if model == "detector" else (5, 3, 63, 63)
    x = torch.from_numpy(np.random.default_rng(6).normal(0, 3, shape).astype(np.float32))
    with torch.inference_mode():
        before, after = network(x), folded(x)
    for a, b in zip(after, before, strict=True):
        assert rel_err(a.numpy(), b.numpy()) < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
def test_the_detectors_padded_stem_is_the_same_function(stride: int) -> None:
    """What a GPU runner does to the detector (zero channels to a multiple of 8): same outputs, same weights' files."""
    from skyblink.engines.backends.torch_runner import fold_batch_norms
    from skyblink.engines.networks import Detector

    torch.manual_seed(3)
    network = fold_batch_norms(Detector(width=8, stride=stride))
    state = {k: v.clone() for k, v in network.state_dict().items()}
    padded = fold_batch_norms(network)
    padded.pad_stem_channels(8)
    assert padded.stem[0].in_channels == 8 * -(-3 * stride * stride // 8) and padded.stem_padding > 0
    x = torch.from_numpy(np.random.default_rng(7).normal(0, 3, (2, 3, 64, 96)).astype(np.float32))
    with torch.inference_mode():
        for a, b in zip(padded(x), network(x), strict=True):
            assert rel_err(a.numpy(), b.numpy()) < 1e-6
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in state.items())  # the original is untouched
    padded.pad_stem_channels(8)  # already a multiple: nothing more
    assert padded.stem[0].in_channels % 8 == 0 and padded.stem_padding == 8 * -(-3 * stride * stride // 8) - 3 * stride * stride
