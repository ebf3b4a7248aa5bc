"""
The nightly run: ingest, plan, dispatch to worker actors, reduce, publish, catalog, report.

`NightRun` is one run and its state, a method per stage; `run_night` (what ``skyblink night run``
calls) builds one and runs it. Every stage is idempotent, so running the same
command again after a crash resumes the night and ends with the same outputs:

- ingest skips files the manifest already holds (`skyblink.cluster.ingest`);
- a work unit whose result file exists is not processed again (`skyblink.cluster.results`);
- the reduce step is a deterministic function of all unit results (`skyblink.reduce.steps`);
- alert ids are deterministic and the stream's producer drops ids it has published
  (`skyblink.storage.alerts.AlertProducer`), so the stream never holds a duplicate.

With no Redis URL configured the run starts a private ``redis-server`` on a free loopback port,
with its append-only file in ``night.redis_dir`` (so a resumed run continues the same stream),
and stops it at the end unless asked to keep it (`skyblink.cluster.private_redis`).

The fixed costs are off the critical path where they can be: Ray starts first and the worker
actors are created at once (they load their engines and warm up while the night is ingested);
Ray's task workers import the ingest meanwhile; the ingest starts at once, Redis starting beside
it; each CCD's tiles go to the actors as soon as the CCD and the same CCD of its field's
reference are in the store (the ingest task streams each CCD back as it lands), while the
visit's later CCDs and later files are still being ingested.

With ``watch=True`` the worker actors start (and warm up) first; the run then keeps listing the
night directory and processes exposures as they land, publishing each one's alerts as soon as it
is reduced; the report records, per exposure, the latency from the file appearing to its alerts
being in Redis.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import redis
from packaging.version import Version  # a dependency of Ray
from ray.util import metrics as ray_metrics

from skyblink.bytecode import compile_command, packages_without_bytecode
from skyblink.config import SkyblinkConfig
from skyblink.lazy_import import lazy_module
from skyblink.model_io import CLASSIFIER_CLASSES
from skyblink.reduce.association import (
    reference_catalog_path,
    reference_ccd_task,
    write_reference_catalog,
)
from skyblink.reduce.packet_task import alert_parts, encode_alert_part
from skyblink.reduce.steps import (
    DETECTION_ORDER,
    alert_counts,
    alerted_rows,
    build_alerts,
    night_detections,
    split_by_exposure,
    static_detections,
)
from skyblink.storage import ManifestEntry, NightStore, StoreLock, damaged_store_key
from skyblink.storage.alerts import (
    AlertBuilder,
    AlertProducer,
    EncodedAlert,
    PublishReport,
    connect,
    redact_url,
)
from skyblink.storage.alerts.entry import stream_name
from skyblink.storage.schemas.tables import OBJECTS_SCHEMA, detections_schema
from skyblink.workers.actor import UnitOutcome
from skyblink.workers.program_config import WorkerConfig, compiles_for
from skyblink.workers.tile_unit import WorkUnit

from .dispatch import WorkerPool, worker_spec
from .ingest import (
    CcdLanded,
    IngestOutcome,
    IngestReport,
    estimate_night_tiles,
    ingest_night,
    prestart_ingest_workers,
)
from .planning import plan_ccd_tiles, plan_tiles
from .private_redis import embedded_redis
from .ray_runtime import ray_session
from .results import UnitStore, exposure_static_detections

if TYPE_CHECKING:
    from astropy import time as astropy_time
else:
    astropy_time = lazy_module("astropy.time")  # slow to import; only naming the night needs it

__all__ = ["NightRun", "NightRunReport", "RunHooks", "critical_path", "night_name", "plan_night", "run_night"]

log = logging.getLogger(__name__)


@dataclass
class NightRunReport:
    """
    What a nightly run did; written as JSON (``--report``) and printed as the summary. Stable.

    ``alerts_in_stream`` counts the alerts of this run that the stream was seen to hold after
    publishing (`AlertProducer.confirm`); ``alerts_resent`` those sent again because a restarted
    server had lost them; ``alerts_spooled`` those left in the local spool (Redis unreachable) and
    ``alerts_unconfirmed`` those neither confirmed nor spooled: either makes the run not `ok`.
    ``alerts_replayed`` counts the spooled alerts of earlier runs that this run delivered.

    ``alerts_held_back`` maps a field to the number of its alerts not published because a tile of
    one of its exposures failed or is missing (``held_back_because``: field -> those tiles): the
    field's objects are linked across its exposures, so any of them could change once the tiles
    are done. They are published, final, by the run that completes the field.

    Times are seconds. ``stage_seconds`` sums each stage over the run's cycles: ``startup``
    (Ray and Redis started, the worker actors created), ``ingest``, ``workers_start`` (the wait
    for actors still warming up), ``dispatch``, ``reference_catalogs``, ``reduce``, ``publish``
    (alerts sent and confirmed in the stream).

    ``latency_s`` maps an exposure id to the seconds from its file appearing in the night
    directory to its alerts being in Redis, and ``latency_stages_s`` to where that time went, in
    order, summing to it: ``wait`` (the file waiting for the cycle that picks it up), ``ingest``,
    ``plan`` (listing the store and planning tiles), ``workers_start``, ``dispatch``,
    ``reference_catalogs``, ``reduce``, ``publish`` (``--watch`` only).

    ``critical_path`` is where the time of the slowest thing went: with ``--watch`` the slowest
    exposure's (``exposure``, ``latency_s`` from its file appearing to its alerts confirmed in
    Redis); otherwise the run's own (``exposure`` None, ``latency_s`` its wall time, the stages
    as above from ``startup`` to ``shutdown``: Ray, Redis and the actors stopped). Its
    ``stages`` are in order, each ``{stage, start_s, end_s, seconds, share}`` (offsets from the
    start, the share of ``latency_s``), and their seconds sum to ``latency_s``. As the tiles
    stream, the run's path is: ``startup`` (Ray started, the actors created: the ingest starts),
    ``ingest`` (until the first exposure CCD whose tiles could run landed), ``plan`` (until they
    were planned and handed to the actors: Redis starting, when it had not yet), ``workers_start``
    (what was left of the actors' warm-up then), ``dispatch`` (until the last tile's outcome: the
    rest of the ingest ran beside it), ``reference_catalogs``, ``reduce``, ``publish``,
    ``shutdown``; its ``overlapped`` list gives what ran beside the path, each ``{stage, start_s,
    end_s, seconds}``: ``ingest`` (the whole), ``workers_warmup`` (from the actors' creation to
    their first health answer), ``redis``, ``plan_night``.
    """

    night: str = ""
    store_url: str = ""
    redis_url: str = ""
    stream: str = ""
    started_utc: str = ""
    exposures: int = 0
    exposures_skipped: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    tiles: int = 0
    tiles_done_before: int = 0
    tiles_processed: int = 0
    tiles_failed: dict[str, str] = field(default_factory=dict)
    megapixels: float = 0.0
    candidates: int = 0
    detections: int = 0
    objects: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    alerts_published: int = 0
    alerts_already_published: int = 0
    alerts_spooled: int = 0
    alerts_in_stream: int = 0
    alerts_unconfirmed: int = 0
    alerts_resent: int = 0
    alerts_replayed: int = 0
    alerts_held_back: dict[str, int] = field(default_factory=dict)
    held_back_because: dict[str, list[str]] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    worker_restarts: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    latency_s: dict[str, float] = field(default_factory=dict)
    latency_stages_s: dict[str, dict[str, float]] = field(default_factory=dict)
    critical_path: dict[str, Any] = field(default_factory=dict)
    catalogs: dict[str, str] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        """Tiles processed per second of dispatch (0 when none were processed)."""
        busy = self.stage_seconds.get("dispatch", 0.0)
        return self.tiles_processed / busy if busy > 0 else 0.0

    @property
    def ok(self) -> bool:
        """No file quarantined, no tile failed, no alert held back, and every alert confirmed in Redis."""
        return (not self.quarantined and not self.tiles_failed and not self.alerts_held_back
                and not self.alerts_spooled and not self.alerts_unconfirmed)

    def latency_percentiles(self) -> dict[str, float]:
        """Return p50 and p95 of ``latency_s`` (empty when there is none)."""
        if not self.latency_s:
            return {}
        values = np.array(list(self.latency_s.values()))
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-safe dict (derived rates included)."""
        out = asdict(self)
        out["tiles_per_second"] = self.tiles_per_second
        out["latency_percentiles_s"] = self.latency_percentiles()
        return out


def critical_path(start: float, marks: Iterable[tuple[str, float]], *, exposure: str | None = None,
                  overlapped: Iterable[tuple[str, float, float]] = ()) -> dict[str, Any]:
    """
    Lay out where the time from ``start`` to the last mark went, stage by stage, in order.

    Parameters
    ----------
    start : float
        When the path begins (a file appeared, the run started), in the marks' clock.
    marks : iterable of (str, float)
        ``(stage, when it ended)`` in the order the stages ran; each stage runs from the end of
        the one before (or ``start``). A mark earlier than the one before it (a file whose time
        is later than its cycle's start) is taken as that one: a stage never has negative time.
    exposure : str, optional
        The exposure whose path this is.
    overlapped : iterable of (str, float, float), optional
        ``(what, began, ended)`` of work that ran beside the path (the whole ingest, the actors'
        warm-up, Redis starting, the night's plan): reported as it ran, in the order given, not
        summed; a part of one that held the path up is in the stage it delayed.

    Returns
    -------
    dict
        ``{exposure, latency_s, stages: [{stage, start_s, end_s, seconds, share}], overlapped:
        [{stage, start_s, end_s, seconds}]}``: offsets from ``start`` and the share of
        ``latency_s``; the stages' seconds sum to ``latency_s`` (to the rounding of 3 decimals).
        No stages and 0 s when there are no marks.
    """
    bounds: list[tuple[str, float, float]] = []
    begin = start
    for stage, when in marks:
        end = max(when, begin)
        bounds.append((stage, begin - start, end - start))
        begin = end
    latency = begin - start
    stages = [{"stage": stage, "start_s": round(lo, 3), "end_s": round(hi, 3), "seconds": round(hi - lo, 3),
               "share": round((hi - lo) / latency, 4) if latency > 0 else 0.0} for stage, lo, hi in bounds]
    beside = [{"stage": stage, "start_s": round(lo - start, 3), "end_s": round(hi - start, 3), "seconds": round(hi - lo, 3)}
              for stage, lo, hi in overlapped if hi >= lo]
    return {"exposure": exposure, "latency_s": round(latency, 3), "stages": stages, "overlapped": beside}


def night_name(store: NightStore, exposures: list[str]) -> str:
    """
    Return the night's name: the observing day (``YYYYMMDD``) of its first exposure.

    Like Rubin's ``dayObs``, the day of (UTC time - 12 h), so one night never straddles two
    names. ``"unknown"`` when no exposure has a time.
    """
    found = (store.ccd_metadata(key, store.ccd_names(key)[0]).get("mjd_obs") for key in exposures)
    mjds = [m for m in found if m is not None]
    if not mjds:
        return "unknown"
    return astropy_time.Time(min(mjds) - 0.5, format="mjd", scale="utc").strftime("%Y%m%d")


def plan_night(store: NightStore, config: SkyblinkConfig) -> tuple[list[WorkUnit], dict[str, str], list[str]]:
    """
    Plan the work units of every ingested exposure of the store.

    Returns
    -------
    units : list of WorkUnit
        Sorted by exposure, CCD, row and column.
    skipped : dict
        Exposure key -> why it has no units (no reference of its field, CCDs unlike the
        reference's).
    exposures : list of str
        The exposure keys planned.
    """
    size = config.night.tile_size or config.ingest.tile_size
    references = set(store.exposure_keys("reference"))
    units: list[WorkUnit] = []
    skipped: dict[str, str] = {}
    planned: list[str] = []
    for key in store.exposure_keys("exposure"):
        field_id = _field_of(store, key)
        try:
            reference = store.reference_key(field_id)
        except ValueError:  # an empty field, or one holding a '/': no reference can have its key
            reference = ""
        if reference not in references:
            skipped[key] = f"no reference image of field {field_id!r} in the store"
            continue
        missing = set(store.ccd_names(key)) - set(store.ccd_names(reference))
        if missing:
            skipped[key] = f"the reference of field {field_id!r} lacks CCDs {sorted(missing)}"
            continue
        planned.append(key)
        units.extend(plan_tiles(store, key, size=size, margin=config.night.margin))
    return units, skipped, planned


def _field_of(store: NightStore, exposure: str) -> str:
    return str(store.ccd_metadata(exposure, store.ccd_names(exposure)[0]).get("field"))


def _objects_table(detections: pa.Table) -> pa.Table:
    if detections.num_rows == 0:
        return pa.table({"object_id": pa.array([], pa.int64())})
    grouped = detections.group_by("object_id").aggregate(
        [("ra", "mean"), ("dec", "mean"), ("mjd", "min"), ("mjd", "max"), ("real_bogus", "max"),
         ("candidate_id", "count"), ("alert_type", "count")]
    )
    return grouped.rename_columns(
        ["object_id", "ra", "dec", "first_mjd", "last_mjd", "max_real_bogus", "n_detections", "n_alerts"]
    ).sort_by("object_id")


@dataclass
class RunHooks:
    """
    Progress hooks of a night run, all optional.

    ``on_stage(name)``: a stage starts; ``on_planned(tiles to do, tiles done before)``: the
    cycle's tiles are planned (called once its ingest has ended, so the tiles of the exposures
    that landed first may be running already: they count among those to do); ``on_unit(outcome)``: a unit's outcome arrived; ``say(line)``: a line for the user.
    """

    on_stage: Callable[[str], None] = lambda _stage: None
    on_planned: Callable[[int, int], None] = lambda _total, _done: None
    on_unit: Callable[[UnitOutcome], None] = lambda _outcome: None
    say: Callable[[str], None] = log.info


def run_night(
    night_dir: Path | str,
    config: SkyblinkConfig,
    *,
    night: str | None = None,
    keep_redis: bool = False,
    watch: bool = False,
    wait: bool = False,
    on_stage: Callable[[str], None] | None = None,
    on_planned: Callable[[int, int], None] | None = None,
    on_unit: Callable[[UnitOutcome], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> NightRunReport:
    """
    Run the nightly pipeline on a night directory: ``NightRun(...).run()``.

    Parameters
    ----------
    night_dir : Path or str
        ``exposures/`` and ``references/`` (written by ``skyblink sim night`` or the observatory).
    config : SkyblinkConfig
        The effective configuration (store, ray, redis, alerts, engines, night).
    night : str, optional
        The night's name (stream name, alert ids); default `night_name` of its exposures.
    keep_redis : bool
        Leave a private redis-server running at the end.
    watch : bool
        Keep processing exposures as they land until none has come for ``night.watch_idle_s``
        and no reference catalog is under way (or the process is interrupted).
    wait : bool
        When another writer holds the store's lock, wait for it instead of refusing.
    on_stage, on_planned, on_unit, say : callable, optional
        Progress hooks (`RunHooks`).

    Returns
    -------
    NightRunReport

    Raises
    ------
    IngestPlanError
        The night directory is missing.
    RedisServerError, RedisAuthError, RedisUnavailableError
        No Redis could be started or reached.
    StoreLockedError
        Another ``night run`` or ``ingest`` writes the store (and ``wait`` is False).
    """
    hooks = RunHooks()
    for name, hook in (("on_stage", on_stage), ("on_planned", on_planned), ("on_unit", on_unit), ("say", say)):
        if hook is not None:
            setattr(hooks, name, hook)
    return NightRun(night_dir, config, night=night, keep_redis=keep_redis, watch=watch, wait=wait, hooks=hooks).run()


class NightRun:
    """
    One nightly run and its state: the configuration, the report being filled, the worker pool,
    the Redis client, the reference catalogs under way and the static detections kept across the
    cycles of ``--watch``. `run` runs it once; each stage is a method.

    The fixed costs are started first and overlap what follows: Ray starts, the worker actors are
    created at once (they load their engines and warm up from then on: `_Warmup` records when they
    are ready), Ray's task workers import the ingest (`prestart_ingest_workers`); the first cycle's
    ingest then starts in a thread of the driver while Redis starts, its files streaming into the
    store CCD by CCD, and a CCD's tiles go to the actors as soon as it and its reference's CCD
    have landed (`_Landings`), so the tiles of a visit's first CCDs run while its later CCDs and
    later files are still being ingested.

    Parameters
    ----------
    night_dir, config, night, keep_redis, watch, wait
        As `run_night`.
    hooks : RunHooks, optional
        Progress hooks.
    """

    def __init__(self, night_dir: Path | str, config: SkyblinkConfig, *, night: str | None = None,
                 keep_redis: bool = False, watch: bool = False, wait: bool = False,
                 hooks: RunHooks | None = None) -> None:
        self.night_dir = Path(night_dir).resolve()
        self.config = config
        self.night = night
        self.keep_redis = keep_redis
        self.watch = watch
        self.wait = wait
        self.hooks = hooks or RunHooks()
        self.report = NightRunReport()
        #: (stage, when it ended), in order: the run's critical path (not --watch).
        self.marks: list[tuple[str, float]] = []
        #: Exposure id -> when its file appeared (its modification time).
        self.seen_files: dict[str, float] = {}
        self.static = _StaticDetections()
        self.pool: WorkerPool | None = None
        self.client: Any = None
        self.references: _ReferenceCatalogs | None = None
        self.began = 0.0  # the critical path's clock: files' times are wall clock
        #: When the actors became ready (their first health answer), recorded as it comes (`start_workers`).
        self.warmup: _Warmup | None = None
        #: (what, began, ended) of work beside the run's path (`critical_path`'s ``overlapped``).
        self.overlapped: list[tuple[str, float, float]] = []

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> NightRunReport:
        """
        Run the night (and, with ``watch``, keep running it as exposures land); return the report.

        Raises what `run_night` raises.
        """
        start = time.perf_counter()
        self.began = time.time()
        self.report.started_utc = datetime.now(UTC).isoformat(timespec="seconds")
        config, hooks = self.config, self.hooks
        for name, folder in packages_without_bytecode():
            hooks.say(f"{name} ({folder}) has no compiled bytecode and this Python will not write it: every Ray worker "
                      f"and actor compiles it from source at start (the GPU demo night: 18-20 s in the run against 11-12 s); "
                      f"`{compile_command(folder)}` writes it")
        # One writer per store: taken before anything is started, held to the end (watch included).
        lock = StoreLock(config.store, "skyblink night run").acquire(wait=self.wait, say=hooks.say)
        with lock, ray_session(config.ray):
            landings: _Landings | None = None
            try:
                self.start_workers()  # they load their engines and warm up while the rest starts
                self.references = _ReferenceCatalogs(config.night.reference_snr_threshold, hooks.say)
                if not self.watch:
                    # Ray started and the actors created: the ingest starts now, beside Redis' start
                    # (needed only to publish) and the actors' warm-up.
                    self.marks.append(("startup", time.time()))
                    self.report.stage_seconds = {"startup": self.marks[-1][1] - self.began, **self.report.stage_seconds}
                    hooks.on_stage("ingest")
                    landings = _Landings(self)
                redis_began = time.time()
                with embedded_redis(config, keep=self.keep_redis, say=hooks.say) as redis_url:
                    self.client = connect(config.redis, url=redis_url, retries=config.alerts.retries,
                                          backoff_s=config.alerts.backoff_s, backoff_max_s=config.alerts.backoff_max_s)
                    self.report.redis_url = redact_url(redis_url)
                    self.overlapped.append(("redis", redis_began, time.time()))
                    try:
                        if self.watch:
                            # The observatory case: Ray and Redis started, the actors created. They
                            # warm up (a compile: 96 s on an H100) while the references are ingested
                            # and catalogued; an exposure landing before they are ready waits for
                            # them (its ``workers_start``).
                            self.marks.append(("startup", time.time()))
                            self.report.stage_seconds = {"startup": self.marks[-1][1] - self.began,
                                                         **self.report.stage_seconds}
                        self._cycles(landings)
                        landings = None
                    finally:
                        self.client.close()
            finally:
                if landings is not None:  # Redis failed to start: let the ingest end before Ray does
                    landings.settle()
                _DriverMetrics.wait_exported(config)  # the actors' too: they live until the pool shuts down
                if self.pool is not None:
                    self.report.worker_restarts = self.pool.restarts
                    self.pool.shutdown()
        self.report.wall_seconds = time.perf_counter() - start
        # In the order the stages run (the ingest's thread and the actors' wait end in either order).
        self.report.stage_seconds = dict(sorted(self.report.stage_seconds.items(), key=lambda kv: _stage_rank(kv[0])))
        if not self.watch:  # --watch: the slowest exposure's, set by the cycles
            if self.warmup is not None and self.warmup.ready_at is not None:
                self.overlapped.insert(1, ("workers_warmup", self.warmup.created_at, self.warmup.ready_at))
            self.report.critical_path = critical_path(self.began, [*self.marks, ("shutdown", time.time())],
                                                      overlapped=self.overlapped)
        return self.report

    def _cycles(self, landings: _Landings | None = None) -> None:
        """
        One cycle, or with ``watch`` cycles until the night has been idle for ``night.watch_idle_s``;
        ``landings``: the first cycle's ingest, started already.
        """
        assert self.references is not None
        idle_since = time.monotonic()
        while True:
            new_files = self.cycle([] if self.watch else self.marks, landings)  # --watch: per cycle
            landings = None
            if not self.watch:
                return
            warming = self.pool is not None and not self.pool.ready
            if warming and self.warmup is not None and self.warmup.ready_at is not None:
                self.await_workers()  # ready meanwhile: said, their engines and start in the report
                warming = False
            # Idle means nothing new and nothing under way (a reference's catalog, the actors' warm-up).
            if new_files or self.references.pending or warming:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.config.night.watch_idle_s:
                self.hooks.say(f"no new exposure for {self.config.night.watch_idle_s:.0f} s: the night is over")
                return
            time.sleep(self.config.night.watch_poll_s)

    # -- the worker actors ----------------------------------------------------------------------

    def start_workers(self) -> WorkerPool:
        """
        Create the worker actors without waiting for them (Ray starts them; they warm up
        meanwhile), and have the CPUs they leave free import the ingest (`prestart_ingest_workers`).
        """
        workers = WorkerConfig.from_config(self.config)  # the one contract every actor gets
        spec = worker_spec(workers)
        # CPU actors run numpy and ONNX Runtime: nothing to compile.
        compiled = self._compiles(spec.count, workers.program.tile_size) if spec.num_gpus else False
        workers = replace(workers, program=replace(workers.program, compile_device_program=compiled))
        pool = WorkerPool(workers, spec)
        self.pool = pool
        self.warmup = _Warmup(pool.actors)
        self.report.workers = {"count": pool.spec.count, "kind": pool.spec.kind, "backend": str(workers.backend),
                               "compiled": compiled}
        free = float(ray.cluster_resources().get("CPU", 1.0)) - pool.spec.count * pool.spec.num_cpus
        prestart_ingest_workers(min(int(free), _PRESTART_MAX))
        return pool

    def _compiles(self, actors: int, tile_size: int) -> bool:
        """
        Whether the GPU actors compile their device program (`compiles_for`): with ``"auto"``,
        by the night's estimated tiles per actor (`estimate_night_tiles`), said to the operator.
        """
        night = self.config.night
        setting = night.compile_device_program
        if setting != "auto" or self.watch:
            return compiles_for(setting, watch=self.watch)
        tiles = estimate_night_tiles(self.night_dir, tile_size, self.config.headers)
        per_actor = None if tiles is None else tiles / max(1, actors)
        compiled = compiles_for(setting, tiles_per_actor=per_actor, min_tiles=night.compile_min_tiles)
        size = "an unknown number of" if tiles is None else f"about {tiles}"
        self.hooks.say(f"device program {'compiled' if compiled else 'eager'}: {size} tiles for {actors} GPU actor(s) "
                       f"(night.compile_device_program = auto, compile_min_tiles = {night.compile_min_tiles} per actor)")
        return compiled

    def await_workers(self) -> float:
        """
        Wait until every actor has loaded its engines and warmed up; return the seconds waited.

        Each actor's engines (backend, TensorRT engine file and sha256, why) go into the report.
        """
        pool = self.pool if self.pool is not None else self.start_workers()
        self.hooks.on_stage("workers")
        t0 = time.perf_counter()
        health = pool.wait_ready()
        waited = time.perf_counter() - t0
        _add_stage(self.report, "workers_start", waited)
        # Per actor and model: the backend, the TensorRT engine (file and sha256) and why.
        engines: dict[str, Any] = {f"{pool.name}-{i}": answer.get("engines", {}) for i, answer in enumerate(health)}
        self.report.workers["engines"] = engines
        self.hooks.say(f"{pool.spec.count} {pool.spec.kind} worker actor(s) ready")
        created_at = self.warmup.created_at if self.warmup is not None else None
        startup = {f"{pool.name}-{i}": actor_startup(cast("dict[str, float]", answer.get("startup", {})), created_at)
                   for i, answer in enumerate(health)}
        self.report.workers["startup"] = startup
        for actor, parts in startup.items():
            if parts:
                self.hooks.say(f"{actor} started: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items()))
        for actor, per_model in engines.items():
            for model, choice in per_model.items():
                engine = f" {choice['engine_file']} (sha256 {choice['engine_sha256']})" if choice.get("engine_file") else ""
                network = f" ({choice['network']})" if choice.get("network", model) != model else ""
                self.hooks.say(f"{actor} {model}{network}: {choice['backend']}{engine}: {choice['reason']}")
        return waited

    # -- one cycle --------------------------------------------------------------------------------

    def cycle(self, marks: list[tuple[str, float]], landings: _Landings | None = None) -> bool:
        """
        One pass: ingest what is new (each CCD's tiles dispatched as it lands), process what is
        not done, reduce, publish.

        Appends to ``marks`` ``(stage, when it ended)`` (`critical_path`) for each stage it runs:
        ``ingest`` (until the first CCD whose tiles could run landed, or the whole ingest when
        none streamed), ``plan`` (until its tiles were planned and handed to the actors),
        ``workers_start`` (when the actors were still warming up), ``dispatch``,
        ``reference_catalogs``, ``reduce``, ``publish``. Returns whether new files were ingested.

        Parameters
        ----------
        marks : list of (str, float)
            Gets the stages' ends.
        landings : _Landings, optional
            The cycle's ingest, started already (the run's first cycle starts it beside Redis).
        """
        assert self.references is not None
        report, hooks = self.report, self.hooks
        cycle_start = time.time()
        first_mark = len(marks)
        if landings is None:
            hooks.on_stage("ingest")
            landings = _Landings(self)
        units = landings.first()  # the first CCD's tiles, or (nothing to stream) the plan's
        handed_at = time.time()  # planned and ready to go to the actors
        ready_at: float | None = None
        waited: float | None = None
        dispatch_end: float | None = None
        processed: set[str] = set()
        if units:
            assert self.pool is not None
            if not self.pool.ready:
                waited = self.await_workers()
            ready_at = time.time() if waited is not None else None
            hooks.on_stage("dispatch")
            t0 = time.perf_counter()
            for outcome in self.pool.run(units, more=landings.poll):
                if outcome.error is not None:
                    report.tiles_failed[outcome.unit.key] = outcome.error
                    hooks.say(f"tile {outcome.unit.key} failed: {outcome.error}")
                else:  # its candidates are in the store already (written by the actor)
                    processed.add(outcome.unit.key)
                    report.tiles_processed += 1
                hooks.on_unit(outcome)
            _add_stage(report, "dispatch", time.perf_counter() - t0)
            dispatch_end = time.time()
        plan = landings.plan
        assert plan is not None  # the feed ends with the night's plan
        store, ingest = plan.store, plan.ingest
        if landings.withdrawn:
            self._withdraw(store, landings, processed)
        beside = [("ingest", landings.ingest_began, plan.ingest_end),
                  ("plan_night", plan.ingest_end, plan.ingest_end + plan.seconds)]
        if not self.watch:
            self.overlapped += beside
        streamed_at = landings.first_landed_at
        # Streamed: the path waits for the first CCD whose tiles could run, not for the whole ingest.
        marks.append(("ingest", streamed_at if streamed_at is not None else plan.ingest_end))
        new_files = bool(ingest.ingested)
        if not plan.exposures:
            self.references.collect(store, wait_for=())
            return new_files
        # Streamed: the first tiles were handed to the actors once the driver had them (after Redis
        # started, in the run's first cycle). Otherwise planned once the ingest ended (the driver may
        # have been waiting for the actors then): the plan follows the ingest's end by its own seconds.
        planned = handed_at if streamed_at is not None else plan.ingest_end + plan.seconds
        marks.append(("plan", planned))
        if ready_at is not None and waited is not None:
            marks.append(("workers_start", ready_at))
            # ``workers_start`` counts the wait that the ingest and the plan did not hide.
            report.stage_seconds["workers_start"] -= waited - min(waited, max(0.0, ready_at - planned))
        if dispatch_end is not None:
            self._mark_damaged(store)
            report.megapixels += sum(u.size * u.size for u in plan.todo) / 1e6
            # Each actor's own account (units, peak device memory, host and device seconds on a GPU):
            # where the dispatch time went.
            assert self.pool is not None
            report.workers["actors"] = self.pool.poll_health()
            marks.append(("dispatch", dispatch_end))
        with _timed(report, "reference_catalogs"):  # usually ready long before (see _ReferenceCatalogs)
            self.references.collect(store, wait_for={_field_of(store, key) for key in plan.exposures}
                                    if self.references.pending else ())
        marks.append(("reference_catalogs", time.time()))
        done = plan.done_before | processed
        todo = plan.todo
        if todo or not report.detections:
            incomplete = _incomplete_fields(store, [u for u in plan.units if u.key not in done])
            # --watch publishes the new exposures' alerts; those of a field held back before go out too
            # once the field is complete.
            held_before = {key for key in plan.exposures if _field_of(store, key) in report.alerts_held_back}
            self.reduce_and_publish(store, [u for u in plan.units if u.key in done], plan.results,
                                    {u.exposure for u in todo} | held_before, incomplete=incomplete, marks=marks)
        if self.watch:
            self._note_latencies(cycle_start, marks[first_mark:], {u.exposure.rsplit("/", 1)[-1] for u in todo},
                                 overlapped=beside)
        return new_files

    def _note_latencies(self, cycle_start: float, cycle_marks: list[tuple[str, float]], fresh: set[str], *,
                        overlapped: list[tuple[str, float, float]] | None = None) -> None:
        """
        --watch: each new exposure's path, from its file appearing, through the wait for this cycle, to its alerts
        confirmed in Redis; ``overlapped``: what ran beside it in the cycle (the whole ingest, the plan).
        """
        cycle = [("wait", cycle_start), *cycle_marks]
        for exposure_id in sorted(fresh):
            appeared = self.seen_files.get(exposure_id)
            if appeared is not None:
                path = critical_path(appeared, cycle, exposure=exposure_id, overlapped=overlapped or ())
                self.report.latency_s[exposure_id] = path["latency_s"]
                self.report.latency_stages_s[exposure_id] = {s["stage"]: s["seconds"] for s in path["stages"]}
                if path["latency_s"] >= self.report.critical_path.get("latency_s", -1.0):
                    self.report.critical_path = path
                _DriverMetrics.get().latency.observe(path["latency_s"])

    def _withdraw(self, store: NightStore, landings: _Landings, processed: set[str]) -> None:
        """
        Drop what was made of the CCDs of files that are not in the store after all (quarantined
        after some CCDs had landed and run: a CCD of NaNs, a truncated HDU): their tiles' outcomes
        and result files. The file's quarantine says why (`report.quarantined`), not its tiles.
        """
        report = self.report
        for key, unit in landings.submitted.items():
            if unit.exposure in landings.withdrawn:
                report.tiles_failed.pop(key, None)
                if key in processed:
                    processed.discard(key)
                    report.tiles_processed -= 1
        results = UnitStore(store.url)
        for exposure in sorted(landings.withdrawn):
            results.forget(exposure)
            self.hooks.say(f"{exposure}: its file is not in the store after all; the results of its CCDs that landed "
                           "first are dropped")

    def ingest(self, on_landed: Callable[[IngestOutcome], None],
               on_ccd: Callable[[CcdLanded], None] | None = None) -> IngestReport:
        """
        Ingest the night's new and changed files (Ray tasks; this call blocks), calling
        ``on_ccd`` with each CCD as it lands in the store and ``on_landed`` with each file's
        outcome once the whole file is; record quarantined and failed files and when each new
        file appeared.
        """

        def landed(outcome: IngestOutcome | ManifestEntry) -> None:
            if isinstance(outcome, IngestOutcome) and outcome.result == "ingested":
                on_landed(outcome)

        settle = self.config.night.watch_poll_s if self.watch else 0.0
        ingest = ingest_night(self.night_dir, self.config, settle_s=settle, on_outcome=landed, on_ccd=on_ccd)
        for entry in ingest.quarantined:
            self.report.quarantined[entry.path] = entry.reason or "quarantined"
        for entry in ingest.failed:
            self.report.quarantined[entry.path] = entry.reason or "failed"
        for outcome in ingest.ingested:
            # When the file appeared: its modification time (the observatory writes, then renames).
            exposure_id = outcome.key.rsplit("/", 1)[-1]
            self.seen_files.setdefault(exposure_id, (self.night_dir / outcome.path).stat().st_mtime)
        return ingest

    def _mark_damaged(self, store: NightStore) -> None:
        """Flag the exposures whose tiles failed a chunk checksum, so that the next run's ingest writes them again."""
        damaged = {key: error for error in self.report.tiles_failed.values()
                   if (key := damaged_store_key(error)) is not None}
        if not damaged:
            return
        writable = NightStore(store.url, mode="a")
        for key, error in sorted(damaged.items()):
            with contextlib.suppress(KeyError):  # deleted meanwhile: the next ingest writes it anyway
                writable.mark_damaged(key, error)
                self.hooks.say(f"{key} is corrupt in the store (a chunk failed its checksum): the next run re-ingests "
                               "it from its file")

    # -- reduce and publish -----------------------------------------------------------------------

    def reduce_and_publish(self, store: NightStore, done: list[WorkUnit], results: UnitStore, new: set[str], *,
                           incomplete: dict[str, list[str]] | None = None,
                           marks: list[tuple[str, float]] | None = None) -> None:
        """
        Reduce the night (``done``: the units with results; ``new``: exposure keys processed now) and publish.

        ``incomplete`` (field -> its units without a result) holds back every alert of those fields
        (`_hold_back`): nothing goes out that the run completing the field would change. ``marks``
        gets the ends of ``reduce`` and ``publish`` (`critical_path`).
        """
        marks = marks if marks is not None else []
        final, candidates = self.reduce(store, done, results, new, incomplete or {})
        marks.append(("reduce", time.time()))
        self.publish(store, final, candidates, new)
        marks.append(("publish", time.time()))  # sent and confirmed in the stream

    def reduce(self, store: NightStore, done: list[WorkUnit], results: UnitStore, new: set[str],
               incomplete: dict[str, list[str]]) -> tuple[pa.Table, pa.Table]:
        """
        Locate, match, link and classify the night's detections; write the night's catalogs.

        Returns the detections whose alerts may go out (those of incomplete fields held back)
        and the unit results read now (their ``row`` indexes it).
        """
        report, night = self.report, self.report.night
        self.hooks.on_stage("reduce")
        with _timed(report, "reduce"):
            candidates, known = self.static.update(store, results, done, night, self.config, redo=new)
            detections = night_detections(known, self.config.night)
            objects = _objects_table(detections)
            paths = {name: store.files.catalog_path(name) for name in ("detections", "objects")}
            # ``row`` points into the results read in one cycle: meaningless outside this run.
            store.files.write(paths["detections"], detections.drop_columns(["row"]), detections_schema(CLASSIFIER_CLASSES))
            store.files.write(paths["objects"], objects, OBJECTS_SCHEMA)
            report.catalogs = paths
            report.candidates = sum(self.static.candidates.values())
            report.detections = detections.num_rows
            report.objects = objects.num_rows
            report.alerts = alert_counts(detections)
            final, held = _hold_back(detections, incomplete)
            report.alerts_held_back = held
            report.held_back_because = {field_id: keys for field_id, keys in incomplete.items() if field_id in held}
            for field_id, count in held.items():
                keys = incomplete[field_id]
                self.hooks.say(f"held back {count} alert(s) of field {field_id}: {len(keys)} tile(s) of its exposures "
                               f"have no result ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); they go "
                               "out, final, when a run completes the field")
        return final, candidates

    def publish(self, store: NightStore, final: pa.Table, candidates: pa.Table, new: set[str]) -> None:
        """Send the alerts of ``final`` (``watch``: of the exposures in ``new`` only) and confirm them in the stream."""
        report, config = self.report, self.config
        self.hooks.on_stage("publish")
        with _timed(report, "publish"):
            builder = AlertBuilder(report.night, gzip_mode=config.alerts.cutout_gzip,
                                   real_bogus_model=real_bogus_model(config))
            exposure_ids = {key.rsplit("/", 1)[-1] for key in new} if self.watch else None
            sent: list[int] = []
            with AlertProducer(self.client, report.night, config=config.alerts) as producer:
                replayed = producer.opened  # alerts an earlier run spooled, sent now
                count = len(alerted_rows(final, exposure_ids))
                free = int(ray.available_resources().get("CPU", 0)) if ray.is_initialized() else 0
                if count >= _TASK_PACKET_ALERTS and free >= _TASK_PACKET_CPUS:
                    # A large visit: its packets are built in Ray tasks, in order, while the
                    # producer sends the parts that are ready (the driver's threads share one lock).
                    filtered: list[int] = []
                    published: PublishReport = producer.publish_encoded(
                        self._packets_in_tasks(store, final, candidates, exposure_ids, count, free, sent, filtered))
                    published += PublishReport(filtered=sum(filtered))
                else:
                    # Built a batch ahead: the next batch's cutouts compress while the producer sends one.
                    packets = build_alerts(final, candidates, store, builder, exposures=exposure_ids,
                                           ahead=2 * config.alerts.batch_size)
                    published = producer.publish(packets, sent=sent)
                self.hooks.on_stage("confirm")
                published += self._confirm_delivery(producer, sent, final, candidates, store, builder, exposure_ids)
            new_entries = published.published + replayed.published
            report.alerts_published += new_entries
            report.alerts_replayed += replayed.replayed
            if new_entries:
                _DriverMetrics.get().alerts.inc(new_entries)
            # The replayed alerts of this night are found again by this run's publish: not "already there".
            report.alerts_already_published += max(0, published.duplicates - replayed.published)

    def _packets_in_tasks(self, store: NightStore, detections: pa.Table, candidates: pa.Table,
                          exposure_ids: set[str] | None, count: int, cpus: int, sent: list[int],
                          filtered: list[int]) -> Iterator[EncodedAlert]:
        """
        Yield the encoded packets of the ``count`` alerts of ``detections`` (of ``exposure_ids``,
        or all), built in Ray tasks of consecutive alerts (`encode_alert_part`) on ``cpus`` free
        CPUs, in order; extend ``sent`` with their ids and ``filtered`` with each task's count of
        edge-filtered alerts as they are taken.
        """
        size = max(_TASK_PACKET_PART_ALERTS, -(-count // (2 * max(1, cpus))))  # two tasks a CPU at least
        task = ray.remote(num_cpus=1, max_retries=2)(encode_alert_part)
        stamps = ray.put(candidates)  # once, for every task (Arrow: read in place)
        config, model = self.config, real_bogus_model(self.config)
        refs = [task.remote(part, ids, stamps, store.url, self.report.night, config.alerts.cutout_gzip, config.alerts, model)
                for part, ids in alert_parts(detections, exposure_ids, size)]
        self.hooks.say(f"building {count} alert packets in {len(refs)} Ray task(s) on {cpus} free CPU(s)")
        for ref in refs:
            encoded, ids, held_back = ray.get(ref)
            sent.extend(ids)
            filtered.append(held_back)
            yield from encoded

    def _confirm_delivery(self, producer: AlertProducer, sent: list[int], detections: pa.Table, candidates: pa.Table,
                          store: NightStore, builder: AlertBuilder, exposure_ids: set[str] | None, *,
                          rounds: int = 3) -> PublishReport:
        """
        Ask the stream for the alerts just sent; re-send those it lacks (a server restarted without
        them) until all are there or ``rounds`` re-sends were made. Record in the report how many are
        in the stream and how many could not be confirmed (spooled ones aside).

        Returns what the re-sends did.
        """
        report = self.report
        total = PublishReport()
        missing: list[int] = []
        for attempt in range(rounds + 1):
            try:
                missing = producer.confirm(sent)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.hooks.say(f"could not confirm the {len(sent)} alert(s) of {producer.stream}: Redis does not "
                               f"answer ({type(exc).__name__})")
                missing = list(sent)
                break
            if not missing or attempt == rounds:
                break
            # Lost by a restarted server, or spooled while it was away: Redis answers now, send them.
            self.hooks.say(f"{len(missing)} alert(s) sent are not in {producer.stream}: sending them again")
            lost = set(missing)
            objects = pc.unique(pc.filter(detections.column("object_id"),
                                          pc.is_in(detections.column("alert_id"), pa.array(sorted(lost), pa.int64()))))
            again = detections.filter(pc.is_in(detections.column("object_id"), objects))
            resent = producer.publish(a for a in build_alerts(again, candidates, store, builder, exposures=exposure_ids)
                                      if a.alert_id in lost)
            report.alerts_resent += resent.published
            total += resent
        absent = set(missing)
        spooled = absent & producer.spooled_ids  # the next producer start replays them
        report.alerts_spooled += len(spooled)
        report.alerts_unconfirmed += len(absent - spooled)  # summed over the cycles of --watch
        report.alerts_in_stream += len(set(sent) - absent)
        return total


@dataclass
class _Plan:
    """A cycle's plan, made once its ingest has ended."""

    store: NightStore
    ingest: IngestReport
    ingest_end: float  # wall clock
    seconds: float  # planning itself
    results: UnitStore
    units: list[WorkUnit]
    exposures: list[str]
    done_before: set[str]  # units with a result before this cycle
    todo: list[WorkUnit]  # this cycle's units: streamed while the ingest ran, and the rest


def real_bogus_model(config: SkyblinkConfig) -> str:
    """
    The network that scores a night's candidates, as its alert packets record it (``realBogusModel``).

    Parameters
    ----------
    config : SkyblinkConfig

    Returns
    -------
    str
        ``"<name> <version>"`` of the shipped model ``night.classifier`` names, e.g. ``"classifier 1.0"``.
    """
    from skyblink.engines.catalog import MODEL_VERSIONS  # noqa: PLC0415 - torch-free (the cards and versions)

    return f"{config.night.classifier} {MODEL_VERSIONS[config.night.classifier]}"


def actor_startup(startup: dict[str, float], created_at: float | None) -> dict[str, float]:
    """
    Where one worker actor's start went, from its `TileWorker.check_health` ``startup`` and the
    time the driver created it (epoch seconds; None: not known).

    Returns ``{"process": ..., "detector": ..., "classifier": ..., "device_program": ...,
    "total": ...}`` in seconds (``process``: from the creation to the actor's constructor, Ray's
    worker process and its imports; ``total``: from the creation to ready), each only where
    known, rounded to 0.01 s; empty for an actor that sent none (an older worker image).
    """
    parts: dict[str, float] = {}
    began, ready = startup.get("began_at"), startup.get("ready_at")
    if created_at is not None and began is not None:
        parts["process"] = max(0.0, began - created_at)
    for name in ("detector", "classifier", "device_program"):
        if f"{name}_s" in startup:
            parts[name] = startup[f"{name}_s"]
    if created_at is not None and ready is not None:
        parts["total"] = max(0.0, ready - created_at)
    return {name: round(seconds, 2) for name, seconds in parts.items()}


class _Warmup:
    """
    When the worker actors became ready: each actor's first health check is asked for at its
    creation and its answer's arrival recorded as it comes (a callback, nothing waits), so that the
    report can say when the warm-up ended even where nobody waited for it.
    """

    def __init__(self, actors: list[Any]) -> None:
        self.created_at = time.time()
        self._left = len(actors)
        self._lock = threading.Lock()
        self.ready_at: float | None = None if actors else self.created_at
        for actor in actors:
            actor.check_health.remote().future().add_done_callback(self._answered)

    def _answered(self, _future: Any) -> None:
        with self._lock:  # Ray's threads call back
            self._left -= 1
            if self._left == 0:
                self.ready_at = time.time()


class _Landings:
    """
    One cycle's ingest, run in a thread, as a feed of tiles for `WorkerPool.run`.

    Each CCD of an exposure is planned as soon as it lands in the store (`CcdLanded`: the ingest
    task streams its CCDs as it writes them) and the same CCD of its field's reference has too
    (references are ingested first), so its tiles go to the actors while the exposure's later CCDs and later
    files are still being ingested; an exposure's own outcome plans any CCD not streamed. Once the
    ingest has ended, the night is planned as before the streaming (`plan_night`: the complete
    exposures of the store, the reasons for skipped ones) and what was not streamed is fed; the
    feed then ends. Exposures streamed but not in that plan (their file quarantined after some CCDs
    landed) are `withdrawn`.
    """

    def __init__(self, run: NightRun) -> None:
        self.run = run
        #: (when it arrived, what): each landed CCD and each ingested file's outcome.
        self.landed: queue.Queue[tuple[float, IngestOutcome | CcdLanded]] = queue.Queue()
        self.waiting: list[str] = []  # exposures landed whole, CCDs not streamed planned then
        self.waiting_ccds: list[tuple[str, str, float]] = []  # (exposure, CCD, landed) before the reference
        self.streamed_ccds: set[tuple[str, str]] = set()
        self.submitted: dict[str, WorkUnit] = {}
        self.present: dict[str, set[str]] = {}  # exposure -> its result files before this cycle
        self.processed_before = run.report.tiles_processed  # by earlier cycles
        self.plan: _Plan | None = None
        #: When the first CCD whose tiles were fed landed (None: nothing streamed).
        self.first_landed_at: float | None = None
        #: Exposures whose tiles were fed that are not in the night's plan (`_finish`).
        self.withdrawn: set[str] = set()
        self._ended = False
        self.ingest_began = time.time()
        self._ingest_end = 0.0
        executor = ThreadPoolExecutor(1, thread_name_prefix="night-ingest")
        self.future = executor.submit(self._ingest)
        executor.shutdown(wait=False)

    def _ingest(self) -> IngestReport:
        t0 = time.perf_counter()
        try:
            return self.run.ingest(lambda outcome: self.landed.put((time.time(), outcome)),
                                   lambda ccd: self.landed.put((time.time(), ccd)))
        finally:
            _add_stage(self.run.report, "ingest", time.perf_counter() - t0)
            self._ingest_end = time.time()

    def settle(self) -> None:
        """Wait for the ingest to end, whatever it raises (the run is ending before its cycle ran)."""
        with contextlib.suppress(Exception):
            self.future.result()

    def first(self) -> list[WorkUnit]:
        """Block until there are tiles to run (a CCD landed, or the plan) or nothing is left."""
        while True:
            units = self.poll(0.2)
            if units is None or units:
                return units or []

    def poll(self, timeout: float) -> list[WorkUnit] | None:
        """New tiles (blocking at most ``timeout`` s while the ingest runs); None once the feed has ended."""
        if self._ended:
            return None
        if self.plan is not None:
            self._ended = True
            return None
        events: list[tuple[float, IngestOutcome | CcdLanded]] = []
        with contextlib.suppress(queue.Empty):
            events.append(self.landed.get(timeout=timeout) if timeout > 0 else self.landed.get_nowait())
            while True:
                events.append(self.landed.get_nowait())
        if events:
            return self._stream(events)
        if self.future.done():
            return self._finish()
        return []

    def _stream(self, events: list[tuple[float, IngestOutcome | CcdLanded]]) -> list[WorkUnit]:
        config = self.run.config
        store = NightStore(config.store)
        # A reference's catalog tasks start once the ingest has ended (`_finish`), not as it lands:
        # on a small node they take the CPU the exposures' ingest needs (2 loaded cores: the demo
        # night's ingest took 19-20 s with them started on landing, 8-19 s before), and they run
        # beside the tiles anyway.
        for when, event in events:
            if event.kind != "exposure":
                continue
            if isinstance(event, CcdLanded):
                self.waiting_ccds.append((event.key, event.ccd, when))
            else:
                self.waiting.append(event.key)
        references = set(store.exposure_keys("reference"))
        size = config.night.tile_size or config.ingest.tile_size
        units: list[WorkUnit] = []
        landed: list[float] = []
        still_ccds: list[tuple[str, str, float]] = []
        for key, ccd, when in self.waiting_ccds:
            try:
                reference = store.reference_key(str(store.ccd_metadata(key, ccd).get("field")))
            except (KeyError, ValueError):  # gone again (its file quarantined), or no field: the plan says why
                continue
            if ccd in store.landed_ccds(reference):  # the reference's CCD may land before the whole reference
                try:
                    units.extend(plan_ccd_tiles(store, key, ccd, size=size, margin=config.night.margin))
                except KeyError:  # deleted while planned (its file quarantined): the plan says why
                    continue
                self.streamed_ccds.add((key, ccd))
                landed.append(when)
            elif reference not in references:
                still_ccds.append((key, ccd, when))
            # else the complete reference lacks the CCD: the plan skips the exposure and says why
        self.waiting_ccds = still_ccds
        still: list[str] = []
        for key in self.waiting:
            try:
                reference = store.reference_key(_field_of(store, key))
            except (KeyError, ValueError):  # no field or not in the store: the plan says why
                continue
            if reference not in references:
                still.append(key)
            elif not set(store.ccd_names(key)) - set(store.ccd_names(reference)):
                for ccd in store.ccd_names(key):
                    if (key, ccd) not in self.streamed_ccds:  # its landing was not seen (an older ingest)
                        units.extend(plan_ccd_tiles(store, key, ccd, size=size, margin=config.night.margin))
                        self.streamed_ccds.add((key, ccd))
        self.waiting = still
        if not units:
            return []
        results = UnitStore(store.url)
        for exposure in {u.exposure for u in units} - set(self.present):
            self.present[exposure] = results.present(exposure)
        present = set().union(*(self.present[exposure] for exposure in {u.exposure for u in units}))
        done = results.done(units, present=present)
        fresh = [u for u in units if u.key not in done and u.key not in self.submitted]
        self.submitted.update((u.key, u) for u in fresh)
        if fresh and self.first_landed_at is None:
            self.first_landed_at = min(landed) if landed else time.time()
        return fresh

    def _finish(self) -> list[WorkUnit]:
        """The ingest has ended: plan the night, record it, and return the tiles not streamed."""
        run, report, hooks = self.run, self.run.report, self.run.hooks
        started = time.time()
        ingest = self.future.result()  # raises what the ingest raised (a missing night directory, ...)
        store = NightStore(ingest.store_url)
        if not store.checksummed and not report.store_url:
            hooks.say(f"store {store.url} was created before per-chunk checksums: its exposures ingested before are "
                      "read unverified (a corrupt chunk may decode into wrong pixels); ingest the night into a new "
                      "store to verify every read")
        report.store_url = store.url
        # A reference's catalog is started as soon as the reference is in the store (CPU tasks, beside
        # the GPU actors), so that it is ready before the field's first exposure lands.
        assert run.references is not None
        run.references.start(store)
        units, skipped, exposures = plan_night(store, run.config)
        report.exposures, report.exposures_skipped = len(exposures), skipped
        report.tiles = len(units)
        self.withdrawn = {u.exposure for u in self.submitted.values()} - set(exposures)
        results = UnitStore(store.url)
        streamed = set(self.submitted)
        done_before = results.done(units) - streamed
        rest = [u for u in units if u.key not in done_before and u.key not in streamed]
        todo = [u for u in units if u.key in streamed or u.key not in done_before]
        if exposures:
            name = run.night or report.night or night_name(store, exposures)
            report.night = name
            report.stream = stream_name(run.config.alerts.stream, name)
            if not self.processed_before:  # the night's first cycle with tiles to do
                report.tiles_done_before = len(done_before)
            hooks.on_planned(len(todo), len(done_before))  # the tiles streamed so far included
        self.plan = _Plan(store=store, ingest=ingest, ingest_end=self._ingest_end,
                          seconds=time.time() - started, results=results,
                          units=units, exposures=exposures, done_before=done_before, todo=todo)
        return rest


class _DriverMetrics:
    """The driver's Prometheus metrics (through Ray's metrics agent), created once per process."""

    _instance: _DriverMetrics | None = None

    def __init__(self) -> None:
        self.stage_seconds = ray_metrics.Histogram("skyblink_stage_seconds", "Wall time of one stage of a nightly run cycle.",
                                       boundaries=[0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000], tag_keys=("stage",))
        self.alerts = ray_metrics.Counter("skyblink_alerts_published", "Alerts newly published to the night's stream.")
        self.latency = ray_metrics.Histogram("skyblink_alert_latency_seconds", "--watch: from an exposure file appearing to its "
                                 "alerts being in Redis.", boundaries=[1, 3, 10, 30, 60, 120, 300, 600])

    @classmethod
    def get(cls) -> _DriverMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def wait_exported(cls, config: SkyblinkConfig) -> None:
        """
        On a cluster this driver joined, with a Ray that exports metrics only periodically, wait
        until what the driver and its worker actors recorded has reached the metrics agent.

        Ray 2.60 exports a process's metrics when it shuts Ray down (measured: a counter
        incremented 0.3 s before ``ray.shutdown()`` is served by the agent), so nothing is waited
        for there. Earlier Rays (the dependency allows 2.40 on; not measured here) are taken to
        export only every ``metrics_report_interval_ms`` (10 s by default), as a run review saw
        ``skyblink_alerts_published`` missing: what the last cycle recorded (the alerts published,
        the reduce and publish stages, the actors' last tiles) would be lost with the driver and the
        actors, so they wait one interval. A local Ray ends with the driver and
        nothing would serve them: no wait there.
        """
        if config.ray.address in (None, "local") or _ray_flushes_metrics_at_shutdown():
            return
        interval = max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
        time.sleep(interval + 1.0)


def _ray_flushes_metrics_at_shutdown() -> bool:
    """True for Ray 2.60 and later, whose processes export their metrics when they shut Ray down."""
    return Version(ray.__version__) >= Version("2.60")


#: The stages of a cycle in the order they run.
_STAGES = ("startup", "ingest", "workers_start", "dispatch", "reference_catalogs", "reduce", "publish")


def _stage_rank(stage: str) -> int:
    return _STAGES.index(stage) if stage in _STAGES else len(_STAGES)


def _add_stage(report: NightRunReport, stage: str, seconds: float) -> None:
    """Add ``seconds`` to a stage's time in the report and the driver's metrics."""
    report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + seconds
    _DriverMetrics.get().stage_seconds.observe(seconds, tags={"stage": stage})


def _timed(report: NightRunReport, stage: str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def timer() -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _add_stage(report, stage, time.perf_counter() - t0)

    return timer()


def _incomplete_fields(store: NightStore, missing: list[WorkUnit]) -> dict[str, list[str]]:
    """Return field -> the keys of its units without a result (failed or not processed), sorted."""
    fields: dict[str, list[str]] = {}
    field_of: dict[str, str] = {}
    for unit in missing:
        if unit.exposure not in field_of:
            field_of[unit.exposure] = _field_of(store, unit.exposure)
        fields.setdefault(field_of[unit.exposure], []).append(unit.key)
    return {field_id: sorted(keys) for field_id, keys in sorted(fields.items())}


def _hold_back(detections: pa.Table, incomplete: dict[str, list[str]]) -> tuple[pa.Table, dict[str, int]]:
    """
    Drop from ``detections`` every object of a field with an incomplete exposure.

    Returns the detections whose alerts may be published (whole objects: their packets' history
    is unchanged) and field -> the number of alerts held back.
    """
    if not incomplete or detections.num_rows == 0:
        return detections, {}
    fields = detections.column("field").cast(pa.string())
    touched = pc.is_in(fields, pa.array(sorted(incomplete), pa.string()))
    objects = pc.unique(pc.filter(detections.column("object_id"), touched))
    held = pc.is_in(detections.column("object_id"), objects)
    alerted = pc.and_(held, pc.is_valid(detections.column("alert_type")))
    counts = Counter(pc.filter(fields, alerted).to_pylist())
    return detections.filter(pc.invert(held)), dict(sorted(counts.items()))


class _ReferenceCatalogs:
    """
    The static-source catalogs of the night's references, one Ray task per reference CCD.

    `start` launches the tasks of every reference in the store whose catalog is neither cached
    nor under way; `collect` writes the finished ones (waiting for those the reduce step needs).
    In watch mode a reference's catalog is thus computed when the reference lands, not when the
    field's first exposure does.
    """

    def __init__(self, snr_threshold: float, say: Callable[[str], None]) -> None:
        self.snr_threshold = snr_threshold
        self.say = say
        self.pending: dict[str, list[Any]] = {}
        # A task of the catalog's module: its worker processes import no torch (the night run does).
        self._task = ray.remote(num_cpus=1, max_retries=2)(reference_ccd_task)

    def start(self, store: NightStore) -> None:
        """Start the tasks of each reference in ``store`` whose catalog is not cached or pending."""
        for key in store.exposure_keys("reference"):
            field_id = key.rsplit("/", 1)[-1]
            fs, path = reference_catalog_path(store, field_id, self.snr_threshold)
            if field_id in self.pending or fs.exists(path):
                continue
            self.pending[field_id] = [self._task.remote(store.url, field_id, ccd, self.snr_threshold)
                                      for ccd in store.ccd_names(key)]

    def collect(self, store: NightStore, *, wait_for: Iterable[str]) -> None:
        """Write the catalogs of the fields in ``wait_for`` (waiting for them) and of any finished field."""
        needed = set(wait_for)
        for field_id, refs in list(self.pending.items()):
            if field_id not in needed and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) < len(refs):
                continue
            table = write_reference_catalog(store, field_id, ray.get(refs), snr_threshold=self.snr_threshold)
            del self.pending[field_id]
            self.say(f"reference catalog of {field_id} ready: {table.num_rows} sources")


#: Ray task workers warmed for the ingest at most (a large cluster's CPUs are not all needed).
_PRESTART_MAX = 64

#: Alerts of one publish from which their packets are built in Ray tasks (`NightRun._packets_in_tasks`).
#: Below, in the driver's threads: the demo night's 231 alerts take 0.3-0.5 s there; a Rubin-size
#: visit's 10,582 took 16.7 s to build and publish on a 16-core H100 node (2026-12-06), the
#: builders and the producer sharing the driver's one interpreter lock.
_TASK_PACKET_ALERTS = 2000
#: Alerts of one packet task at least (more where the cluster has few CPUs: two tasks a CPU).
_TASK_PACKET_PART_ALERTS = 250
#: Free CPUs (those the actors leave) from which packets are built in tasks. 60 % of a packet is
#: Python under the interpreter lock (zlib the rest): on 2 cores the driver's threads build a Rubin-like visit's
#: 12,676 packets in 17.6 s and two tasks in 18.5 s, and a run whose worker actor holds one of the
#: two CPUs spent 40 s publishing from one task at a time, against 30 s from its threads.
_TASK_PACKET_CPUS = 4

#: Units (tiles) of the exposures to reduce from which their per-exposure step runs in Ray tasks.
#: Below, in the driver: on the demo night (40 tiles, 10 exposures, 260 candidates) the step takes
#: 0.33 s in the driver and took 16.6 s in fresh tasks on 2 loaded cores (workers started and the
#: reduce imported); the 4 x 12 night of 4k CCDs (768 tiles) spent 3.7 s in the driver's reduce.
_TASK_REDUCE_UNITS = 256
#: Most units of one task: an exposure larger than this is split into tasks of whole CCDs (the
#: step's rows never join across CCDs). A Rubin-size visit (189 CCDs, 3,024 tiles, ~12,600
#: candidates) spent 8.5 s of its 42.9 s latency in the driver's step on one H100 node.
_TASK_REDUCE_PART_UNITS = 128


class _StaticDetections:
    """
    Each exposure's `static_detections` (located, merged, matched against the reference), kept
    across the cycles of a run: a cycle computes them for its new exposures only, and the
    night's table is their concatenation, so that reducing a visit late in the night does not
    redo the night.
    """

    def __init__(self, *, task_units: int = _TASK_REDUCE_UNITS, part_units: int = _TASK_REDUCE_PART_UNITS) -> None:
        self.tables: dict[str, pa.Table] = {}
        self.candidates: dict[str, int] = {}
        #: From this many units, their step runs in Ray tasks (`_in_tasks`).
        self.task_units = task_units
        #: Units of one task at most, in whole CCDs (`_parts`).
        self.part_units = part_units

    def update(self, store: NightStore, results: UnitStore, done: list[WorkUnit], night: str, config: SkyblinkConfig,
               redo: set[str]) -> tuple[pa.Table, pa.Table]:
        """
        Compute the tables of the exposures not held yet or in ``redo`` (exposure keys).

        Parameters
        ----------
        done : list of WorkUnit
            The units whose results are in the store.

        Returns
        -------
        candidates : pyarrow.Table
            The unit results read now (the ``row`` of the new detections indexes it).
        static : pyarrow.Table
            The night's static detections, sorted by `DETECTION_ORDER`.
        """
        by_exposure: dict[str, list[WorkUnit]] = {}
        for unit in done:
            by_exposure.setdefault(unit.exposure, []).append(unit)
        for gone in set(self.tables) - set(by_exposure):
            del self.tables[gone], self.candidates[gone]
        need = [key for key in by_exposure if key not in self.tables or key in redo]
        if ray.is_initialized() and sum(len(by_exposure[key]) for key in need) >= self.task_units:
            candidates = self._in_tasks(store, need, by_exposure, night, config)
            fresh = candidates.slice(0, 0)  # not used: every exposure of the night is held now
        else:  # a small night or visit: a task's start and transfer are not worth it
            candidates = results.read([u for key in need for u in by_exposure[key]])
            fresh = static_detections(candidates, store, night, config.night)
            tables = split_by_exposure(fresh)
            counts = Counter(candidates.column("exposure").to_pylist())
            for key in need:
                self.tables[key] = tables.get(key, fresh.slice(0, 0))
                self.candidates[key] = counts[key]
        held = [self.tables[key] for key in by_exposure]
        # An exposure without detections has null-typed columns: promoted to the others' types.
        static = pa.concat_tables(held, promote_options="default").sort_by(DETECTION_ORDER) if held else fresh
        return candidates, static

    def _in_tasks(self, store: NightStore, need: list[str], by_exposure: dict[str, list[WorkUnit]], night: str,
                  config: SkyblinkConfig) -> pa.Table:
        """
        Each exposure's results read and `static_detections` run in Ray tasks (in parallel, on
        the CPUs the actors leave), one per exposure or, for a large one, per run of whole CCDs
        (`_parts`); hold each exposure's table, its ``row`` shifted to index the returned
        candidates: the exposures' results concatenated in ``need``'s order, the table one read
        of them all gives.
        """
        task = ray.remote(num_cpus=1, max_retries=2)(exposure_static_detections)
        parts = [(key, part) for key in need for part in self._parts(by_exposure[key])]
        refs = [task.remote(store.url, part, night, config.night) for _, part in parts]
        read: list[pa.Table] = []
        found: dict[str, list[pa.Table]] = {key: [] for key in need}
        counts: Counter[str] = Counter()
        offset = 0
        for (key, _), (candidates, static) in zip(parts, ray.get(refs), strict=True):
            if offset and static.num_rows:
                column = static.column("row")
                static = static.set_column(static.schema.get_field_index("row"), "row",
                                           pc.add(column, pa.scalar(offset, column.type)))
            found[key].append(static)
            counts[key] += candidates.num_rows
            read.append(candidates)
            offset += candidates.num_rows
        for key, tables in found.items():
            # An exposure's parts are in its units' order; the night's table is sorted when joined.
            self.tables[key] = pa.concat_tables(tables, promote_options="default")
            self.candidates[key] = counts[key]
        return pa.concat_tables(read)

    def _parts(self, units: list[WorkUnit]) -> list[list[WorkUnit]]:
        """
        Split one exposure's units, in their order, into runs of whole CCDs of at most
        ``part_units`` units (a CCD larger than that is one part).
        """
        parts: list[list[WorkUnit]] = []
        for _, group in groupby(units, key=lambda u: u.ccd):
            ccd = list(group)
            if parts and len(parts[-1]) + len(ccd) <= self.part_units:
                parts[-1].extend(ccd)
            else:
                parts.append(ccd)
        return parts
