"""The night's Parquet files: paths owned by the store, declared schemas held on write and checked on read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyblink.model_io import CLASSIFIER_CLASSES
from skyblink.storage import NightStore, StoreLayout, TableSchemaError
from skyblink.storage.schemas.tables import (
    CANDIDATE_SCHEMA,
    OBJECTS_SCHEMA,
    REFERENCE_SCHEMA,
    detections_schema,
)


def _candidates(n: int = 2) -> pa.Table:
    return pa.table({"unit": ["exposures/E1/ccd000/0-0"] * n, "exposure": ["exposures/E1"] * n, "ccd": ["ccd000"] * n,
                     "x": [1.0 + i for i in range(n)], "y": [2.0] * n, "score": [0.5] * n, "snr": [7.0] * n,
                     "real_bogus": [0.9] * n, "class_probs": [[0.1] * 7] * n, "stamp": [b"\0" * 8] * n},
                    schema=CANDIDATE_SCHEMA)


@pytest.fixture
def store(tmp_path: Path) -> NightStore:
    return NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))


def test_the_store_owns_the_paths_of_its_files(tmp_path: Path, store: NightStore) -> None:
    files = store.files
    root = str(tmp_path / "s.zarr")
    assert files.unit_result_path("exposures/E1", "ccd002", 256, 512) == f"{root}/results/units/E1/ccd002/256-512.parquet"
    assert files.catalog_path("detections") == f"{root}/catalogs/detections.parquet"
    assert files.catalog_path("objects") == f"{root}/catalogs/objects.parquet"
    assert files.reference_catalog_path("F07", 5.0, 3) == f"{root}/catalogs/reference-F07-snr5-v3.parquet"
    with pytest.raises(KeyError, match="no catalog 'truth'"):
        files.catalog_path("truth")


def test_tables_round_trip_in_their_declared_schema(store: NightStore) -> None:
    files = store.files
    path = files.unit_result_path("exposures/E1", "ccd000", 0, 0)
    files.write(path, _candidates(), CANDIDATE_SCHEMA)
    assert files.read(path, CANDIDATE_SCHEMA).to_pylist() == _candidates().to_pylist()
    # Written in the declared order and types: an all-null column (no magnitude at all) and
    # columns in another order are conformed, an empty table is the schema's.
    objects = pa.table({"n_alerts": [1], "object_id": [7], "ra": [1.0], "dec": [2.0], "first_mjd": [3.0],
                        "last_mjd": [4.0], "max_real_bogus": pa.array([None], pa.null()), "n_detections": [1]})
    files.write(files.catalog_path("objects"), objects, OBJECTS_SCHEMA)
    back = files.read(files.catalog_path("objects"), OBJECTS_SCHEMA)
    assert back.schema.equals(OBJECTS_SCHEMA) and back.column("max_real_bogus").to_pylist() == [None]
    files.write(files.catalog_path("detections"), pa.table({"object_id": pa.array([], pa.int64())}),
                detections_schema(CLASSIFIER_CLASSES))
    assert files.read(files.catalog_path("detections"), detections_schema(CLASSIFIER_CLASSES)).num_rows == 0


def test_a_table_without_its_declared_column_is_not_written(store: NightStore) -> None:
    files = store.files
    path = files.reference_catalog_path("F01", 5.0, 3)
    table = pa.table({"ra": [1.0], "dec": [2.0], "x": [0.0], "y": [0.0], "snr": [9.0], "concentration": [0.3],
                      "ccd": ["ccd000"]})
    with pytest.raises(TableSchemaError, match=r"reference-F01-snr5-v3\.parquet: column 'extended' is missing") as info:
        files.write(path, table, REFERENCE_SCHEMA)
    assert info.value.field == "extended" and info.value.path == path
    assert not files.exists(path)  # nothing written
    with pytest.raises(TableSchemaError, match="column 'x' has type string, not convertible to double"):
        files.write(path, table.append_column("extended", pa.array([False])).set_column(2, "x", pa.array(["left"])),
                    REFERENCE_SCHEMA)


def test_reading_a_file_of_another_schema_names_the_file_and_column(tmp_path: Path, store: NightStore) -> None:
    files = store.files
    path = files.unit_result_path("exposures/E1", "ccd000", 0, 64)
    Path(path).parent.mkdir(parents=True)
    old = _candidates().set_column(5, "score", pa.array(["high", "low"]))  # e.g. another version's file
    pq.write_table(old, path)
    with pytest.raises(TableSchemaError, match=r"ccd000/0-64\.parquet: column 'score' has type string, expected float") as info:
        files.read(path, CANDIDATE_SCHEMA)
    assert info.value.field == "score"
    pq.write_table(_candidates().append_column("flag", pa.array([1, 2])), path)
    with pytest.raises(TableSchemaError, match="column 'flag' is not in the declared schema"):
        files.read(path, CANDIDATE_SCHEMA)
