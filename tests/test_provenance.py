"""`wattmoe.provenance.git_commit`: the commit a result records."""

from __future__ import annotations

import subprocess

import pytest

from wattmoe.provenance import git_commit


def test_stated_commit_is_recorded_next_to_a_different_git_head(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # a copied tree's git metadata can be stale: the stated commit comes first, git's beside it
    head = _repo(tmp_path)
    monkeypatch.setenv("WATTMOE_COMMIT", "abc1234")
    assert git_commit(tmp_path) == f"abc1234 (stated; git here: {head})"
    monkeypatch.setenv("WATTMOE_COMMIT", head[:7])  # the same commit: git's answer alone
    assert git_commit(tmp_path) == head
    assert git_commit(tmp_path / "nowhere") == head[:7]  # no git: the stated commit


def test_git_head_without_stated_commit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("WATTMOE_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"  # not a repository
    head = _repo(tmp_path)
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + "+dirty"


def _repo(path) -> str:
    """A one-commit repository at path; returns its HEAD sha."""
    def run(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=path, check=True,
                              capture_output=True).stdout.decode().strip()

    run("init", "-q")
    (path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    return run("rev-parse", "HEAD")
