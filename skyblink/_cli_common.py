"""
Pieces shared by the ``skyblink`` subcommand modules: consoles, exit codes, shared options and the
configuration loader that every command calls before acting.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress

from ._cli_checks import InputError
from .config import ConfigError, SkyblinkConfig, load_config
from .redaction import RedactingFilter, redact_text, register_secret, register_url_secrets

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
    "inputs_checked",
    "plain_progress",
    "prog",
]

#: Seconds between the plain progress lines printed when stderr is not a terminal.
PLAIN_PROGRESS_S = 10.0

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


def prog() -> str:
    """How the user called skyblink (``.venv-demo/bin/skyblink``), for commands printed to copy."""
    return sys.argv[0] if sys.argv and Path(sys.argv[0]).name == "skyblink" else "skyblink"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one error line (no markup interpretation, secrets redacted) and return the Exit to raise."""
    err_console.print(redact_text(message), style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    """
    Drop Ray's notice that a local cluster has token authentication on (every run printed it; it is
    the safe default, nothing to act on). Its warning that authentication is off still shows.
    """
    return not record.getMessage().startswith("Token authentication is enabled")


@contextlib.contextmanager
def plain_progress(progress: Progress, *, every_s: float | None = None) -> Iterator[None]:
    """
    Print a rich ``progress`` as plain lines when stderr is not a terminal (a log file, CI, ssh
    without a tty), where rich shows nothing: one line when a step starts and one every
    ``every_s`` seconds (default `PLAIN_PROGRESS_S`) while it runs, e.g. ``tiles 8/16, 40 s``.
    On a terminal it does nothing (the bar is drawn).
    """
    console = progress.console
    if console.is_terminal:
        yield
        return
    period = PLAIN_PROGRESS_S if every_s is None else every_s
    stop = threading.Event()
    start = time.monotonic()

    def line() -> str:
        parts = []
        for task in progress.tasks:
            if not task.visible:
                continue
            if "count" in task.fields:  # the command says what to count, and when
                done = f" {task.fields['count']}" if task.fields["count"] else ""
            else:
                done = "" if task.total is None else f" {task.completed:.0f}/{task.total:.0f}"
            rate = task.fields.get("rate", "")
            parts.append(f"{task.description.strip()}{done}{', ' + rate if rate else ''}")
        return "; ".join(parts) + f" ({time.monotonic() - start:.0f} s)"

    def tick() -> None:
        last_desc, last_time = None, time.monotonic()
        while not stop.wait(0.2):
            desc = tuple(t.description for t in progress.tasks)
            if desc != last_desc or time.monotonic() - last_time >= period:
                console.print(line(), markup=False, highlight=False, soft_wrap=True)
                last_desc, last_time = desc, time.monotonic()

    thread = threading.Thread(target=tick, name="skyblink-plain-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def inputs_checked() -> Iterator[None]:
    """Turn an `InputError` raised by the checks of `skyblink._cli_checks` into one line and exit 1."""
    try:
        yield
    except InputError as exc:
        raise fail(f"error: {exc}") from None


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
    if config.redis.password is not None:
        register_secret(config.redis.password.get_secret_value())
    register_url_secrets(config.redis.url)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_drop_token_auth_notice)
    handler = RichHandler(console=err_console, show_path=False)
    handler.addFilter(RedactingFilter())  # every log line goes through the one redaction
    logging.basicConfig(level=config.log_level.upper(), format="%(message)s", handlers=[handler], force=True)
    return config
