"""The matched filter gives S/N units, the same in numpy and torch, and gates the peaks on both paths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, maximum_filter

from skyblink.workers.difference import FWHM_PER_SIGMA
from skyblink.workers.matched_filter import matched_filter_snr, psf_norm
from skyblink.workers.peaks import difference_point_sources, find_peaks

torch = pytest.importorskip("torch")

from skyblink.workers.matched_filter import matched_filter_snr_tensor  # noqa: E402


def _kernel(fwhm: float) -> np.ndarray:
    """The discrete unit-sum Gaussian PSF the filter correlates with (scipy's kernel)."""
    delta = np.zeros((41, 41))
    delta[20, 20] = 1.0
    return gaussian_filter(delta, fwhm / FWHM_PER_SIGMA, mode="constant", truncate=4.0)


@pytest.mark.parametrize("fwhm", [1.5, 3.0, 5.0])
def test_unit_variance_noise_gives_unit_variance_snr(fwhm: float) -> None:
    noise = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
    snr = matched_filter_snr(noise, fwhm)
    assert snr.dtype == np.float32 and snr.shape == noise.shape
    assert abs(float(snr[16:-16, 16:-16].std()) - 1.0) < 0.03


def test_point_source_peaks_at_its_optimal_snr() -> None:
    fwhm, amplitude = 3.0, 40.0
    k = _kernel(fwhm)
    assert psf_norm(fwhm) == pytest.approx(float(np.sqrt((k * k).sum())), rel=1e-9)
    image = np.zeros((101, 101), dtype=np.float32)
    image[30:71, 30:71] = amplitude * k
    snr = matched_filter_snr(image, fwhm)
    assert np.unravel_index(np.argmax(snr), snr.shape) == (50, 50)
    # Optimal S/N of a source A*P in unit white noise: A * sqrt(sum P^2).
    assert snr[50, 50] == pytest.approx(amplitude * np.sqrt((k * k).sum()), rel=1e-5)


def test_renormalize_corrects_correlated_noise() -> None:
    rng = np.random.default_rng(1)
    blurred = gaussian_filter(rng.normal(size=(400, 400)), 1.0)
    blurred /= blurred.std()  # unit per-pixel variance, but correlated, as a PSF-matched difference
    plain = matched_filter_snr(blurred, 3.0)
    fixed = matched_filter_snr(blurred, 3.0, renormalize=True)
    assert plain[16:-16, 16:-16].std() > 1.5
    assert abs(float(fixed[16:-16, 16:-16].std()) - 1.0) < 0.05


def test_torch_equals_numpy() -> None:
    rng = np.random.default_rng(2)
    diff = rng.normal(size=(2, 96, 80)).astype(np.float32)
    diff[1, :, :10] = 0.0  # not covered by the reference: left out of the robust rms
    for renormalize in (False, True):
        dev = matched_filter_snr_tensor(torch.from_numpy(diff), 2.7, renormalize=renormalize).numpy()
        for i in range(2):
            # Same subsample, same median: equal to float32 rounding either way.
            tol = 1e-5
            np.testing.assert_allclose(dev[i], matched_filter_snr(diff[i], 2.7, renormalize=renormalize), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="fwhm_px"):
        matched_filter_snr(diff[0], 0.0)


def test_find_peaks_keeps_only_peaks_above_the_snr_threshold() -> None:
    heat = np.zeros((3, 40, 40), dtype=np.float32)
    heat[1, 10, 10] = 0.9
    heat[2, 30, 25] = 0.8
    snr = np.zeros((40, 40), dtype=np.float32)
    snr[11, 10] = 7.5  # one pixel off the detector's peak: still its S/N
    snr[30, 25] = 4.0
    gated = find_peaks(heat, threshold=0.3, channels=(1, 2), snr=snr, snr_threshold=5.0)
    assert len(gated) == 1 and (gated.x[0], gated.y[0]) == (10.0, 10.0) and gated.snr[0] == pytest.approx(7.5)
    ungated = find_peaks(heat, threshold=0.3, channels=(1, 2))
    assert len(ungated) == 2 and np.isnan(ungated.snr).all()
    empty = find_peaks(heat, threshold=0.3, snr=snr, snr_threshold=100.0)
    assert len(empty) == 0 and empty.snr.shape == (0,)
    with pytest.raises(ValueError, match="snr"):
        find_peaks(heat, snr=snr[:10])


def test_device_program_on_cpu_gates_snr_and_cleans_cosmic_rays() -> None:
    from skyblink.engines.backends import TorchRunner
    from skyblink.engines.catalog import load_network
    from skyblink.workers.device_program import make_device_program
    from skyblink.workers.program_config import TileProgram

    rng = np.random.default_rng(3)
    size = 128
    yy, xx = np.mgrid[:size, :size]
    reference = torch.tensor(1000.0 + rng.normal(0, 8, (size + 64, size + 64)), dtype=torch.float32)
    grid = torch.tensor(np.stack([xx + 32.0, yy + 32.0]), dtype=torch.float32)[None].expand(2, 2, size, size).contiguous()
    tiles = 1000.0 + rng.normal(0, 30, (2, size, size))
    tiles[0] += 3000.0 * np.exp(-((xx - 60.3) ** 2 + (yy - 70.6) ** 2) / (2 * 1.3**2))  # a new point source
    tiles[1, 40, 90] += 5000.0  # a one-pixel cosmic ray
    tiles[1, 41, 90] += 1500.0
    science = torch.from_numpy(np.clip(tiles, 0, 65535).astype(np.uint16).view(np.int16))
    det = TorchRunner(load_network("detector"), input_name="tiles", output_names=("heatmaps", "offsets"), device="cpu")
    cls = TorchRunner(load_network("classifier"), input_name="stamps", output_names=("real_bogus", "class_probs"), device="cpu")
    with det, cls:
        out = make_device_program(det, cls, reference, grid, TileProgram(detector_threshold=0.05), science_fwhm_px=3.0,
                                  reference_fwhm_px=3.0, read_noise=6.0, saturate=60000.0)(science, 0)
        none = make_device_program(det, cls, reference, grid, TileProgram(detector_threshold=0.05, snr_threshold=1e9),
                                   science_fwhm_px=3.0, reference_fwhm_px=3.0)(science, 0)
    valid = out["valid"].numpy()
    assert not none["valid"].any()
    snr, tile, x, y = (out[k].numpy()[valid] for k in ("snr", "tile", "x", "y"))
    assert len(snr) and (snr >= 5.0).all()  # the detector's noise peaks (score >= 0.05) fail the S/N gate
    found = (tile == 0) & (np.hypot(x - 60.3, y - 70.6) < 2.0)
    assert found.any() and snr[found].max() > 20.0
    assert not ((tile == 1) & (np.hypot(x - 90, y - 40) < 3.0)).any(), "the cosmic ray became a candidate"
    assert out["stamps"].dtype == torch.float16 and torch.isfinite(out["stamps"]).all()


def _difference_scene(seed: int = 3) -> np.ndarray:
    """White noise with a point source at (30.3, 40.6), a star's dipole at (90, 90)/(90, 96) and a trail along y = 60."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    s = 4.0 / 2.3548

    def blob(y: float, x: float, amplitude: float) -> np.ndarray:
        return amplitude * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / s**2)

    trail = 6.0 * np.exp(-0.5 * (yy - 60.0) ** 2 / s**2) * ((xx > 5) & (xx < 60))
    return rng.normal(size=(128, 128)) + blob(30.3, 40.6, 8.0) + blob(90, 90, 8.0) - blob(90, 96, 8.0) + trail


def test_difference_point_sources_keep_point_sources_not_dipoles_or_trails() -> None:
    snr = matched_filter_snr(_difference_scene(), 4.0)
    assert snr[90, 89:92].max() > 15 and snr[60, 10:55].max() > 15  # the dipole's and the trail's peaks are significant
    ys, xs = difference_point_sources(snr, 4.0)
    assert list(zip(ys.tolist(), xs.tolist(), strict=True)) == [(30, 41)]


def test_difference_point_sources_at_match_numpy() -> None:
    torch = pytest.importorskip("torch")
    from skyblink.workers.peaks import difference_point_sources_at, difference_windows

    snr = np.stack([matched_filter_snr(_difference_scene(seed), 4.0) for seed in (3, 4)])
    every = torch.arange(128 * 128).expand(2, -1)
    found, dy, dx = difference_point_sources_at(torch.from_numpy(snr), every, torch.tensor(difference_windows(4.0)), bound=8)
    for b in range(2):
        ys, xs = difference_point_sources(snr[b], 4.0)
        assert sorted(zip(*np.nonzero(found[b].reshape(128, 128).numpy()), strict=True)) == sorted(zip(ys, xs, strict=True))
    peaks = find_peaks(np.zeros((3, 128, 128), np.float32), threshold=0.3, channels=(1, 2), snr=snr[0], difference_fwhm_px=4.0)
    at = 30 * 128 + 41
    assert np.allclose(peaks.y, 30 + dy[0, at].item()) and np.allclose(peaks.x, 41 + dx[0, at].item())
    assert abs(peaks.y[0] - 30.3) < 0.3 and abs(peaks.x[0] - 40.6) < 0.3


def test_max_filter_tensor_is_the_square_maximum_filter_bit_for_bit() -> None:
    torch = pytest.importorskip("torch")
    from scipy.ndimage import maximum_filter

    from skyblink.workers.peaks import max_filter_tensor

    rng = np.random.default_rng(5)
    images = rng.normal(size=(2, 37, 53)).astype(np.float32)
    images[0, :3, :] = -np.inf  # the edges' cut windows, as -inf padding
    for size in (1, 3, 5, 13):
        got = max_filter_tensor(torch.from_numpy(images), size).numpy()
        direct = torch.nn.functional.max_pool2d(torch.from_numpy(images)[:, None], size, 1, size // 2)[:, 0].numpy()
        assert np.array_equal(got, direct)
        for b in range(2):
            assert np.array_equal(got[b], maximum_filter(images[b], size=size, mode="constant", cval=-np.inf))
    with pytest.raises(ValueError, match="odd"):
        max_filter_tensor(torch.from_numpy(images), 4)


@pytest.mark.parametrize("fwhm", [2.6, 3.3, 4.0, 5.7])
def test_sources_read_at_their_places_match_numpy_at_every_seeing(fwhm: float) -> None:
    """
    The device program's form (windows as a tensor, one padding bound, tests read at places) gives
    numpy's sources, sub-pixel peaks and masked cores at every pixel, edges and a NaN included.
    """
    torch = pytest.importorskip("torch")
    from skyblink.workers.peaks import (
        _difference_sources,
        any_within,
        difference_point_sources_at,
        difference_windows,
        masked_cores,
        windows_bound,
    )

    snr = np.stack([matched_filter_snr(_difference_scene(seed), fwhm) for seed in (3, 4)])
    snr[1, :6, :6] += 30.0 * np.exp(-0.5 * ((np.arange(6)[:, None] - 1) ** 2 + (np.arange(6)[None, :] - 2) ** 2))  # at a corner
    snr[0, 70, 3] = np.nan
    windows = difference_windows(fwhm)
    assert len(windows) == 3 + 2 * 16 and windows_bound(windows) <= 16
    every = torch.arange(128 * 128).expand(2, -1)
    found, dy, dx = difference_point_sources_at(torch.from_numpy(snr), every, torch.tensor(windows), bound=16)
    for b in range(2):
        ys, xs, fy, fx = _difference_sources(snr[b], fwhm, 10.0, 5)
        assert len(ys) and sorted(zip(*np.nonzero(found[b].reshape(128, 128).numpy()), strict=True)) == sorted(
            zip(ys, xs, strict=True))
        at = ys * 128 + xs
        np.testing.assert_array_equal(dy[b, at].numpy(), (fy - ys).astype(np.float32))
        np.testing.assert_array_equal(dx[b, at].numpy(), (fx - xs).astype(np.float32))
    assert found[1, 1 * 128 + 2]  # the corner's source
    masked = np.zeros((2, 128, 128), bool)
    masked[0, 40, 50] = masked[1, 0, 127] = masked[1, 64, 64] = True
    cores = any_within(torch.from_numpy(masked), every, torch.tensor(windows[0]), bound=16).reshape(2, 128, 128).numpy()
    assert all(np.array_equal(cores[b], masked_cores(masked[b], fwhm)) for b in range(2))


def test_find_peaks_adds_difference_sources_after_the_detectors_without_duplicates() -> None:
    snr = matched_filter_snr(_difference_scene(), 4.0)
    heat = np.zeros((3, 128, 128), np.float32)
    heat[1, 100, 20] = 0.9  # a detector peak of its own (S/N gate: put a source there)
    snr[99:102, 19:22] = 6.0
    alone = find_peaks(heat, threshold=0.3, channels=(1, 2), snr=snr)
    both = find_peaks(heat, threshold=0.3, channels=(1, 2), snr=snr, difference_fwhm_px=4.0)
    assert len(alone) == 1 and len(both) == 2
    assert (both.x[0], both.y[0]) == (20.0, 100.0) and abs(both.x[1] - 40.6) < 0.3 and both.snr[1] > 15
    heat[2, 31, 42] = 0.5  # the detector also sees the point source: it is reported once, as the detector's
    once = find_peaks(heat, threshold=0.3, channels=(1, 2), snr=snr, difference_fwhm_px=4.0)
    assert len(once) == 2 and (once.x[1], once.y[1]) == (42.0, 31.0)
    assert len(find_peaks(heat, threshold=0.3, channels=(1, 2), snr=snr, difference_fwhm_px=4.0, top_k=1)) == 1


def test_device_peaks_tested_at_their_places_fill_the_slots_of_every_pixel() -> None:
    """The device program's peaks, tested only where a peak could be, fill the slots that testing every pixel fills."""
    torch = pytest.importorskip("torch")
    from skyblink.workers import device_program as dp
    from skyblink.workers.peaks import (
        _difference_sources,
        difference_windows,
        masked_cores,
        windows_bound,
    )

    fwhm, threshold, snr_threshold = 4.0, 0.3, 5.0
    windows = torch.tensor(difference_windows(fwhm))
    bound = 8 * -(-windows_bound(difference_windows(fwhm)) // 8)
    snr = torch.from_numpy(np.stack([matched_filter_snr(_difference_scene(seed), fwhm) for seed in (3, 4)]).astype(np.float32))
    rng = np.random.default_rng(7)
    heat = torch.from_numpy(rng.uniform(0.0, 0.2, (2, 3, 128, 128)).astype(np.float32))
    for b, y, x, value in ((0, 100, 20, 0.9), (0, 31, 42, 0.5), (1, 10, 10, 0.7), (1, 64, 64, 0.8), (1, 90, 91, 0.6)):
        heat[b, 1, y, x] = value
        snr[b, y - 1 : y + 2, x - 1 : x + 2] = torch.maximum(snr[b, y - 1 : y + 2, x - 1 : x + 2], torch.tensor(6.0))
    masked = torch.zeros((2, 128, 128), dtype=torch.bool)
    masked[1, 65, 65] = True  # blocks the detector peak at (64, 64)
    offsets = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 2, 128, 128)).astype(np.float32))
    triplet = torch.from_numpy(rng.normal(size=(2, 3, 128, 128)).astype(np.float32))

    def every_pixel(top_k: int) -> set[tuple]:
        """The slots of testing every pixel (numpy's sources and masked cores, as `find_peaks`), one top-K of the tile."""
        keep, score, peak_snr = dp._detector_peaks(heat, snr, threshold, snr_threshold)
        blocked = torch.from_numpy(np.stack([masked_cores(m, fwhm) for m in masked.numpy()]))
        keep &= ~blocked
        source = torch.zeros_like(keep)
        dy, dx = torch.zeros_like(snr), torch.zeros_like(snr)
        for b in range(2):
            ys, xs, fy, fx = _difference_sources(snr[b].numpy(), fwhm, 10.0, 5)
            source[b, ys, xs] = True
            dy[b, ys, xs], dx[b, ys, xs] = torch.from_numpy((fy - ys).astype(np.float32)), torch.from_numpy((fx - xs).astype(np.float32))
        near = np.stack([maximum_filter(k, size=2 * int(windows[2]) + 1, mode="constant", cval=False) for k in keep.numpy()])
        source &= ~torch.from_numpy(near) & ~blocked
        priority = torch.where(keep, 2.0 + score, torch.where(source, 1.0 + torch.tanh(snr / 1000.0), 0.0))
        values, index = torch.topk(priority.flatten(1), k=top_k, dim=1)
        out = set()
        for b in range(2):
            for v, i in zip(values[b].tolist(), index[b].tolist(), strict=True):
                if v > 0:
                    y, x = divmod(i, 128)
                    sub = (offsets[b, 1, y, x], offsets[b, 0, y, x]) if keep[b, y, x] else (dy[b, y, x], dx[b, y, x])
                    out.add((b, float(np.float32(y) + sub[0].numpy()), float(np.float32(x) + sub[1].numpy()),
                             float(score[b, y, x]), float(peak_snr[b, y, x])))
        return out

    for top_k in (64, 2):
        valid, tile, y, x, score, peak, stamps = dp._peaks(triplet, heat, offsets, snr, masked, windows, threshold,
                                                            snr_threshold, top_k, bound)
        found = {(int(t), float(yy), float(xx), float(s), float(p))
                 for t, yy, xx, s, p in zip(tile[valid], y[valid], x[valid], score[valid], peak[valid], strict=True)}
        assert found == every_pixel(top_k)
        # The 4 unblocked detector peaks (one on the first scene's point source) and the second scene's point source.
        assert len(found) == (5 if top_k == 64 else 4)  # two slots: the second tile's source is cut
    assert stamps.shape == (2 * 2, 3, 63, 63)
