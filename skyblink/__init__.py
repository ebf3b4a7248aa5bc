"""
skyblink: find what changed in the sky overnight.

The top-level package holds the CLI (`skyblink.cli`) and the typed configuration
(`skyblink.config`); the pipeline lives in the subpackages `skyblink.sim`, `skyblink.storage`,
`skyblink.cluster`, `skyblink.workers` and `skyblink.engines`.
"""

from ._version import __version__

__all__ = ["__version__"]
