"""`StampRealism`: the real-survey effects added to the classifier's simulated training stamps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from skyblink.engines.training.dataset import StampRealism, TrainingDataConfig, build_training_data
from skyblink.model_io import CLASSIFIER_CLASSES

SMALL = TrainingDataConfig(fields=1, exposures_per_field=1, image_size=512, crop=64, random_crops_per_exposure=1,
                           event_crops_per_exposure=1, workers=1)


def _centre_difference(stamps: np.ndarray) -> np.ndarray:
    return stamps[:, 2, 28:35, 28:35]


def _with_realism() -> TrainingDataConfig:
    return replace(SMALL, realism=StampRealism())


def test_realism_adds_fading_and_hosted_changes_labelled_real() -> None:
    plain = build_training_data(SMALL).stamps
    real = build_training_data(_with_realism()).stamps
    assert real.real.sum() > plain.real.sum() + 10
    changes = _centre_difference(real.stamps[real.real])
    fading = -changes.min(axis=(1, 2)) > changes.max(axis=(1, 2))
    assert fading.sum() >= 3, "no fading (negative-difference) changes labelled real"
    variable = CLASSIFIER_CLASSES.index("variable")
    bright = real.stamps[real.labels == variable][:, 0, 28:35, 28:35].max(axis=(1, 2))
    assert (bright > 50).any(), "no variable on a bright star"


def test_realism_is_deterministic_and_off_by_default() -> None:
    assert TrainingDataConfig().realism is None
    a = build_training_data(_with_realism()).stamps
    b = build_training_data(_with_realism()).stamps
    np.testing.assert_array_equal(a.stamps, b.stamps)
    np.testing.assert_array_equal(a.labels, b.labels)
