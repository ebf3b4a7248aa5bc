"""
FITS reading and validation, the Zarr layout of a night, and the night manifest.

Knows nothing of CUDA. Alerts (Avro schema, Redis stream) join this package in a later issue.
"""

from .ccd_context import CcdContext, CcdStore
from .errors import (
    ChunkChecksumError,
    InvalidExposureError,
    StorageError,
    StoreLayoutError,
    StoreWriteError,
    TableSchemaError,
    damaged_store_key,
)
from .fits_exposure import (
    CcdHeader,
    CcdImage,
    ExposureReader,
    FitsExposure,
    open_fits_exposure,
    read_fits_exposure,
)
from .manifest import MANIFEST_NAME, ExposureState, Manifest, ManifestEntry
from .night_files import NightFiles
from .night_store import FORMAT_VERSION, ExposureKind, NightStore, StoreLayout, exposure_key
from .store_lock import LockHolder, StoreLock, StoreLockedError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CcdContext",
    "CcdHeader",
    "CcdImage",
    "CcdStore",
    "ChunkChecksumError",
    "ExposureKind",
    "ExposureReader",
    "ExposureState",
    "FitsExposure",
    "InvalidExposureError",
    "LockHolder",
    "Manifest",
    "ManifestEntry",
    "NightFiles",
    "NightStore",
    "StorageError",
    "StoreLayout",
    "StoreLayoutError",
    "StoreLock",
    "StoreLockedError",
    "StoreWriteError",
    "TableSchemaError",
    "damaged_store_key",
    "exposure_key",
    "open_fits_exposure",
    "read_fits_exposure",
]
