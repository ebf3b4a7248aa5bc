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
(`matched_filter_snr_tensor`, the separable blur of `skyblink.workers.tile_program.blur_taps`), with the
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

from skyblink.lazy_import import lazy_module
from skyblink.psf_filter import DEFAULT_SNR_THRESHOLD, matched_filter_snr, psf_norm
from skyblink.psf_filter import MAD_TO_SIGMA as _MAD_TO_SIGMA
from skyblink.psf_filter import RMS_STRIDE as _RMS_STRIDE
from skyblink.psf_filter import TRUNCATE as _TRUNCATE
from skyblink.psf_filter import psf_sigma as _sigma

if TYPE_CHECKING:
    import torch
else:
    # The optional [ml] extra, imported by the first tensor function: the numpy functions (and the
    # driver, which imports this module) work without it and do not pay for it.
    torch = lazy_module("torch")

from .fused import fused

__all__ = ["DEFAULT_SNR_THRESHOLD", "matched_filter_snr", "matched_filter_snr_tensor", "matched_filter_taps", "psf_norm"]


def matched_filter_taps(fwhm_px: float, *, radius: int | None = None, device: str | torch.device = "cpu") -> tuple[torch.Tensor, float]:
    """
    The filter of `matched_filter_snr_tensor` as blur taps (`skyblink.workers.tile_program.gaussian_taps`,
    zero-padded to ``radius`` when given) and the divisor ``psf_norm`` rounded to float32.

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive.
    """
    from .tile_program import gaussian_taps  # noqa: PLC0415 - tile_program imports this package's CPU modules

    return gaussian_taps(_sigma(fwhm_px), truncate=_TRUNCATE, radius=radius, device=device), float(np.float32(psf_norm(fwhm_px)))


def matched_filter_snr_tensor(difference: torch.Tensor, fwhm_px: float, *, renormalize: bool = False,
                              taps: tuple[torch.Tensor, float | torch.Tensor] | None = None) -> torch.Tensor:
    """
    `matched_filter_snr` for a batch on any device.

    Parameters
    ----------
    difference : (B, H, W) float tensor
    fwhm_px : float
    renormalize : bool
        Per tile: divide by its robust rms, on the same subsample and with the same median as
        numpy's (two sorts of 65k values per 1024x1024 tile, no host synchronisation).
    taps : (taps, psf norm), optional
        `matched_filter_taps` of ``fwhm_px``, made once (a compiled program takes them as tensors,
        so that one compilation serves every PSF); ``fwhm_px`` is then not used.

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
    weights, norm = matched_filter_taps(fwhm_px, device=difference.device) if taps is None else taps
    snr = _filtered(difference, weights, norm)
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


@fused
def _filtered(difference: torch.Tensor, weights: torch.Tensor, norm: float | torch.Tensor) -> torch.Tensor:
    """The difference correlated with the PSF, over ``psf_norm`` (one fused kernel per axis on CUDA)."""
    from .tile_program import blur_taps  # noqa: PLC0415 - tile_program imports this package's CPU modules

    return blur_taps(difference.to(torch.float32), weights) / norm


def _median_rows(values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """numpy's median (mean of the two middle values) of the first ``count`` non-NaN values of each row; (B, 1)."""
    ordered, _ = torch.sort(values, dim=1)  # NaN sort last
    lo = ((count - 1).clamp(min=0) // 2).to(torch.int64)
    hi = (count // 2).clamp(max=values.shape[1] - 1).to(torch.int64)
    return (ordered.gather(1, lo) + ordered.gather(1, hi)) * 0.5
