"""
The one ``skyblink`` command. Each subcommand validates its configuration, then calls one public
function of the package; none holds pipeline logic of its own.

Exit status: 0 success; 1 an error (bad configuration, missing directory, ...); 2 a usage error;
3 the command finished but some input was quarantined or failed (see its report).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from ._cli_alerts import alerts_app
from ._cli_checks import check_night_dir, check_output_dir, check_ray_address, check_store
from ._cli_common import (
    EXIT_BUSY,
    EXIT_QUARANTINED,
    RayAddressOption,
    StoreOption,
    TileSizeOption,
    WaitOption,
    console,
    effective_config,
    err_console,
    fail,
    inputs_checked,
    plain_progress,
)
from ._cli_engines import engines_app, train_app
from ._cli_night import night_app
from ._cli_subtract import register as _register_subtract
from ._version import __version__
from .config import SkyblinkConfig, config_as_json, config_as_toml
from .lazy_import import lazy_module

if TYPE_CHECKING:
    from skyblink import cluster, sim, storage
else:
    # Keep --help fast: the simulator, the store and Ray load when a command runs.
    cluster = lazy_module("skyblink.cluster")
    sim = lazy_module("skyblink.sim")
    storage = lazy_module("skyblink.storage")

__all__ = ["EXIT_QUARANTINED", "app", "main"]

def _flags_without_type(option: Any, ctx: Any) -> str | None:
    """Help shows a boolean flag as ``--keep-redis`` (typer's rich help printed ``--keep-redis <bool>``)."""
    if option.is_flag or _typer_display_type is None:
        return None
    result: str | None = _typer_display_type(option, ctx)
    return result


# typer >= 0.2x prints a <bool> type next to every flag, as if it took a value; flags take none.
_typer_display_type = getattr(typer.core.TyperOption, "display_type_rich", None)
if _typer_display_type is not None:
    typer.core.TyperOption.display_type_rich = _flags_without_type  # type: ignore[method-assign,assignment]

app = typer.Typer(
    name="skyblink",
    help="Find what changed in the sky overnight: simulate, ingest and process a night of exposures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and check the effective configuration.", no_args_is_help=True)
sim_app = typer.Typer(help="The sky simulator.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(sim_app, name="sim")
app.add_typer(night_app, name="night")
app.add_typer(alerts_app, name="alerts")
app.add_typer(train_app, name="train")
app.add_typer(engines_app, name="engines")
_register_subtract(app)

def _version(value: bool) -> None:
    if value:
        console.print(f"skyblink {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="TOML configuration file (env SKYBLINK_CONFIG; default ./skyblink.toml if present)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error (config: log_level).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"config_file": config_file, "overrides": {"log_level": log_level}}


# ------------------------------------------------------------------------------------------ config


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    output_format: Annotated[str, typer.Option("--format", help="toml or json.")] = "toml",
) -> None:
    """Print the effective configuration (defaults < file < environment < flags)."""
    config = effective_config(ctx)
    if output_format == "json":
        console.print_json(config_as_json(config))
    elif output_format == "toml":
        typer.echo(config_as_toml(config), nl=False)
    else:
        raise fail(f"error: --format must be toml or json, got {output_format!r}", code=2)


@config_app.command("validate")
def config_validate(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="TOML file to check.")]) -> None:
    """Check a configuration file without running anything; exit 1 naming the bad key."""
    ctx.obj["config_file"] = path
    effective_config(ctx)
    console.print(f"{path}: valid", markup=False)


# --------------------------------------------------------------------------------------------- sim


@sim_app.command("night")
def sim_night(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the night into.")],
    fields: Annotated[int | None, typer.Option(help="Sky fields, default 2 (sim.fields).")] = None,
    exposures: Annotated[int | None, typer.Option(help="Exposures per field, default 5 (sim.exposures_per_field).")] = None,
    size: Annotated[int | None, typer.Option(help="CCD edge in pixels, default 2048 (sim.image_size).")] = None,
    ccds: Annotated[int | None, typer.Option(help="CCDs per exposure, default 1 (sim.ccds).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; same seed, same files (sim.seed).")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="uint16 or float32 pixels (sim.pixel_dtype).")] = None,
    rubin_visit: Annotated[
        bool, typer.Option("--rubin-visit", help="One Rubin-size visit: 189 CCDs of 4096x4096 (benchmarks).")
    ] = False,
) -> None:
    """Simulate a night: exposures with WCS, deep references and truth catalogs."""
    config = effective_config(
        ctx,
        **{
            "sim.fields": fields,
            "sim.exposures_per_field": exposures,
            "sim.image_size": size,
            "sim.ccds": ccds,
            "sim.seed": seed,
            "sim.pixel_dtype": dtype,
        },
    )
    with inputs_checked():
        check_output_dir(out_dir, "OUT_DIR")
    sim_config = sim.rubin_visit_config(seed=config.sim.seed) if rubin_visit else config.sim
    summary = sim.simulate_night(out_dir, sim_config, progress=lambda line: err_console.print(line, markup=False, highlight=False))
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.counts.items()))
    console.print(
        f"simulated {len(summary.exposures)} exposure(s) and {len(summary.references)} reference(s), "
        f"{summary.megapixels:.0f} Mpix, into {out_dir} in {summary.wall_s:.1f} s; injected: {counts}",
        markup=False,
    )


# ------------------------------------------------------------------------------------------ ingest


def _run_ingest(config: SkyblinkConfig, night_dir: Path, *, retry_quarantined: bool, retry_failed: bool = False) -> Any:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress, plain_progress(progress):
        bar = progress.add_task("ingest", total=None)
        try:
            report = cluster.ingest_night(
                night_dir,
                config,
                retry_quarantined=retry_quarantined,
                retry_failed=retry_failed,
                on_planned=lambda n_jobs: progress.update(bar, total=n_jobs),
                on_outcome=lambda _outcome: progress.advance(bar),
            )
        except (cluster.IngestPlanError, storage.StorageError) as exc:
            raise fail(f"error: {exc}") from None
    for entry in report.quarantined:
        err_console.print(f"quarantined {entry.path}: {entry.reason}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    for entry in report.failed:
        err_console.print(f"failed {entry.path}: {entry.reason}", style="red", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"ingest into {report.store_url}")
    for column in ("ingested", "unchanged", "quarantined", "failed", "MB", "Mpix", "wall s", "MB/s"):
        table.add_column(column, justify="right")
    mb = report.file_bytes / 1e6
    table.add_row(
        str(len(report.ingested)),
        str(len(report.unchanged)),
        str(len(report.quarantined)),
        str(len(report.failed)),
        f"{mb:.1f}",
        f"{report.pixels / 1e6:.1f}",
        f"{report.wall_seconds:.1f}",
        f"{mb / report.wall_seconds:.1f}" if report.wall_seconds > 0 else "-",
    )
    console.print(table)
    return report


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    night_dir: Annotated[Path, typer.Argument(help="Night directory (exposures/, references/) or a folder of FITS files.")],
    store: StoreOption = None,
    ray_address: RayAddressOption = None,
    tile_size: TileSizeOption = None,
    retry_quarantined: Annotated[
        bool, typer.Option("--retry-quarantined", help="Look again at unchanged quarantined files.")
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Read back the stored pixels of unchanged files and ingest again those that fail to read."),
    ] = False,
    wait: WaitOption = False,
) -> None:
    """Validate a night's FITS files and write them into a sharded Zarr store (parallel Ray tasks)."""
    config = effective_config(ctx, store=store, **{"ray.address": ray_address, "ingest.tile_size": tile_size})
    with inputs_checked():  # before Ray starts or the store is created
        check_store(config.store)
        check_ray_address(config.ray.address)
        check_night_dir(night_dir)
    try:  # one writer per store
        lock = storage.StoreLock(config.store, "skyblink ingest").acquire(
            wait=wait, say=lambda line: err_console.print(line, markup=False, highlight=False))
    except storage.StoreLockedError as exc:
        raise fail(f"error: {exc}", EXIT_BUSY) from None
    with lock:
        report = _run_ingest(config, night_dir, retry_quarantined=retry_quarantined, retry_failed=retry_failed)
    if not report.ok:
        raise typer.Exit(EXIT_QUARANTINED)


def main() -> None:
    """Entry point of the ``skyblink`` console script."""
    app()


if __name__ == "__main__":
    main()
