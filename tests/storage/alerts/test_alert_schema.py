"""Every shipped alert schema version round-trips its sample data; the wire format is checked."""

from __future__ import annotations

import struct

import pytest
from alert_factories import make_alerts

from skyblink.storage.alerts import (
    Alert,
    AlertDecodeError,
    AlertEncodeError,
    SchemaNotFoundError,
    decode_entry,
    decode_payload,
    encode_alert,
    encode_payload,
    latest_schema,
    load_sample,
    load_schema,
    round_trip_difference,
    schema_for_id,
    schema_versions,
    validate_schemas,
)


@pytest.mark.parametrize("version", schema_versions())
def test_every_version_round_trips_its_sample_data(version: str) -> None:
    schema = load_schema(version)
    samples = load_sample(schema)
    assert samples, f"schema {version} ships no sample packet"
    for record in samples:
        payload = encode_payload(Alert.from_avro(record).to_avro(), schema)
        decoded_schema, decoded = decode_payload(payload)
        assert decoded_schema.version == version
        assert round_trip_difference(record, decoded) is None
        assert encode_payload(decoded, schema) == payload


def test_validate_reports_every_version_ok() -> None:
    checks = validate_schemas()
    assert [c.version for c in checks] == list(schema_versions())
    assert all(c.ok for c in checks), [c.error for c in checks]


def test_latest_is_shipped_and_ids_are_major_times_100_plus_minor() -> None:
    latest = latest_schema()
    assert latest.version in schema_versions()
    for version in schema_versions():
        schema = load_schema(version)
        assert schema.schema_id == schema.major * 100 + schema.minor
        assert schema_for_id(schema.schema_id) is schema
    with pytest.raises(SchemaNotFoundError, match="shipped versions: 1.0"):
        load_schema("9.9")


def test_wire_format_header_is_confluent() -> None:
    alert = make_alerts(1, with_cutouts=False)[0]
    payload = encode_payload(alert.to_avro())
    magic, schema_id = struct.unpack(">bI", payload[:5])
    assert (magic, schema_id) == (0, latest_schema().schema_id)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x00", "shorter than the 5-byte"),
        (b"\x01\x00\x00\x00\x64rest", "magic byte 1"),
        (b"\x00\x00\x00\x03\xe7rest", "no alert schema id 999"),
        (b"\x00\x00\x00\x00\x64\x02", "not a valid schema 1.0 datum"),
    ],
)
def test_decode_errors_name_the_entry_and_field(payload: bytes, expected: str) -> None:
    with pytest.raises(AlertDecodeError, match=expected) as info:
        decode_payload(payload, entry_id="1-0")
    assert info.value.entry_id == "1-0" and info.value.field == "payload"
    assert "entry 1-0 field 'payload'" in str(info.value)


def test_trailing_bytes_are_an_error() -> None:
    payload = encode_payload(make_alerts(1, with_cutouts=False)[0].to_avro())
    with pytest.raises(AlertDecodeError, match="1 trailing byte"):
        decode_payload(payload + b"\x00")


def test_encode_validates_and_names_the_field() -> None:
    record = make_alerts(1, with_cutouts=False)[0].to_avro()
    record["detection"]["ccd"] = "three"
    with pytest.raises(AlertEncodeError, match=r"detection\.ccd|ccd"):
        encode_payload(record)


def test_entry_fields_must_agree_with_the_payload() -> None:
    encoded = encode_alert(make_alerts(1, with_cutouts=False)[0], "s")
    fields = {name.encode(): value for name, value in encoded.fields}
    alert, schema = decode_entry(fields, entry_id="5-1")
    assert alert.alert_id == encoded.alert_id and schema.version == latest_schema().version
    with pytest.raises(AlertDecodeError, match="field 'alert_id'"):
        decode_entry({**fields, b"alert_id": b"12"}, entry_id="5-1")
    with pytest.raises(AlertDecodeError, match="field 'schema_version': missing"):
        decode_entry({k: v for k, v in fields.items() if k != b"schema_version"})


def test_packets_say_which_network_scored_them_and_1_0_packets_still_read() -> None:
    """Schema 1.1's ``realBogusModel`` round-trips; a packet a 1.0 producer wrote reads back without it."""
    import dataclasses

    alert = dataclasses.replace(make_alerts(1, with_cutouts=False)[0], real_bogus_model="survey_classifier 1.0")
    schema, back = decode_payload(encode_payload(alert.to_avro()))
    assert schema.version == "1.1" and Alert.from_avro(back).real_bogus_model == "survey_classifier 1.0"
    old = load_schema("1.0")
    payload = encode_payload(alert.to_avro(), old)  # a 1.0 writer: the field is not in its schema
    assert payload[1:5] == old.schema_id.to_bytes(4, "big")
    schema, back = decode_payload(payload)
    assert schema.version == "1.0" and Alert.from_avro(back).real_bogus_model is None
    assert Alert.from_avro(back).alert_id == alert.alert_id
