"""``skyblink night run``: the nightly pipeline with a progress bar, a summary and a JSON report."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._cli_checks import (
    check_night_dir,
    check_output_dir,
    check_output_file,
    check_ray_address,
    check_redis,
    check_store,
)
from ._cli_common import (
    EXIT_BUSY,
    EXIT_QUARANTINED,
    RayAddressOption,
    RedisUrlOption,
    StoreOption,
    WaitOption,
    console,
    effective_config,
    err_console,
    fail,
    inputs_checked,
    plain_progress,
)
from ._cli_common import prog as _prog  # _print_next_steps names its local prog
from .lazy_import import lazy_module
from .redaction import redact_text

if TYPE_CHECKING:
    from skyblink import storage
    from skyblink.cluster import ingest
    from skyblink.cluster import night as cluster_night
    from skyblink.cluster.night import NightRunReport
    from skyblink.config import SkyblinkConfig
    from skyblink.evaluation.truth_scoring import ScoreReport
    from skyblink.storage import alerts as storage_alerts
else:
    # Ray, the pipeline and Redis load when a night runs, not for --help or a refused lock.
    storage = lazy_module("skyblink.storage")
    storage_alerts = lazy_module("skyblink.storage.alerts")
    ingest = lazy_module("skyblink.cluster.ingest")
    cluster_night = lazy_module("skyblink.cluster.night")

__all__ = ["night_app"]

night_app = typer.Typer(help="Run the nightly pipeline.", no_args_is_help=True)

@night_app.command("run")
def night_run(
    ctx: typer.Context,
    night_dir: Annotated[Path, typer.Argument(help="Night directory written by `skyblink sim night` or the observatory.")],
    store: StoreOption = None,
    ray_address: RayAddressOption = None,
    redis_url: RedisUrlOption = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="auto | tensorrt | torch | onnxruntime (config: engines.backend)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker actors (default: one per GPU, else one per CPU, sharing all CPUs but one).")
    ] = None,
    night: Annotated[
        str | None, typer.Option("--night", help="Night name for the stream and alert ids (default: its dayObs; "
                     "`skyblink alerts nights` lists those in Redis).")
    ] = None,
    keep_redis: Annotated[
        bool,
        typer.Option("--keep-redis/--no-keep-redis",
                     help="Leave the private redis-server running at the end, so `skyblink alerts` can read it."),
    ] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Process exposures as they land until none comes for night.watch_idle_s."),
    ] = False,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write the run report as JSON here.")
    ] = None,
    wait: WaitOption = False,
) -> None:
    """
    Ingest a night, run every tile through the worker actors, reduce, and publish alerts to Redis.

    Running it again resumes an interrupted night and ends with the same outputs.
    """
    config = effective_config(
        ctx,
        store=store,
        **{"ray.address": ray_address, "redis.url": redis_url, "engines.backend": backend, "night.workers": workers},
    )
    with inputs_checked():  # everything the user typed, before Ray, Redis or the store start
        check_store(config.store)
        check_ray_address(config.ray.address)
        check_redis(config)
        if report_path is not None:
            check_output_file(report_path, "--report")
        if night is not None:
            _check_night_name(config, night)
        check_night_dir(night_dir, allow_empty=watch)  # --watch: the exposures land later
    if config.redis.url:  # a wrong host or password fails now, not after Ray has started
        _probe_redis(config)
    try:  # one writer per store, refused before the pipeline's imports (seconds) are paid
        lock = storage.StoreLock(config.store, "skyblink night run").acquire(
            wait=wait, say=lambda line: err_console.print(line, markup=False, highlight=False))
    except storage.StoreLockedError as exc:
        raise fail(f"error: {exc}", EXIT_BUSY) from None
    with lock:
        _night_run(night_dir, config, night=night, keep_redis=keep_redis, watch=watch, report_path=report_path)


def _night_run(night_dir: Path, config: SkyblinkConfig, *, night: str | None, keep_redis: bool, watch: bool,
               report_path: Path | None) -> None:
    progress = Progress(
        TextColumn("{task.description:>16}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    bar = progress.add_task("ingest", total=None, rate="", count="")
    clock = {"t0": time.perf_counter(), "n": 0, "todo": 0, "done": 0, "dispatching": 0}

    def planned(todo: int, done: int) -> None:
        # The first exposures' tiles may already be running (they start as their files land): the
        # plan then gives the totals, and the count and rate go on.
        if not clock["dispatching"]:
            clock["t0"], clock["n"] = time.perf_counter(), 0
        clock["todo"], clock["done"] = todo, done
        progress.update(bar, total=todo + done, completed=done + clock["n"])

    def unit_done(_outcome: object) -> None:
        clock["n"] += 1
        elapsed = time.perf_counter() - clock["t0"]
        rate = clock["n"] / elapsed if elapsed > 0 else 0.0
        left = clock["todo"] - clock["n"]
        eta = f", ETA {left / rate:.0f} s" if rate > 0 and left > 0 else ""
        progress.update(bar, advance=1, count=f"{clock['done'] + clock['n']}/{clock['todo'] + clock['done']} tiles",
                        rate=f"{rate:.2f} tiles/s{eta}")

    def stage(name: str) -> None:
        # Tiles are counted when a worker call returns (night.units_per_call at once): "tiles" and
        # its count show from dispatch on; before, the stage's name and the elapsed time only.
        clock["dispatching"] = int(name == "dispatch")
        if name == "dispatch":
            # The rate counts from the first call, not from starting workers.
            clock["t0"], clock["n"] = time.perf_counter(), 0
            progress.update(bar, description="tiles", count=f"{clock['done']}/{clock['todo'] + clock['done']} tiles",
                            rate="first results when a worker call returns")
        else:
            progress.update(bar, description={"workers": "starting workers"}.get(name, name), count="", rate="")

    def say(line: str) -> None:
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        with progress, plain_progress(progress):
            report = cluster_night.run_night(night_dir, config, night=night, keep_redis=keep_redis, watch=watch,
                               on_stage=stage, on_planned=planned, on_unit=unit_done, say=say)
    except (ingest.IngestPlanError, storage.StorageError, ValueError) as exc:
        raise fail(f"error: {exc}") from None
    except KeyboardInterrupt:
        raise fail("interrupted: run the same command again to resume the night") from None
    for path, reason in report.quarantined.items():
        err_console.print(f"quarantined {path}: {reason}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    for exposure, reason in report.exposures_skipped.items():
        err_console.print(f"skipped {exposure}: {reason}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    for unit, reason in report.tiles_failed.items():
        err_console.print(f"failed tile {unit}: {reason}", style="red", markup=False, highlight=False, soft_wrap=True)
    if report.alerts_spooled or report.alerts_unconfirmed:
        err_console.print(f"{report.alerts_spooled} alert(s) spooled and {report.alerts_unconfirmed} unconfirmed: they "
                          f"are not in {report.stream}; run the same command again once Redis answers",
                          style="red", markup=False, highlight=False, soft_wrap=True)
    for field_id, count in report.alerts_held_back.items():
        tiles = report.held_back_because.get(field_id, [])
        err_console.print(f"held back {count} alert(s) of field {field_id} until its {len(tiles)} missing tile(s) are "
                          "done: repair and run the same command again", style="red", markup=False, highlight=False,
                          soft_wrap=True)
    _print_summary(report)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(redact_text(json.dumps(report.to_json(), indent=2)) + "\n")
        console.print(f"report: {report_path}")
    if not report.exposures:
        raise fail(f"error: no exposure of {night_dir} was processed (none ingested, or none has a reference image)")
    _print_next_steps(report.night, readable=bool(config.redis.url) or keep_redis)
    if not report.ok:
        raise typer.Exit(EXIT_QUARANTINED)


def _print_next_steps(night: str, *, readable: bool) -> None:
    """Say the exact commands that read the night's alerts (with this very executable)."""
    prog = _prog()
    if readable:
        console.print(f"read its alerts: {prog} alerts tail --night {night}   "
                      f"(all nights: {prog} alerts nights; to export them: "
                      f"{prog} alerts consume --group mine --night {night} --out alerts/ --idle-exit 5)",
                      markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"to read its alerts, run it again with --keep-redis (nothing is redone), then: "
                      f"{prog} alerts tail --night {night}", markup=False, highlight=False, soft_wrap=True)


def _probe_redis(config: object) -> None:
    try:
        storage_alerts.connect(config.redis).close()  # type: ignore[attr-defined]
    except (ValueError, storage_alerts.AlertError) as exc:
        raise fail(f"error: {exc}") from None


def _check_night_name(config: object, night: str) -> None:
    try:
        storage_alerts.stream_name(config.alerts.stream, night)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise fail(f"error: --night: {exc}", code=2) from None


def _print_summary(r: NightRunReport) -> None:
    dispatch = r.stage_seconds.get("dispatch", 0.0)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.alerts.items())) or "none"
    rows = [
        ("exposures", f"{r.exposures} ({len(r.exposures_skipped)} skipped, {len(r.quarantined)} files quarantined)"),
        ("tiles", f"{r.tiles} ({r.tiles_done_before} done before, {r.tiles_processed} processed now, "
                  f"{len(r.tiles_failed)} failed)"),
        ("candidates", str(r.candidates)),
        ("objects", str(r.objects)),
        ("alerts", f"{sum(r.alerts.values())} ({kinds}); {r.alerts_in_stream} confirmed in the stream "
                   f"({r.alerts_published} new, {r.alerts_already_published} already there, {r.alerts_resent} re-sent, "
                   f"{r.alerts_replayed} replayed from the spool); {r.alerts_spooled} spooled, "
                   f"{r.alerts_unconfirmed} unconfirmed, {sum(r.alerts_held_back.values())} held back"),
        ("stream", f"{r.stream} at {r.redis_url}"),
        ("workers", f"{r.workers.get('count', 0)} x {r.workers.get('kind', '-')} ({r.worker_restarts} restarts)"),
        ("throughput", f"{r.tiles_per_second:.2f} tiles/s, "
                       f"{r.megapixels / dispatch if dispatch > 0 else 0.0:.2f} Mpix/s while dispatching"),
        ("stages", ", ".join(f"{k} {v:.1f} s" for k, v in r.stage_seconds.items())),
        ("wall time", f"{r.wall_seconds:.1f} s"),
    ]
    for actor, engines in r.workers.get("engines", {}).items():
        rows.append((actor, "; ".join(
            f"{model} {c['backend']}" + (f" {c['engine_file']} sha256 {c['engine_sha256']}" if c.get("engine_file") else "")
            + f" ({c['reason']})" for model, c in engines.items())))
    if r.latency_s:
        p = r.latency_percentiles()
        rows.append(("latency", f"file -> alerts in Redis: p50 {p['p50']:.1f} s, p95 {p['p95']:.1f} s "
                                f"over {len(r.latency_s)} exposures"))
    if r.critical_path.get("stages"):
        rows.append(("critical path", _critical_path_line(r.critical_path)))
    table = Table(title=escape(f"night {r.night}: {r.store_url}"), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:  # plain text: a reason's "[tensorrt]" is not rich markup
        table.add_row(escape(name), escape(redact_text(value)))
    console.print(table)


def _critical_path_line(path: dict) -> str:
    """One line: whose path, its seconds, then each stage in order with its seconds and share."""
    stages = " -> ".join(f"{s['stage']} {s['seconds']:.1f} s ({100 * s['share']:.0f} %)" for s in path["stages"])
    whose = (f"slowest exposure {path['exposure']}, file -> alerts in Redis" if path.get("exposure")
             else "the run")
    return f"{whose} {path['latency_s']:.1f} s: {stages}"


@night_app.command("score")
def night_score(
    ctx: typer.Context,
    night_dir: Annotated[Path, typer.Argument(help="Simulated night directory (its truth/ and night.json).")],
    store: StoreOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where score.json and the PNG plots go (default: <store>/score).")
    ] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also run and score SEP on the same difference images.")
    ] = True,
) -> None:
    """
    Score a processed simulated night against its truth, side by side with the SEP baseline.

    Prints completeness, purity, astrometry, real/bogus ROC, linking and trajectory figures and
    the targets met or missed; writes score.json and completeness/roc/linking PNGs.
    """
    config = effective_config(ctx, store=store)
    with inputs_checked():
        check_night_dir(night_dir)
        check_store(config.store, must_exist=True)
        if out is not None:
            check_output_dir(out, "--out")
    from skyblink.evaluation.truth_scoring import score_night  # noqa: PLC0415 - astropy/matplotlib only when scoring

    if baseline and importlib.util.find_spec("sep") is None:
        err_console.print("sep is not installed (pip install sep): scoring without the SEP baseline", style="yellow")
        baseline = False
    where = out if out is not None else f"{config.store.rstrip('/')}/score"
    err_console.print(f"scoring {night_dir} against its truth{' and the SEP baseline' if baseline else ''}; "
                      f"score.json and the plots go to {where}", markup=False, highlight=False, soft_wrap=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                        transient=True)
    progress.add_task("scoring (SEP on every difference image takes the longest)" if baseline else "scoring", total=None)
    try:
        with progress, plain_progress(progress):
            report = score_night(night_dir, config.store, out_dir=out, baseline=baseline, config=config.night)
    except FileNotFoundError as exc:
        raise fail(f"error: {exc}") from None
    _print_score(report)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _print_score(report: ScoreReport) -> None:
    methods = [m for m in (report.ours, report.sep) if m is not None]
    table = Table(title=f"score: {report.night_dir}")
    table.add_column("metric", style="bold")
    for m in methods:
        table.add_column(m.method, justify="right")
    snr_bins = [(b["snr_lo"], b["snr_hi"]) for b in methods[0].astrometry_rms_arcsec]
    rows: list[tuple[str, list[str]]] = [
        ("detections / alerts", [f"{m.detections} / {m.alerts}" for m in methods]),
        ("purity of alerts", [_fmt(m.purity) for m in methods]),
        ("alert type right (real alerts)", [_fmt(m.type_accuracy) for m in methods]),
        ("50 % completeness mag", [_fmt(m.m50, ".2f") for m in methods]),
    ]
    for k, (lo, hi) in enumerate(snr_bins):
        label = f"astrometric RMS S/N {lo:g}-{hi:g} (\")" if hi else f"astrometric RMS S/N > {lo:g} (\")"
        rows.append((label, [f"{_fmt(m.astrometry_rms_arcsec[k]['rms'])} ({m.astrometry_rms_arcsec[k]['n']})" for m in methods]))
    rows += [
        ("astrometric RMS S/N > 20 (\")", [_fmt(m.astrometry_rms_snr_gt_20) for m in methods]),
        ("real/bogus ROC AUC", [_fmt(m.roc_auc) for m in methods]),
        ("FPR at 1 % FNR", [_fmt(m.fpr_at_fnr_1pct) for m in methods]),
        ("movers linked (>= 3 detections)", [f"{m.movers_linked}/{m.movers_3plus} ({_fmt(m.linking_efficiency)})" for m in methods]),
        ("false tracklets", [f"{m.false_tracklets}/{m.tracklets} ({_fmt(m.false_tracklet_rate)})" for m in methods]),
        ("trajectory error 1 h ahead, median / RMS (\")",
         [f"{_fmt(m.trajectory_error_1h_median_arcsec, '.2f')} / {_fmt(m.trajectory_error_1h_rms_arcsec, '.2f')}" for m in methods]),
        ("truth inside 1-sigma / 68 % ellipse",
         [f"{_fmt(m.trajectory_inside_1sigma, '.2f')} / {_fmt(m.trajectory_inside_68, '.2f')}" for m in methods]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
    console.print(table)
    completeness = Table(title="completeness of alerts by change magnitude")
    completeness.add_column("mag", style="bold")
    for m in methods:
        completeness.add_column(m.method, justify="right")
    for k, b in enumerate(methods[0].completeness_bins):
        if b["events"]:
            completeness.add_row(f"{b['mag_lo']:.1f}-{b['mag_hi']:.1f}",
                                 *[f"{m.completeness_bins[k]['found']}/{b['events']} ({_fmt(m.completeness_bins[k]['completeness'], '.2f')})"
                                   for m in methods])
    console.print(completeness)
    for name, target in report.targets.items():
        figures = ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in target.items() if k not in ("target", "met"))
        console.print(f"{name}: {'MET' if target['met'] else 'MISSED'} ({target['target']}): {figures}", markup=False, highlight=False)
    for path in report.plots:
        console.print(f"plot: {path}", markup=False, highlight=False)
