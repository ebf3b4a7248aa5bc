"""The store owns the night's layout: reference keys, and the one atomic writer of its Parquet files."""

from __future__ import annotations

import re
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyblink.psf_units import FWHM_PER_SIGMA, fwhm_to_sigma
from skyblink.storage import NightStore, StoreLayout, open_fits_exposure
from skyblink.storage.errors import StoreWriteError
from skyblink.storage.parquet_io import write_parquet_atomic

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ("cluster", "workers", "storage", "engines", "skyblink", "sim")


def test_an_exposure_names_its_fields_reference(tmp_path: Path, exposure_writer) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))
    path = tmp_path / "e.fits"
    exposure_writer(path, shape=(64, 64), ccds=2, header={"FIELD": "F07"})
    with open_fits_exposure(path) as reader:
        store.write_exposure("exposures/e", reader.exposure, reader.images(), kind="exposure", source={"path": str(path)})
    assert store.reference_key("F07") == "references/F07"
    assert store.reference_of("exposures/e") == "references/F07"
    assert store.reference_of("exposures/e", "ccd001") == "references/F07"
    with pytest.raises(ValueError, match="without '/'"):
        store.reference_key("F07/../x")
    with pytest.raises(ValueError, match="non-empty"):
        store.reference_key("")
    with pytest.raises(KeyError):
        store.reference_of("exposures/absent")


def test_the_parquet_writer_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    target = f"{root}/units/e/ccd000/0-0.parquet"
    write_parquet_atomic(fs, target, pa.table({"x": [1.0, 2.0]}))
    second = pa.table({"x": [3.0]})
    write_parquet_atomic(fs, target, second)  # an overwrite replaces the file whole
    assert pq.read_table(target).equals(second)
    assert pq.ParquetFile(target).metadata.row_group(0).column(0).compression == "ZSTD"
    assert sorted(p.name for p in (tmp_path / "units/e/ccd000").iterdir()) == ["0-0.parquet"]


def test_a_failed_encoding_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    target = f"{root}/catalogs/ref.parquet"
    before = pa.table({"x": pa.array([1, 2])})
    write_parquet_atomic(fs, target, before)
    with pytest.raises(pa.ArrowException, match="no-such-codec"):
        write_parquet_atomic(fs, target, pa.table({"x": pa.array([3])}), compression="no-such-codec")
    assert [p.name for p in (tmp_path / "catalogs").iterdir()] == ["ref.parquet"]
    assert pq.read_table(target).equals(before)


def test_a_refused_write_is_one_store_error_line_naming_the_file(tmp_path: Path) -> None:
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    (tmp_path / "catalogs").write_text("a file where the catalogs' folder should be")
    target = f"{root}/catalogs/detections.parquet"
    with pytest.raises(StoreWriteError) as caught:
        write_parquet_atomic(fs, target, pa.table({"x": [1.0]}))
    assert "\n" not in str(caught.value) and "catalogs/detections.parquet" in str(caught.value)
    assert not list(tmp_path.rglob("*.tmp"))


def _package_sources() -> list[Path]:
    return [p for top in PACKAGE for p in (ROOT / top).rglob("*.py")]


def test_no_module_builds_a_reference_key_by_hand() -> None:
    hand_built = re.compile(r"""f["']references/\{""")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _package_sources()
             for i, line in enumerate(p.read_text().splitlines(), 1) if hand_built.search(line)]
    assert not found, "use NightStore.reference_key / reference_of: " + ", ".join(found)


def test_every_parquet_file_of_the_store_is_written_by_the_one_writer() -> None:
    writer = ROOT / "storage" / "parquet_io.py"
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _package_sources() if p != writer
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\b(pq|parquet)\.write_table\(|ParquetWriter\(", line)]
    assert not found, "write Parquet through storage.parquet_io.write_parquet_atomic: " + ", ".join(found)



def test_fwhm_and_sigma_of_a_gaussian() -> None:
    assert FWHM_PER_SIGMA == pytest.approx(2.3548200450309493)
    assert fwhm_to_sigma(2.0 * FWHM_PER_SIGMA) == pytest.approx(2.0)


def test_the_fwhm_per_sigma_is_defined_once() -> None:
    defined = re.compile(r"(sqrt\(2(\.0)? \* (math|np)\.log\(2(\.0)?\)\)|^_?FWHM_PER_SIGMA\s*=)")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _package_sources() if p.name != "psf_units.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if defined.search(line)]
    assert not found, "import FWHM_PER_SIGMA from skyblink.psf_units: " + ", ".join(found)


@pytest.mark.parametrize("url", ["local", "memory://skyblink-layout-test"])
def test_a_durable_write_is_whole_on_local_and_object_file_systems(tmp_path: Path, url: str) -> None:
    from skyblink.storage.atomic import write_atomic

    fs, root = fsspec.core.url_to_fs(str(tmp_path) if url == "local" else url)
    target = f"{root}/store.zarr/manifest.json"
    for text in (b'{"n": 1}', b'{"n": 2}'):
        write_atomic(fs, target, lambda fh, text=text: fh.write(text), durable=True)
    assert fs.cat_file(target) == b'{"n": 2}'
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/store.zarr", detail=False)] == ["manifest.json"]
    fs.rm(f"{root}/store.zarr", recursive=True)


def test_no_module_but_the_store_builds_a_result_or_catalog_path() -> None:
    hand_built = re.compile(r"""\}/(results|catalogs)(/|["'])""")  # f"{root}/catalogs/..."
    owner = ROOT / "storage" / "night_files.py"
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _package_sources() if p != owner
             for i, line in enumerate(p.read_text().splitlines(), 1) if hand_built.search(line)]
    assert not found, "use NightStore.files (storage/night_files.py): " + ", ".join(found)
