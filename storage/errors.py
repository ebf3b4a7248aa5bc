"""Errors raised by `skyblink.storage`. One root, subclasses carrying structured fields."""

from __future__ import annotations

from pathlib import Path

__all__ = ["InvalidExposureError", "StorageError", "StoreLayoutError"]


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
