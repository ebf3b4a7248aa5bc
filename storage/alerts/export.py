"""
Alerts as JSON lines and cutouts as FITS files: what ``skyblink alerts consume`` writes.

Bytes never go into JSON: each cutout becomes ``{"fileName", "bytes", "sha256"}`` and, when asked,
a ``.fits.gz`` file beside the JSON lines.

Notes
-----
Thread-safe: pure functions; `write_cutouts` writes each file to a temporary name and renames it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from .consumer import ReceivedAlert
from .packet import Alert

__all__ = ["JsonLinesSink", "alert_json", "alert_json_line", "write_cutouts"]

_CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def alert_json(alert: Alert, *, entry_id: str | None = None, schema_version: str | None = None) -> dict[str, Any]:
    """
    Return an alert as a JSON-ready dict, cutout bytes summarised.

    Parameters
    ----------
    alert : Alert
    entry_id, schema_version : str, optional
        Added as ``entryId`` and ``schemaVersion`` when given.

    Returns
    -------
    dict
        The Avro field names; each cutout is ``{"fileName", "bytes", "sha256"}`` or null.
    """
    record = alert.to_avro()
    for name in _CUTOUT_FIELDS:
        cutout = record[name]
        if cutout is not None:
            data = cutout["stampData"]
            record[name] = {
                "fileName": cutout["fileName"],
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    if entry_id is not None:
        record["entryId"] = entry_id
    if schema_version is not None:
        record["schemaVersion"] = schema_version
    return record


def alert_json_line(received: ReceivedAlert) -> str:
    """
    Return one received alert as a JSON line (no trailing newline).

    Parameters
    ----------
    received : ReceivedAlert

    Returns
    -------
    str
    """
    record = alert_json(received.alert, entry_id=received.entry_id, schema_version=received.schema_version)
    return json.dumps(record, separators=(",", ":"), allow_nan=True)


def write_cutouts(alert: Alert, directory: Path) -> list[Path]:
    """
    Write an alert's cutouts as gzipped FITS files.

    Parameters
    ----------
    alert : Alert
    directory : Path
        Created if absent; files are named by the cutouts' ``fileName``.

    Returns
    -------
    list of Path
        The files written (empty when the alert has no cutouts).

    Raises
    ------
    ValueError
        A cutout's file name would leave the directory.
    OSError
        The directory cannot be written.
    """
    written: list[Path] = []
    cutouts = alert.cutouts()
    if not cutouts:
        return written
    directory.mkdir(parents=True, exist_ok=True)
    for cutout in cutouts.values():
        name = Path(cutout.file_name).name
        if name != cutout.file_name or name in {"", ".", ".."}:
            msg = f"cutout fileName must be a plain file name, got {cutout.file_name!r}"
            raise ValueError(msg)
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        with tmp.open("wb") as fh:
            fh.write(cutout.stamp_data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        written.append(path)
    return written


class JsonLinesSink:
    """
    Where ``skyblink alerts consume`` puts alerts: JSON lines, and optionally the cutout files.

    Parameters
    ----------
    out_dir : Path or None
        ``<out_dir>/alerts.jsonl`` (appended) and ``<out_dir>/cutouts/<alertId>/*.fits.gz``;
        None writes JSON lines to standard output.
    cutouts : bool, optional
        Write the cutouts as FITS files (needs out_dir).

    Raises
    ------
    ValueError
        cutouts asked for without out_dir.

    Notes
    -----
    Not thread-safe. Use `handle` as the consumer's handler and `flush` as its ``before_ack``:
    a read's lines are fsynced before the read is acked.
    """

    def __init__(self, out_dir: Path | None, *, cutouts: bool = False) -> None:
        if cutouts and out_dir is None:
            msg = "cutout files need an output directory: pass --out DIR, not --out -"
            raise ValueError(msg)
        self.out_dir = out_dir
        self.cutouts = cutouts
        self.lines = 0
        self.files = 0
        if out_dir is None:
            self._fh: IO[str] = sys.stdout
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._fh = (out_dir / "alerts.jsonl").open("a", encoding="utf-8")

    def handle(self, received: ReceivedAlert) -> None:
        """Write one alert's JSON line (and its cutout files)."""
        if self.cutouts and self.out_dir is not None:
            self.files += len(write_cutouts(received.alert, self.out_dir / "cutouts" / str(received.alert.alert_id)))
        self._fh.write(alert_json_line(received) + "\n")
        self.lines += 1

    def flush(self, _handled: Sequence[ReceivedAlert] = ()) -> None:
        """Flush the lines written so far to disk (fsync when writing a file)."""
        self._fh.flush()
        if self.out_dir is not None:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush, and close the file (standard output stays open)."""
        self.flush()
        if self.out_dir is not None:
            self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
