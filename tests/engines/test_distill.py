"""Distillation on augmented real cutouts: stamp codes, views, and folds that keep held-out alerts out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skyblink.engines.networks import Classifier
from skyblink.engines.training.distill import (
    VARIANTS,
    DistillData,
    DistillRecipe,
    augment,
    dequantize_stamps,
    quantize_stamps,
    train_distilled,
)


def test_stamp_codes_keep_sky_noise_and_bright_pixels() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 63, 63)).astype(np.float32)
    x[0, 0, 31, 31] = 5000.0
    back = dequantize_stamps(quantize_stamps(x)).numpy()
    assert np.abs(np.arcsinh(back) - np.arcsinh(x)).max() < 0.05
    assert np.abs(back - x)[np.abs(x) < 1].max() < 0.07  # sky: within 0.07 sigma
    assert abs(back[0, 0, 31, 31] / 5000.0 - 1) < 0.05


def test_views_are_the_same_on_numpy_and_torch_and_all_distinct() -> None:
    x = np.arange(2 * 63 * 63, dtype=np.float32).reshape(2, 63, 63)
    seen = set()
    for v in VARIANTS:
        a = augment(x, v)
        assert np.array_equal(a, augment(torch.from_numpy(x), v).numpy())
        seen.add(a.tobytes())
    assert len(seen) == len(VARIANTS) == 32


def _data(n: int = 6) -> DistillData:
    rng = np.random.default_rng(1)
    stamps = rng.standard_normal((n, 3, 63, 63)).astype(np.float32)
    return DistillData(alerts=quantize_stamps(stamps), teacher=rng.uniform(0, 1, (n, len(VARIANTS))).astype(np.float32),
                       packet=rng.uniform(0, 1, n).astype(np.float32), survey=np.zeros(n, int),
                       fakes=quantize_stamps(stamps[:4]), fake_label=np.array([1, 0, 1, 0], np.float32),
                       fake_owner=np.array([0, 1, 4, 5]), sim=quantize_stamps(stamps[:2]),
                       sim_rb=np.array([1, 0], np.float32), sim_cls=np.array([2, 0]))


def test_data_round_trips_through_its_file(tmp_path) -> None:
    data = _data()
    back = DistillData.load(data.save(tmp_path / "d.npz", folds=np.arange(6)))
    assert np.array_equal(back.alerts, data.alerts) and np.array_equal(back.teacher, data.teacher)
    np.savez(tmp_path / "bad.npz", alerts=data.alerts)
    with pytest.raises(KeyError, match="missing"):
        DistillData.load(tmp_path / "bad.npz")


def test_a_fold_sees_nothing_of_its_held_out_alerts() -> None:
    """Held-out alerts set to NaN-free garbage must not change the fold's model: same seed, same weights."""
    data = _data()
    train = np.array([True, True, True, False, False, False])
    recipe = DistillRecipe(steps=3, batch_size=16)
    base = Classifier()
    a = train_distilled(data, train, recipe, base=base)
    poisoned = _data()
    poisoned.alerts[~train] = 255
    poisoned.teacher[~train] = 0.0
    poisoned.fakes[2:] = 0  # the fakes owned by held-out alerts 4 and 5
    b = train_distilled(poisoned, train, recipe, base=base)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(a.real_bogus.weight, base.real_bogus.weight)  # it did train
    with pytest.raises(ValueError, match="teacher"):
        train_distilled(data, train, DistillRecipe(teacher="drb", steps=1), base=base)
