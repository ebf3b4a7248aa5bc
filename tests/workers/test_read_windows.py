"""The GPU actor's one read of a CCD's windows (`read_windows`), on the CPU: pixels as stored, a neutral fill beyond."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # skyblink.workers.gpu_units is the worker side


def _windows(image: np.ndarray, origins: list[tuple[int, int]], edge: int) -> np.ndarray:
    from skyblink.workers.gpu_units import read_windows

    out = np.full((len(origins), edge, edge), 7, np.uint16)  # stale pixels: every one must be written
    read_windows(image, origins, edge, list(out))
    return out


def test_a_ccds_tiling_reads_its_pixels_and_the_median_of_what_was_read_beyond_its_edges() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(900, 1100, (300, 400)).astype(np.uint16)
    edge, margin = 128, 14
    origins = [(y - margin, x - margin) for y in range(0, 300, 100) for x in range(0, 400, 100)]  # the units' windows
    got = _windows(image, origins, edge)
    assert got.dtype == np.uint16
    fill = np.uint16(np.median(image[::8, ::8]))  # the region read is the whole image here
    assert 900 <= fill < 1100  # a sky-like value, not 0: the device leaves these pixels out anyway
    padded = np.pad(image, ((margin, edge), (margin, edge)), constant_values=fill)
    for (oy, ox), window in zip(origins, got, strict=True):
        np.testing.assert_array_equal(window, padded[oy + margin : oy + margin + edge, ox + margin : ox + margin + edge])


def test_windows_inside_the_image_are_its_pixels_and_a_corner_window_is_filled_beyond_the_edge() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(900, 1100, (300, 400)).astype(np.uint16)
    inside = _windows(image, [(10, 20), (110, 140)], 100)
    np.testing.assert_array_equal(inside[0], image[10:110, 20:120])
    np.testing.assert_array_equal(inside[1], image[110:210, 140:240])

    corner = _windows(image, [(-32, 350)], 96)[0]  # 32 rows above the image, 46 columns past its right edge
    np.testing.assert_array_equal(corner[32:, :50], image[:64, 350:])
    fill = np.uint16(np.median(image[:64, 350:][::8, ::8]))
    assert np.all(corner[:32] == fill) and np.all(corner[:, 50:] == fill)

    beyond = _windows(image, [(-32, 350), (-200, 350)], 96)  # the second window lies wholly above the image
    assert np.all(beyond[1] == fill)
    assert not _windows(image, [(400, 0)], 16).any()  # every window wholly beyond: nothing read, zeros
