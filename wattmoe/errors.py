"""The project's small error hierarchy.

Every error a user can cause (bad config, bad shape, unknown name) is a `WattmoeError`, so the
CLI can print it in one line without a traceback. Packages subclass these in their `base.py`
where a more specific type helps callers; they do not invent parallel hierarchies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class WattmoeError(Exception):
    """Base class of every error wattmoe raises on purpose."""


class ConfigError(WattmoeError, ValueError):
    """A configuration value, file or name is invalid; the message names the field and value."""


class ShapeError(WattmoeError, ValueError):
    """A tensor or array has the wrong shape; the message gives the expected and actual shape."""


class DeviceError(WattmoeError, RuntimeError):
    """A device is unknown, absent, or its driver failed."""


class MeasurementError(WattmoeError, RuntimeError):
    """A measurement could not be taken or is not trustworthy."""


@contextlib.contextmanager
def os_error_as(error: type[WattmoeError], what: str,
                also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Re-raises an OSError (or one of `also`) from the block as `error(f"{what}: {reason}")`.

    `reason` is the system's short text (`strerror`, e.g. "Permission denied") where the
    exception has one, else its message. The original is dropped (`from None`), so the CLI
    prints one line: `with os_error_as(ConfigError, f"cannot write {path!r}"): ...`.
    """
    try:
        yield
    except (OSError, *also) as exc:
        raise error(f"{what}: {getattr(exc, 'strerror', None) or exc}") from None
