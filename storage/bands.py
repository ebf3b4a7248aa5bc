"""
The filter bands of the store, the alerts and the headers' filter names.

Its own module so that what reads a CCD's facts (`skyblink.storage.ccd_context`, the worker actors)
names a band without importing the alert packets and their Redis client.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Band"]


class Band(StrEnum):
    """Filter band."""

    U = "u"
    G = "g"
    R = "r"
    I = "i"  # noqa: E741 - the band's name
    Z = "z"
    Y = "y"
