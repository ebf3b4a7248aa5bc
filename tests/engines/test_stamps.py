"""External cutouts to classifier stamps: sigma units, NaNs, and the 63x63 crop/pad rule."""

from __future__ import annotations

import numpy as np

from skyblink.engines.stamps import fit_stamp, sigma_normalize, sigma_triplet


def test_sigma_units_and_nans() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 20.0, (63, 63))
    image[5, 5] = np.nan
    out = sigma_normalize(image)
    assert out[5, 5] == 0.0
    assert abs(np.median(out)) < 0.05 and 0.9 < np.std(out[np.isfinite(image)]) < 1.1
    assert sigma_normalize(np.full((10, 10), np.nan)).sum() == 0.0


def test_crop_and_pad_keep_the_centre() -> None:
    big = np.zeros((101, 101), np.float32)
    big[50, 50] = 7.0
    assert fit_stamp(big)[31, 31] == 7.0
    small = np.zeros((31, 31), np.float32)
    small[15, 15] = 3.0
    padded = fit_stamp(small)
    assert padded[31, 31] == 3.0 and padded.shape == (63, 63)
    odd = np.ones((63, 53), np.float32)  # a ZTF cutout at a CCD edge
    assert fit_stamp(odd)[:, :5].sum() == 0 and fit_stamp(odd)[:, 5:58].all()
    assert sigma_triplet(big, big, big).shape == (3, 63, 63)
