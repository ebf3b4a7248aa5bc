"""The Zarr layout: exact pixels, headers and WCS back; layout recorded; partial writes leave nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from skyblink.storage import (
    ChunkChecksumError,
    InvalidExposureError,
    NightStore,
    StorageError,
    StoreLayout,
    StoreLayoutError,
    damaged_store_key,
    open_fits_exposure,
)


def ingest_one(store: NightStore, path: Path, key: str) -> None:
    with open_fits_exposure(path) as reader:
        store.write_exposure(key, reader.exposure, reader.images(), kind="exposure", source={"path": str(path)})


def test_simulated_like_exposures_round_trip(tmp_path: Path, exposure_writer, assert_round_trip) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64, shard_tiles=2))
    for name, options in {"u16": {}, "f32": {"dtype": "float32"}, "mef": {"ccds": 3}, "fz": {"ccds": 2, "compressed": True}}.items():
        path = tmp_path / f"{name}.fits"
        exposure_writer(path, shape=(150, 200), **options)
        ingest_one(store, path, f"exposures/{name}")
        assert_round_trip(store, f"exposures/{name}", path)
    reopened = NightStore(str(tmp_path / "s.zarr"))
    assert reopened.exposure_keys() == ["exposures/f32", "exposures/fz", "exposures/mef", "exposures/u16"]
    image = reopened.image("exposures/u16")
    assert image.chunks == (64, 64)
    assert image.shards == (128, 128)
    assert reopened.ccd_metadata("exposures/u16")["mjd_obs"] == pytest.approx(61004.125)
    for ccd in reopened.ccd_names("exposures/mef"):  # what the reduce reads of a CCD, in one read
        metadata, header, wcs = reopened.ccd_description("exposures/mef", ccd)
        assert metadata == reopened.ccd_metadata("exposures/mef", ccd)
        assert header == reopened.header("exposures/mef", ccd)
        assert wcs.to_header() == reopened.wcs("exposures/mef", ccd).to_header()
    with pytest.raises(KeyError, match="exposures/nothing"):
        reopened.ccd_description("exposures/nothing")


@pytest.mark.parametrize(
    "relative",
    [
        "astropy/m13.fits",
        "astropy/m13_rice.fits",
        "photutils-datasets/spitzer_example_image.fits",
        "ccdproc/sip-wcs.fit",
    ],
)
def test_real_survey_images_round_trip(tmp_path: Path, shared_data: Path, relative: str, assert_round_trip) -> None:
    path = shared_data / relative
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128))
    ingest_one(store, path, "exposures/real")
    assert_round_trip(store, "exposures/real", path)


def test_m13_and_its_rice_copy_store_the_same_pixels(tmp_path: Path, shared_data: Path) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128))
    ingest_one(store, shared_data / "astropy/m13.fits", "exposures/plain")
    ingest_one(store, shared_data / "astropy/m13_rice.fits", "exposures/rice")
    np.testing.assert_array_equal(store.image("exposures/plain")[...], store.image("exposures/rice")[...])


def test_existing_store_with_another_layout_is_refused(tmp_path: Path) -> None:
    NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=1024))
    with pytest.raises(StoreLayoutError, match="tile_size is 1024 there but 512 here"):
        NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=512))
    # Another codec is fine: each array records its own.
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=1024, compressor="blosc-lz4"))
    assert store.layout.compressor == "blosc-lz4"


def test_bit_shuffled_exposures_read_back_exactly_beside_byte_shuffled_ones(tmp_path: Path, exposure_writer) -> None:
    """ingest.shuffle = "bit" in a store of byte-shuffled arrays: each array records its own codec, and both read
    back bit for bit."""
    import json

    pixels = exposure_writer(tmp_path / "e.fits", shape=(256, 256))[0]
    NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128))
    ingest_one(NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128)), tmp_path / "e.fits",
               "exposures/byte")
    bit = NightStore(str(tmp_path / "s.zarr"), mode="a",
                     layout=StoreLayout(tile_size=128, compressor="blosc-lz4", shuffle="bit"))
    ingest_one(bit, tmp_path / "e.fits", "exposures/bit")
    store = NightStore(str(tmp_path / "s.zarr"))
    for key, shuffle in (("exposures/byte", "shuffle"), ("exposures/bit", "bitshuffle")):
        np.testing.assert_array_equal(store.image(key)[...], pixels)
        meta = json.loads((tmp_path / "s.zarr" / key / "ccd000" / "image" / "zarr.json").read_text())
        inner = meta["codecs"][0]["configuration"]["codecs"]
        assert [c["configuration"]["shuffle"] for c in inner if c["name"] == "blosc"] == [shuffle]


def test_threads_read_regions_without_waiting_for_zarrs_io_loop(tmp_path: Path, exposure_writer) -> None:
    """A GPU actor prepares calls in threads: their reads of a local store must not queue on zarr's one IO
    loop. With that loop held busy, regions (and whole images) still read, exactly, from several threads;
    a read from inside a running event loop still works."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from zarr.core.sync import _get_loop

    pixels = exposure_writer(tmp_path / "e.fits", shape=(300, 260))[0]
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64, shard_tiles=2))
    ingest_one(store, tmp_path / "e.fits", "exposures/e")
    image = NightStore(str(tmp_path / "s.zarr")).image("exposures/e")
    regions = [..., (slice(None), slice(None)), (slice(10, 200), slice(70, 260)), (slice(250, None),), slice(3, 90)]
    held, release, let_go = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(15)
        let_go.set()

    _get_loop().call_soon_threadsafe(hold)
    assert held.wait(10)
    try:
        with ThreadPoolExecutor(4) as pool:
            reads = list(pool.map(lambda region: np.asarray(image[region]), regions * 2))
        finished_while_held = not let_go.is_set()
    finally:
        release.set()
    assert finished_while_held
    for region, read in zip(regions * 2, reads, strict=True):
        np.testing.assert_array_equal(read, pixels[region])

    async def inside_a_loop() -> np.ndarray:
        return np.asarray(image[5:9, 0:4])

    np.testing.assert_array_equal(asyncio.run(inside_a_loop()), pixels[5:9, 0:4])


def test_missing_store_is_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no skyblink store"):
        NightStore(str(tmp_path / "absent.zarr"))


def test_bad_ccd_midway_leaves_nothing_of_the_exposure(tmp_path: Path, exposure_writer) -> None:
    path = tmp_path / "mef.fits"
    exposure_writer(path, ccds=3, dtype="float32")
    with fits.open(path, mode="update") as hdul:
        hdul[3].data[:] = np.nan  # the last CCD is all NaN: found only when its pixels are read
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))
    with pytest.raises(InvalidExposureError, match="HDU 3"):
        ingest_one(store, path, "exposures/mef")
    assert store.exposure_keys() == []
    assert "mef" not in zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["exposures"]


def test_each_ccd_is_readable_as_it_lands_and_the_exposure_once_all_have(tmp_path: Path, exposure_writer) -> None:
    """Per-CCD streaming: a landed CCD reads back exactly while the next is not written; the exposure lists at the end."""
    path = tmp_path / "mef.fits"
    exposure_writer(path, ccds=3, shape=(150, 200))
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))
    with open_fits_exposure(path) as reader:
        writes = store.write_exposure_ccds("exposures/mef", reader.exposure, reader.images(), kind="exposure",
                                           source={"path": str(path)}, source_path=str(path))
        name, nbytes = next(writes)
        assert (name, nbytes) == ("ccd000", 150 * 200 * 2)
        reader_store = NightStore(str(tmp_path / "s.zarr"))  # another process's view: the store as it is on disk
        assert reader_store.landed_ccds("exposures/mef") == ["ccd000"]
        assert reader_store.exposure_keys() == []  # not complete: not listed, not planned as a whole
        with fits.open(path) as hdul:
            np.testing.assert_array_equal(reader_store.image("exposures/mef", "ccd000")[...], hdul[1].data)
        assert reader_store.ccd_metadata("exposures/mef", "ccd000") == store.ccd_metadata("exposures/mef", "ccd000")
        assert str(path) in reader_store.source_name("exposures/mef", "ccd000")
        version = reader_store.stored_version("exposures/mef")
        with pytest.raises(KeyError, match="ccd001"):  # not written yet
            reader_store.image("exposures/mef", "ccd001")
        with pytest.raises(KeyError):
            reader_store.ccd_names("exposures/mef")
        assert [n for n, _ in writes] == ["ccd001", "ccd002"]
    assert store.exposure_keys() == ["exposures/mef"]
    assert store.landed_ccds("exposures/mef") == store.ccd_names("exposures/mef") == ["ccd000", "ccd001", "ccd002"]
    # The same write: a CCD's facts cached while it was landing stay valid once the exposure is complete.
    assert store.stored_version("exposures/mef") == version
    ingest_one(store, path, "exposures/mef")  # written again: another write, the cached facts read again
    assert store.stored_version("exposures/mef") != version


def test_a_writer_stopped_after_some_ccds_leaves_nothing_of_the_exposure(tmp_path: Path, exposure_writer) -> None:
    path = tmp_path / "mef.fits"
    exposure_writer(path, ccds=3)
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))
    with open_fits_exposure(path) as reader:
        writes = store.write_exposure_ccds("exposures/mef", reader.exposure, reader.images(), kind="exposure",
                                           source={"path": str(path)})
        assert next(writes)[0] == "ccd000"
        writes.close()  # the task was stopped
    assert store.exposure_keys() == [] and store.landed_ccds("exposures/mef") == []
    with pytest.raises(KeyError):
        store.image("exposures/mef", "ccd000")


def _corrupt(shard: Path, offset: int, nbytes: int = 4096, seed: int = 7) -> None:
    """Write ``nbytes`` random bytes at ``offset`` of a shard file, as a bad disk or copy would."""
    data = bytearray(shard.read_bytes())
    data[offset : offset + nbytes] = np.random.default_rng(seed).bytes(nbytes)
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("compressor", ["blosc-zstd", "zstd", "none"])
def test_random_bytes_in_a_shard_fail_the_read_by_name_whatever_the_compressor(
    tmp_path: Path, exposure_writer, compressor: str
) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128, compressor=compressor))
    exposure_writer(tmp_path / "e.fits", shape=(256, 256))
    ingest_one(store, tmp_path / "e.fits", "exposures/e")
    assert store.checksummed
    image = store.image("exposures/e")
    intact = image[128:, 128:]
    _corrupt(tmp_path / "s.zarr" / "exposures" / "e" / "ccd000" / "image" / "c" / "0" / "0", offset=1000)
    image = NightStore(str(tmp_path / "s.zarr")).image("exposures/e")
    with pytest.raises(ChunkChecksumError, match=r"exposures/e/ccd000/image\[0:128, 0:128\]") as caught:
        image[0:128, 0:128]
    assert damaged_store_key(f"ChunkChecksumError: {caught.value}") == "exposures/e"
    with pytest.raises(ChunkChecksumError):
        np.asarray(image)
    np.testing.assert_array_equal(image[128:, 128:], intact)  # the other chunks of the shard still read


def test_store_written_before_checksums_stays_readable_and_says_so(tmp_path: Path, exposure_writer) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=128, checksum="none"))
    pixels = exposure_writer(tmp_path / "e.fits", shape=(256, 256))[0]
    ingest_one(store, tmp_path / "e.fits", "exposures/e")
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
    layout = dict(root.attrs["layout"])
    del layout["checksum"]  # as an older skyblink recorded it
    root.attrs.update({"layout": layout})
    del root.attrs["checksums"]
    old = NightStore(str(tmp_path / "s.zarr"))
    assert not old.checksummed
    np.testing.assert_array_equal(old.image("exposures/e")[...], pixels)
    writable = NightStore(str(tmp_path / "s.zarr"), mode="a")
    writable.mark_damaged("exposures/e", "test")
    assert writable.damaged_keys() == ["exposures/e"] and writable.exposure_keys() == ["exposures/e"]
