"""
Alerts: Avro packets on a Redis stream, consumer groups, idempotent publishing, nothing lost.

Knows nothing of CUDA. See `skyblink.storage.alerts.entry` for the layout of a stream in Redis.
"""

from .builder import STAMP_SIZE, AlertBuilder, cut_stamp
from .connection import client_url, connect, open_redis, redact_url
from .consumer import (
    AlertConsumer,
    ConsumeReport,
    DeadLetter,
    ReceivedAlert,
    default_consumer_name,
    latest_alerts,
)
from .cutouts import CutoutImage, StampWriter, read_cutout
from .edge import EdgeFilter, NightTraffic, estimate_night_traffic
from .entry import (
    EncodedAlert,
    cutout_key,
    dead_letter_stream,
    decode_entry,
    dedup_key,
    encode_alert,
    stream_name,
)
from .errors import (
    AlertDecodeError,
    AlertEncodeError,
    AlertError,
    RedisAuthError,
    RedisUnavailableError,
    SchemaNotFoundError,
    SpoolError,
)
from .export import JsonLinesSink, alert_json, alert_json_line, write_cutouts
from .packet import (
    Alert,
    AlertType,
    Band,
    ClassProbabilities,
    Cutout,
    CutoutKind,
    Detection,
    DetectionFlag,
    MovingObject,
    make_alert_id,
)
from .producer import AlertEncoder, AlertProducer, PublishReport
from .schema import (
    AlertSchema,
    decode_payload,
    encode_payload,
    latest_schema,
    load_sample,
    load_schema,
    schema_for_id,
    schema_versions,
)
from .spool import AlertSpool
from .validate import SchemaCheck, round_trip_difference, validate_schemas

__all__ = [
    "STAMP_SIZE",
    "Alert",
    "AlertBuilder",
    "AlertConsumer",
    "AlertDecodeError",
    "AlertEncodeError",
    "AlertError",
    "AlertEncoder",
    "AlertProducer",
    "AlertSchema",
    "AlertSpool",
    "AlertType",
    "Band",
    "ClassProbabilities",
    "ConsumeReport",
    "Cutout",
    "CutoutImage",
    "CutoutKind",
    "DeadLetter",
    "Detection",
    "DetectionFlag",
    "EdgeFilter",
    "EncodedAlert",
    "JsonLinesSink",
    "MovingObject",
    "NightTraffic",
    "PublishReport",
    "ReceivedAlert",
    "RedisAuthError",
    "RedisUnavailableError",
    "SchemaCheck",
    "SchemaNotFoundError",
    "SpoolError",
    "StampWriter",
    "alert_json",
    "alert_json_line",
    "client_url",
    "connect",
    "cut_stamp",
    "cutout_key",
    "dead_letter_stream",
    "decode_entry",
    "decode_payload",
    "dedup_key",
    "default_consumer_name",
    "encode_alert",
    "encode_payload",
    "estimate_night_traffic",
    "latest_alerts",
    "latest_schema",
    "load_sample",
    "load_schema",
    "make_alert_id",
    "open_redis",
    "read_cutout",
    "redact_url",
    "round_trip_difference",
    "schema_for_id",
    "schema_versions",
    "stream_name",
    "validate_schemas",
    "write_cutouts",
]
