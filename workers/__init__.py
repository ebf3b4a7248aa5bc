"""
The per-tile image operations as plain functions, testable without Ray (CPU versions here);
the worker actor and its transfer/compute pipeline join this package with the workers issue.

Knows nothing of Redis or Kubernetes.
"""

from .align import sampling_grid, warp
from .background import Background, estimate_background
from .difference import flux_scale, match_kernel_sigma, normalized_triplet
from .peaks import Peaks, find_peaks

__all__ = [
    "Background",
    "Peaks",
    "estimate_background",
    "find_peaks",
    "flux_scale",
    "match_kernel_sigma",
    "normalized_triplet",
    "sampling_grid",
    "warp",
]
