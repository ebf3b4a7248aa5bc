"""
The Ray driver: ingest orchestration; planning, dispatch and the night's reduce come in later issues.

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
from .ray_runtime import ray_session

__all__ = [
    "IngestJob",
    "IngestOutcome",
    "IngestPlanError",
    "IngestReport",
    "discover_night",
    "ingest_file",
    "ingest_night",
    "plan_ingest",
    "ray_session",
]
