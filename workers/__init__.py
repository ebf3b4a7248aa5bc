"""
The per-tile program as plain functions, testable without Ray: CPU versions here, the torch
versions in `skyblink.workers.tile_program`, the asynchronous copy/compute pipeline in
`skyblink.workers.pipeline`, and the Ray actor in `skyblink.workers.actor` (not imported here,
so the functions import without Ray).

Knows nothing of Redis or Kubernetes.
"""

from .align import sampling_grid, warp
from .background import Background, estimate_background
from .difference import flux_scale, match_kernel_sigma, normalized_triplet
from .peaks import Peaks, find_peaks
from .tile_unit import CandidateRecord, WorkUnit, plan_tiles, process_tile

__all__ = [
    "Background",
    "CandidateRecord",
    "Peaks",
    "WorkUnit",
    "estimate_background",
    "find_peaks",
    "flux_scale",
    "match_kernel_sigma",
    "normalized_triplet",
    "plan_tiles",
    "process_tile",
    "sampling_grid",
    "warp",
]
