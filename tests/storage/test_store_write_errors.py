"""A store that refuses writes (disk full, read-only, quota, size limit) gives one line naming
the file, leaves no temporary file behind and keeps the previous version.

The refusal is real: a child process runs with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored),
so the kernel fails its writes with EFBIG exactly where a full disk fails them with ENOSPC."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE is POSIX")

CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import pyarrow as pa
    from skyblink.reduce.association import write_reference_catalog
    from skyblink.storage import ExposureState, Manifest, ManifestEntry, NightStore, StorageError

    store_url = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    out = {}
    manifest = Manifest(store_url)
    for i in range(200):
        manifest.entries[f"exposures/e{i}"] = ManifestEntry(f"exposures/e{i}", "exposure", f"exposures/e{i}.fits",
                                                            1, 1, "0" * 64, ExposureState.INGESTED)
    try:
        manifest.save()
    except StorageError as exc:
        out["manifest"] = [type(exc).__name__, str(exc)]
    rows = pa.array(range(20000), pa.float64())  # a reference catalog in its declared schema, larger than the limit
    table = pa.table({"ra": rows, "dec": rows, "x": rows, "y": rows, "snr": rows.cast(pa.float32()),
                      "concentration": rows.cast(pa.float32()), "extended": pa.array([False] * 20000),
                      "ccd": pa.array(["ccd000"] * 20000)})
    try:
        write_reference_catalog(NightStore(store_url), "f0", [table])
    except StorageError as exc:
        out["catalog"] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
    """
)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    from skyblink.storage import Manifest, NightStore, StoreLayout

    store_url = str(tmp_path / "store.zarr")
    NightStore(store_url, mode="a", layout=StoreLayout(tile_size=64))
    old = Manifest(store_url)
    old.save()  # the previous version, which must survive
    before = (tmp_path / "store.zarr" / "manifest.json").read_text()
    child = subprocess.run([sys.executable, "-c", CHILD, store_url], capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "Traceback" not in child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    for what, target in (("manifest", "manifest.json"), ("catalog", "catalogs/")):
        kind, message = out[what]
        assert kind == "StoreWriteError" and "\n" not in message, message
        assert message.startswith("cannot write ") and target in message and "file too large" in message and "(EFBIG)" in message
    assert not list((tmp_path / "store.zarr").rglob("*.tmp")), "orphaned temporary files"
    assert (tmp_path / "store.zarr" / "manifest.json").read_text() == before
