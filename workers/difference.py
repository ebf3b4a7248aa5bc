"""
Photometric scaling, PSF matching and the noise-normalized (science, reference, difference) triplet.

The reference, already on the science pixel grid (`skyblink.workers.align`), is scaled to the
science image's flux scale from the two zero points; the sharper of the two images is convolved
with a Gaussian so both have the broader PSF; their difference is divided by its propagated
noise. All three channels come out in units of their own noise (sigma), which is what the
detector and the classifier take.

Notes
-----
Pure numpy/scipy, thread-safe. PSFs are approximated as Gaussians of the headers' FWHM for the
matching kernel (the Alard-Lupton and ZOGY kernels are the refined alternatives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.storage.ccd_context import flux_scale

from .background import estimate_background
from .psf_match import KernelGrid, SolvedKernel, kernel_half_width, solve_kernel_grid, source_pixels

__all__ = [
    "FWHM_PER_SIGMA",  # re-exported from skyblink.psf_units, where it is defined
    "MIN_MATCH_SIGMA",
    "MatchedDifference",
    "blurred_noise_factor",
    "flux_scale",  # re-exported from skyblink.storage.ccd_context, where the CCD facts are read
    "match_kernel_sigma",
    "matched_difference",
    "normalized_triplet",
]


def match_kernel_sigma(fwhm_a_px: float, fwhm_b_px: float) -> tuple[float, float]:
    """
    Return the Gaussian sigmas (pixels) to convolve image a and image b with, so both reach the
    broader FWHM. One of the two is always 0.
    """
    sa, sb = fwhm_a_px / FWHM_PER_SIGMA, fwhm_b_px / FWHM_PER_SIGMA
    if sa >= sb:
        return 0.0, math.sqrt(sa * sa - sb * sb)
    return math.sqrt(sb * sb - sa * sa), 0.0


#: Matching kernels narrower than this (pixels) are skipped: the image is already matched.
MIN_MATCH_SIGMA = 0.05


def blurred_noise_factor(sigma: float) -> float:
    """
    Factor by which a Gaussian blur of ``sigma`` pixels shrinks white noise.

    White noise through a normalised Gaussian kernel keeps sqrt(sum k^2) = 1/(2 sqrt(pi) sigma)
    of its rms (at most 1).
    """
    return min(1.0, 1.0 / (2.0 * math.sqrt(math.pi) * sigma))


def _solve(sci: np.ndarray, sci_rms: np.ndarray, ref: np.ndarray, ref_rms: np.ndarray, usable: np.ndarray,
           science_fwhm_px: float, reference_fwhm_px: float) -> SolvedKernel | KernelGrid | None:
    """The kernel (varying over the window where its sources allow) taking the sharper image onto the broader one, or None."""
    half = kernel_half_width(science_fwhm_px, reference_fwhm_px)
    if science_fwhm_px >= reference_fwhm_px:
        image, image_rms, target, target_rms = ref, ref_rms, sci, sci_rms
    else:
        image, image_rms, target, target_rms = sci, sci_rms, ref, ref_rms
    fit = source_pixels(image, image_rms, target, target_rms, usable, half)
    return solve_kernel_grid(image, target, fit, half, image_rms=image_rms, target_rms=target_rms,
                             centred=science_fwhm_px < reference_fwhm_px)


def _blur(image: np.ndarray, rms: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    if sigma < MIN_MATCH_SIGMA:
        return image, rms
    return gaussian_filter(image, sigma, mode="nearest"), rms * blurred_noise_factor(sigma)


@dataclass(frozen=True, slots=True)
class MatchedDifference:
    """
    The PSF-matched difference of one window and what the detector takes. Stable.

    Attributes
    ----------
    triplet : (3, ny, nx) ndarray of float32
        science, reference and difference, background-subtracted, each in units of its own noise.
    difference : (ny, nx) ndarray of float32
        PSF-matched science minus reference, in the science's units (0 where not covered).
    noise : (ny, nx) ndarray of float32
        Expected 1-sigma noise of ``difference`` per pixel, same units (NaN where not covered).
    """

    triplet: np.ndarray
    difference: np.ndarray
    noise: np.ndarray


def normalized_triplet(
    science: np.ndarray,
    reference_on_grid: np.ndarray,
    *,
    science_fwhm_px: float,
    reference_fwhm_px: float,
    scale: float = 1.0,
    science_mask: np.ndarray | None = None,
    mesh: int = 64,
) -> np.ndarray:
    """
    Build the detector's input channels from a science image and the warped reference.

    Parameters
    ----------
    science : (ny, nx) ndarray
        Science pixels (ADU).
    reference_on_grid : (ny, nx) ndarray
        Reference pixels on the science grid (NaN where the reference does not cover, and where
        the science window lies beyond its CCD).
    science_fwhm_px, reference_fwhm_px : float
        PSF FWHM of each image in pixels (e.g. header SEEING / pixel scale).
    scale : float
        Reference-to-science flux factor (`flux_scale`).
    science_mask : (ny, nx) bool ndarray, optional
        Pixels to leave out of the background (saturated, bad).
    mesh : int
        Background mesh in pixels.

    Returns
    -------
    (3, ny, nx) ndarray of float32
        science, reference and difference, each background-subtracted and in sigma units;
        0 where the reference does not cover (those pixels are also left out of the science
        background).
    """
    return matched_difference(science, reference_on_grid, science_fwhm_px=science_fwhm_px,
                              reference_fwhm_px=reference_fwhm_px, scale=scale, science_mask=science_mask,
                              mesh=mesh).triplet


def matched_difference(
    science: np.ndarray,
    reference_on_grid: np.ndarray,
    *,
    science_fwhm_px: float,
    reference_fwhm_px: float,
    scale: float = 1.0,
    science_mask: np.ndarray | None = None,
    mesh: int = 64,
    psf_match: Literal["gaussian", "kernel"] = "gaussian",
) -> MatchedDifference:
    """
    `normalized_triplet`, also returning the difference and its noise in the science's units.

    Takes the arguments of `normalized_triplet`, and ``psf_match``: ``"gaussian"`` convolves the
    sharper image with the Gaussian that takes its FWHM to the broader one's; ``"kernel"`` solves
    the kernel on the window's sources (`skyblink.workers.psf_match`: PSF shapes, sub-pixel shift
    and flux ratio), falling back to the Gaussian where the window has too few source pixels.
    Returns a `MatchedDifference`.
    """
    sci = science.astype(np.float32, copy=False)
    covered = np.isfinite(reference_on_grid)
    ref = np.where(covered, reference_on_grid, np.nan).astype(np.float32) * np.float32(scale)
    # Pixels the reference does not cover (or beyond the CCD's edge, which callers mark so) are
    # zero in the output; they are left out of the science background too, so that a fill value
    # there cannot pull the level or shrink the noise of the meshes next to them.
    sci_mask = ~covered if science_mask is None else (science_mask | ~covered)
    sci_bkg = estimate_background(sci, mask=sci_mask, mesh=mesh)
    ref_bkg = estimate_background(ref, mesh=mesh)
    sci_sub = sci - sci_bkg.level
    ref_sub = np.where(covered, ref - ref_bkg.level, 0.0).astype(np.float32)
    solved = None
    if psf_match == "kernel":
        solved = _solve(sci_sub, sci_bkg.rms, ref_sub, ref_bkg.rms, covered & ~sci_mask, science_fwhm_px, reference_fwhm_px)
    if solved is None:
        s_sci, s_ref = match_kernel_sigma(science_fwhm_px, reference_fwhm_px)
        sci_m, sci_rms = _blur(sci_sub, sci_bkg.rms, s_sci)
        ref_m, ref_rms = _blur(ref_sub, ref_bkg.rms, s_ref)
    elif science_fwhm_px >= reference_fwhm_px:  # the reference is convolved onto the science
        sci_m, sci_rms = sci_sub, sci_bkg.rms
        ref_m = np.where(covered, solved.apply(ref_sub) + np.float32(solved.background), 0.0).astype(np.float32)
        ref_rms = ref_bkg.rms * np.float32(solved.noise_factor)
    else:  # the science is convolved onto the reference, then put back on the science's flux scale
        ratio = np.float32(solved.flux_ratio)
        sci_m = (solved.apply(sci_sub) + np.float32(solved.background)) / ratio
        sci_rms = sci_bkg.rms * np.float32(solved.noise_factor) / ratio
        ref_m, ref_rms = ref_sub / ratio, ref_bkg.rms / ratio
    diff_rms = np.sqrt(sci_rms * sci_rms + ref_rms * ref_rms)
    difference = (sci_m - ref_m).astype(np.float32)
    out = np.empty((3, *sci.shape), dtype=np.float32)
    out[0] = sci_m / sci_rms
    out[1] = ref_m / ref_rms
    out[2] = difference / diff_rms
    out[:, ~covered] = 0.0
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    difference[~covered] = 0.0
    noise = np.where(covered, diff_rms, np.nan).astype(np.float32)
    return MatchedDifference(out, difference, noise)
