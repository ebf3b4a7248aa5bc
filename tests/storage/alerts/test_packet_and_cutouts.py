"""The typed packet, its deterministic id, and the fast cutout FITS writer against astropy."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys

import numpy as np
import pytest
from alert_factories import NIGHT, detection, image_wcs, make_alerts, stamps
from astropy.io import fits
from astropy.wcs import WCS

from skyblink.storage.alerts import (
    Alert,
    AlertBuilder,
    ClassProbabilities,
    CutoutKind,
    StampWriter,
    cut_stamp,
    make_alert_id,
    read_cutout,
)


def test_alert_id_is_deterministic_in_range_and_stable_across_processes() -> None:
    first = make_alert_id(NIGHT, "f0-000", 3, 1234)
    assert first == make_alert_id(NIGHT, "f0-000", 3, 1234)
    assert 0 <= first < 2**63
    assert first != make_alert_id(NIGHT, "f0-000", 4, 1234)
    assert make_alert_id(NIGHT, "e", 0, (10.001, 20.0)) == make_alert_id(NIGHT, "e", 0, (10.0014, 20.0))
    code = "from skyblink.storage.alerts import make_alert_id; print(make_alert_id('20261125', 'f0-000', 3, 1234))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == first  # no per-process hash seed


def test_alert_ids_of_a_night_do_not_collide() -> None:
    ids = {make_alert_id(NIGHT, f"f{e}", c, k) for e in range(20) for c in range(10) for k in range(500)}
    assert len(ids) == 20 * 10 * 500


def test_records_reject_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        ClassProbabilities(0.5, 0.5, 0.5, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="real_bogus must be in"):
        detection(0, score=1.5)
    alert = make_alerts(1, with_cutouts=False)[0]
    with pytest.raises(ValueError, match="alert_id must be in"):
        Alert(alert_id=-1, night=NIGHT, object_id=1, detection=alert.detection)


def test_avro_dict_round_trip_keeps_every_field() -> None:
    for alert in make_alerts(4):
        assert Alert.from_avro(alert.to_avro()) == alert


def test_stamp_reads_back_with_astropy_same_pixels_and_sky() -> None:
    sci, _, _, wcs, (x0, y0) = stamps()
    data = StampWriter(wcs).encode(sci, x0, y0)
    with fits.open(io.BytesIO(gzip.decompress(data))) as hdul:
        hdul.verify("exception")
        header = hdul[0].header
        assert header["BITPIX"] == -32 and header["NAXIS1"] == 63
        np.testing.assert_array_equal(hdul[0].data, sci)
    stamp_wcs = WCS(header)
    for px, py in ((0, 0), (31, 31), (62, 10)):
        np.testing.assert_allclose(
            stamp_wcs.pixel_to_world_values(px, py), wcs.pixel_to_world_values(x0 + px, y0 + py), rtol=0, atol=1e-10
        )


def test_stamp_keeps_sip_distortion() -> None:
    wcs = image_wcs()
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    from astropy.wcs import Sip

    a = np.zeros((3, 3))
    b = np.zeros((3, 3))
    a[2, 0] = 2e-6
    b[0, 2] = -1.5e-6
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    image = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    stamp, x0, y0 = cut_stamp(image, 450.2, 30.7)
    back = read_cutout(StampWriter(wcs).encode(stamp, x0, y0))
    assert back.wcs is not None and back.wcs.sip is not None
    np.testing.assert_allclose(
        back.wcs.pixel_to_world_values(40, 20), wcs.pixel_to_world_values(x0 + 40, y0 + 20), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("mode", ["rle", "deflate", "stored"])
def test_every_gzip_mode_is_plain_gzip(mode: str) -> None:
    sci, _, _, wcs, (x0, y0) = stamps()
    data = StampWriter(wcs, gzip_mode=mode).encode(sci, x0, y0)  # type: ignore[arg-type]
    assert data[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_cutout(data).data, sci)


def test_cut_stamp_pads_with_nan_at_the_edge() -> None:
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    stamp, x0, y0 = cut_stamp(image, 3.0, 98.4)
    assert stamp.shape == (63, 63) and (x0, y0) == (-28, 67)
    assert np.isnan(stamp[0, 0]) and np.isnan(stamp[-1, -1])
    assert stamp[0, 28] == image[67, 0]
    inner, x0, y0 = cut_stamp(image, 60.0, 50.0)
    np.testing.assert_array_equal(inner, image[19:82, 29:92])
    with pytest.raises(ValueError, match="size must be odd"):
        cut_stamp(image, 1, 1, size=64)


def test_builder_makes_a_valid_packet_with_three_cutouts() -> None:
    sci, tmpl, diff, wcs, origin = stamps()
    alert = AlertBuilder(NIGHT).build(
        detection(5), object_id=9, science=sci, template=tmpl, difference=diff, wcs=wcs, origin=origin
    )
    assert alert.alert_id == make_alert_id(NIGHT, "f0-000", 0, 1005)
    assert set(alert.cutouts()) == set(CutoutKind)
    assert alert.cutout_difference is not None
    assert alert.cutout_difference.file_name == f"{alert.alert_id}-difference.fits.gz"
    np.testing.assert_allclose(read_cutout(alert.cutout_difference.stamp_data).data, diff)
