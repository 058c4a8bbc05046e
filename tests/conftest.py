from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def fresh_auto(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The decision table that default `auto` backends made in the test share, empty: none of
    the decisions other tests of this process made (which a default layer would take)."""
    from wattmoe.moe import autoselect

    table: dict = {}
    monkeypatch.setattr(autoselect, "SHARED_DECISIONS", table)
    return table
