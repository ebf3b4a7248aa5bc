"""
PSF width units shared by the driver and the workers (no torch, no astropy).

A Gaussian's full width at half maximum is ``FWHM_PER_SIGMA`` times its standard deviation
(2 sqrt(2 ln 2) = 2.3548...). Seeing is given as a FWHM; the matched filter, the centroids and
the error ellipses work in sigma.
"""

from __future__ import annotations

import math

__all__ = ["FWHM_PER_SIGMA", "fwhm_to_sigma"]

#: FWHM of a Gaussian over its standard deviation.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def fwhm_to_sigma(fwhm: float) -> float:
    """Return the standard deviation of a Gaussian of full width at half maximum ``fwhm`` (same unit)."""
    return fwhm / FWHM_PER_SIGMA
