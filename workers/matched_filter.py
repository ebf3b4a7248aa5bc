"""
The point-source matched filter of a difference image, in signal-to-noise units.

The difference channel of the triplet (`skyblink.workers.normalized_triplet`) is in units of
its own per-pixel noise. Correlating it with the PSF ``P`` (a Gaussian of the tile's FWHM,
normalised to sum 1) and dividing by ``sqrt(sum P**2)`` gives, at every pixel, the S/N of a
point source centred there: on white unit-variance noise the map has unit variance, and a
source of amplitude ``A P`` (sigma units) peaks at ``A sqrt(sum P**2)``, the optimal S/N.

Candidates are kept only where this S/N reaches a threshold (`snr_threshold`, 5 by default).

Notes
-----
One formula, in numpy (`matched_filter_snr`, scipy's ``gaussian_filter``) and in torch
(`matched_filter_snr_tensor`, the separable blur of `skyblink.workers.tile_program`), with the
same discrete kernel and edge handling (``mode="nearest"``). The normalisation assumes white
noise: where PSF matching blurred the noisier image, neighbouring pixels of the difference are
correlated and the map's rms exceeds 1 (measured on simulated tiles: 1.05-1.1 when the
reference is blurred, 2.2 when the science is); ``renormalize=True``, which the tile program
uses, divides by the map's robust rms (1.4826 x the median absolute deviation) instead.

The robust rms is taken over a fixed subsample, every ``_RMS_STRIDE``-th row and column (65,536
pixels of a 1024x1024 tile): the median and MAD of 65k values have a relative standard error
of about 0.5 %, and the matched-filtered map is smooth on the PSF scale, so the full 1M pixels
add nothing but cost (two sorts of a million values per tile on a GPU). Both versions use the
same subsample and numpy's median (mean of the two middle values on even counts), so they give
the same scale. Pure functions, thread-safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter

from skyblink.lazy_import import lazy_module
from skyblink.psf_units import FWHM_PER_SIGMA

if TYPE_CHECKING:
    import torch

    from . import tile_program
else:
    # The optional [ml] extra, imported by the first tensor function: the numpy functions (and the
    # driver, which imports this module) work without it and do not pay for it.
    torch = lazy_module("torch")
    tile_program = lazy_module(".tile_program", __package__)


__all__ = ["DEFAULT_SNR_THRESHOLD", "matched_filter_snr", "matched_filter_snr_tensor", "psf_norm"]

#: Default S/N a candidate must reach in the matched-filtered difference.
DEFAULT_SNR_THRESHOLD = 5.0

_TRUNCATE = 4.0
_MAD_TO_SIGMA = 1.4826
#: The robust rms of ``renormalize`` uses every this-many-th row and column.
_RMS_STRIDE = 4


def _sigma(fwhm_px: float) -> float:
    if not fwhm_px > 0:
        msg = f"fwhm_px must be positive, got {fwhm_px!r}"
        raise ValueError(msg)
    return fwhm_px / FWHM_PER_SIGMA


def psf_norm(fwhm_px: float) -> float:
    """
    ``sqrt(sum P**2)`` of the discrete, unit-sum Gaussian PSF of ``fwhm_px`` that the filters use.

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive.
    """
    sigma = _sigma(fwhm_px)
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float(np.sum(k * k))  # the 2-D kernel is the outer product: sum P^2 = (sum k^2)^2


def matched_filter_snr(difference: np.ndarray, fwhm_px: float, *, renormalize: bool = False) -> np.ndarray:
    """
    S/N map of point sources in a difference image in sigma units.

    Parameters
    ----------
    difference : (ny, nx) ndarray
        Difference in units of its per-pixel noise (channel 2 of the triplet).
    fwhm_px : float
        PSF FWHM of the difference (the broader of the two images), pixels.
    renormalize : bool
        Divide by the map's robust rms over the pixels where ``difference`` is not exactly 0
        (the triplet's uncovered pixels), for correlated noise, instead of trusting white noise;
        the rms is measured on every 4th row and column (see the module notes).

    Returns
    -------
    (ny, nx) ndarray of float32
        The S/N of a point source centred at each pixel.

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive or ``difference`` is not 2-D.
    """
    if np.ndim(difference) != 2:
        msg = f"difference must be 2-D, got shape {np.shape(difference)}"
        raise ValueError(msg)
    sigma = _sigma(fwhm_px)
    snr = gaussian_filter(np.asarray(difference, dtype=np.float32), sigma, mode="nearest", truncate=_TRUNCATE)
    snr = snr / np.float32(psf_norm(fwhm_px))
    if renormalize:
        step = _RMS_STRIDE
        # The triplet is exactly 0 where the reference does not cover.
        values = snr[::step, ::step][np.asarray(difference)[::step, ::step] != 0]
        mad = np.median(np.abs(values - np.median(values))) if values.size else 0.0
        if mad > 0:
            snr = snr / np.float32(_MAD_TO_SIGMA * mad)
    return snr.astype(np.float32, copy=False)


def matched_filter_snr_tensor(difference: torch.Tensor, fwhm_px: float, *, renormalize: bool = False) -> torch.Tensor:
    """
    `matched_filter_snr` for a batch on any device.

    Parameters
    ----------
    difference : (B, H, W) float tensor
    fwhm_px : float
    renormalize : bool
        Per tile: divide by its robust rms, on the same subsample and with the same median as
        numpy's (two sorts of 65k values per 1024x1024 tile, no host synchronisation).

    Returns
    -------
    (B, H, W) float32 tensor

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive or ``difference`` is not 3-D.
    """
    if difference.ndim != 3:
        msg = f"difference must be (B, H, W), got shape {tuple(difference.shape)}"
        raise ValueError(msg)
    snr = tile_program.gaussian_blur(difference.to(torch.float32), _sigma(fwhm_px), truncate=_TRUNCATE) / float(np.float32(psf_norm(fwhm_px)))
    if renormalize:
        step = _RMS_STRIDE
        sub = snr[:, ::step, ::step].flatten(1)
        covered = (difference[:, ::step, ::step] != 0).flatten(1)
        n = covered.sum(dim=1, keepdim=True)
        nan = torch.full_like(sub, float("nan"))
        med = _median_rows(torch.where(covered, sub, nan), n)
        mad = _median_rows(torch.where(covered, (sub - med).abs(), nan), n)[:, 0]
        mad = torch.nan_to_num(mad, nan=0.0)  # no covered pixel: no rescaling, as numpy's
        scale = torch.where(mad > 0, mad * _MAD_TO_SIGMA, torch.ones_like(mad))
        snr = snr / scale[:, None, None]
    return snr


def _median_rows(values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """numpy's median (mean of the two middle values) of the first ``count`` non-NaN values of each row; (B, 1)."""
    ordered, _ = torch.sort(values, dim=1)  # NaN sort last
    lo = ((count - 1).clamp(min=0) // 2).to(torch.int64)
    hi = (count // 2).clamp(max=values.shape[1] - 1).to(torch.int64)
    return (ordered.gather(1, lo) + ordered.gather(1, hi)) * 0.5
