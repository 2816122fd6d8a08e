"""Artifacts: the only code that knows HDF5 key names. Uses no other npeff part."""

from npeff.artifacts.layout import ParameterLayout

__all__ = ["ParameterLayout"]
