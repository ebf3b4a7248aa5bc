"""Calibration to electrons: one formula in numpy and torch, saturation from the header."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from skyblink.sim.conditions import GAIN, READ_NOISE, SATURATE_ADU
from skyblink.workers.calibration import CalibrationSpec, calibrate

torch = pytest.importorskip("torch")

from skyblink.workers.calibration import calibrate_tensor  # noqa: E402


def test_gain_bias_and_flat_give_electrons() -> None:
    rng = np.random.default_rng(0)
    electrons = rng.uniform(100, 5000, (40, 50))
    flat = rng.uniform(0.9, 1.1, (40, 50))
    bias = rng.uniform(990, 1010, (40, 50))
    raw = electrons * flat / GAIN + bias  # what a CCD reads: flat-fielded charge over the gain, plus bias
    out = calibrate(raw, gain=GAIN, bias=bias, flat=flat, saturate=1e9)
    np.testing.assert_allclose(out.electrons, electrons, rtol=1e-5)
    assert out.electrons.dtype == np.float32 and not out.mask.any()
    scalar = calibrate(raw - bias + 1000.0, gain=GAIN, bias=1000.0, flat=flat)
    np.testing.assert_allclose(scalar.electrons, electrons, rtol=1e-5)


def test_missing_terms_are_identity_and_saturation_is_flagged() -> None:
    raw = np.array([[0, 100, SATURATE_ADU - 1, SATURATE_ADU]], dtype=np.uint16)
    out = calibrate(raw)
    np.testing.assert_array_equal(out.electrons, raw.astype(np.float32))
    assert not out.mask.any()
    flagged = calibrate(raw, saturate=SATURATE_ADU)
    np.testing.assert_array_equal(flagged.mask, [[False, False, False, True]])


def test_unusable_flat_is_masked_and_nan() -> None:
    flat = np.array([[1.0, 0.0, np.nan]])
    out = calibrate(np.full((1, 3), 10.0), flat=flat)
    np.testing.assert_array_equal(out.mask, [[False, True, True]])
    assert out.electrons[0, 0] == 10.0 and np.isnan(out.electrons[0, 1:]).all()


def test_spec_from_simulator_header() -> None:
    header = fits.Header({"GAIN": GAIN, "SATURATE": float(SATURATE_ADU), "RDNOISE": READ_NOISE})
    assert CalibrationSpec.from_header(header) == CalibrationSpec(gain=GAIN, saturate=float(SATURATE_ADU), read_noise=READ_NOISE)
    assert CalibrationSpec.from_header({}) == CalibrationSpec()
    with pytest.raises(ValueError, match="GAIN"):
        CalibrationSpec.from_header({"GAIN": 0.0})
    with pytest.raises(ValueError, match="gain"):
        calibrate(np.ones((2, 2)), gain=-1.0)
    with pytest.raises(ValueError, match="flat"):
        calibrate(np.ones((2, 2)), flat=np.ones((3, 3)))


def test_torch_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(900, SATURATE_ADU + 10, (2, 30, 40)).astype(np.uint16)
    bias = rng.uniform(990, 1010, (30, 40)).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, (30, 40)).astype(np.float32)
    flat[0, 0] = 0.0
    dev = calibrate_tensor(torch.from_numpy(raw.astype(np.int32)), gain=GAIN, bias=torch.from_numpy(bias),
                           flat=torch.from_numpy(flat), saturate=SATURATE_ADU)
    for i in range(2):
        cpu = calibrate(raw[i], gain=GAIN, bias=bias, flat=flat, saturate=SATURATE_ADU)
        np.testing.assert_array_equal(dev.mask[i].numpy(), cpu.mask)
        np.testing.assert_array_equal(dev.electrons[i].numpy(), cpu.electrons)  # same float32 operations
    scalar = calibrate_tensor(torch.from_numpy(raw[0].astype(np.int32)), gain=GAIN, bias=1000.0)
    np.testing.assert_array_equal(scalar.electrons.numpy(), calibrate(raw[0], gain=GAIN, bias=1000.0).electrons)
