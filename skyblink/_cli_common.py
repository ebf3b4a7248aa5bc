"""
Pieces shared by the ``skyblink`` subcommand modules: consoles, exit codes, shared options and the
configuration loader that every command calls before acting.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from .config import ConfigError, SkyblinkConfig, load_config

__all__ = [
    "EXIT_BUSY",
    "EXIT_ERROR",
    "EXIT_QUARANTINED",
    "RayAddressOption",
    "RedisUrlOption",
    "StoreOption",
    "TileSizeOption",
    "WaitOption",
    "console",
    "effective_config",
    "err_console",
    "fail",
]

EXIT_ERROR = 1
EXIT_QUARANTINED = 3
#: Another writer holds the store (sysexits' EX_TEMPFAIL: try again later).
EXIT_BUSY = 75

console = Console()
err_console = Console(stderr=True)

# Options shared by several subcommands are defined once.
StoreOption = Annotated[
    str | None,
    typer.Option("--store", help="Zarr store path or fsspec URL (config: store; env SKYBLINK_STORE)."),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="'local' starts a local Ray (default); 'auto' or ray://host:port joins one "
        "(config: ray.address; env SKYBLINK_RAY__ADDRESS).",
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="If another night run or ingest writes the store, wait for it instead of exiting 75."),
]
TileSizeOption = Annotated[
    int | None,
    typer.Option("--tile-size", help="Zarr tile edge in pixels, default 1024 (config: ingest.tile_size)."),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="redis:// or rediss:// URL; unset starts a private redis-server (config: redis.url; env SKYBLINK_REDIS__URL).",
    ),
]


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one error line (no markup interpretation) and return the Exit to raise."""
    err_console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def effective_config(ctx: typer.Context, **overrides: Any) -> SkyblinkConfig:
    """
    Load the effective configuration with this command's flags on top, and set up logging.

    Flags are dotted configuration keys; None means the flag was not given. Exits with status 1
    and one line naming the key when the configuration is invalid.
    """
    merged = {**ctx.obj["overrides"], **overrides}
    try:
        config = load_config(ctx.obj["config_file"], overrides=merged)
    except ConfigError as exc:
        raise fail(f"configuration error: {exc}") from None
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    return config
