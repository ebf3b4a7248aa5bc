"""The GPU actor's one read of a CCD region (`read_raw_region`), on the CPU: pixels as stored, a neutral fill beyond."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # skyblink.workers.gpu_units is the worker side


def test_a_region_on_the_image_is_its_pixels_and_beyond_the_edge_is_the_median_of_what_was_read() -> None:
    from skyblink.workers.gpu_units import read_raw_region

    rng = np.random.default_rng(3)
    image = rng.integers(900, 1100, (300, 400)).astype(np.uint16)
    inside = read_raw_region(image, 10, 20, 100, 120)
    assert inside.dtype == np.uint16
    np.testing.assert_array_equal(inside, image[10:110, 20:140])

    corner = read_raw_region(image, -32, 350, 96, 96)  # 32 rows above the image, 46 columns past its right edge
    assert corner.shape == (96, 96) and corner.dtype == np.uint16
    np.testing.assert_array_equal(corner[32:, :50], image[:64, 350:])
    fill = np.uint16(np.median(image[:64, 350:][::8, ::8]))
    assert np.all(corner[:32] == fill) and np.all(corner[:, 50:] == fill)
    assert 900 <= fill < 1100  # a sky-like value, not 0: the device leaves these pixels out anyway

    assert not read_raw_region(image, 400, 0, 16, 16).any()  # wholly beyond: nothing read
