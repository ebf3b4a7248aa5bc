"""
The Ray driver: ingest, planning, dispatch to worker actors, the night's reduce, publishing and
the run report (`run_night`, behind ``skyblink night run``).

Knows nothing of CUDA.
"""

from .ingest import (
    IngestJob,
    IngestOutcome,
    IngestPlanError,
    IngestReport,
    discover_night,
    ingest_file,
    ingest_night,
    plan_ingest,
)
from .night import NightRunReport, run_night
from .ray_runtime import ray_session

__all__ = [
    "IngestJob",
    "IngestOutcome",
    "IngestPlanError",
    "IngestReport",
    "NightRunReport",
    "discover_night",
    "ingest_file",
    "ingest_night",
    "plan_ingest",
    "ray_session",
    "run_night",
]
