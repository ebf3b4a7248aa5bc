"""The installed version of skyblink."""

__version__ = "0.1.0"
