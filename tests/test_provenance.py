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


def test_write_text_atomic_keeps_a_stream_and_leaves_no_temporary(tmp_path) -> None:
    import os
    import threading

    from wattmoe.provenance import write_json_atomic, write_text_atomic

    # a FIFO (like /dev/stdout or /dev/null) is written in place: renaming a temporary file
    # over it (as before) replaced the device node with a regular file
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_json_atomic(fifo, {"a": 1})
    reader.join(10)
    assert got == ['{\n "a": 1\n}\n'] and fifo.is_fifo()
    # a failed write leaves no '<name>.tmp' behind (was: one per failed --out)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(folder, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "fifo"]
    # a file on the way is "Not a directory" (mkdir said "File exists", which misleads)
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(NotADirectoryError):
        write_text_atomic(tmp_path / "f.json" / "x.json", "x")


def test_default_is_the_commit_of_wattmoe_not_of_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # was: `git rev-parse HEAD` in the process's cwd, so `wattmoe profile` run inside another
    # repository recorded that repository's commit as the profile's provenance
    from pathlib import Path

    import wattmoe

    monkeypatch.delenv("WATTMOE_COMMIT", raising=False)
    other = _repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    recorded = git_commit()
    assert other not in recorded
    ours = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(wattmoe.__file__).parent)
    if ours.returncode == 0:  # wattmoe runs from a git checkout
        assert recorded.split("+")[0] == ours.stdout.strip()
    else:
        assert recorded == "unknown"


def test_benchmark_provenance_records_the_wattmoe_settings(monkeypatch) -> None:
    # a benchmark run under $WATTMOE_INT4_TILE_COPIES or $WATTMOE_KERNEL_CONFIGS is another
    # experiment: its JSON says so (run 104's A/B was told apart by folder names only)
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _meta import provenance

    monkeypatch.setenv("WATTMOE_INT4_TILE_COPIES", "per-program")
    monkeypatch.delenv("WATTMOE_KERNEL_CONFIGS", raising=False)
    env = provenance()["env"]
    assert env["WATTMOE_INT4_TILE_COPIES"] == "per-program"
    assert "WATTMOE_KERNEL_CONFIGS" not in env
    assert all(k.startswith("WATTMOE_") for k in env)
