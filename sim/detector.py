"""From expected electrons to stored pixels: photon noise, charge bleeding, read noise, ADU.

Order of operations for one CCD: Poisson noise on the expected electrons (sky, sources, dark
current of hot pixels and columns, satellite light), then deterministic charge (cosmic rays,
dead columns), then charge bleeding along columns where a pixel exceeds the full well (the
excess is shared equally up and down the column and lost at the CCD edge), then Gaussian read
noise, then division by the gain. Every pixel at or above the full well after bleeding reads
exactly ``SATURATE``; ``uint16`` pixels are rounded and clipped to [0, 65535] (astropy stores
them with ``BZERO = 32768``), ``float32`` pixels are only capped at ``SATURATE``.

Notes
-----
Internal to `skyblink.sim`. Pure functions apart from the documented in-place updates.

"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["bleed_columns", "photon_noise", "read_out"]


def photon_noise(expected: np.ndarray, rng: np.random.Generator, *, depth: int = 1) -> np.ndarray:
    """Return Poisson-sampled electrons per exposure from the ``expected`` electrons.

    For ``depth`` > 1 (a mean coadd) the sum of ``depth`` exposures is sampled and divided by
    ``depth``, which lowers the relative noise by ``sqrt(depth)``.

    Raises
    ------
    ValueError
        If ``depth`` < 1 or ``expected`` has negative or non-finite values.

    """
    if depth < 1:
        msg = f"depth must be >= 1, got {depth!r}"
        raise ValueError(msg)
    if not np.isfinite(expected).all() or expected.min() < 0:
        msg = f"expected electrons must be finite and >= 0, got min {expected.min()!r}"
        raise ValueError(msg)
    counts = rng.poisson(expected * depth).astype(np.float64)
    if depth > 1:
        counts /= depth
    return counts


def bleed_columns(electrons: np.ndarray, full_well: float) -> np.ndarray:
    """Spread charge above ``full_well`` up and down its column, in place.

    Parameters
    ----------
    electrons : (ny, nx) `~numpy.ndarray` of float64
        Modified in place.
    full_well : float
        Pixel capacity in electrons.

    Returns
    -------
    saturated : (ny, nx) `~numpy.ndarray` of bool
        Pixels at full well after bleeding (the saturated cores and their bleed trails).

    """
    columns = np.flatnonzero((electrons > full_well).any(axis=0))
    for col in columns:
        column = electrons[:, col]
        over = column > full_well
        edges = np.flatnonzero(np.diff(np.concatenate([[0], over.astype(np.int8), [0]])))
        runs = list(zip(edges[0::2], edges[1::2], strict=True))
        excesses = [float((column[a:b] - full_well).sum()) for a, b in runs]
        for a, b in runs:
            column[a:b] = full_well
        for (a, b), excess in zip(runs, excesses, strict=True):
            _fill(column[b:], excess / 2, full_well)
            _fill(column[:a][::-1], excess / 2, full_well)
        electrons[:, col] = column
    return electrons >= full_well


def _fill(segment: np.ndarray, charge: float, full_well: float) -> None:
    """Fill ``segment`` (a view, nearest pixel first) up to the full well with ``charge``."""
    if segment.size == 0 or charge <= 0:
        return
    room = np.maximum(full_well - segment, 0.0)
    used = np.cumsum(room)
    n_full = int(np.searchsorted(used, charge, side="right"))
    segment[:n_full] = full_well
    if n_full < segment.size:
        left = charge - (used[n_full - 1] if n_full else 0.0)
        segment[n_full] += left


def read_out(
    electrons: np.ndarray,
    rng: np.random.Generator,
    *,
    read_noise: float,
    gain: float,
    saturate_adu: float,
    saturated: np.ndarray,
    dtype: Literal["uint16", "float32"],
) -> np.ndarray:
    """Add read noise and convert electrons to stored ADU.

    Parameters
    ----------
    electrons : (ny, nx) `~numpy.ndarray` of float64
        Electrons per exposure (after bleeding).
    rng : `numpy.random.Generator`
        Noise stream.
    read_noise : float
        Read noise in electrons (per exposure, or ``READ_NOISE / sqrt(depth)`` for a mean coadd).
    gain : float
        Electrons per ADU.
    saturate_adu : float
        Saturation level in ADU; ``saturated`` pixels are set to it and no pixel exceeds it.
    saturated : (ny, nx) `~numpy.ndarray` of bool
        Pixels at full well.
    dtype : {'uint16', 'float32'}
        Stored pixel type.

    Returns
    -------
    (ny, nx) `~numpy.ndarray` of ``dtype``

    Raises
    ------
    ValueError
        If ``dtype`` is neither 'uint16' nor 'float32'.

    """
    adu = electrons + rng.normal(0.0, read_noise, electrons.shape)
    adu /= gain
    np.minimum(adu, saturate_adu, out=adu)
    adu[saturated] = saturate_adu
    if dtype == "uint16":
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    if dtype == "float32":
        return adu.astype(np.float32)
    msg = f"dtype must be 'uint16' or 'float32', got {dtype!r}"
    raise ValueError(msg)
