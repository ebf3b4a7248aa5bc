"""Deterministic random streams of the simulator.

Every random quantity of a night is drawn from a `numpy.random.Generator` seeded by a
`numpy.random.SeedSequence` built from the night's seed, a purpose code and the indices of what
is being drawn (field, exposure, CCD). A stream therefore depends only on *what* it draws and
never on the order in which processes draw it, so a night simulated serially or by a process pool
gives byte-identical files.

Notes
-----
Internal to `skyblink.sim`. Pure functions; thread- and process-safe.

"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "rng_for"]


class Stream(IntEnum):
    """Purpose codes that keep the random streams of a night independent of each other."""

    FIELD_POINTING = 1
    STARS = 2
    GALAXIES = 3
    VARIABLES = 4
    TRANSIENTS = 5
    MOVERS = 6
    EXPOSURE_CONDITIONS = 7
    EXPOSURE_POINTING = 8
    PIXEL_NOISE = 9
    COSMIC_RAYS = 10
    SATELLITES = 11
    HOT_PIXELS = 12
    BAD_COLUMNS = 13
    REFERENCE_CONDITIONS = 14
    REFERENCE_PIXEL_NOISE = 15


def rng_for(seed: int, stream: Stream, *indices: int) -> np.random.Generator:
    """Return the generator of one random stream.

    Parameters
    ----------
    seed : int
        The night's seed (``SimConfig.seed``), >= 0.
    stream : `Stream`
        What the stream is for.
    *indices : int
        Indices (>= 0) that select the stream, e.g. field, exposure and CCD numbers.

    Returns
    -------
    `numpy.random.Generator`
        A PCG64 generator; the same arguments always give the same sequence.

    Raises
    ------
    ValueError
        If ``seed`` or an index is negative.

    """
    if seed < 0:
        msg = f"seed must be >= 0, got {seed!r}"
        raise ValueError(msg)
    if any(i < 0 for i in indices):
        msg = f"stream indices must be >= 0, got {indices!r}"
        raise ValueError(msg)
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, int(stream), *indices]))
    )
