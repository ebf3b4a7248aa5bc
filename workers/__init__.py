"""
The per-tile program as plain functions, testable without Ray: CPU versions here, the torch
versions in `skyblink.workers.tile_program`, the asynchronous copy/compute pipeline in
`skyblink.workers.pipeline`, the Ray actor in `skyblink.workers.actor` (not imported here,
so the functions import without Ray), and the records they all take, built once from the
configuration (`skyblink.workers.program_config`: `TileProgram`, `WorkerConfig`).

Knows nothing of Redis or Kubernetes.
"""

from .align import control_points, sampling_grid, warp
from .background import Background, estimate_background
from .calibration import Calibrated, CalibrationSpec, calibrate
from .cosmics import Cosmics, detect_cosmics, persistent_pixels
from .difference import flux_scale, match_kernel_sigma, normalized_triplet
from .matched_filter import matched_filter_snr
from .peaks import Peaks, find_peaks
from .program_config import TileProgram, WorkerConfig
from .source_detection import detect_sources, estimate_fwhm
from .tile_unit import CandidateRecord, WorkUnit, process_tile

__all__ = [
    "Background",
    "CandidateRecord",
    "Calibrated",
    "CalibrationSpec",
    "Cosmics",
    "Peaks",
    "TileProgram",
    "WorkUnit",
    "WorkerConfig",
    "calibrate",
    "control_points",
    "detect_cosmics",
    "detect_sources",
    "estimate_background",
    "estimate_fwhm",
    "find_peaks",
    "flux_scale",
    "match_kernel_sigma",
    "matched_filter_snr",
    "normalized_triplet",
    "persistent_pixels",
    "process_tile",
    "sampling_grid",
    "warp",
]
