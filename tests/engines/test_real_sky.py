"""
Training on the real sky: injections on real cutouts are centred point sources of the survey's
seeing, residuals are bogus, and a fold's model sees nothing made from a held-out alert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skyblink.engines.stamps import external_stamps
from skyblink.engines.training.real_sky import (
    RealSkyRecipe,
    build_pool,
    psf_sigma_px,
    real_sky_samples,
    train_head,
)
from skyblink.storage.alerts.survey_packets import read_survey_packets

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared real alerts not found at {SHARED_DATA}")


@pytest.fixture(scope="module")
def alerts() -> list:
    ztf = read_survey_packets(SHARED_DATA / "fink-client" / "avro_multi_alerts.avro").alerts[:4]
    rubin = read_survey_packets(SHARED_DATA / "fink-client" / "lsst-v10_0_part-2-918301.avro").alerts[:2]
    return [*ztf, *rubin]


def test_psf_of_each_survey_in_stamp_pixels(alerts: list) -> None:
    ztf, rubin = alerts[0], alerts[-1]
    assert psf_sigma_px(ztf) == pytest.approx(float(ztf.record["fwhm"]) / 2.3548, rel=1e-3)
    # Rubin's PSF image (0.2"/px) block-averaged 3x to the pipeline's 0.6"/px: about 1 px
    assert 0.5 <= psf_sigma_px(rubin) < 2.5


def test_injections_are_real_point_sources_and_residuals_bogus(alerts: list) -> None:
    stamps = np.stack([external_stamps(a) for a in alerts])
    sigmas = np.array([psf_sigma_px(a) for a in alerts])
    x, y = real_sky_samples(stamps, sigmas, RealSkyRecipe(per_alert=3), np.random.default_rng(0))
    assert x.shape == (len(alerts) * 6, 3, 63, 63) and x.dtype == np.float32 and np.isfinite(x).all()
    assert (y == 1).sum() == (y == 0).sum() == len(alerts) * 3
    centre = x[:, 2, 29:34, 29:34].sum(axis=(1, 2))
    ring = x[:, 2, 20:43, 20:43].sum(axis=(1, 2)) - x[:, 2, 26:37, 26:37].sum(axis=(1, 2))
    # an injected source (S/N >= 5) stands out of its difference's surroundings at the centre
    assert np.median(centre[y == 1]) > 10 and np.median(centre[y == 1] - centre[y == 0]) > 5
    assert np.isfinite(ring).all()
    # template channel is the alert's real template (rolled), never altered
    for i, template in enumerate(stamps[:, 1]):
        for sample in x[i * 6 : (i + 1) * 6]:
            np.testing.assert_array_equal(np.sort(sample[1].ravel()), np.sort(template.ravel()))


def test_a_fold_sees_nothing_of_its_held_out_alerts(alerts: list) -> None:
    recipe = RealSkyRecipe(sim=False, per_alert=1)
    pool = build_pool(alerts, recipe)
    assert set(np.unique(pool.owner)) == set(range(len(alerts)))
    train = np.array([True, True, False, True, True, False])
    model = train_head(pool, train, recipe)
    # scramble everything made from the held-out alerts: the fold's model must not change
    held = ~train[pool.owner]
    pool.features[held] = np.random.default_rng(1).normal(size=pool.features[held].shape).astype(np.float32)
    pool.rb[held] = 1.0 - pool.rb[held]
    again = train_head(pool, train, recipe)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # while training on them does change it
    other = train_head(pool, np.ones(len(alerts), bool), recipe)
    assert not torch.equal(other.real_bogus.weight, model.real_bogus.weight)


def test_whole_network_fine_tune_sees_nothing_of_held_out_alerts(alerts: list) -> None:
    recipe = RealSkyRecipe(sim=False, per_alert=1, layers="all", epochs=1, batch_size=8, threads=1)
    pool = build_pool(alerts, recipe)
    train = np.array([True, False, True, True, False, True])
    model = train_head(pool, train, recipe)
    held = ~train[pool.owner]
    pool.stamps[held] = np.random.default_rng(2).normal(size=pool.stamps[held].shape).astype(np.float32)
    pool.rb[held] = 1.0 - pool.rb[held]
    again = train_head(pool, train, recipe)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    from skyblink.engines.catalog import load_network

    shipped = load_network("classifier")
    assert not torch.equal(shipped.features[0][0].weight, model.features[0][0].weight)  # the trunk was trained
