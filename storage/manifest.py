"""
The night manifest: every input file of the night, its state and its checksum.

Stored as ``manifest.json`` at the root of the night's store. Only the driver writes it, and
always whole: a local file is replaced atomically (write, fsync, rename), a remote object is
overwritten in one put, so a reader never sees half a manifest.

Notes
-----
Not thread-safe: one writer (the driver). Readers may read concurrently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import fsspec

from .atomic import write_atomic
from .night_store import FORMAT_VERSION

__all__ = ["MANIFEST_NAME", "ExposureState", "Manifest", "ManifestEntry"]

MANIFEST_NAME = "manifest.json"


class ExposureState(StrEnum):
    """What happened to an input file."""

    INGESTED = "ingested"
    QUARANTINED = "quarantined"
    FAILED = "failed"  # an infrastructure error, not bad input: retried on the next run


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """
    One input file of the night. Stable.

    Attributes
    ----------
    key : str
        Store key (``exposures/<id>`` or ``references/<field>``).
    kind : str
        ``"exposure"`` or ``"reference"``.
    path : str
        The file, relative to the night directory.
    size, mtime_ns : int
        The file's size and modification time when it was last looked at.
    sha256 : str or None
        Checksum of the file's bytes (None when it could not be read at all).
    state : ExposureState
    reason : str or None
        Why it was quarantined or failed.
    n_ccds : int
        CCD images written.
    mjd_obs : float or None
    updated : str
        ISO UTC time of this entry.
    """

    key: str
    kind: str
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    state: ExposureState
    reason: str | None = None
    n_ccds: int = 0
    mjd_obs: float | None = None
    updated: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a JSON-safe dict."""
        data = asdict(self)
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        """Build an entry from `to_json` output; unknown fields are an error naming them."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            msg = f"manifest entry {data.get('key')!r} has unknown fields {sorted(unknown)}"
            raise ValueError(msg)
        return cls(**{**data, "state": ExposureState(data["state"])})

    def touched(self, *, size: int, mtime_ns: int) -> ManifestEntry:
        """Return this entry with a new size and mtime (the file was touched, not changed)."""
        return replace(self, size=size, mtime_ns=mtime_ns)


@dataclass(slots=True)
class Manifest:
    """The manifest of one night's store: entries by store key. Experimental."""

    store_url: str
    entries: dict[str, ManifestEntry] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """Path or URL of the manifest file."""
        return f"{self.store_url.rstrip('/')}/{MANIFEST_NAME}"

    @classmethod
    def load(cls, store_url: str) -> Manifest:
        """
        Read the manifest of a store; an absent manifest is an empty one.

        Raises
        ------
        ValueError
            The manifest exists but is not valid JSON of this format (names the file).
        """
        manifest = cls(str(store_url))
        fs, path = fsspec.core.url_to_fs(manifest.location)
        if not fs.exists(path):
            return manifest
        with fs.open(path, "r") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                msg = f"manifest {manifest.location} is not valid JSON: {exc}"
                raise ValueError(msg) from exc
        if data.get("format_version") != FORMAT_VERSION:
            msg = f"manifest {manifest.location} has format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
            raise ValueError(msg)
        for raw in data["entries"]:
            entry = ManifestEntry.from_json(raw)
            manifest.entries[entry.key] = entry
        return manifest

    def save(self) -> None:
        """
        Write the whole manifest, atomically (`skyblink.storage.atomic.write_atomic`, flushed to
        the disk before the move on a local file system).

        Raises
        ------
        StoreWriteError
            Disk full, read-only, no permission: one line naming the file; no temporary file is
            left and the previous manifest stays.
        """
        document = {
            "format_version": FORMAT_VERSION,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "counts": self.counts(),
            "entries": [self.entries[k].to_json() for k in sorted(self.entries)],
        }
        text = json.dumps(document, indent=1)
        fs, path = fsspec.core.url_to_fs(self.location)
        write_atomic(fs, path, lambda fh: fh.write(text.encode()), durable=True)

    def counts(self) -> dict[str, int]:
        """Return the number of entries in each state."""
        counts = {str(state): 0 for state in ExposureState}
        for entry in self.entries.values():
            counts[str(entry.state)] += 1
        return counts

    def with_state(self, state: ExposureState) -> list[ManifestEntry]:
        """Return the entries in ``state``, sorted by key."""
        return [e for k, e in sorted(self.entries.items()) if e.state is state]
