"""Errors raised by `skyblink.storage`. One root, subclasses carrying structured fields."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["ChunkChecksumError", "InvalidExposureError", "StorageError", "StoreLayoutError", "StoreWriteError",
           "damaged_store_key"]


class StorageError(Exception):
    """Root of the errors of the storage package."""


class InvalidExposureError(StorageError):
    """
    A FITS file cannot become part of the night: unreadable, truncated, no celestial WCS, ...

    The exposure is quarantined; nothing of it is written to the store and the night goes on.

    Attributes
    ----------
    path : Path
        The file.
    reason : str
        One line saying what is wrong, naming the HDU, keyword or value.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Crosses Ray's process boundary intact.
        return (type(self), (self.path, self.reason))


class StoreLayoutError(StorageError):
    """An existing store was written with another layout than the one asked for."""


class ChunkChecksumError(StorageError):
    """
    A stored chunk's crc32c does not match its bytes: the store's copy of those pixels is corrupt.

    Attributes
    ----------
    key : str
        The exposure or reference (``exposures/<id>``, ``references/<field>``) holding the chunk.
    where : str
        The array and region read (``ccd000/image[0:256, 256:512]``).
    store : str
        The store's URL.
    """

    def __init__(self, key: str, where: str, store: str) -> None:
        super().__init__(f"chunk checksum mismatch (crc32c) in {key}/{where} of store {store}: the stored pixels are "
                         f"corrupt; the next run re-ingests {key} from its file")
        self.key, self.where, self.store = key, where, store

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.key, self.where, self.store))


_DAMAGED = re.compile(r"chunk checksum mismatch \(crc32c\) in ((?:exposures|references)/[^/\s]+)/")


def damaged_store_key(error: str) -> str | None:
    """Return the exposure key named by a `ChunkChecksumError`'s message (a failed unit's error text), else None."""
    match = _DAMAGED.search(error)
    return match.group(1) if match else None


class StoreWriteError(StorageError):
    """
    A file of the store could not be written (disk full, read-only, no permission, quota).

    Nothing half-written is left behind: the temporary file is removed and the previous version,
    if any, is still in place.

    Attributes
    ----------
    path : str
        The file that was being written.
    reason : str
        What the operating system said, in words.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


class TableSchemaError(StorageError):
    """
    A Parquet table of the store does not have its declared schema (`skyblink.storage.schemas.tables`).

    Attributes
    ----------
    path : str
        The file (being written or read).
    field : str
        The first column that does not match.
    reason : str
        How it differs (missing, unexpected, or another type), in words.
    """

    def __init__(self, path: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: column {field!r} {reason}")
        self.path, self.field, self.reason = path, field, reason

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.path, self.field, self.reason))
