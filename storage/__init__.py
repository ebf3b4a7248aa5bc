"""
FITS reading and validation, the Zarr layout of a night, and the night manifest.

Knows nothing of CUDA. Alerts (Avro schema, Redis stream) join this package in a later issue.
"""

from .errors import InvalidExposureError, StorageError, StoreLayoutError
from .fits_exposure import (
    CcdHeader,
    CcdImage,
    ExposureReader,
    FitsExposure,
    open_fits_exposure,
    read_fits_exposure,
)
from .manifest import MANIFEST_NAME, ExposureState, Manifest, ManifestEntry
from .night_store import FORMAT_VERSION, ExposureKind, NightStore, StoreLayout, exposure_key

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CcdHeader",
    "CcdImage",
    "ExposureKind",
    "ExposureReader",
    "ExposureState",
    "FitsExposure",
    "InvalidExposureError",
    "Manifest",
    "ManifestEntry",
    "NightStore",
    "StorageError",
    "StoreLayout",
    "StoreLayoutError",
    "exposure_key",
    "open_fits_exposure",
    "read_fits_exposure",
]
