"""
Planning: which work units the driver hands to the workers.

A unit is one tile of one CCD of one exposure (`skyblink.workers.tile_unit.WorkUnit`, the
contract with the workers); `plan_tiles` lists the units of every CCD of an exposure from the
store's CCD names and image shapes. The night's plan (which exposures, skipped and why) is
`skyblink.cluster.night.plan_night`, built on it.
"""

from __future__ import annotations

from typing import Any

from skyblink.workers.tile_unit import WorkUnit

__all__ = ["plan_ccd_tiles", "plan_tiles"]


def plan_tiles(store: Any, exposure: str, *, size: int, margin: int = 32) -> list[WorkUnit]:
    """
    Return the work units covering every CCD of an exposure with cores of ``size`` pixels.

    Parameters
    ----------
    store : NightStore
        Or any store with ``url``, ``ccd_names(exposure)`` and ``image(exposure, ccd)``.
    exposure : str
        The exposure's store key, e.g. ``"exposures/F00-003"``.
    size, margin : int
        Core edge and the context read on every side, in pixels.

    Returns
    -------
    list of WorkUnit
        CCD by CCD in the store's order, each row-major (`WorkUnit.tiling`).

    Raises
    ------
    KeyError
        The store has no such exposure.
    """
    return [unit for ccd in store.ccd_names(exposure)
            for unit in WorkUnit.tiling(store.url, exposure, ccd, store.image(exposure, ccd).shape, size=size, margin=margin)]


def plan_ccd_tiles(store: Any, exposure: str, ccd: str, *, size: int, margin: int = 32) -> list[WorkUnit]:
    """
    Return the work units covering one CCD of an exposure (row-major), as `plan_tiles` does for each.

    The CCD may have landed while the exposure's later CCDs are still being written
    (`NightStore.landed_ccds`): a night run plans each CCD's tiles as it lands.

    Raises
    ------
    KeyError
        The store has no such CCD (not landed, or the exposure is absent).
    """
    return WorkUnit.tiling(store.url, exposure, ccd, store.image(exposure, ccd).shape, size=size, margin=margin)
