"""Training on simulated nights writes what ships; the shipped models carry their cards and run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skyblink.engines.backends import OnnxRuntimeRunner
from skyblink.engines.catalog import load_card, load_network, model_dir, onnx_path
from skyblink.engines.training.dataset import TrainingDataConfig
from skyblink.engines.training.train import TrainingConfig, train_classifier, train_detector

TINY = TrainingDataConfig(fields=1, exposures_per_field=2, image_size=256, crop=64, random_crops_per_exposure=4,
                          event_crops_per_exposure=4, stamps_per_class_per_exposure=20, workers=1)


@pytest.mark.slow
def test_tiny_training_runs_write_onnx_weights_and_cards(tmp_path: Path) -> None:
    det = train_detector(TrainingConfig(data=TINY, validation_exposures=1, epochs=1, batch_size=4), out_root=tmp_path)
    cls = train_classifier(TrainingConfig(data=TINY, validation_exposures=2, epochs=1, batch_size=32, width=8), out_root=tmp_path)
    for name, card in (("detector", det), ("classifier", cls)):
        folder = tmp_path / name
        assert {p.name for p in folder.iterdir()} == {"card.json", "weights.pt", "model.fp32.onnx", "model.fp16.onnx"}
        assert load_card(name, tmp_path) == card
        assert card["data"]["train"]["seed"] != card["data"]["validation"]["seed"]  # validated on another sky
    assert det["gflops_per_1024_tile"] > 1.0
    assert {"completeness_by_magnitude", "purity", "completeness"} <= set(det["validation"])
    assert {"roc_auc", "fpr_at_1pct_fnr", "completeness_by_magnitude", "purity_by_magnitude", "purity_at_0.5"} <= set(cls["validation"])
    x = np.zeros((1, 3, 64, 64), np.float32)
    with OnnxRuntimeRunner(onnx_path("detector", "fp32", tmp_path)) as runner:
        assert runner.infer({"tiles": x})["heatmaps"].shape == (1, 4, 64, 64)


@pytest.mark.parametrize("name", ["detector", "classifier"])
def test_shipped_models_have_cards_with_validation_metrics(name: str) -> None:
    card = load_card(name)
    assert card["validation"]["completeness_by_magnitude"], "no per-magnitude completeness in the card"
    if name == "detector":
        assert card["gflops_per_1024_tile"] > 0
    else:
        assert 0.5 < card["validation"]["roc_auc"] <= 1.0
        assert 0.0 <= card["validation"]["fpr_at_1pct_fnr"] <= 1.0
    for precision, entry in card["onnx"].items():
        from skyblink.engines.manifest import file_sha256

        assert file_sha256(onnx_path(name, precision)) == entry["sha256"], f"{name} {precision} ONNX differs from its card"


def test_shipped_models_fit_the_size_budget() -> None:
    root = model_dir("detector").parent
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 20e6, f"shipped models take {total / 1e6:.1f} MB, over the 20 MB budget"


def test_the_shipped_survey_classifier_is_its_card_and_its_graph() -> None:
    import torch

    card = load_card("survey_classifier")
    folds = card["real_data_folds"]
    assert set(folds["roc_auc"]) == {"ZTF drb", "ZTF rb", "Rubin reliability"}
    for figure in folds["roc_auc"].values():
        low, high = figure["ci95"]
        assert low <= figure["auc"] <= high and figure["negatives"] > 0
    network = load_network("survey_classifier")  # its weights' sha256 checked against the card
    stamps = np.random.default_rng(3).normal(size=(16, 3, 63, 63)).astype(np.float32)
    stamps[:, :, 28:35, 28:35] += 20.0  # a source at the centre of each channel
    with torch.no_grad():
        rb, classes = network(torch.from_numpy(stamps))
    with OnnxRuntimeRunner(onnx_path("survey_classifier")) as runner:  # the graph's sha256 checked as well
        out = runner.infer({"stamps": stamps})
    np.testing.assert_allclose(out["real_bogus"], rb.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["class_probs"], classes.numpy(), atol=1e-4)


def test_the_shipped_detector_finds_more_than_the_version_it_replaced_on_the_same_night() -> None:
    # Version 2.0 (space-to-depth stem) replaced 1.0 only because its validation night, scored by the same
    # code, lost neither completeness nor purity: the card keeps both, and the shipped weights give its own.
    card = load_card("detector")
    assert card["version"] == "2.0" and card["architecture"] == {"width": 8, "stride": 2}
    new, old = card["validation"], card["previous_version"]["validation_same_code"]
    assert new["completeness"] >= old["completeness"] and new["purity"] >= old["purity"]
    assert new["completeness_above_5sigma_limit"] >= old["completeness_above_5sigma_limit"]


def test_the_space_to_depth_detector_puts_a_source_on_its_full_resolution_pixel() -> None:
    import torch

    from skyblink.engines.networks import Detector

    network = load_network("detector")
    assert isinstance(network, Detector) and network.stride == 2
    rng = np.random.default_rng(4)
    for y, x in ((41, 61), (42, 62), (41, 62), (42, 61)):  # the four pixel phases of a 2x2 block
        tiles = rng.normal(size=(1, 3, 96, 128)).astype(np.float32)
        yy, xx = np.mgrid[:96, :128]
        source = 25.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
        tiles[0, 0] += source
        tiles[0, 2] += source  # new in the science: a transient
        with torch.no_grad():
            heat, offsets = network(torch.from_numpy(tiles))
        assert heat.shape == (1, 4, 96, 128) and offsets.shape == (1, 2, 96, 128)
        peak = np.unravel_index(int(heat[0].amax(dim=0).argmax()), (96, 128))
        assert abs(peak[0] - y) <= 1 and abs(peak[1] - x) <= 1, (y, x, peak)
    with pytest.raises(ValueError, match="stride"):
        Detector(stride=3)


def test_retraining_the_shipped_version_keeps_its_cards_history(tmp_path: Path) -> None:
    # `skyblink train detector` rewrites version 2.0 bit for bit; its card must keep what training does not
    # measure: the version it replaced, scored on the same night by the same code. Another version starts afresh.
    from skyblink.engines.training.train import write_model

    network = load_network("detector")
    shipped = load_card("detector")
    card = write_model("detector", network, {"name": "detector", "version": shipped["version"]}, tmp_path / "same")
    assert card["previous_version"] == shipped["previous_version"]
    assert load_card("detector", tmp_path / "same")["previous_version"]["version"] == "1.0"
    card = write_model("detector", network, {"name": "detector", "version": "9.9"}, tmp_path / "next")
    assert "previous_version" not in card and "previous_version" not in load_card("detector", tmp_path / "next")
