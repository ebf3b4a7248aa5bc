"""The mesh background reproduces SEP's (``sep.Background``) on simulated and real images, and the
torch version reproduces the numpy one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skyblink.config import SimConfig
from skyblink.sim.ccd_image import render_ccd
from skyblink.workers import estimate_background

sep = pytest.importorskip("sep")

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPITZER = SHARED_DATA / "photutils-datasets" / "spitzer_example_image.fits"
M13 = SHARED_DATA / "astropy" / "m13.fits"

# The acceptance criterion: |ours - SEP| <= 1 % of SEP's global noise everywhere, for the
# background and for the noise map. Measured: <= 4e-5 (background), <= 3e-6 (noise): float32
# rounding of SEP's spline.
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, np.ndarray]:
    """A simulated 1030 x 1030 science CCD (stars, galaxies, artifacts) and its artifact mask."""
    config = SimConfig(fields=1, exposures_per_field=1, image_size=1030, seed=3)
    ccd = render_ccd(config, 0, 0, exposure=0)
    return ccd.pixels.astype(np.float32), ccd.mask > 0


def sep_deviation(image: np.ndarray, *, mask: np.ndarray | None = None, mesh: tuple[int, int] = (64, 64),
                  filter_size: tuple[int, int] = (3, 3), filter_threshold: float = 0.0) -> tuple[float, float]:
    """Max |ours - SEP| of the background and of the noise map, in units of SEP's global noise."""
    image = np.ascontiguousarray(image)
    ref = sep.Background(image, mask=mask, bh=mesh[0], bw=mesh[1], fh=filter_size[0], fw=filter_size[1],
                         fthresh=filter_threshold)
    ours = estimate_background(image, mask=mask, mesh=mesh, filter_size=filter_size,
                               filter_threshold=filter_threshold)
    assert ours.global_level == pytest.approx(ref.globalback, rel=1e-6, abs=1e-6 * ref.globalrms)
    assert ours.global_rms == pytest.approx(ref.globalrms, rel=1e-6)
    level = np.abs(ours.level - ref.back()).max() / ref.globalrms
    # SEP's spline may extrapolate the noise below zero near a corner; ours is floored at 1e-6.
    rms = np.abs(ours.rms - np.maximum(ref.rms(), 1e-6)).max() / ref.globalrms
    return float(level), float(rms)


@pytest.mark.parametrize(
    ("rows", "cols", "mesh", "filter_size"),
    [
        (1000, 1030, (64, 64), (3, 3)),  # SEP's defaults, partial last meshes on both axes
        (1030, 1030, (32, 32), (3, 3)),
        (900, 1000, (50, 100), (3, 5)),  # rectangular meshes and filter
        (50, 500, (64, 64), (3, 3)),  # one mesh high: SEP interpolates linearly along x
        (300, 40, (64, 64), (1, 1)),  # one mesh wide, no filter
    ],
)
def test_matches_sep_on_simulated_frames(frame, rows, cols, mesh, filter_size) -> None:
    pixels, _ = frame
    level, rms = sep_deviation(pixels[:rows, :cols], mesh=mesh, filter_size=filter_size)
    assert level <= TOLERANCE
    assert rms <= TOLERANCE


def test_matches_sep_with_mask_nan_and_filter_threshold(frame) -> None:
    pixels, mask = frame
    image = pixels[:700, :800].copy()
    image[:, :250] = np.nan  # uncovered reference: bad meshes, filled from the nearest good ones
    image[400:, 600:] = np.nan
    level, rms = sep_deviation(image, mask=np.ascontiguousarray(mask[:700, :800]))
    assert level <= TOLERANCE
    assert rms <= TOLERANCE
    level, rms = sep_deviation(pixels[:512, :600], filter_threshold=20.0)
    assert level <= TOLERANCE
    assert rms <= TOLERANCE


@pytest.mark.parametrize("path", [SPITZER, M13], ids=["spitzer-513x1025", "m13-300x300"])
def test_matches_sep_on_real_images(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real image {path} absent (shared/data not mounted here)")
    from astropy.io import fits

    image = fits.getdata(path).astype(np.float32)
    for mesh in ((64, 64), (32, 32)):
        level, rms = sep_deviation(image, mesh=mesh)
        assert level <= TOLERANCE, mesh
        assert rms <= TOLERANCE, mesh


def test_flat_image_and_bad_sizes() -> None:
    flat = np.full((200, 130), 7.0, dtype=np.float32)
    bkg = estimate_background(flat)
    assert np.all(bkg.level == np.float32(7.0))
    assert np.all(bkg.rms == np.float32(1e-6))
    empty = estimate_background(np.full((100, 100), np.nan, dtype=np.float32))
    assert np.all(empty.level == 0.0) and np.all(empty.rms == 1.0)  # SEP's values with no usable pixel
    with pytest.raises(ValueError, match="mesh"):
        estimate_background(flat, mesh=2)
    with pytest.raises(ValueError, match="mask shape"):
        estimate_background(flat, mask=np.zeros((3, 3), dtype=bool))


def test_torch_matches_numpy(frame) -> None:
    torch = pytest.importorskip("torch")
    from skyblink.workers import tile_program as tp

    pixels, mask = frame
    cases = [
        (pixels[:1000, :1030], mask[:1000, :1030], {}),
        (pixels[:900, :1000], None, {"mesh": (50, 100), "filter_size": (3, 5)}),
        (pixels[:50, :500], None, {}),
    ]
    nan_image = pixels[:600, :600].copy()
    nan_image[:, :250] = np.nan
    cases.append((nan_image, None, {"filter_threshold": 20.0}))
    for image, m, options in cases:
        ours = estimate_background(image, mask=m, **options)
        level, rms = tp.background(torch.from_numpy(np.ascontiguousarray(image))[None],
                                   mask=None if m is None else torch.from_numpy(np.ascontiguousarray(m))[None],
                                   **options)
        # float32 rounding (they are equal bit for bit on the CPU today)
        assert np.abs(level[0].numpy() - ours.level).max() <= 1e-5 * ours.global_rms
        assert np.abs(rms[0].numpy() - ours.rms).max() <= 1e-5 * ours.global_rms
    batch = np.stack([pixels[:512, :512], pixels[512:1024, 500:1012]])
    level, rms = tp.background(torch.from_numpy(batch))
    for i in range(2):
        ours = estimate_background(batch[i])
        assert np.abs(level[i].numpy() - ours.level).max() <= 1e-5 * ours.global_rms
        assert np.abs(rms[i].numpy() - ours.rms).max() <= 1e-5 * ours.global_rms


def test_torch_histogram_iterations_match_numpy_on_awkward_histograms() -> None:
    """SEP's histogram iterations in torch (packed passes, fixed or converging) against the numpy rules, row by row."""
    torch = pytest.importorskip("torch")
    from skyblink.workers import background as bg
    from skyblink.workers import tile_program as tp

    rng = np.random.default_rng(7)
    rows, n_bins = 250, 700
    nlevels = rng.integers(1, n_bins + 1, rows)
    histo = np.zeros((rows, n_bins), dtype=np.int64)
    for r in range(rows):
        n = int(nlevels[r])
        values = [
            rng.normal(n / 2, n / rng.uniform(3, 30), 4000),  # a sky
            np.concatenate([rng.normal(n / 2, n / 10, 3000), rng.exponential(n / 3, 1000) + n / 2]),  # skewed
            np.full(100, rng.uniform(0, n)),  # one bin
            np.zeros(0),  # empty (a bad mesh)
            rng.uniform(0, n, 50),  # sparse
        ][r % 5]
        histo[r] = np.bincount(np.clip(values.astype(np.int64), 0, n - 1), minlength=n_bins)[:n_bins]
    mean = rng.uniform(-5, n_bins, rows).astype(np.float32)
    mode, sigma = bg._histogram_mode(histo, nlevels, mean, 3.0, 100)
    args = (torch.from_numpy(histo).to(torch.int32), torch.from_numpy(nlevels), torch.from_numpy(mean), 3.0, 100)
    for passes in (None, 100):
        t_mode, t_sigma = (v.numpy() for v in tp._histogram_mode(*args, passes=passes))
        assert np.array_equal(np.isnan(t_mode), np.isnan(mode))
        # float64 rounding of the sigma (the square root's argument is summed in another order)
        np.testing.assert_allclose(t_mode, mode, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(t_sigma, sigma, rtol=1e-12, atol=1e-12)
    few = tp._histogram_mode(*args, passes=3)[1].numpy()
    assert not np.allclose(few, sigma, rtol=1e-6)  # three passes are not converged on these rows
