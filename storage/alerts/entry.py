"""
The layout of one alert in Redis: the stream entry, its dedup record and its side-store cutouts.

::

    <stream>                        XADD fields: schema_version "1.1", schema_id "101",
                                    alert_id "<alertId>", payload <Confluent wire-format Avro>
    {<stream>}:dedup                hash alertId -> entry id (TTL alerts.dedup_ttl_s)
    {<stream>}:cutouts:<alertId>    hash science/template/difference -> gzipped FITS
                                    (alerts.cutouts = "side-store"; TTL alerts.cutout_ttl_s)
    <stream>:dead                   dead letters: error, entry id, group, consumer, the fields

The dedup and cutout keys carry the stream name as a hash tag, so in a Redis Cluster they share
the stream's slot and one Lua script may touch all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import AlertDecodeError
from .packet import Alert
from .schema import AlertSchema, decode_payload, encode_payload, latest_schema

__all__ = [
    "FIELD_ALERT_ID",
    "FIELD_PAYLOAD",
    "FIELD_SCHEMA_ID",
    "FIELD_SCHEMA_VERSION",
    "EncodedAlert",
    "cutout_key",
    "dead_letter_stream",
    "decode_entry",
    "dedup_key",
    "encode_alert",
    "stream_name",
]

FIELD_SCHEMA_VERSION = "schema_version"
FIELD_SCHEMA_ID = "schema_id"
FIELD_ALERT_ID = "alert_id"
FIELD_PAYLOAD = "payload"

CutoutPlacement = Literal["inline", "side-store"]


def stream_name(template: str, night: str) -> str:
    """
    Return the stream of a night.

    Parameters
    ----------
    template : str
        With a ``{night}`` placeholder (config: alerts.stream).
    night : str
        E.g. ``"20261125"``; no spaces or braces.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        The night is empty or holds spaces or braces.
    """
    if not night or any(c.isspace() or c in "{}" for c in night):
        msg = f"night must be a non-empty name without spaces or braces, got {night!r}"
        raise ValueError(msg)
    return template.format(night=night)


def dedup_key(stream: str) -> str:
    """Return the hash mapping a stream's published alertIds to their entry ids."""
    return f"{{{stream}}}:dedup"


def cutout_key(stream: str, alert_id: int) -> str:
    """Return the side-store hash holding one alert's cutouts."""
    return f"{{{stream}}}:cutouts:{alert_id}"


def dead_letter_stream(stream: str) -> str:
    """Return the dead-letter stream of a stream."""
    return f"{stream}:dead"


@dataclass(frozen=True, slots=True)
class EncodedAlert:
    """
    One alert ready for XADD: what the producer publishes and the spool keeps. Stable.

    Attributes
    ----------
    stream : str
        Target stream.
    alert_id : int
    fields : tuple of (str, bytes)
        The stream entry's fields.
    side_store : tuple of (str, bytes)
        Cutouts for the side-store hash (kind -> gzipped FITS); empty when inline.
    """

    stream: str
    alert_id: int
    fields: tuple[tuple[str, bytes], ...]
    side_store: tuple[tuple[str, bytes], ...] = ()

    @property
    def nbytes(self) -> int:
        """Bytes of the entry's values and side-store cutouts."""
        return sum(len(v) for _, v in self.fields) + sum(len(v) for _, v in self.side_store)


def encode_alert(
    alert: Alert,
    stream: str,
    *,
    cutouts: CutoutPlacement = "inline",
    schema: AlertSchema | None = None,
    check: bool = True,
) -> EncodedAlert:
    """
    Encode an alert as the fields of a stream entry (and its side-store cutouts).

    Parameters
    ----------
    alert : Alert
    stream : str
        Target stream (names the side-store key).
    cutouts : {"inline", "side-store"}, optional
        Where the cutouts go (config: alerts.cutouts).
    schema : AlertSchema, optional
        Writer schema (default: the latest).
    check : bool, optional
        Validate against the schema first (default True).

    Returns
    -------
    EncodedAlert

    Raises
    ------
    AlertEncodeError
        The alert does not fit the schema.
    """
    schema = schema or latest_schema()
    side: tuple[tuple[str, bytes], ...] = ()
    if cutouts == "side-store":
        present = alert.cutouts()
        if present:
            side = tuple((str(kind), c.stamp_data) for kind, c in present.items())
            alert = alert.without_cutouts(cutout_key(stream, alert.alert_id))
    payload = encode_payload(alert.to_avro(), schema, check=check)
    fields = (
        (FIELD_SCHEMA_VERSION, schema.version.encode()),
        (FIELD_SCHEMA_ID, str(schema.schema_id).encode()),
        (FIELD_ALERT_ID, str(alert.alert_id).encode()),
        (FIELD_PAYLOAD, payload),
    )
    return EncodedAlert(stream, alert.alert_id, fields, side)


def _text(fields: dict[bytes, bytes], name: str, entry_id: str | None) -> str:
    raw = fields.get(name.encode())
    if raw is None:
        raise AlertDecodeError("missing from the stream entry", field=name, entry_id=entry_id)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise AlertDecodeError(f"not ASCII text: {raw[:40]!r}", field=name, entry_id=entry_id) from None


def decode_entry(fields: dict[bytes, bytes], *, entry_id: str | None = None) -> tuple[Alert, AlertSchema]:
    """
    Decode and validate one stream entry.

    Parameters
    ----------
    fields : dict of bytes to bytes
        As returned by XREADGROUP / XRANGE.
    entry_id : str, optional
        Named in errors.

    Returns
    -------
    alert : Alert
    schema : AlertSchema
        The writer schema.

    Raises
    ------
    AlertDecodeError
        A field is missing, the header fields disagree with the payload, or the payload is not a
        valid packet; the message names the entry and the field.
    """
    version = _text(fields, FIELD_SCHEMA_VERSION, entry_id)
    schema_id = _text(fields, FIELD_SCHEMA_ID, entry_id)
    alert_id = _text(fields, FIELD_ALERT_ID, entry_id)
    payload = fields.get(FIELD_PAYLOAD.encode())
    if payload is None:
        raise AlertDecodeError("missing from the stream entry", field=FIELD_PAYLOAD, entry_id=entry_id)
    schema, record = decode_payload(payload, entry_id=entry_id)
    if schema_id != str(schema.schema_id) or version != schema.version:
        reason = (
            f"entry says schema {version!r} (id {schema_id!r}) but the payload carries "
            f"schema {schema.version} (id {schema.schema_id})"
        )
        raise AlertDecodeError(reason, field=FIELD_SCHEMA_ID, entry_id=entry_id)
    try:
        alert = Alert.from_avro(record)
    except AlertDecodeError as exc:
        raise AlertDecodeError(exc.reason, field=exc.field, entry_id=entry_id) from None
    if alert_id != str(alert.alert_id):
        reason = f"entry says alert_id {alert_id} but the payload holds {alert.alert_id}"
        raise AlertDecodeError(reason, field=FIELD_ALERT_ID, entry_id=entry_id)
    return alert, schema

