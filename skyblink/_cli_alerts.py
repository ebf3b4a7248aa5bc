"""
``skyblink alerts``: consume, tail and validate the alert stream.

Each command validates its configuration, then calls public functions of
`skyblink.storage.alerts`; none holds logic of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from ._cli_common import EXIT_ERROR, RedisUrlOption, console, effective_config, err_console, fail
from .config import SkyblinkConfig

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="The alert stream: consume it in a group, look at its tail, validate the schemas.",
    no_args_is_help=True,
)

NightOption = Annotated[
    str | None,
    typer.Option("--night", help="Night whose stream to read, e.g. 20261125 (stream = alerts.stream with {night})."),
]
StreamOption = Annotated[
    str | None,
    typer.Option("--stream", help="Full stream name instead of --night."),
]


def _client(config: SkyblinkConfig) -> Any:
    from skyblink.storage.alerts import connect  # noqa: PLC0415 - keep --help fast

    if not config.redis.url:
        msg = (
            "error: no Redis to read from: pass --redis-url or set redis.url / SKYBLINK_REDIS__URL "
            "(a private redis-server lives only as long as the run that started it)"
        )
        raise fail(msg)
    try:
        return connect(config.redis)
    except (ValueError, _alert_errors()) as exc:
        raise fail(f"error: {exc}") from None


def _alert_errors() -> type[Exception]:
    from skyblink.storage.alerts import AlertError  # noqa: PLC0415

    return AlertError


def _stream(config: SkyblinkConfig, night: str | None, stream: str | None) -> str:
    from skyblink.storage.alerts import stream_name  # noqa: PLC0415

    if (night is None) == (stream is None):
        raise fail("error: give exactly one of --night and --stream", code=2)
    if stream is not None:
        return stream
    try:
        return stream_name(config.alerts.stream, night)  # type: ignore[arg-type]
    except ValueError as exc:
        raise fail(f"error: {exc}", code=2) from None


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
) -> None:
    """Read alerts in a consumer group, write JSON lines (and cutouts), ack each once written."""
    from skyblink.storage.alerts import AlertConsumer, AlertError, JsonLinesSink  # noqa: PLC0415

    if start not in ("earliest", "latest"):
        raise fail(f"error: --start must be earliest or latest, got {start!r}", code=2)
    start_at: Literal["earliest", "latest"] = "earliest" if start == "earliest" else "latest"
    config = effective_config(ctx, **{"redis.url": redis_url, "alerts.block_ms": block_ms})
    name = _stream(config, night, stream)
    if cutouts and out == "-":
        raise fail("error: --cutouts writes files: pass --out DIR, not --out -", code=2)
    client = _client(config)
    letters: list[str] = []
    try:
        with (
            JsonLinesSink(None if out == "-" else Path(out), cutouts=cutouts) as sink,
            AlertConsumer(
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
    except (AlertError, OSError) as exc:
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


@alerts_app.command("tail")
def tail(
    ctx: typer.Context,
    night: NightOption = None,
    stream: StreamOption = None,
    redis_url: RedisUrlOption = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, help="Entries to show, newest last (default 20).")] = 20,
) -> None:
    """Show the last entries of a stream as a table (reads only; no group, no ack)."""
    from skyblink.storage.alerts import latest_alerts  # noqa: PLC0415

    config = effective_config(ctx, **{"redis.url": redis_url})
    name = _stream(config, night, stream)
    client = _client(config)
    try:
        alerts, malformed = latest_alerts(client, name, lines)
        length = client.xlen(name)
    finally:
        client.close()
    table = Table(title=f"{name}: last {len(alerts) + len(malformed)} of {length} entries")
    for column in ("entry", "alertId", "type", "band", "MJD", "RA", "Dec", "mag", "S/N", "real/bogus", "cutouts"):
        table.add_column(column, justify="right" if column not in ("entry", "type", "cutouts") else "left")
    for received in alerts:
        det = received.alert.detection
        where = "inline" if received.alert.cutouts() else ("side store" if received.alert.cutout_store_key else "none")
        table.add_row(
            received.entry_id,
            str(received.alert.alert_id),
            str(det.alert_type),
            str(det.band),
            f"{det.mjd:.5f}",
            f"{det.ra:.6f}",
            f"{det.dec:+.6f}",
            "-" if det.mag is None else f"{det.mag:.2f}",
            f"{det.snr:.1f}",
            f"{det.real_bogus:.3f}",
            where,
        )
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
    from skyblink.storage.alerts import SchemaNotFoundError, validate_schemas  # noqa: PLC0415

    try:
        checks = validate_schemas(version)
    except SchemaNotFoundError as exc:
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
) -> None:
    """Score real survey alerts with skyblink's classifier (and braai for ZTF), one row per alert."""
    import csv  # noqa: PLC0415

    from skyblink.engines.score_external import score_alerts  # noqa: PLC0415
    from skyblink.storage.alerts.survey_packets import read_survey_files  # noqa: PLC0415

    report = read_survey_files(files, rubin_schema_dir=rubin_schemas)
    scores = score_alerts(report.alerts, braai=braai)
    columns = ("alert_id", "survey", "object_id", "schema_version", "skyblink_rb", "skyblink_class", "braai_drb",
               "packet_score", "packet_score_name", "drb", "rb", "reliability", "stamp_shape", "packet")
    rows = []
    for s in scores:
        a = s.alert
        shape = "" if a.stamps is None else "x".join(map(str, a.stamps.raw_shape))
        rows.append((str(a.alert_id), str(a.survey), a.object_id, a.schema_version, _cell(s.skyblink_rb), s.skyblink_class or "",
                     _cell(s.braai_drb), _cell(a.packet_score), a.packet_score_name or "", _cell(a.scores.get("drb")),
                     _cell(a.scores.get("rb")), _cell(a.scores.get("reliability")), shape, a.packet))
    table = Table(title=f"{len(rows)} alert(s) from {len(files)} file(s)")
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
