"""
The networks' inputs and outputs as plain constants, importable without torch (the driver side:
the reduce step reads the classifier's probability columns by these names).

Issue 17 moves the other shared constants here; this module starts with what the CPU night's
driver needs.
"""

from __future__ import annotations

__all__ = ["CLASSIFIER_CLASSES"]

#: Class-probability columns of the classifier, in output order.
CLASSIFIER_CLASSES = ("star", "galaxy", "transient", "variable", "moving", "cosmic_ray", "artifact")
