"""
The point-source matched filter of a difference image, in signal-to-noise units (numpy).

Torch-free, so that the driver side (the reference catalogs' Ray tasks) uses it without the
worker side; `skyblink.workers.matched_filter` re-exports it next to its torch version
(`matched_filter_snr_tensor`), which uses the same kernel, edge handling and subsample.
See `skyblink.workers.matched_filter` for the formula and the robust rms.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from skyblink.psf_units import FWHM_PER_SIGMA

__all__ = ["DEFAULT_SNR_THRESHOLD", "MAD_TO_SIGMA", "RMS_STRIDE", "TRUNCATE", "matched_filter_snr", "psf_norm", "psf_sigma"]

#: Default S/N a candidate must reach in the matched-filtered difference.
DEFAULT_SNR_THRESHOLD = 5.0

#: The Gaussian kernel is cut at this many sigma.
TRUNCATE = 4.0
#: The MAD of a normal distribution times this is its sigma.
MAD_TO_SIGMA = 1.4826
#: The robust rms of ``renormalize`` uses every this-many-th row and column.
RMS_STRIDE = 4


def psf_sigma(fwhm_px: float) -> float:
    """Return the Gaussian sigma of ``fwhm_px``; raises ValueError unless it is positive."""
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
    sigma = psf_sigma(fwhm_px)
    radius = int(TRUNCATE * sigma + 0.5)
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
    sigma = psf_sigma(fwhm_px)
    snr = gaussian_filter(np.asarray(difference, dtype=np.float32), sigma, mode="nearest", truncate=TRUNCATE)
    snr = snr / np.float32(psf_norm(fwhm_px))
    if renormalize:
        step = RMS_STRIDE
        # The triplet is exactly 0 where the reference does not cover.
        values = snr[::step, ::step][np.asarray(difference)[::step, ::step] != 0]
        mad = np.median(np.abs(values - np.median(values))) if values.size else 0.0
        if mad > 0:
            snr = snr / np.float32(MAD_TO_SIGMA * mad)
    return snr.astype(np.float32, copy=False)
