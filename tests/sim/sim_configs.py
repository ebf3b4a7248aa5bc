"""Configurations of the small nights the simulator tests build (see conftest.py)."""

from __future__ import annotations

from skyblink.config import SimConfig

SMALL = SimConfig(image_size=256, fields=2, exposures_per_field=3, seed=7)
MULTI = SimConfig(
    image_size=128, ccds=4, fields=1, exposures_per_field=3, seed=11, pixel_dtype="float32"
)
