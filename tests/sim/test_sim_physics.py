"""Unit tests of the simulator's physics: PSF, bleeding, noise, photometry, configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skyblink.config import SimConfig
from skyblink.sim import rubin_visit_config
from skyblink.sim.ccd_image import render_ccd
from skyblink.sim.conditions import FULL_WELL, GAIN, exposure_conditions, limiting_magnitude
from skyblink.sim.detector import bleed_columns, photon_noise, read_out
from skyblink.sim.psf import moffat_gamma, psf_kernel, render_point_sources, render_segments
from skyblink.sim.seeds import Stream, rng_for


def test_point_source_flux_and_fwhm() -> None:
    image = np.zeros((101, 101))
    render_point_sources(
        image, np.array([50.3]), np.array([49.8]), np.array([1e5]), fwhm_px=3.0, beta=3.0
    )
    assert image.sum() == pytest.approx(1e5, rel=0.01)
    profile = image[50, :]
    half = profile.max() / 2
    above = np.flatnonzero(profile > half)
    assert above.size == pytest.approx(3.0, abs=1.0)
    assert psf_kernel(2.0, 3.0).sum() == pytest.approx(1.0)


def test_trail_spreads_flux_along_the_segment() -> None:
    image = np.zeros((64, 128))
    render_segments(
        image,
        np.array([30.0]),
        np.array([32.0]),
        np.array([90.0]),
        np.array([32.0]),
        np.array([6e4]),
        fwhm_px=2.5,
        beta=3.0,
    )
    assert image.sum() == pytest.approx(6e4, rel=0.02)
    row = image[32, 40:80]
    assert row.std() < 0.05 * row.mean()


def test_bleeding_conserves_charge_along_the_column() -> None:
    electrons = np.full((50, 3), 1000.0)
    electrons[25, 1] = 3.5 * FULL_WELL
    before = electrons[:, 1].sum()
    saturated = bleed_columns(electrons, FULL_WELL)
    assert electrons[:, 1].sum() == pytest.approx(before)
    assert electrons.max() <= FULL_WELL
    assert saturated[:, 1].sum() >= 3
    rows = np.flatnonzero(saturated[:, 1])
    assert rows.min() < 25 < rows.max()
    assert not saturated[:, [0, 2]].any()


def test_read_out_saturates_and_clips() -> None:
    rng = np.random.default_rng(0)
    electrons = np.array([[0.0, 5000.0, FULL_WELL]])
    saturated = electrons >= FULL_WELL
    adu = read_out(
        electrons,
        rng,
        read_noise=5.0,
        gain=GAIN,
        saturate_adu=1234.0,
        saturated=saturated,
        dtype="uint16",
    )
    assert adu.dtype == np.uint16
    assert adu[0, 2] == 1234
    assert adu[0, 0] < 10
    with pytest.raises(ValueError, match="dtype"):
        read_out(
            electrons,
            rng,
            read_noise=5.0,
            gain=GAIN,
            saturate_adu=1.0,
            saturated=saturated,
            dtype="int8",
        )  # type: ignore[arg-type]


def test_photon_noise_of_a_coadd_is_lower() -> None:
    expected = np.full((200, 200), 4000.0)
    single = photon_noise(expected, np.random.default_rng(1))
    deep = photon_noise(expected, np.random.default_rng(1), depth=9)
    assert single.std() == pytest.approx(math.sqrt(4000.0), rel=0.05)
    assert deep.std() == pytest.approx(math.sqrt(4000.0) / 3, rel=0.05)
    with pytest.raises(ValueError, match="depth"):
        photon_noise(expected, np.random.default_rng(1), depth=0)


def test_limiting_magnitude_is_a_five_sigma_detection() -> None:
    sky, rn, zp, t, fwhm, beta = 5000.0, 6.0, 28.0, 30.0, 2.0, 3.0
    m5 = limiting_magnitude(zp_e=zp, exptime=t, sky_e=sky, read_noise=rn, fwhm_px=fwhm, beta=beta)
    flux = t * 10 ** (-0.4 * (m5 - zp))
    psf = psf_kernel(fwhm, beta, radius=16)
    snr = flux * np.sqrt(np.sum(psf**2 / (flux * psf + sky + rn**2)))
    assert snr == pytest.approx(5.0, rel=0.05)


def test_moffat_gamma_rejects_bad_parameters() -> None:
    assert moffat_gamma(2.0, 3.0) == pytest.approx(2.0 / (2 * math.sqrt(2 ** (1 / 3) - 1)))
    with pytest.raises(ValueError, match="beta"):
        moffat_gamma(2.0, 1.0)
    with pytest.raises(ValueError, match="fwhm_px"):
        moffat_gamma(0.0, 3.0)


def test_streams_do_not_depend_on_order() -> None:
    a = rng_for(5, Stream.COSMIC_RAYS, 1, 2, 3).normal(size=4)
    rng_for(5, Stream.COSMIC_RAYS, 0, 0, 0).normal(size=1000)
    b = rng_for(5, Stream.COSMIC_RAYS, 1, 2, 3).normal(size=4)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        rng_for(-1, Stream.STARS)


def test_seeing_varies_between_exposures() -> None:
    config = SimConfig(exposures_per_field=8)
    seeing = [exposure_conditions(config, 0, n).fwhm_arcsec for n in range(8)]
    assert all(0.8 <= s <= 2.0 for s in seeing)
    assert np.ptp(seeing) > 0.05


def test_render_ccd_rejects_out_of_range_indices() -> None:
    config = SimConfig(image_size=64, fields=1, exposures_per_field=1)
    with pytest.raises(ValueError, match="field"):
        render_ccd(config, 3, 0, exposure=0)
    with pytest.raises(ValueError, match="exposure"):
        render_ccd(config, 0, 0, exposure=5)


def test_rubin_visit_config() -> None:
    config = rubin_visit_config(seed=3)
    assert (config.fields, config.exposures_per_field, config.ccds, config.image_size) == (
        1,
        1,
        189,
        4096,
    )
    assert config.seed == 3


@pytest.mark.slow
def test_a_rubin_ccd_renders_with_consistent_truth() -> None:
    from astropy.wcs import WCS

    config = rubin_visit_config(seed=5)
    ccd = render_ccd(config, 0, 188, exposure=0)
    assert ccd.pixels.shape == (4096, 4096)
    assert ccd.pixels.dtype == np.uint16
    assert ccd.mask.shape == (4096, 4096)
    wcs = WCS(ccd.wcs_header)
    stars = next(p for p in ccd.truth_parts if p["type"] == "star")
    assert len(stars["x"]) > 500
    x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    np.testing.assert_allclose(x, stars["x"], atol=1e-6)
    np.testing.assert_allclose(y, stars["y"], atol=1e-6)
