"""The error hierarchy's helper: `os_error_as` turns OS errors into one-line project errors."""

from __future__ import annotations

import errno

import pytest

from wattmoe.errors import ConfigError, DeviceError, WattmoeError, os_error_as


def test_os_error_as_gives_the_strerror_in_one_line() -> None:
    with pytest.raises(ConfigError) as info, os_error_as(ConfigError, "cannot write 'p.json'"):
        raise PermissionError(errno.EACCES, "Permission denied", "p.json")
    assert str(info.value) == "cannot write 'p.json': Permission denied"
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no traceback chain


def test_os_error_as_falls_back_to_the_message() -> None:
    with (pytest.raises(DeviceError, match=r"^cannot open 'x': disk on fire$"),
          os_error_as(DeviceError, "cannot open 'x'")):
        raise OSError("disk on fire")  # no errno, so no strerror


def test_os_error_as_also_and_nothing_else() -> None:
    with (pytest.raises(ConfigError, match=r"^cannot read 'x': 'utf-8' codec can't decode"),
          os_error_as(ConfigError, "cannot read 'x'", also=(UnicodeDecodeError,))):
        b"\xff".decode("utf-8")
    with pytest.raises(UnicodeDecodeError), os_error_as(ConfigError, "cannot read 'x'"):
        b"\xff".decode("utf-8")
    with pytest.raises(ValueError, match="not an OS error"), os_error_as(ConfigError, "x"):
        raise ValueError("not an OS error")
    with os_error_as(WattmoeError, "x"):
        pass
