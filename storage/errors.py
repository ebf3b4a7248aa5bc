"""Errors raised by `skyblink.storage`. One root, subclasses carrying structured fields."""

from __future__ import annotations

from pathlib import Path

__all__ = ["InvalidExposureError", "StorageError", "StoreLayoutError", "StoreWriteError"]


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
