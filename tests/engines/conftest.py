"""Fixtures of the engine tests: small untrained networks exported once per session."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the engine tests need torch (the dev extra installs it)")

from skyblink.engines.export import export_onnx  # noqa: E402
from skyblink.engines.networks import Classifier, Detector  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A seeded detector and classifier with their fp32 and fp16 ONNX exports."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    detector, classifier = Detector().eval(), Classifier().eval()
    # Non-trivial BatchNorm statistics, as after training.
    for module in (*detector.modules(), *classifier.modules()):
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return {
        "detector": detector,
        "classifier": classifier,
        "detector_fp32": export_onnx(detector, root / "detector.fp32.onnx"),
        "detector_fp16": export_onnx(detector, root / "detector.fp16.onnx", precision="fp16"),
        "classifier_fp32": export_onnx(classifier, root / "classifier.fp32.onnx"),
    }
