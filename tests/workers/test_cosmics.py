"""
L.A.Cosmic on simulated frames: the issue's acceptance figures on a small frame, numpy and torch
identical, and the algebra behind the fast Laplacian and sparse medians.

Recall is per pixel: the flagged fraction of the cosmic-ray pixels whose deposited charge is at
least 5 sigma of their noise (sky, star light and read noise, from the frame without its cosmic
rays). Star masking: the flagged fraction of pixels within 2 FWHM of stars with S/N >= 5, apart
from pixels holding or touching a simulated artifact (growing a cosmic ray into its neighbours
is the algorithm's design). benchmarks/cosmics_vs_astroscrappy.py measures the same on 2048x2048
frames next to astroscrappy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, convolve, median_filter

from skyblink.config import SimConfig
from skyblink.sim.artifacts import cosmic_rays
from skyblink.sim.ccd_image import MaskBit, render_ccd
from skyblink.sim.conditions import READ_NOISE, SATURATE_ADU, exposure_conditions
from skyblink.sim.seeds import Stream, rng_for
from skyblink.workers.cosmics import (
    _lplus,
    _median_filter,
    _median_of,
    _sorting_network,
    detect_cosmics,
    persistent_pixels,
)

torch = pytest.importorskip("torch")

from skyblink.workers import cosmics  # noqa: E402
from skyblink.workers.cosmics import DENSE_PASSES, detect_cosmics_tensor  # noqa: E402

# Seed 5: exposure 0 has a 1.59 px FWHM, exposure 1 1.33 px (the survey's sharpest seeing,
# where stars are most like cosmic rays).
CONFIG = SimConfig(fields=1, exposures_per_field=2, image_size=512, seed=5)


def _frame(exposure: int, inject: float = 20.0) -> dict[str, np.ndarray | float]:
    """A science CCD in electrons with ``inject`` times the simulator's cosmic-ray rate, and its truth."""
    ccd = render_ccd(CONFIG, 0, 0, exposure=exposure)
    cond = exposure_conditions(CONFIG, 0, exposure)
    shape = ccd.pixels.shape
    charge = np.zeros(shape)
    own = cosmic_rays(rng_for(CONFIG.seed, Stream.COSMIC_RAYS, 0, exposure, 0), shape, CONFIG.exptime)
    extra = cosmic_rays(np.random.default_rng([CONFIG.seed, exposure]), shape, CONFIG.exptime * (inject - 1))
    np.add.at(charge, (own.iy, own.ix), own.charge)
    np.add.at(charge, (extra.iy, extra.ix), extra.charge)
    adu = ccd.pixels.astype(np.float64)
    np.add.at(adu, (extra.iy, extra.ix), extra.charge / cond.gain)
    adu = np.minimum(np.rint(adu), SATURATE_ADU)
    truth = ccd.mask.copy()
    truth[extra.iy, extra.ix] |= np.uint8(MaskBit.COSMIC_RAY)
    electrons = (adu * cond.gain).astype(np.float32)
    saturated = adu >= SATURATE_ADU
    sigma = np.sqrt(np.maximum(median_filter(electrons - charge, size=5, mode="mirror"), 0.0) + READ_NOISE**2)
    significant = ((truth & MaskBit.COSMIC_RAY) > 0) & (charge >= 5 * sigma) & ~saturated
    sky_sigma = math.sqrt(cond.sky_e + READ_NOISE**2)
    nea = 4 * math.pi * (cond.fwhm_px / 2.3548) ** 2
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    core = np.zeros(shape, dtype=bool)
    for part in ccd.truth_parts:
        if part["type"] in ("star", "variable", "transient"):
            flux = np.asarray(part["flux"])
            bright = flux / np.sqrt(nea * sky_sigma**2 + flux) >= 5
            for x, y in zip(np.asarray(part["x"])[bright], np.asarray(part["y"])[bright], strict=True):
                core |= np.hypot(xx - x, yy - y) <= 2 * cond.fwhm_px
    core &= ~binary_dilation(truth > 0, np.ones((3, 3), dtype=bool))
    hot = ((truth & MaskBit.HOT_PIXEL) > 0) & ~saturated & (electrons - cond.sky_e >= 5 * sky_sigma)
    return {"electrons": electrons, "saturated": saturated, "significant": significant, "core": core, "hot": hot,
            "truth": truth, "fwhm": cond.fwhm_px}


@pytest.fixture(scope="module")
def frames() -> list[dict[str, np.ndarray | float]]:
    return [_frame(0), _frame(1)]


@pytest.fixture(scope="module")
def results(frames: list[dict]) -> list:
    return [detect_cosmics(f["electrons"], read_noise=READ_NOISE, mask=f["saturated"]) for f in frames]


def test_recall_and_star_masking_meet_the_issue_thresholds(frames: list[dict], results: list) -> None:
    assert [round(f["fwhm"], 2) for f in frames] == [1.59, 1.33]
    hit = sum(int((r.mask & f["significant"]).sum()) for f, r in zip(frames, results, strict=True))
    total = sum(int(f["significant"].sum()) for f in frames)
    assert total > 300  # enough cosmic-ray pixels for a 1 % resolution
    assert hit / total >= 0.95
    masked = sum(int((r.mask & f["core"]).sum()) for f, r in zip(frames, results, strict=True))
    cores = sum(int(f["core"].sum()) for f in frames)
    assert cores > 3000
    assert masked / cores <= 0.001
    # Hot pixels above 5 sigma are single-pixel outliers: caught in one frame.
    hot = sum(int(f["hot"].sum()) for f in frames)
    assert hot >= 4 and sum(int((r.mask & f["hot"]).sum()) for f, r in zip(frames, results, strict=True)) == hot
    # Saturated pixels are the caller's, never flagged here.
    assert not any((r.mask & f["saturated"]).any() for f, r in zip(frames, results, strict=True))


def test_cleaned_pixels_take_the_median_of_good_neighbours(frames: list[dict], results: list) -> None:
    f, r = frames[0], results[0]
    untouched = ~r.mask
    np.testing.assert_array_equal(r.cleaned[untouched], f["electrons"][untouched])
    significant = f["significant"] & r.mask
    expected = median_filter(f["electrons"], size=9, mode="mirror")  # the local level, cosmic rays being rare
    residual = np.abs(r.cleaned[significant] - expected[significant]) / np.sqrt(expected[significant] + READ_NOISE**2)
    assert np.median(residual) < 2.0  # back to the sky's noise (the charge was >= 5 sigma)


def test_torch_gives_the_same_mask_and_cleaned_image(frames: list[dict], results: list) -> None:
    f, r = frames[1], results[1]
    dev = detect_cosmics_tensor(torch.from_numpy(f["electrons"]), read_noise=READ_NOISE, mask=torch.from_numpy(f["saturated"]))
    np.testing.assert_array_equal(dev.mask.numpy(), r.mask)
    np.testing.assert_array_equal(dev.cleaned.numpy(), r.cleaned)
    # A batch of tiles, each on its own, with NaN outside a CCD edge.
    tiles = np.stack([f["electrons"][:160, :192], f["electrons"][200:360, 100:292]]).copy()
    tiles[1, :, :20] = np.nan
    batch = detect_cosmics_tensor(torch.from_numpy(tiles), read_noise=READ_NOISE)
    for i in range(2):
        one = detect_cosmics(tiles[i], read_noise=READ_NOISE)
        np.testing.assert_array_equal(batch.mask[i].numpy(), one.mask)
        np.testing.assert_array_equal(batch.cleaned[i].numpy(), one.cleaned)
    assert np.isnan(batch.cleaned[1, :, :20].numpy()).all() and not batch.mask[1, :, :20].any()
    assert dev.overflow.shape == () and not dev.overflow and not batch.overflow.any()


def test_cleaning_capacity_is_exact_up_to_it_and_reports_overflow(frames: list[dict], results: list) -> None:
    """A dense pass cleans at most ``capacity`` flagged pixels a tile: numpy's result up to it, a reported tile beyond."""
    f, r = frames[1], results[1]
    # The dense passes clean every pixel flagged so far; the later ones, by blocks, only near their new flags.
    flagged = int(detect_cosmics(f["electrons"], read_noise=READ_NOISE, mask=f["saturated"], niter=DENSE_PASSES).mask.sum())
    assert 100 < flagged < int(r.mask.sum())  # 20x the cosmic-ray rate; the later passes flag more
    tiles = np.stack([f["electrons"], f["electrons"][::-1].copy()])
    saturated = torch.from_numpy(np.stack([f["saturated"], f["saturated"][::-1].copy()]))
    exact = detect_cosmics_tensor(torch.from_numpy(tiles), read_noise=READ_NOISE, mask=saturated, capacity=flagged)
    for i in range(2):
        np.testing.assert_array_equal(exact.mask[i].numpy(), r.mask if i == 0 else r.mask[::-1])
        np.testing.assert_array_equal(exact.cleaned[i].numpy(), r.cleaned if i == 0 else r.cleaned[::-1])
    assert not exact.overflow.any()
    short = detect_cosmics_tensor(torch.from_numpy(tiles), read_noise=READ_NOISE, mask=saturated, capacity=flagged - 1)
    assert short.overflow.all()  # both tiles flag one pixel more than they can clean: reported, not silent
    assert not np.array_equal(short.cleaned[0].numpy(), r.cleaned)
    with pytest.raises(ValueError, match="capacity"):
        detect_cosmics_tensor(torch.from_numpy(tiles), read_noise=READ_NOISE, capacity=0)


def test_later_passes_by_blocks_give_the_dense_passes_flags(frames: list[dict], results: list,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes after the first done only near what the cleaning changed: numpy's result; a tile short of room reported."""
    f, r = frames[1], results[1]
    # Odd sizes: the last block row and column are moved inside the tile.
    crops = [(slice(None), slice(None)), (slice(7, 157), slice(30, 201)), (slice(0, 44), slice(0, 300))]
    for dense in (1, DENSE_PASSES):
        for rows, cols in crops:
            image, saturated = f["electrons"][rows, cols].copy(), f["saturated"][rows, cols].copy()
            want = r if rows == slice(None) else detect_cosmics(image, read_noise=READ_NOISE, mask=saturated)
            got = detect_cosmics_tensor(torch.from_numpy(image), read_noise=READ_NOISE, mask=torch.from_numpy(saturated),
                                        dense_passes=dense, repass_capacity=1.0)
            np.testing.assert_array_equal(got.mask.numpy(), want.mask)
            np.testing.assert_array_equal(got.cleaned.numpy(), want.cleaned)
            assert not got.overflow
    # At 20x the cosmic-ray rate the second pass has many blocks to look at again; one block a tile is short.
    short = detect_cosmics_tensor(torch.from_numpy(f["electrons"]), read_noise=READ_NOISE,
                                  mask=torch.from_numpy(f["saturated"]), dense_passes=1, repass_capacity=1e-6)
    assert short.overflow and not np.array_equal(short.mask.numpy(), r.mask)
    assert (short.mask.numpy() & ~r.mask).sum() == 0  # flags of fewer passes, none that numpy lacks
    # A block cleans again at most RECLEAN_SLOTS pixels near its new flags: one is too few here.
    monkeypatch.setattr(cosmics, "RECLEAN_SLOTS", 1)
    few = detect_cosmics_tensor(torch.from_numpy(f["electrons"]), read_noise=READ_NOISE,
                                mask=torch.from_numpy(f["saturated"]), dense_passes=1, repass_capacity=1.0)
    assert few.overflow and not np.array_equal(few.cleaned.numpy(), r.cleaned)
    monkeypatch.undo()
    for bad in ({"dense_passes": 0}, {"repass_capacity": 0.0}, {"repass_capacity": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            detect_cosmics_tensor(torch.from_numpy(f["electrons"]), read_noise=READ_NOISE, **bad)


def test_fast_laplacian_equals_subsample_convolve_rebin() -> None:
    image = np.random.default_rng(0).gamma(3.0, 100.0, (37, 44)).astype(np.float64)
    sub = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    laplacian = convolve(sub, np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64), mode="nearest")
    literal = np.clip(laplacian, 0, None).reshape(37, 2, 44, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(_lplus(image), literal, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_separable_median_equals_median_of_column_medians(size: int) -> None:
    image = np.random.default_rng(size).normal(size=(30, 41)).astype(np.float32)
    half = size // 2
    padded = np.pad(image, half, mode="reflect")  # scipy's "mirror"
    columns = np.median(np.lib.stride_tricks.sliding_window_view(padded, size, axis=0), axis=-1)
    literal = np.median(np.lib.stride_tricks.sliding_window_view(columns, size, axis=1), axis=-1)
    np.testing.assert_array_equal(_median_filter(image, size), literal.astype(np.float32))
    tensor = detect_cosmics_tensor.__globals__["_median_filter_tensor"](torch.from_numpy(image)[None], size)[0]
    np.testing.assert_array_equal(tensor.numpy(), literal.astype(np.float32))


@pytest.mark.parametrize("n", [3, 5, 7, 9, 25])
def test_median_network_selects_the_median(n: int) -> None:
    # The 0-1 principle: a comparator network sorts every input iff it sorts every 0-1 input.
    if n <= 9:  # exhaustive up to 2**9 inputs
        inputs = np.array(np.meshgrid(*[[0, 1]] * n, indexing="ij")).reshape(n, -1).T
        for bits in inputs:
            wires = list(bits)
            for i, j in _sorting_network(n):
                wires[i], wires[j] = min(wires[i], wires[j]), max(wires[i], wires[j])
            assert wires == sorted(bits)
    values = np.random.default_rng(n).normal(size=(n, 500))
    np.testing.assert_array_equal(_median_of(list(values), np.minimum, np.maximum), np.median(values, axis=0))


def test_hot_pixels_are_the_pixels_flagged_in_every_exposure(frames: list[dict], results: list) -> None:
    persistent = persistent_pixels([r.mask for r in results])
    fixed = (frames[0]["truth"] & (MaskBit.HOT_PIXEL | MaskBit.BAD_COLUMN)) > 0  # the same in every exposure
    # Only the defects persist (with the neighbours the growth step adds), and the rare pixels
    # that cosmic rays hit in both exposures (at 20x the natural rate).
    eight = np.ones((3, 3), dtype=bool)
    twice = binary_dilation((frames[0]["truth"] & MaskBit.COSMIC_RAY) > 0, eight) & \
        binary_dilation((frames[1]["truth"] & MaskBit.COSMIC_RAY) > 0, eight)
    assert (persistent & ~binary_dilation(fixed, eight) & ~twice).sum() == 0
    assert (persistent & twice).sum() <= 5
    hot = frames[0]["hot"] & frames[1]["hot"]
    assert hot.sum() >= 4 and (persistent & hot).sum() == hot.sum()
    with pytest.raises(ValueError, match="two"):
        persistent_pixels([results[0].mask])


def test_blank_frame_flags_nothing_and_bad_input_is_refused() -> None:
    flat = np.random.default_rng(1).poisson(800.0, (64, 64)).astype(np.float32)
    out = detect_cosmics(flat, read_noise=5.0)
    assert out.mask.dtype == bool and out.mask.sum() <= 2  # 5-sigma Laplacian noise peaks are rare
    with pytest.raises(ValueError, match="2-D"):
        detect_cosmics(flat[None], read_noise=5.0)
    with pytest.raises(ValueError, match="objlim"):
        detect_cosmics(flat, read_noise=5.0, objlim=0.0)
