"""
The local spool: alerts that could not reach Redis, kept on disk until the next producer start.

Each spooled batch is one Avro container file (fastavro), written to a temporary name, fsynced
and renamed, so a crash leaves either the whole batch or nothing. Replaying claims a file by
renaming it, publishes it (idempotent: the producer's dedup skips alerts already in the stream)
and deletes it only after every alert in it reached Redis.

Notes
-----
Several producers may share a spool directory: a claim is an atomic rename, so each file is
replayed by one of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import fastavro

from .entry import EncodedAlert
from .errors import SpoolError

__all__ = ["AlertSpool"]

log = logging.getLogger(__name__)

_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "SpooledAlert",
        "namespace": "skyblink.spool",
        "doc": "An alert that did not reach Redis: its stream, id, entry fields and side-store cutouts.",
        "fields": [
            {"name": "stream", "type": "string"},
            {"name": "alertId", "type": "long"},
            {"name": "fields", "type": {"type": "array", "items": {"type": "record", "name": "Field", "fields": [
                {"name": "name", "type": "string"}, {"name": "value", "type": "bytes"}]}}},
            {"name": "sideStore", "type": {"type": "array", "items": "skyblink.spool.Field"}},
        ],
    }
)
_SUFFIX = ".avro"
_CLAIMED = ".replaying"


class AlertSpool:
    """
    A directory of spooled alert batches. Stable.

    Parameters
    ----------
    directory : Path
        Created on first write (config: alerts.spool_dir).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def write(self, alerts: Iterable[EncodedAlert]) -> Path | None:
        """
        Spool a batch of alerts durably.

        Parameters
        ----------
        alerts : iterable of EncodedAlert

        Returns
        -------
        Path or None
            The new spool file; None when there was nothing to spool.

        Raises
        ------
        SpoolError
            The directory cannot be written (the message names it): those alerts are not saved.
        """
        records = [
            {
                "stream": a.stream,
                "alertId": a.alert_id,
                "fields": [{"name": n, "value": v} for n, v in a.fields],
                "sideStore": [{"name": n, "value": v} for n, v in a.side_store],
            }
            for a in alerts
        ]
        if not records:
            return None
        name = f"{time.time_ns():020d}-{os.getpid()}-{id(records):x}{_SUFFIX}"
        final = self.directory / name
        tmp = self.directory / (name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fastavro.writer(fh, _SCHEMA, records, codec="null")
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(final)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SpoolError(str(self.directory), f"cannot write {len(records)} alert(s): {exc}") from exc
        log.warning("spooled %d alert(s) to %s; they are published at the next producer start", len(records), final)
        return final

    def pending(self) -> list[Path]:
        """
        Return the spool files waiting for replay, oldest first.

        Returns
        -------
        list of Path
            Empty when the directory is absent or empty.
        """
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{_SUFFIX}"))

    def count(self) -> int:
        """Return the number of alerts waiting in the spool."""
        total = 0
        for path in self.pending():
            with path.open("rb") as fh:
                total += sum(1 for _ in fastavro.reader(fh))
        return total

    def claim(self) -> Iterator[tuple[Path, list[EncodedAlert]]]:
        """
        Claim the pending files one by one and yield their alerts.

        Yields
        ------
        path : Path
            The claimed file: pass it to `done` once every alert in it is published, or to
            `release` to give it back.
        alerts : list of EncodedAlert

        Raises
        ------
        SpoolError
            A spool file is unreadable (it is left in place under its claimed name).
        """
        for path in self.pending():
            claimed = path.with_name(path.name + _CLAIMED)
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another producer claimed it
            try:
                with claimed.open("rb") as fh:
                    alerts = [
                        EncodedAlert(
                            r["stream"],
                            r["alertId"],
                            tuple((f["name"], f["value"]) for f in r["fields"]),
                            tuple((f["name"], f["value"]) for f in r["sideStore"]),
                        )
                        for r in cast(Iterator[dict[str, Any]], fastavro.reader(fh))
                    ]
            except (OSError, ValueError, EOFError) as exc:
                raise SpoolError(str(claimed), f"unreadable spool file: {exc}") from exc
            yield claimed, alerts

    @staticmethod
    def done(claimed: Path) -> None:
        """Delete a claimed file whose alerts are all published."""
        claimed.unlink(missing_ok=True)

    @staticmethod
    def release(claimed: Path) -> None:
        """Give a claimed file back to the spool (its alerts were not all published)."""
        if claimed.name.endswith(_CLAIMED):
            claimed.rename(claimed.with_name(claimed.name[: -len(_CLAIMED)]))
