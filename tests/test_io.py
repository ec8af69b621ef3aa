"""memtest._io: the one atomic writer (results, reports, calibrations and the fingerprint cache use it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from memtest._io import atomic_write_text, shared_mode


def test_writes_text_exactly_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "line one\nzwei — drei\r\n")
    assert path.read_bytes() == "line one\nzwei — drei\r\n".encode()  # no newline translation
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_mode_defaults_to_what_open_would_give_and_can_be_private(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert shared_mode() == 0o640
        atomic_write_text(tmp_path / "shared.txt", "x")
        assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o640
        atomic_write_text(tmp_path / "private.txt", "x", mode=0o600)
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    atomic_write_text(tmp_path / "f.txt", "x", fsync=fsync)
    assert len(calls) == (1 if fsync else 0)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keep.json"
    path.write_text("old", encoding="utf-8")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]
    with pytest.raises(UnicodeEncodeError):  # an unencodable text fails before the rename, too
        atomic_write_text(path, "\udcff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]
