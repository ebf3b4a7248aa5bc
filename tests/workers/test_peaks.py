"""
Candidates on pixels the calibration could not measure: a saturated hot pixel (fixed on the CCD, absent from
the reference, so a point source thousands of sigma bright in the difference) is no candidate on the CPU path
nor in the device program, while a real point source a few pixels from it still is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

pytest.importorskip("onnxruntime")

from skyblink.workers.matched_filter import matched_filter_snr
from skyblink.workers.peaks import find_peaks, masked_cores
from skyblink.workers.program_config import TileProgram
from skyblink.workers.subtract_pair import PairImage, PairStore, subtract_pair
from skyblink.workers.tile_unit import WorkUnit, prepare_tile

SIZE = 192
SATURATE = 60000.0
SKY = 1000.0
HOT = (96, 80)  # (x, y): a saturated hot pixel, bled one pixel up and down the column
TRANSIENT = (110.3, 80.6)  # a real new point source 14 pixels beside it (outside its ring: `peaks.MAX_RING`)
STARS = [(40.0, 50.0, 60000.0), (150.0, 40.0, 30000.0), (60.0, 150.0, 45000.0), (140.0, 140.0, 80000.0),
         (30.0, 110.0, 25000.0), (120.0, 60.0, 35000.0)]


def _gaussians(sources: list[tuple[float, float, float]], fwhm: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    s = fwhm / 2.3548
    out = np.zeros((SIZE, SIZE))
    for x, y, flux in sources:
        out += flux / (2 * np.pi * s * s) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return out


def _image(data: np.ndarray, fwhm: float) -> PairImage:
    header = fits.Header()
    header.update({"GAIN": 1.0, "RDNOISE": 5.0, "SATURATE": SATURATE, "FWHM": fwhm})
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [SIZE / 2, SIZE / 2]
    wcs.wcs.cdelt = [-0.263 / 3600, 0.263 / 3600]
    return PairImage(data.astype(np.float32), header, wcs.to_header().tostring(), Path(f"pair-{fwhm}.fits"))


@pytest.fixture(scope="module")
def pair() -> tuple[PairImage, PairImage]:
    """Reference FWHM 2.0 px, science 2.6 px with the transient and the saturated hot pixel; Poisson noise."""
    rng = np.random.default_rng(20)
    reference = rng.poisson(SKY + _gaussians(STARS, 2.0)).astype(np.float64)
    science = rng.poisson(SKY + _gaussians([*STARS, (*TRANSIENT, 5000.0)], 2.6)).astype(np.float64)
    x, y = HOT
    science[y - 1: y + 2, x] = SATURATE  # as the simulator's: 4x the full well, bled along its column
    science[y - 2, x] = science[y + 2, x] = 45000.0
    return _image(science, 2.6), _image(reference, 2.0)


def _near(xs: np.ndarray, ys: np.ndarray, at: tuple[float, float], radius: float = 3.0) -> np.ndarray:
    return np.hypot(np.asarray(xs) - at[0], np.asarray(ys) - at[1]) < radius


def test_masked_cores_grow_by_half_a_fwhm_at_least_the_3x3() -> None:
    masked = np.zeros((20, 20), dtype=bool)
    masked[10, 10] = True
    assert masked_cores(masked, None).sum() == 9 and masked_cores(masked, 1.6).sum() == 9
    assert masked_cores(masked, 5.0).sum() == 7 * 7


@pytest.mark.parametrize("psf_match", ["gaussian", "kernel"])
def test_saturated_hot_pixel_is_no_candidate_on_the_cpu_path(pair, runners, psf_match: str) -> None:
    science, reference = pair
    program = TileProgram(psf_match=psf_match)
    result = subtract_pair(science, reference, *runners, program)
    xs, ys = np.array([c.x for c in result.candidates]), np.array([c.y for c in result.candidates])
    assert _near(xs, ys, TRANSIENT).any(), list(zip(xs, ys, strict=True))
    assert not _near(xs, ys, HOT).any(), list(zip(xs, ys, strict=True))
    # What the rule removes: without the calibration's mask the hot pixel is a difference point source.
    store = PairStore(science, reference)
    unit = WorkUnit.tiling(store.url, "exposures/science", "ccd000", (SIZE, SIZE), size=SIZE, margin=program.margin)[0]
    prepared = prepare_tile(unit, store, program)
    assert prepared.calibration_mask is not None and prepared.calibration_mask.sum() == 3
    snr = matched_filter_snr(prepared.matched.triplet[2], max(prepared.fwhm_px), renormalize=True)
    heat = np.zeros((3, *snr.shape), np.float32)
    m = unit.margin
    options = {"threshold": 0.3, "channels": (1, 2), "snr": snr, "difference_fwhm_px": max(prepared.fwhm_px)}
    unmasked = find_peaks(heat, **options)
    masked = find_peaks(heat, **options, masked=prepared.calibration_mask)
    assert _near(unmasked.x - m, unmasked.y - m, HOT).any() and not _near(masked.x - m, masked.y - m, HOT).any()
    assert _near(masked.x - m, masked.y - m, TRANSIENT).any()


@pytest.mark.parametrize("psf_match", ["gaussian", "kernel"])
def test_saturated_hot_pixel_is_no_candidate_in_the_device_program(pair, torch_runners, psf_match: str) -> None:
    torch = pytest.importorskip("torch")
    from skyblink.workers.device_program import make_device_program

    science, reference = pair
    yy, xx = np.mgrid[:SIZE, :SIZE]
    grid = torch.tensor(np.stack([xx, yy]), dtype=torch.float32)[None].contiguous()
    raw = torch.from_numpy(science.data.astype(np.uint16).view(np.int16))[None]
    out = make_device_program(*torch_runners, torch.from_numpy(reference.data), grid, TileProgram(psf_match=psf_match),
                              science_fwhm_px=2.6, reference_fwhm_px=2.0, saturate=SATURATE, read_noise=5.0, gain=1.0)(raw, 0)
    valid = out["valid"].numpy()
    xs, ys = out["x"].numpy()[valid], out["y"].numpy()[valid]
    assert _near(xs, ys, TRANSIENT).any(), list(zip(xs, ys, strict=True))
    assert not _near(xs, ys, HOT).any(), list(zip(xs, ys, strict=True))
