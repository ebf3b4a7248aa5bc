"""
The Ray driver: ingest, planning, dispatch to worker actors, the night's reduce, publishing and
the run report (`run_night`, behind ``skyblink night run``).

Knows nothing of CUDA.
"""

from typing import TYPE_CHECKING, Any

from skyblink.lazy_import import lazy_module

from .ingest import (
    CcdLanded,
    IngestJob,
    IngestOutcome,
    IngestPlanError,
    IngestReport,
    discover_night,
    ingest_file,
    ingest_file_events,
    ingest_night,
    plan_ingest,
)
from .ray_runtime import ray_session

if TYPE_CHECKING:
    from .night import NightRunReport, run_night

# The nightly run (and through it the worker side: torch where installed) is imported on first
# use, not with the package: a Ray worker that runs an ingest task unpickles `ingest_file` from
# this package and should not pay for importing the night run (measured: 2.8 s of imports, torch
# included, in each fresh worker process).
_night_run = lazy_module("skyblink.cluster.night")

__all__ = [
    "CcdLanded",
    "IngestJob",
    "IngestOutcome",
    "IngestPlanError",
    "IngestReport",
    "NightRunReport",
    "discover_night",
    "ingest_file",
    "ingest_file_events",
    "ingest_night",
    "plan_ingest",
    "ray_session",
    "run_night",
]


def __getattr__(name: str) -> Any:
    if name in ("NightRunReport", "run_night"):
        return getattr(_night_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
