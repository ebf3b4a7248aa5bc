"""The SEP baseline measures on the tile program's own difference images, beyond-CCD masking included."""

from __future__ import annotations

import numpy as np
import pytest

from skyblink.cluster.planning import plan_tiles
from skyblink.config import SimConfig
from skyblink.evaluation.sep_baseline import difference_window
from skyblink.sim import simulate_night
from skyblink.storage import NightStore, StoreLayout, open_fits_exposure
from skyblink.workers.tile_unit import WorkUnit, prepare_tile


@pytest.fixture(scope="module")
def night_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[NightStore, list[WorkUnit]]:
    tmp = tmp_path_factory.mktemp("sep-baseline")
    simulate_night(tmp / "night", SimConfig(fields=1, exposures_per_field=1, image_size=256, seed=3), max_workers=1)
    store = NightStore(str(tmp / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128))
    for kind, folder in (("exposure", "exposures"), ("reference", "references")):
        for path in sorted((tmp / "night" / folder).glob("*.fits*")):
            with open_fits_exposure(path) as reader:
                store.write_exposure(f"{folder}/{path.name.split('.')[0]}", reader.exposure, reader.images(), kind=kind,
                                     source={"path": str(path)})
    (key,) = store.exposure_keys()
    return store, plan_tiles(store, key, size=128, margin=32)


def test_the_baseline_difference_is_the_tile_programs(night_store: tuple[NightStore, list[WorkUnit]]) -> None:
    store, units = night_store
    for unit in (units[0], units[-1]):
        difference, fwhm_px, origin = difference_window(unit, store)
        prepared = prepare_tile(unit, store)
        np.testing.assert_array_equal(difference, prepared.matched.triplet[2])
        assert fwhm_px == max(prepared.fwhm_px)
        assert origin == (unit.y0 - unit.margin, unit.x0 - unit.margin)


def test_the_baseline_difference_is_empty_beyond_the_ccd(night_store: tuple[NightStore, list[WorkUnit]]) -> None:
    # The first unit's window starts 32 pixels before the CCD's first row and column; the warped
    # reference covers those pixels, the science does not. A difference there would be made of the
    # reference alone (up to ~18 sigma on this night before the baseline shared the tile program's
    # preparation), and SEP would measure it.
    store, units = night_store
    first = units[0]
    assert (first.y0, first.x0) == (0, 0)
    difference, _, (oy, ox) = difference_window(first, store)
    beyond = np.zeros(difference.shape, bool)
    beyond[: -oy] = True
    beyond[:, : -ox] = True
    assert np.all(np.nan_to_num(difference[beyond]) == 0.0)
    assert np.abs(difference[~beyond]).max() > 5.0  # the CCD itself still has its sources
