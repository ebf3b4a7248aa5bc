"""
The stamp geometry both sides agree on (standard library only).

A classifier stamp and an alert cutout are ``STAMP_SIZE`` pixels on a side (the ZTF/braai
layout; odd, so that the detection sits on the centre pixel, ``STAMP_HALF`` pixels from each
edge). The workers cut stamps, the engines' networks take them and the alerts carry them:
`skyblink.model_io`, `skyblink.workers.tile_unit` and `skyblink.storage.alerts`
re-export these names.
"""

from __future__ import annotations

__all__ = ["STAMP_HALF", "STAMP_SIZE"]

#: Edge of a classifier stamp and of an alert cutout in pixels.
STAMP_SIZE = 63
#: Pixels from the centre pixel of a stamp to its edge.
STAMP_HALF = STAMP_SIZE // 2
