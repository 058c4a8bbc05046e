"""wattmoe: energy-aware placement, simulation and measurement of Mixture-of-Experts serving."""

from __future__ import annotations

from wattmoe.errors import ConfigError, ShapeError, WattmoeError

__version__ = "0.1.0"

__all__ = ["ConfigError", "ShapeError", "WattmoeError", "__version__"]
