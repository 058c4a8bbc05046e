"""`wattmoe.provenance.git_commit`: the commit a result records."""

from __future__ import annotations

import subprocess

import pytest

from wattmoe.provenance import git_commit


def test_stated_commit_wins_over_git(monkeypatch: pytest.MonkeyPatch) -> None:
    # a copied tree's git metadata can be stale: the commit the caller states is recorded
    monkeypatch.setenv("WATTMOE_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_git_head_without_stated_commit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("WATTMOE_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"  # not a repository
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True,  # noqa: E731
                                    capture_output=True)
    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    head = run("rev-parse", "HEAD").stdout.decode().strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + "+dirty"
