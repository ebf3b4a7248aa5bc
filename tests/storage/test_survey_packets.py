"""
Real ZTF and Rubin alert packets read into skyblink's stamps and detections.

Every real packet file in ../shared/data reads (ZTF schemas 3.1 to 4.02, Rubin lsst.v9_0 to
v11_1 as Avro containers and as Confluent-framed messages); a garbled packet is reported naming
the packet and the field while the others still read; the 63x63 stamp rule; NaNs.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import fastavro
import numpy as np
import pytest

from skyblink.storage.alerts import ClassProbabilities, DetectionFlag
from skyblink.storage.alerts.survey_packets import (
    STAMP_SIZE,
    Survey,
    SurveyPacketError,
    fit_stamp,
    frame_rubin_record,
    read_survey_files,
    read_survey_packets,
    survey_alert_from_record,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RUBIN_SCHEMAS = SHARED_DATA / "lsst-alert-packet" / "schema"
RUBIN_REAL = SHARED_DATA / "fink-client" / "lsst-v10_0_part-2-918301.avro"
ZTF_EDGE = SHARED_DATA / "ztf-avro-alert" / "alerts" / "472263571115115014.avro"

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                reason=f"shared test data not found at {SHARED_DATA} (the real ZTF and Rubin alerts live there)")


def _packet_files() -> list[Path]:
    return [*sorted(SHARED_DATA.glob("ztf-avro-alert/alerts/*.avro")), *sorted(SHARED_DATA.glob("fink-client/*.avro")),
            *sorted(SHARED_DATA.glob("braai/[0-9]*.json")), *sorted(RUBIN_SCHEMAS.glob("*/*/sample_data/fakeAlert.avro"))]


@pytest.fixture(scope="module")
def report():  # a SurveyReadReport
    return read_survey_files(_packet_files())


@needs_data
def test_every_real_packet_reads(report) -> None:
    assert report.errors == ()
    ztf = [a for a in report.alerts if a.survey is Survey.ZTF]
    rubin = [a for a in report.alerts if a.survey is Survey.RUBIN]
    assert len(ztf) == 58 and len(rubin) == 10  # 7 + 49 + 2 JSON; 7 real + 3 synthetic samples
    assert {a.schema_version for a in ztf} == {"3.1", "3.2", "3.3", "3.5", "4.02"}
    assert {a.schema_version for a in rubin} == {"lsst.v9_0", "lsst.v10_0", "lsst.v11_1"}
    for alert in report.alerts:
        if alert.stamps is None:  # only Rubin's synthetic sample alerts carry no cutouts
            assert "fakeAlert" in alert.packet
            continue
        assert all(s.shape == (STAMP_SIZE, STAMP_SIZE) and s.dtype == np.float32 for s in alert.stamps.triplet)
    # the packet's own score: drb where present, else rb (ZTF); reliability (Rubin)
    assert sum(a.packet_score_name == "drb" for a in ztf) == 52 and sum(a.packet_score_name == "rb" for a in ztf) == 6
    assert all(a.packet_score_name == "reliability" for a in rubin if a.stamps is not None)


@needs_data
def test_rubin_cutouts_have_variance_psf_and_a_tan_wcs(report) -> None:
    real = [a for a in report.alerts if a.survey is Survey.RUBIN and a.stamps is not None]
    assert len(real) == 7
    for alert in real:
        stamps = alert.stamps
        assert stamps.unit == "nJy" and stamps.raw_shape == (30, 30) and stamps.pixel_scale_arcsec == 0.2
        assert stamps.science_variance is not None and stamps.psf is not None
        assert abs(stamps.psf.sum() - 1.0) < 0.05
        wcs = stamps.wcs()  # the cutouts have no CTYPE: TAN is assumed; CRVAL is the source
        sky = wcs.pixel_to_world(stamps.centre[1], stamps.centre[0])
        assert sky.ra.deg == pytest.approx(alert.record["ra"], abs=1e-6)
        assert sky.dec.deg == pytest.approx(alert.record["dec"], abs=1e-6)
        # the source pixel (CRPIX - 1) lands on the stamp centre
        cy, cx = (round(c) for c in stamps.centre)
        assert stamps.science[31, 31] == stamps.raw[0][cy, cx]
        detection = alert.detection(ClassProbabilities(0, 0, 1, 0, 0, 0))
        assert detection.flux == alert.record["psfFlux"] and detection.ra_err > 0
        assert bool(detection.flags & DetectionFlag.NEGATIVE) == bool(alert.record["isNegative"])


@needs_data
def test_ztf_detection_and_difference_convention(report) -> None:
    for alert in (a for a in report.alerts if a.survey is Survey.ZTF):
        negative = alert.record["isdiffpos"] in ("f", "0")
        assert alert.stamps.difference_sign == (-1 if negative else 1)
        detection = alert.detection(ClassProbabilities(0, 0, 1, 0, 0, 0))
        assert (detection.flux < 0) == negative
        assert detection.mag == pytest.approx(alert.record["magpsf"])
        assert detection.real_bogus == pytest.approx(alert.packet_score)
        assert math.isnan(detection.ra_err)  # ZTF packets carry no position errors


def test_stamp_rule_brings_30_to_102_px_to_63_centred() -> None:
    for n in (30, 31, 53, 63, 64, 101, 102):
        image = np.zeros((n, n), np.float32)
        c = (n - 1) // 2
        image[c, c] = 5.0
        out = fit_stamp(image, (c, c))
        assert out.shape == (63, 63) and out[31, 31] == 5.0
        expected_nan = 63 * 63 - min(n, 63) ** 2 if n < 63 else 0  # padding is NaN (no data)
        assert np.isnan(out).sum() == expected_nan
    # an off-centre source (Rubin: CRPIX - 1) is moved to the centre, the rest cropped
    image = np.arange(102 * 102, dtype=np.float32).reshape(102, 102)
    out = fit_stamp(image, (60.4, 40.6))
    assert out[31, 31] == image[60, 41] and np.isfinite(out).all()
    with pytest.raises(ValueError, match="size must be a positive odd integer"):
        fit_stamp(image, (0, 0), size=62)


@needs_data
def test_cut_ztf_stamps_and_nans(report) -> None:
    edge = next(a for a in report.alerts if a.packet.startswith(str(ZTF_EDGE)))
    assert edge.stamps.raw_shape == (63, 53)
    raw_nans = int(np.isnan(edge.stamps.raw[0]).sum())
    assert raw_nans > 0  # masked pixels in the packet stay NaN ...
    # ... and the 10 missing columns are NaN padding on the side away from the CCD edge it hit
    assert int(edge.stamps.mask[0].sum()) == raw_nans + 63 * 10
    assert edge.record["xpos"] > 1536 and np.isnan(edge.stamps.science[:, 53:]).all()
    low = next(a for a in report.alerts if a.stamps is not None and a.stamps.raw_shape == (58, 63))
    assert low.record["ypos"] < 1540 and np.isnan(low.stamps.science[:5]).all()


def _rubin_records() -> list[dict]:
    with RUBIN_REAL.open("rb") as fh:
        records = list(fastavro.reader(fh))
    names = {f["name"] for f in fastavro.schema.load_schema(str(RUBIN_SCHEMAS / "10/0/lsst.v10_0.alert.avsc"))["fields"]}
    out = []
    for record in records:  # drop Fink's extra fields, and Spark's all-null records (absent ones)
        clean = {k: v for k, v in record.items() if k in names}
        for key, value in clean.items():
            if isinstance(value, dict) and all(v is None for v in value.values()):
                clean[key] = None
        out.append(clean)
    return out


@needs_data
def test_confluent_framed_rubin_messages(tmp_path: Path) -> None:
    files = []
    for i, record in enumerate(_rubin_records()):
        path = tmp_path / f"rubin-{i}.msg"
        path.write_bytes(frame_rubin_record(record, 1000, RUBIN_SCHEMAS))
        files.append(path)
    for major, minor in ((9, 0), (11, 1)):  # the other versions: the synthetic samples, framed
        with (RUBIN_SCHEMAS / f"{major}/{minor}/sample_data/fakeAlert.avro").open("rb") as fh:
            (record,) = list(fastavro.reader(fh))
        path = tmp_path / f"fake-{major}{minor}.msg"
        path.write_bytes(frame_rubin_record(record, major * 100 + minor, RUBIN_SCHEMAS))
        files.append(path)
    report = read_survey_files(files, rubin_schema_dir=RUBIN_SCHEMAS)
    assert report.errors == ()
    assert [a.schema_version for a in report.alerts] == ["lsst.v10_0"] * 7 + ["lsst.v9_0", "lsst.v11_1"]
    from_container = read_survey_packets(RUBIN_REAL).alerts
    for framed, original in zip(report.alerts, from_container, strict=False):
        assert framed.alert_id == original.alert_id and framed.packet_score == original.packet_score
        np.testing.assert_array_equal(framed.stamps.difference, original.stamps.difference)
    # a truncated message names the packet and the payload; an unknown schema id says which
    cut = tmp_path / "cut.msg"
    cut.write_bytes(files[0].read_bytes()[:4000])
    unknown = tmp_path / "unknown.msg"
    unknown.write_bytes(b"\x00\x00\x00\x03\x20" + files[0].read_bytes()[5:])
    bad = read_survey_files([cut, files[1], unknown], rubin_schema_dir=RUBIN_SCHEMAS)
    assert len(bad.alerts) == 1 and len(bad.errors) == 2
    assert str(cut) in str(bad.errors[0]) and bad.errors[0].field == "payload"
    assert "lsst.v8_0" in str(bad.errors[1])


@needs_data
def test_a_garbled_packet_is_named_and_the_others_still_read(tmp_path: Path) -> None:
    with (SHARED_DATA / "fink-client" / "avro_multi_alerts_other.avro").open("rb") as fh:
        reader = fastavro.reader(fh)
        schema, records = reader.writer_schema, list(reader)
    broken = dict(records[1])
    broken["cutoutTemplate"] = {**broken["cutoutTemplate"], "stampData": broken["cutoutTemplate"]["stampData"][:300]}
    path = tmp_path / "three.avro"
    with path.open("wb") as fh:
        fastavro.writer(fh, schema, [records[0], broken, records[2]])
    result = read_survey_packets(path)
    assert [a.alert_id for a in result.alerts] == [records[0]["candid"], records[2]["candid"]]
    (error,) = result.errors
    assert isinstance(error, SurveyPacketError) and error.field == "cutoutTemplate"
    assert f"{path}#1" in str(error) and str(records[1]["candid"]) in str(error)
    # a container cut mid-file keeps the records before the cut and names where it broke
    data = (SHARED_DATA / "fink-client" / "avro_multi_alerts.avro").read_bytes()
    cut = tmp_path / "cut.avro"
    cut.write_bytes(data[: len(data) // 2])
    truncated = read_survey_packets(cut)
    assert truncated.errors and truncated.errors[0].field == "avro block" and str(cut) in str(truncated.errors[0])
    # neither survey: the record is named
    with pytest.raises(SurveyPacketError, match="neither a ZTF nor a Rubin alert"):
        survey_alert_from_record({"foo": 1}, source="x.avro", index=3)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x7fELF not a packet")
    assert "not an Avro container" in str(read_survey_packets(garbage).errors[0])


@needs_data
def test_nan_cutouts_are_kept_as_nan(tmp_path: Path) -> None:
    record = _rubin_records()[0]
    from astropy.io import fits

    with fits.open(io.BytesIO(record["cutoutScience"])) as hdul:
        hdul[0].data[10:13, 10:13] = np.nan
        buffer = io.BytesIO()
        hdul.writeto(buffer)
    record["cutoutScience"] = buffer.getvalue()
    alert = survey_alert_from_record(record, source="nan.avro")
    assert np.isnan(alert.stamps.raw[0]).sum() == 9
    assert alert.stamps.mask[0].sum() == 9 + 63 * 63 - 30 * 30
