"""
Ingest a night directory into its Zarr store with parallel Ray tasks.

The night directory holds ``exposures/*.fits`` and ``references/*.fits`` (what ``skyblink sim
night`` writes); a directory without those sub-folders is read as a flat folder of exposures.
Each file becomes one Ray task that owns every shard it writes; the task streams each CCD back as
it lands in the store (`CcdLanded`, a Ray generator task), so that a night run can start a visit's
tiles while its later CCDs are still being written. The driver keeps the manifest:
unchanged files (same size and mtime, or same sha256) are skipped, changed files are ingested
again, bad files are quarantined with one line naming the file and the reason, and the rest of
the night goes on.

Notes
-----
The driver alone writes the manifest; tasks write only their own exposure groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import ray

from skyblink.config import SkyblinkConfig
from skyblink.headers import HeadersConfig
from skyblink.storage import (
    ExposureKind,
    ExposureState,
    InvalidExposureError,
    Manifest,
    ManifestEntry,
    NightStore,
    StoreLayout,
    exposure_key,
    open_fits_exposure,
)

from .ray_runtime import ray_session

__all__ = ["CcdLanded", "IngestJob", "IngestOutcome", "IngestPlanError", "IngestReport", "discover_night",
           "estimate_night_tiles", "ingest_file", "ingest_file_events", "ingest_night", "plan_ingest", "prestart_ingest_workers"]

log = logging.getLogger(__name__)

#: File name endings read as FITS.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fz")
_KIND_FOLDERS: dict[ExposureKind, str] = {"exposure": "exposures", "reference": "references"}
_MANIFEST_SAVE_SECONDS = 2.0


class IngestPlanError(ValueError):
    """The night directory cannot be ingested as it is (missing, or two files map to one key)."""


@dataclass(frozen=True, slots=True)
class IngestJob:
    """One file to ingest: what a Ray task receives. Stable."""

    night_dir: Path
    path: str  # relative to night_dir
    key: str
    kind: ExposureKind
    store_url: str
    layout: StoreLayout
    max_nonfinite_fraction: float
    known_sha256: str | None = None  # sha256 of the version already in the store
    write_threads: int = 1  # CCDs written at once
    read_threads: int = 1  # CCDs read at once
    headers: HeadersConfig | None = None  # header keywords ([headers])


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What a task did with one file. Stable."""

    key: str
    kind: ExposureKind
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    result: Literal["ingested", "unchanged", "quarantined"]
    reason: str | None = None
    n_ccds: int = 0
    mjd_obs: float | None = None
    pixels: int = 0
    pixel_bytes: int = 0
    seconds: float = 0.0

    def manifest_entry(self) -> ManifestEntry:
        """Return the manifest entry recording this outcome."""
        state = ExposureState.QUARANTINED if self.result == "quarantined" else ExposureState.INGESTED
        return ManifestEntry(
            key=self.key,
            kind=self.kind,
            path=self.path,
            size=self.size,
            mtime_ns=self.mtime_ns,
            sha256=self.sha256,
            state=state,
            reason=self.reason,
            n_ccds=self.n_ccds,
            mjd_obs=self.mjd_obs,
        )


@dataclass(frozen=True, slots=True)
class CcdLanded:
    """
    One CCD of a file being ingested is in the store (readable by name: `NightStore.landed_ccds`);
    the file's `IngestOutcome` follows once every CCD is. Stable.

    ``seconds`` is the time from the task's start to the CCD landing.
    """

    key: str
    kind: ExposureKind
    path: str
    ccd: str
    seconds: float = 0.0


@dataclass(slots=True)
class IngestReport:
    """The result of one ingest run. Stable."""

    store_url: str
    ingested: list[IngestOutcome] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    quarantined: list[ManifestEntry] = field(default_factory=list)
    failed: list[ManifestEntry] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def file_bytes(self) -> int:
        """Bytes of the FITS files ingested in this run."""
        return sum(o.size for o in self.ingested)

    @property
    def pixels(self) -> int:
        """Pixels written in this run."""
        return sum(o.pixels for o in self.ingested)

    @property
    def ok(self) -> bool:
        """True when nothing of the night is quarantined or failed."""
        return not self.quarantined and not self.failed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_in_background(path: Path) -> Future[str]:
    """The sha256 of a file, computed in a thread (hashlib releases the GIL on large reads)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    try:
        return pool.submit(_sha256, path)
    finally:
        pool.shutdown(wait=False)


def _stem(name: str) -> str:
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def ingest_file(job: IngestJob) -> IngestOutcome:
    """
    Validate one FITS file and write it into the store, or say why not.

    A plain function, testable without Ray: the last item of `ingest_file_events`.

    Parameters
    ----------
    job : IngestJob
        The file, its store key and the store layout.

    Returns
    -------
    IngestOutcome
        ``"ingested"``, ``"unchanged"`` (sha256 equals ``job.known_sha256``) or ``"quarantined"``
        with the reason. Bad input never raises; store or file-system failures do.
    """
    outcome: IngestOutcome | None = None
    for event in ingest_file_events(job):
        if isinstance(event, IngestOutcome):
            outcome = event
    assert outcome is not None  # the events always end with the outcome
    return outcome


def ingest_file_events(job: IngestJob) -> Iterator[CcdLanded | IngestOutcome]:
    """
    Validate one FITS file and write it into the store, yielding each CCD as it lands, then the outcome.

    This is the body of the Ray task (a generator task: the driver gets each item as it is
    yielded). A CCD is yielded once it is readable in the store (`NightStore.write_exposure_ccds`);
    a file found bad after some CCDs landed (a CCD of NaNs, a truncated HDU) is deleted from the
    store and quarantined: whoever started on its landed CCDs must drop what it made of them.

    Parameters
    ----------
    job : IngestJob
        The file, its store key and the store layout.

    Yields
    ------
    CcdLanded or IngestOutcome
        Each landed CCD, in the file's order, then the file's `IngestOutcome` (always last, once):
        ``"ingested"``, ``"unchanged"`` (sha256 equals ``job.known_sha256``) or ``"quarantined"``
        with the reason. Bad input never raises; store or file-system failures do.
    """
    start = time.perf_counter()
    path = job.night_dir / job.path
    try:
        stat = path.stat()
        # A file seen before is hashed first (unchanged: nothing to write); a new one is hashed
        # in a thread while its pixels are read and written (a visit is gigabytes).
        sha256 = _sha256(path) if job.known_sha256 is not None else None
        digest = _sha256_in_background(path) if sha256 is None else None
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
        yield IngestOutcome(job.key, job.kind, job.path, 0, 0, None, "quarantined", reason)
        return

    def file_sha256() -> str:
        if digest is not None:
            return digest.result()
        assert sha256 is not None  # no background digest only when the file was hashed up front
        return sha256

    common: dict[str, Any] = {"key": job.key, "kind": job.kind, "path": job.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if sha256 is not None and sha256 == job.known_sha256:
        yield IngestOutcome(**common, sha256=sha256, result="unchanged")
        return
    store = NightStore(job.store_url, mode="a", layout=job.layout)
    nbytes = 0
    try:
        with open_fits_exposure(path, max_nonfinite_fraction=job.max_nonfinite_fraction, headers=job.headers) as reader:
            images = reader.images(threads=min(job.read_threads, len(reader.exposure.ccds)))
            writes = store.write_exposure_ccds(job.key, reader.exposure, images, kind=job.kind,
                                               source=lambda: {"path": job.path, "size": stat.st_size, "sha256": file_sha256()},
                                               threads=min(job.write_threads, len(reader.exposure.ccds)),
                                               source_path=job.path)
            for ccd, written in writes:
                nbytes += written
                yield CcdLanded(job.key, job.kind, job.path, ccd, time.perf_counter() - start)
            exposure = reader.exposure
    except InvalidExposureError as exc:
        store.delete(job.key)  # an earlier good version of a file that is now bad is gone too
        yield IngestOutcome(**common, sha256=file_sha256(), result="quarantined", reason=exc.reason)
        return
    pixels = sum(c.shape[0] * c.shape[1] for c in exposure.ccds)
    yield IngestOutcome(
        **common,
        sha256=file_sha256(),
        result="ingested",
        n_ccds=len(exposure.ccds),
        mjd_obs=exposure.metadata.get("mjd_obs"),
        pixels=pixels,
        pixel_bytes=nbytes,
        seconds=time.perf_counter() - start,
    )


def _ingest_worker_ready() -> int:
    """Nothing: Ray imports this module (the ingest's code: the store, zarr, astropy's FITS) to run it."""
    return os.getpid()


def prestart_ingest_workers(count: int) -> list[ray.ObjectRef]:
    """
    Have ``count`` Ray task workers import the ingest now, before the night's files are planned.

    A night run calls this right after starting Ray, so that the worker processes (Ray pre-starts
    plain ones for a local Ray) have imported the ingest's code while Redis starts and the actors
    are created, instead of on the first ingest tasks' critical path. Idle workers are reused for
    later tasks (the ingest, the reference catalogs) as long as Ray keeps them.

    Parameters
    ----------
    count : int
        Tasks of one CPU each (at most the CPUs the actors leave free is useful).

    Returns
    -------
    list of ray.ObjectRef
        The tasks (each returns its worker's pid); nothing needs to wait for them.
    """
    task = ray.remote(num_cpus=1, max_retries=0)(_ingest_worker_ready)
    return [task.remote() for _ in range(max(0, count))]


def discover_night(night_dir: Path) -> list[tuple[str, ExposureKind, str]]:
    """
    List the FITS files of a night with their kind and store key.

    Parameters
    ----------
    night_dir : Path
        Directory with ``exposures/`` and ``references/``, or a flat folder of exposures.

    Returns
    -------
    list of (relative path, kind, store key)
        Sorted by folder and name; empty when there are no FITS files.

    Raises
    ------
    IngestPlanError
        The directory is missing, or two files would share one store key (``a.fits`` and
        ``a.fits.fz``).
    """
    if not night_dir.is_dir():
        msg = f"night directory {night_dir} does not exist or is not a directory"
        raise IngestPlanError(msg)
    structured = any((night_dir / folder).is_dir() for folder in _KIND_FOLDERS.values())
    found: list[tuple[str, ExposureKind, str]] = []
    seen: dict[str, str] = {}
    for kind, folder in _KIND_FOLDERS.items():
        base = night_dir / folder if structured else night_dir
        if not base.is_dir() or (not structured and kind == "reference"):
            continue
        for path in sorted(base.iterdir()):
            if not path.is_file() or path.name.startswith(".") or not path.name.lower().endswith(FITS_SUFFIXES):
                continue
            rel = str(path.relative_to(night_dir))
            key = exposure_key(kind, _stem(path.name))
            if key in seen:
                msg = f"{seen[key]} and {rel} would both be stored as {key!r}; rename one of them"
                raise IngestPlanError(msg)
            seen[key] = rel
            found.append((rel, kind, key))
    return found


def estimate_night_tiles(night_dir: Path, tile_size: int, headers: HeadersConfig | None = None) -> int | None:
    """
    The tiles a night run will have, before anything is ingested: the number of science exposures
    times the tiles (`WorkUnit.tiling`, as the run plans them) of the first of the first three whose
    headers validate (no pixels read).

    Parameters
    ----------
    night_dir : Path
        As `discover_night`.
    tile_size : int
        Core edge of a tile in pixels.
    headers : HeadersConfig, optional
        The ``[headers]`` section the files are read with.

    Returns
    -------
    int or None
        None when none of the first three science exposures' headers could be read (the ingest
        will say why).

    Raises
    ------
    IngestPlanError
        As `discover_night`.
    """
    # The driver's alone (it holds the module already): the ingest's tasks do not import the tile program.
    from skyblink.workers.tile_unit import WorkUnit  # noqa: PLC0415

    files = [rel for rel, kind, _ in discover_night(night_dir) if kind == "exposure"]
    for rel in files[:3]:
        try:
            with open_fits_exposure(night_dir / rel, headers=headers) as reader:
                shapes = [ccd.shape for ccd in reader.exposure.ccds]
        except (InvalidExposureError, OSError):
            continue
        return len(files) * sum(len(WorkUnit.tiling("", rel, "", shape, size=tile_size)) for shape in shapes)
    return None


def plan_ingest(
    night_dir: Path,
    files: list[tuple[str, ExposureKind, str]],
    store: NightStore,
    manifest: Manifest,
    config: SkyblinkConfig,
    *,
    retry_quarantined: bool = False,
    retry_failed: bool = False,
) -> tuple[list[IngestJob], list[str]]:
    """
    Decide which files of a night need ingesting.

    Parameters
    ----------
    night_dir : Path
        The night directory.
    files : list of (relative path, kind, store key)
        What `discover_night` found in it.
    store : NightStore
        The open store.
    manifest : Manifest
        The store's manifest as it is now.
    config : SkyblinkConfig
        Ingest options.
    retry_quarantined : bool
        Look again at quarantined files even when they have not changed (e.g. after loosening
        ``ingest.max_nonfinite_fraction``).
    retry_failed : bool
        Read back every stored CCD of the unchanged ingested files and ingest again those whose
        stored pixels fail to read (a corrupt or truncated chunk or shard); files that failed
        before are always retried.

    Returns
    -------
    jobs : list of IngestJob
        Files that are new, changed, failed before, or missing from the store.
    unchanged : list of str
        Keys skipped because the file's size and mtime match the manifest.

    """
    # A damaged exposure (a chunk failed its checksum) is written again from its file.
    present = (set(store.exposure_keys("exposure")) | set(store.exposure_keys("reference"))) - set(store.damaged_keys())
    jobs: list[IngestJob] = []
    unchanged: list[str] = []
    for rel, kind, key in files:
        stat = (night_dir / rel).stat()
        prev = manifest.entries.get(key)
        known = None
        if prev is not None and prev.path == rel:
            same_file = prev.size == stat.st_size and prev.mtime_ns == stat.st_mtime_ns
            if prev.state is ExposureState.INGESTED and key in present:
                broken = _unreadable(store, key) if same_file and retry_failed else None
                if same_file and broken is None:
                    unchanged.append(key)
                    continue
                if broken is not None:
                    log.warning("ingesting %s again: its stored pixels fail to read (%s)", rel, broken)
                else:
                    known = prev.sha256
            elif prev.state is ExposureState.QUARANTINED and same_file and not retry_quarantined:
                unchanged.append(key)
                continue
        jobs.append(
            IngestJob(
                night_dir=night_dir,
                path=rel,
                key=key,
                kind=kind,
                store_url=store.url,
                layout=store.layout,
                max_nonfinite_fraction=config.ingest.max_nonfinite_fraction,
                write_threads=config.ingest.write_threads,
                read_threads=config.ingest.read_threads,
                headers=config.headers,
                known_sha256=known,
            )
        )
    return jobs, unchanged


def _unreadable(store: NightStore, key: str) -> str | None:
    """Why an exposure's stored pixels cannot be read back (every chunk of every CCD), or None."""
    try:
        for ccd in store.ccd_names(key):
            image = store.image(key, ccd)
            rows = max(1, image.chunks[0]) if image.ndim else 1
            for y0 in range(0, image.shape[0], rows):  # a chunk row at a time: bounded memory
                image[y0 : y0 + rows]
    except Exception as exc:  # noqa: BLE001 - whatever the codec or the file system says, the copy is unusable
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def ingest_night(
    night_dir: Path | str,
    config: SkyblinkConfig,
    *,
    store_url: str | None = None,
    retry_quarantined: bool = False,
    retry_failed: bool = False,
    on_planned: Callable[[int], None] | None = None,
    on_outcome: Callable[[IngestOutcome | ManifestEntry], None] | None = None,
    on_ccd: Callable[[CcdLanded], None] | None = None,
    settle_s: float = 0.0,
) -> IngestReport:
    """
    Ingest every FITS file of a night into its Zarr store, in parallel Ray tasks.

    Parameters
    ----------
    night_dir : Path or str
        Directory with ``exposures/`` and ``references/`` (or a flat folder of FITS files).
    config : SkyblinkConfig
        Effective configuration (store, ingest layout and limits, Ray address).
    store_url : str, optional
        Store path or fsspec URL; default ``config.store``.
    retry_quarantined : bool
        Look again at unchanged quarantined files.
    retry_failed : bool
        Ingest again the unchanged files whose stored pixels fail to read (see `plan_ingest`).
    on_planned : callable, optional
        Called once with the number of files that will be ingested (for a progress bar).
    on_outcome : callable, optional
        Called on the driver with each task's outcome (or failed entry) as it arrives.
    on_ccd : callable, optional
        Called on the driver with each CCD as it lands in the store (`CcdLanded`), before its
        file's outcome; a file quarantined or failed after some CCDs landed is not in the store.
    settle_s : float, optional
        Leave files modified less than this many seconds ago for a later call (``--watch``: a
        file still being written is not read half-way).

    Returns
    -------
    IngestReport
        What was ingested, skipped as unchanged, quarantined (this run or before, file
        unchanged) and failed, with timings.

    Raises
    ------
    IngestPlanError
        The night directory is missing, or two files map to one store key.
    StoreLayoutError
        The store exists with another layout than ``config.ingest`` asks for.
    """
    start = time.perf_counter()
    night_dir = Path(night_dir).resolve()
    url = store_url or config.store
    layout = StoreLayout(
        tile_size=config.ingest.tile_size,
        shard_tiles=config.ingest.shard_tiles,
        compressor=config.ingest.compressor,
        compression_level=config.ingest.compression_level,
        shuffle=config.ingest.shuffle,
    )
    files = discover_night(night_dir)  # checks the directory before anything is created
    if settle_s > 0:
        now = time.time()
        files = [f for f in files if now - (night_dir / f[0]).stat().st_mtime >= settle_s]
    if not files and settle_s <= 0:
        log.warning("no FITS files found in %s", night_dir)
    store = NightStore(url, mode="a", layout=layout)
    manifest = Manifest.load(store.url)
    jobs, unchanged = plan_ingest(night_dir, files, store, manifest, config, retry_quarantined=retry_quarantined,
                                  retry_failed=retry_failed)
    report = IngestReport(store_url=store.url, unchanged=unchanged)
    # A watch polls every ``night.watch_poll_s``: a poll that finds nothing new is not news.
    log.log(logging.INFO if jobs else logging.DEBUG, "%d file(s) to ingest, %d unchanged", len(jobs), len(unchanged))
    if on_planned is not None:
        on_planned(len(jobs))
    if jobs:
        with ray_session(config.ray):
            _run_jobs(jobs, manifest, report, on_outcome, on_ccd)
    manifest.save()
    for key in unchanged:
        if manifest.entries[key].state is ExposureState.QUARANTINED:
            report.quarantined.append(manifest.entries[key])
    report.unchanged = [k for k in report.unchanged if manifest.entries[k].state is ExposureState.INGESTED]
    report.wall_seconds = time.perf_counter() - start
    return report


def _run_jobs(
    jobs: list[IngestJob],
    manifest: Manifest,
    report: IngestReport,
    on_outcome: Callable[[IngestOutcome | ManifestEntry], None] | None,
    on_ccd: Callable[[CcdLanded], None] | None = None,
) -> None:
    # A generator task: each CCD comes back as it lands (`CcdLanded`), the file's outcome last.
    task = ray.remote(num_cpus=1, max_retries=2)(ingest_file_events)
    # At most two tasks per CPU in flight (Ray's "limit pending tasks" pattern): results stream
    # back and the manifest is saved as they arrive instead of after the whole night.
    max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[ray.ObjectRefGenerator, IngestJob] = {}
    # References first: a night run plans an exposure's tiles as soon as its CCDs and its field's
    # reference are in the store.
    queue = list(reversed(sorted(jobs, key=lambda job: job.kind != "reference")))
    last_save = time.monotonic()

    def finished(job: IngestJob, outcome: IngestOutcome | ManifestEntry) -> None:
        manifest.entries[job.key] = _updated_entry(manifest.entries.get(job.key), outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                job = queue.pop()
                pending[task.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            for events in cast(list[ray.ObjectRefGenerator], ready):
                job = pending[events]
                try:
                    event = cast(CcdLanded | IngestOutcome, ray.get(next(events)))
                except StopIteration:  # ended without an outcome: not expected, recorded as a failure
                    del pending[events]
                    entry = _failed_entry(job, RuntimeError("the ingest task ended without an outcome"))
                    report.failed.append(entry)
                    finished(job, entry)
                    continue
                except Exception as exc:  # noqa: BLE001 - any task failure is recorded, night goes on
                    del pending[events]
                    entry = _failed_entry(job, exc)
                    report.failed.append(entry)
                    log.debug("failed %s: %s", job.path, entry.reason)
                    finished(job, entry)
                    continue
                if isinstance(event, CcdLanded):
                    if on_ccd is not None:
                        on_ccd(event)
                    continue
                del pending[events]  # the outcome is the task's last item
                _record(event, report)
                finished(job, event)
            if time.monotonic() - last_save > _MANIFEST_SAVE_SECONDS:
                manifest.save()
                last_save = time.monotonic()
    finally:
        for events in pending:
            with contextlib.suppress(Exception):  # already ended: nothing to cancel
                ray.cancel(events)
        manifest.save()


def _updated_entry(previous: ManifestEntry | None, outcome: IngestOutcome | ManifestEntry) -> ManifestEntry:
    if isinstance(outcome, ManifestEntry):
        return outcome
    if outcome.result == "unchanged" and previous is not None:
        return previous.touched(size=outcome.size, mtime_ns=outcome.mtime_ns)
    return outcome.manifest_entry()


def _record(outcome: IngestOutcome, report: IngestReport) -> None:
    if outcome.result == "ingested":
        report.ingested.append(outcome)
    elif outcome.result == "unchanged":
        report.unchanged.append(outcome.key)
    else:
        entry = outcome.manifest_entry()
        report.quarantined.append(entry)
        log.debug("quarantined %s: %s", outcome.path, outcome.reason)


def _failed_entry(job: IngestJob, exc: Exception) -> ManifestEntry:
    path = job.night_dir / job.path
    stat = path.stat() if path.exists() else None
    cause = getattr(exc, "cause", None) or exc
    return ManifestEntry(
        key=job.key,
        kind=job.kind,
        path=job.path,
        size=stat.st_size if stat else 0,
        mtime_ns=stat.st_mtime_ns if stat else 0,
        sha256=None,
        state=ExposureState.FAILED,
        reason=f"{type(cause).__name__}: {cause}".splitlines()[0],
    )
