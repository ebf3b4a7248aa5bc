"""Holding back the alerts of a field with a failed tile: whole objects, only that field, counted."""

from __future__ import annotations

import pyarrow as pa

from skyblink.cluster.night import _hold_back


def _detections() -> pa.Table:
    rows = [  # (field, exposure, object_id, alert_id, alert_type)
        ("F00", "exposures/F00-000", 1, 11, "transient"),
        ("F00", "exposures/F00-001", 1, 12, "moving"),
        ("F00", "exposures/F00-002", 2, 21, None),
        ("F01", "exposures/F01-000", 3, 31, "transient"),
        ("F01", "exposures/F01-001", 3, 32, "variable"),
        ("F01", "exposures/F01-002", 4, 41, None),
    ]
    names = ["field", "exposure", "object_id", "alert_id", "alert_type"]
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})


def test_a_field_with_a_missing_tile_is_held_back_whole_and_the_others_go_out_unchanged() -> None:
    detections = _detections()
    final, held = _hold_back(detections, {"F00": ["exposures/F00-002/ccd000/0-0"]})
    assert held == {"F00": 2}
    assert final.to_pylist() == detections.slice(3).to_pylist()  # F01 untouched, its history whole


def test_nothing_is_held_back_when_every_tile_is_done() -> None:
    detections = _detections()
    final, held = _hold_back(detections, {})
    assert held == {} and final.equals(detections)
