"""
The host side of a GPU actor's call, in threads: what one node's CPUs prepare a second.

    python benchmarks/host_prepare.py [--ccds 16] [--size 4096] [--threads 1,2,4,8,16]
        [--codecs blosc-zstd:byte,blosc-lz4:bit] [--revisit] [--units-per-call N] [--work DIR]

A GPU actor prepares its calls in threads while one call holds the device (`GpuUnitProcessor.prepare`):
per CCD the store's facts (`ccd_setup`), its windows read from the science CCD
(`skyblink.workers.gpu_units.read_windows`, one read of the region they cover), the read of its
reference CCD and the windows' control points. A night's dispatch is bound by this when the GPU
is faster than the threads together. This times those steps over a simulated exposure of
``--ccds`` CCDs and its reference, in 1..N threads, with each read either through zarr's
synchronous API (every thread's reads run on zarr's one IO event loop: how the store read
before) or as the store reads a local store now, on an event loop of the reading thread
(`skyblink.storage.night_store.read_in_this_thread`), side by side in one run; and, with
``--codecs``, the same pixels stored with each named compressor and shuffle (``ingest.compressor``,
``ingest.shuffle``) and read the same ways. With ``--revisit``, the store's reader also runs as a
field visited again does on a GPU actor that holds the references (`skyblink.workers.reference_cache`):
no reference read, only the check of its stored version. With ``--units-per-call N`` each CCD's
units go in calls of N (``night.units_per_call``), each call reading the region its windows cover
and the reference, and also as the actor prepares them now: one read of a CCD's reference shared
by its calls (`skyblink.workers.reference_cache.SharedReads`).

Prints CCDs a second and tiles a second (16 tiles of 1024^2 a 4096^2 CCD), each step's time
summed over threads, how many cores the process kept busy, and what share of the wall zarr's IO
thread was busy (near 100 %: that one thread bounds the reads; cores busy near 1: the GIL does);
JSON to $OUT when set. Needs no GPU and no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr.core.sync as zarr_sync

from skyblink.storage import NightStore, StoreLayout, exposure_key, open_fits_exposure
from skyblink.workers.align import control_points
from skyblink.workers.gpu_units import read_windows
from skyblink.workers.program_config import TileProgram
from skyblink.workers.reference_cache import SharedReads
from skyblink.workers.tile_unit import WorkUnit, ccd_setup

#: The program whose tiling the reads serve (the configuration's tile size and margin).
PROGRAM = TileProgram()


def build_store(work: Path, ccds: int, size: int, layout: StoreLayout) -> Path:
    """Simulate one exposure of ``ccds`` CCDs and its reference (once), and write both into a store
    with ``layout``'s codecs (no Ray)."""
    night, store_path = work / "night", work / f"store-{layout.compressor}-{layout.shuffle}.zarr"
    if (store_path / "zarr.json").exists():
        return store_path
    if not (night / "night.json").exists():
        subprocess.run([sys.executable, "-m", "skyblink.cli", "sim", "night", str(night), "--fields", "1", "--exposures", "1",
                        "--ccds", str(ccds), "--size", str(size)], check=True, capture_output=True)
    store = NightStore(str(store_path), mode="a", layout=layout)
    for kind, folder in (("reference", "references"), ("exposure", "exposures")):
        for path in sorted((night / folder).glob("*.fits*")):
            with open_fits_exposure(path) as reader:
                store.write_exposure(exposure_key(kind, path.name.split(".")[0]), reader.exposure, reader.images(),
                                     kind=kind, source={"path": path.name}, threads=8)
    return store_path


def exposure_of(store: NightStore) -> str:
    """The store's one exposure (the simulated one; the other key is its reference)."""
    return next(k for k in store.exposure_keys() if k.startswith("exposures/"))


def ccd_units(store: NightStore, exposure: str, ccd: str, shape: tuple[int, ...] | None = None) -> list[WorkUnit]:
    """The units that tile one CCD (of ``shape``, else read from the store), as the planner sends them in one call."""
    shape = store.image(exposure, ccd).shape if shape is None else shape
    return WorkUnit.tiling(store.url, exposure, ccd, shape, size=PROGRAM.tile_size, margin=PROGRAM.margin)


def _through_zarrs_loop(image: Any) -> Any:
    return image.array  # zarr's synchronous API: every thread's read runs on zarr's IO loop


def _as_the_store_reads(image: Any) -> Any:
    return image  # `skyblink.storage.night_store.read_in_this_thread`


#: How a stored image is read: the array whose slices are taken.
READERS: dict[str, Callable[[Any], Any]] = {
    "zarr's IO loop (before)": _through_zarrs_loop, "reading thread (store)": _as_the_store_reads}


def prepare_call(store: NightStore, exposure: str, ccd: str, units: list[WorkUnit], read: Callable[[Any], Any],
                 seconds: dict[str, float], lock: threading.Lock, *, reference: str | SharedReads[Any] = "read") -> None:
    """
    The host steps of one GPU call of ``units`` of one CCD, timed into ``seconds``: their windows
    read as the actor reads them (`skyblink.workers.gpu_units.read_windows`, into host memory here,
    pinned there) and the reference, read (``"read"``), checked by its stored
    version as when the device holds it (``"held"``), or read once for every call of the CCD
    (a `SharedReads`, as the actor shares one read among the calls of a CCD prepared at once).
    """
    marks = [time.perf_counter()]
    setup = ccd_setup(store, exposure, ccd)
    marks.append(time.perf_counter())
    edge = PROGRAM.window_edge
    windows = np.empty((len(units), edge, edge), np.uint16)
    read_windows(read(store.image(exposure, ccd)), [u.origin for u in units], edge, list(windows))
    marks.append(time.perf_counter())

    def read_reference() -> np.ndarray:
        return np.asarray(read(store.image(setup.reference_key, ccd))[:, :])

    if reference == "held":
        store.stored_version(setup.reference_key)  # what `GpuUnitProcessor.prepare` checks the cache with
    elif isinstance(reference, SharedReads):
        reference.get((setup.reference_key, ccd), read_reference)
    else:
        read_reference()
    marks.append(time.perf_counter())
    for unit in units:
        control_points(setup.science_wcs, setup.reference_wcs, (edge, edge), origin=unit.origin)
    marks.append(time.perf_counter())
    with lock:
        for name, t0, t1 in zip(("ccd_setup", "science windows", "reference read", "control points"), marks, marks[1:],
                                strict=False):
            seconds[name] = seconds.get(name, 0.0) + t1 - t0


def _thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds of one thread of this process so far (Linux's /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _zarr_io_thread() -> int | None:
    """The native id of zarr's IO thread (its event loop runs every synchronous read), once started."""
    thread = zarr_sync.iothread[0]
    return thread.native_id if thread is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ccds", type=int, default=16)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the CCDs in each setting")
    parser.add_argument("--codecs", default="blosc-zstd:byte",
                        help="stores to read, as compressor:shuffle (ingest.compressor, ingest.shuffle), comma-separated")
    parser.add_argument("--revisit", action="store_true",
                        help="also read as a field visited again does, its reference held on the device")
    parser.add_argument("--units-per-call", type=int, default=0,
                        help="night.units_per_call: a CCD's units in calls of this many (default 0: one call a CCD); "
                             "then also read each CCD's reference once for all its calls, as the actor shares it")
    parser.add_argument("--work", type=Path, default=Path("/tmp/host-prepare"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for codec in args.codecs.split(","):
        compressor, _, shuffle = codec.partition(":")
        t0 = time.perf_counter()
        path = build_store(args.work, args.ccds, args.size, StoreLayout(compressor=compressor, shuffle=shuffle or "byte"))
        store = NightStore(str(path))
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"store {path.name} ready in {time.perf_counter() - t0:.0f} s ({stored / 2**20:.0f} MiB); "
              f"{os.cpu_count()} CPUs", flush=True)
        rows += _time_readers(store, codec, args.threads, args.rounds, revisit=args.revisit,
                              units_per_call=args.units_per_call)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "host_prepare.json").write_text(json.dumps(rows, indent=1))


def _time_readers(store: NightStore, codec: str, threads_list: str, rounds: int, *, revisit: bool = False,
                  units_per_call: int = 0) -> list[dict[str, Any]]:
    """Each reader in 1..N threads over the store's exposure's calls: one row a setting (also printed)."""
    exposure = exposure_of(store)
    ccds = store.ccd_names(exposure) * rounds
    calls = []
    for ccd in ccds:
        units = ccd_units(store, exposure, ccd)
        step = units_per_call or len(units)
        calls += [(ccd, units[i : i + step]) for i in range(0, len(units), step)]
    tiles = sum(len(units) for _, units in calls)
    rows: list[dict[str, Any]] = []
    settings: list[tuple[str, Callable[[Any], Any], str]] = [(reader, read, "read") for reader, read in READERS.items()]
    if units_per_call:
        settings.append(("reference read once a CCD", _as_the_store_reads, "shared"))
    if revisit:
        settings.append(("reference on the device", _as_the_store_reads, "held"))
    for reader, read, reference in settings:
        for threads in (int(t) for t in threads_list.split(",")):
            seconds: dict[str, float] = {}
            lock = threading.Lock()
            io_thread = _zarr_io_thread()
            shared: SharedReads[Any] = SharedReads()  # a round's CCDs, as an actor that launched none of them yet
            mode = shared if reference == "shared" else reference
            io0, cpu0, start = _thread_cpu_s(io_thread), sum(os.times()[:2]), time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda call: prepare_call(store, exposure, call[0], call[1], read, seconds, lock,  # noqa: B023
                                                        reference=mode), calls))  # noqa: B023
            wall = time.perf_counter() - start
            # What bounds the threads: the process's CPU (all cores busy?) and zarr's IO loop (one thread's work).
            process_cpu, io_cpu = sum(os.times()[:2]) - cpu0, _thread_cpu_s(io_thread) - io0
            rows.append({"codec": codec, "reader": reader, "threads": threads, "units_per_call": units_per_call or None,
                         "ccds_per_s": len(ccds) / wall, "tiles_per_s": tiles / wall,
                         "ms_per_ccd": {k: 1e3 * v / len(ccds) for k, v in seconds.items()},
                         "process_cpu_per_wall": process_cpu / wall, "zarr_io_thread_busy": io_cpu / wall})
            r = rows[-1]
            print(f"{codec:<15} {reader:<25} {threads:>3} threads: {r['ccds_per_s']:6.1f} CCDs/s {r['tiles_per_s']:7.0f} tiles/s; "
                  f"cores busy {r['process_cpu_per_wall']:4.1f}, zarr's IO thread busy {r['zarr_io_thread_busy']:4.0%}; "
                  "summed ms a CCD: " + ", ".join(f"{k} {v:.0f}" for k, v in r["ms_per_ccd"].items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
