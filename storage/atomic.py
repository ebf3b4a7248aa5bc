"""
Atomic writes of store files through fsspec, with one clear error when the disk says no.

A file is written to a hidden temporary name beside its target and moved over it, so a reader
never sees half a file. When the write fails (disk full, read-only file system, permission,
quota, file-size limit) the temporary file is removed and `StoreWriteError` names the target and
the reason in one line; the previous version of the file, if any, stays.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

from .errors import StoreWriteError

__all__ = ["describe_os_error", "write_atomic"]

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system or the process's file-size limit",
}


def describe_os_error(exc: BaseException) -> str:
    """Return what an OSError means for a store, in words (``no space left on the device (ENOSPC)``)."""
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        return f"{_REASONS[code]} ({errno.errorcode[code]})"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def write_atomic(fs: Any, path: str, write: Callable[[IO[bytes]], object], *, durable: bool = False) -> None:
    """
    Write one file of the store atomically.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
        The target, in ``fs``'s terms.
    write : callable
        Writes the content into the binary file object it is given.
    durable : bool
        Flush the content to the disk (fsync) before the move, where the file is a local one: a
        crash right after leaves the new file whole or the old one (the manifest's guarantee).

    Raises
    ------
    StoreWriteError
        The file system refused (the message names ``path`` and the reason); no temporary file
        is left and the previous ``path`` is untouched.
    """
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp" if parent else f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            write(fh)
            if durable:
                _sync(fh)
        fs.mv(tmp, path)
    except OSError as exc:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise StoreWriteError(path, describe_os_error(exc)) from None
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


def _sync(fh: Any) -> None:
    """Flush a file object to the disk where it has a descriptor (a local file); else nothing."""
    fh.flush()
    try:
        descriptor = fh.fileno()
    except (AttributeError, io.UnsupportedOperation):  # an object store's or memory file: no descriptor
        return
    os.fsync(descriptor)
