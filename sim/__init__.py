"""The sky simulator of skyblink: demo nights, training data and truth for scoring.

Stable public API: `simulate_night`, `NightSummary`, `rubin_visit_config`, `read_truth`,
`TRUTH_COLUMNS`, `MaskBit`, `SIMULATOR_VERSION`. Knows nothing of Ray or CUDA.
"""

from .ccd_image import MaskBit
from .fits_writer import SIMULATOR_VERSION
from .night import NightSummary, rubin_visit_config, simulate_night
from .truth import TRUTH_COLUMNS, read_truth

__all__ = [
    "SIMULATOR_VERSION",
    "TRUTH_COLUMNS",
    "MaskBit",
    "NightSummary",
    "read_truth",
    "rubin_visit_config",
    "simulate_night",
]
