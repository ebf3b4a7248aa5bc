"""
``skyblink alerts``: consume, tail and validate the alert stream.

Each command validates its configuration, then calls public functions of
`skyblink.storage.alerts`; none holds logic of its own.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from . import model_io
from ._cli_checks import check_output_dir
from ._cli_common import (
    EXIT_ERROR,
    RedisUrlOption,
    console,
    effective_config,
    err_console,
    fail,
    inputs_checked,
    prog,
)
from .config import SkyblinkConfig
from .lazy_import import lazy_module

if TYPE_CHECKING:
    from skyblink.cluster import private_redis
    from skyblink.storage import alerts as storage_alerts
    from skyblink.storage.alerts import survey_packets
else:
    # Keep --help fast: Redis, fastavro and the cluster driver load when a command runs.
    private_redis = lazy_module("skyblink.cluster.private_redis")
    storage_alerts = lazy_module("skyblink.storage.alerts")
    survey_packets = lazy_module("skyblink.storage.alerts.survey_packets")

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="The alert stream: consume it in a group, look at its tail, validate the schemas.",
    no_args_is_help=True,
)

NightOption = Annotated[
    str | None,
    typer.Option(
        "--night",
        help="Night whose stream to read, e.g. 20261124 (stream = alerts.stream with {night}); "
        "`skyblink alerts nights` lists them.",
    ),
]
StreamOption = Annotated[
    str | None,
    typer.Option("--stream", help="Full stream name instead of --night."),
]


def _client(config: SkyblinkConfig) -> Any:
    url = config.redis.url
    if not url:
        url = private_redis.running_private_redis(config)
    if not url:
        msg = (
            f"error: no Redis to read from: no private redis-server is running in {config.night.redis_dir} "
            "(`skyblink night run --keep-redis` leaves one there, as scripts/demo-night.sh does); "
            "pass --redis-url or set redis.url / SKYBLINK_REDIS__URL"
        )
        raise fail(msg)
    try:
        return storage_alerts.connect(config.redis, url=url)
    except (ValueError, storage_alerts.AlertError) as exc:
        raise fail(f"error: {exc}") from None


def _stream(config: SkyblinkConfig, night: str | None, stream: str | None) -> str:
    if (night is None) == (stream is None):
        raise fail("error: give exactly one of --night and --stream (`skyblink alerts nights` lists the nights)", code=2)
    if stream is not None:
        return stream
    try:
        return storage_alerts.stream_name(config.alerts.stream, night)  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(f"error: {exc}", code=2) from None


def _nights(client: Any, config: SkyblinkConfig) -> dict[str, int]:
    """The nights whose stream is in this Redis (dead-letter streams left out), with their lengths."""
    head, _, tail = config.alerts.stream.partition("{night}")
    dead_suffix = storage_alerts.dead_letter_stream("")
    found: dict[str, int] = {}
    for raw in client.scan_iter(match=f"{head}*{tail}", _type="STREAM", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        night = key[len(head):len(key) - len(tail)] if tail else key[len(head):]
        if night and not key.endswith(dead_suffix):
            found[night] = int(client.xlen(key))
    return dict(sorted(found.items()))


def _require_stream(client: Any, config: SkyblinkConfig, name: str) -> None:
    """Exit 1 naming the stream and the nights that do exist when ``name`` is not in Redis."""
    if client.exists(name):
        return
    nights = _nights(client, config)
    there = ", ".join(nights) if nights else "none"
    client.close()
    raise fail(f"error: no stream {name} in this Redis; nights there: {there} (`{prog()} alerts nights` lists them)")


@alerts_app.command("nights")
def nights(ctx: typer.Context, redis_url: RedisUrlOption = None) -> None:
    """List the nights whose alert stream is in Redis, with their number of alerts."""
    config = effective_config(ctx, **{"redis.url": redis_url})
    client = _client(config)
    try:
        found = _nights(client, config)
    finally:
        client.close()
    if not found:
        raise fail(f"error: no alert stream matching {config.alerts.stream} in this Redis")
    for night, length in found.items():
        console.print(f"{night}  {length} alert(s)  ({prog()} alerts tail --night {night})", markup=False, highlight=False)


@alerts_app.command("consume")
def consume(
    ctx: typer.Context,
    group: Annotated[str, typer.Option("--group", help="Consumer group (one per broker or application).")],
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Consumer name in the group (default <host>-<pid>).")
    ] = None,
    night: NightOption = None,
    stream: StreamOption = None,
    redis_url: RedisUrlOption = None,
    out: Annotated[
        str, typer.Option("--out", help="Directory for alerts.jsonl (+ cutouts/), or - for JSON lines on stdout.")
    ] = "-",
    cutouts: Annotated[
        bool, typer.Option("--cutouts", help="Also write each alert's cutouts as .fits.gz files (needs --out DIR).")
    ] = False,
    count: Annotated[int | None, typer.Option("--count", min=1, help="Stop after N alerts (default: run until stopped).")] = None,
    block_ms: Annotated[
        int | None, typer.Option("--block-ms", min=0, help="Longest wait of one read, default 2000 (config: alerts.block_ms).")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", min=0.0, help="Stop when nothing arrived for this many seconds.")
    ] = None,
    start: Annotated[
        str, typer.Option("--start", help="Where a new group starts: earliest (default) or latest.")
    ] = "earliest",
    wait_for_stream: Annotated[
        bool,
        typer.Option("--wait-for-stream/--no-wait-for-stream",
                     help="Wait for a stream that does not exist yet (a night not yet started) instead of failing."),
    ] = False,
) -> None:
    """Read alerts in a consumer group, write JSON lines (and cutouts), ack each once written."""
    if start not in ("earliest", "latest"):
        raise fail(f"error: --start must be earliest or latest, got {start!r}", code=2)
    start_at: Literal["earliest", "latest"] = "earliest" if start == "earliest" else "latest"
    config = effective_config(ctx, **{"redis.url": redis_url, "alerts.block_ms": block_ms})
    name = _stream(config, night, stream)
    if cutouts and out == "-":
        raise fail("error: --cutouts writes files: pass --out DIR, not --out -", code=2)
    if out != "-":
        with inputs_checked():
            check_output_dir(Path(out), "--out")
    client = _client(config)
    if wait_for_stream:
        _wait_for(client, name)
    else:
        _require_stream(client, config, name)
    letters: list[str] = []
    try:
        with (
            storage_alerts.JsonLinesSink(None if out == "-" else Path(out), cutouts=cutouts) as sink,
            storage_alerts.AlertConsumer(
                client,
                group,
                stream=name,
                consumer=consumer,
                config=config.alerts,
                start=start_at,
                resolve_cutouts=cutouts,
                on_dead_letter=lambda letter: letters.append(letter.entry_id),
            ) as reader,
        ):
            try:
                report = reader.run(sink.handle, max_alerts=count, idle_exit_s=idle_exit, before_ack=sink.flush)
            except KeyboardInterrupt:
                err_console.print("interrupted: unacked alerts stay pending for the group", markup=False)
                raise typer.Exit(130) from None
    except (storage_alerts.AlertError, OSError) as exc:
        raise fail(f"error: {exc}") from None
    finally:
        client.close()
    err_console.print(
        f"{report.handled} alert(s) handled from {name} (group {group}, consumer {reader.consumer}); "
        f"{report.reclaimed} reclaimed, {report.dead_lettered} dead-lettered to {reader.dead_stream}, "
        f"{report.failed} failed",
        markup=False,
        highlight=False,
    )
    if report.dead_lettered or report.failed:
        raise typer.Exit(3)


def _wait_for(client: Any, name: str) -> None:
    if client.exists(name):
        return
    err_console.print(f"waiting for the stream {name} to appear (Ctrl-C to stop)", markup=False, highlight=False)
    try:
        while not client.exists(name):
            time.sleep(1.0)
    except KeyboardInterrupt:
        client.close()
        raise typer.Exit(130) from None


@alerts_app.command("tail")
def tail(
    ctx: typer.Context,
    night: NightOption = None,
    stream: StreamOption = None,
    redis_url: RedisUrlOption = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, help="Entries to show, newest last (default 20).")] = 20,
    wide: Annotated[
        bool, typer.Option("--wide/--narrow", help="Also show each entry's stream id and where its cutouts are.")
    ] = False,
) -> None:
    """Show the last entries of a stream as a table (reads only; no group, no ack); fits 80 columns."""
    config = effective_config(ctx, **{"redis.url": redis_url})
    name = _stream(config, night, stream)
    client = _client(config)
    _require_stream(client, config, name)
    try:
        alerts, malformed = storage_alerts.latest_alerts(client, name, lines)
        length = client.xlen(name)
    finally:
        client.close()
    # Narrow by default: 80 columns hold the id, type, band, time, position, magnitude and scores.
    table = Table(title=f"{name}: last {len(alerts) + len(malformed)} of {length} entries", box=None,
                  padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    columns = [("alertId", "right"), ("type", "left"), ("band", "left"), ("MJD", "right"), ("RA", "right"),
               ("Dec", "right"), ("mag", "right"), ("S/N", "right"), ("rb", "right")]
    if wide:
        columns = [("entry", "left"), *columns, ("cutouts", "left")]
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for received in alerts:
        det = received.alert.detection
        row = [
            str(received.alert.alert_id),
            str(det.alert_type),
            str(det.band),
            f"{det.mjd:.4f}",  # 9 s
            f"{det.ra:.4f}",  # 0.4 arcsec
            f"{det.dec:+.4f}",
            "-" if det.mag is None else f"{det.mag:.2f}",
            f"{det.snr:.1f}",
            f"{det.real_bogus:.2f}",
        ]
        if wide:
            where = "inline" if received.alert.cutouts() else ("side store" if received.alert.cutout_store_key else "none")
            row = [received.entry_id, *row, where]
        table.add_row(*row)
    console.print(table)
    for letter in malformed:
        err_console.print(f"malformed entry {letter.entry_id}: {letter.error}", style="yellow", markup=False, soft_wrap=True)


@alerts_app.command("validate")
def validate(
    version: Annotated[
        list[str] | None, typer.Argument(help="Schema versions to check (default: every shipped version).")
    ] = None,
) -> None:
    """Check that every shipped schema version round-trips its sample data."""
    try:
        checks = storage_alerts.validate_schemas(version)
    except storage_alerts.SchemaNotFoundError as exc:
        raise fail(f"error: {exc}") from None
    table = Table(title="alert schemas")
    for column in ("version", "schema id", "samples", "largest packet", "round trip"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.version,
            str(check.schema_id),
            str(check.samples),
            f"{check.payload_bytes} B",
            "ok" if check.ok else f"FAILED: {check.error}",
        )
    console.print(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(EXIT_ERROR)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


@alerts_app.command("score")
def score(
    files: Annotated[list[Path], typer.Argument(help="Alert packet files: ZTF or Rubin Avro containers, framed Rubin messages, ZTF JSON, Fink Parquet.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the table as CSV here too (default: print only).")] = None,
    rubin_schemas: Annotated[
        Path | None,
        typer.Option("--rubin-schemas", help="Rubin's schema folder, for framed messages (env: SKYBLINK_RUBIN_SCHEMA_DIR)."),
    ] = None,
    braai: Annotated[bool, typer.Option("--braai/--no-braai", help="Also score ZTF alerts with the braai port (default on).")] = True,
    model: Annotated[
        str,
        typer.Option("--model", help="skyblink_rb's network: survey_classifier (made for survey stamps, the default) or "
                                      "classifier (the pipeline's, trained on the simulator)."),
    ] = "survey_classifier",
) -> None:
    """Score real survey alerts with skyblink's survey classifier (and braai for ZTF), one row per alert."""
    from skyblink.evaluation.survey_scores import score_alerts  # noqa: PLC0415

    if model not in model_io.CLASSIFIER_MODELS:
        msg = f"--model {model!r}: expected one of {', '.join(model_io.CLASSIFIER_MODELS)}"
        raise typer.BadParameter(msg)
    report = survey_packets.read_survey_files(files, rubin_schema_dir=rubin_schemas)
    scores = score_alerts(report.alerts, braai=braai, model=model)  # type: ignore[arg-type]
    columns = ("alert_id", "survey", "object_id", "schema_version", "skyblink_rb", "skyblink_class", "braai_drb",
               "packet_score", "packet_score_name", "drb", "rb", "reliability", "stamp_shape", "packet")
    rows = []
    for s in scores:
        a = s.alert
        shape = "" if a.stamps is None else "x".join(map(str, a.stamps.raw_shape))
        rows.append((str(a.alert_id), str(a.survey), a.object_id, a.schema_version, _cell(s.skyblink_rb), s.skyblink_class or "",
                     _cell(s.braai_drb), _cell(a.packet_score), a.packet_score_name or "", _cell(a.scores.get("drb")),
                     _cell(a.scores.get("rb")), _cell(a.scores.get("reliability")), shape, a.packet))
    table = Table(title=f"{len(rows)} alert(s) from {len(files)} file(s); skyblink_rb: {model}")
    shown = (0, 1, 4, 6, 7, 8)  # alert_id, survey, skyblink_rb, braai_drb, packet_score, packet_score_name
    for i in shown:
        table.add_column(columns[i], justify="right" if i in (4, 6, 7) else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i][:8] if i in (4, 6, 7) else row[i] for i in shown))
    console.print(table)
    if out is not None:
        try:
            with out.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows(rows)
        except OSError as exc:
            raise fail(f"error: cannot write {out}: {exc}") from None
        err_console.print(f"wrote {len(rows)} row(s) to {out}", markup=False, highlight=False)
    for error in report.errors:
        err_console.print(f"unreadable: {error}", style="yellow", markup=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(3)
