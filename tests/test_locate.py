"""Fingerprints: exact values (shipped calibrations store them), a cache that never serves a changed file,
and a cache file that can be corrupt, missing or disabled without changing any result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from memtest.models import locate
from memtest.models.locate import CACHE_ENV, file_sha256, fingerprint

CANARIES = Path(__file__).resolve().parent.parent / "memtest" / "zoo" / "canaries"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache file; files written by the test count as settled (no racy window)."""
    path = tmp_path / "cache" / "fingerprints.json"
    monkeypatch.setenv(CACHE_ENV, str(path))
    monkeypatch.setattr(locate, "_RACY_SECONDS", -60.0)
    return path


def _entries(path: Path, kind: str) -> dict[str, object]:
    doc = json.loads(path.read_text())
    table = doc[kind]
    assert isinstance(table, dict)
    return table


@pytest.mark.parametrize("name", ["base", "finetuned"])
def test_shipped_fingerprints_equal_what_their_calibrations_store(
    name: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = CANARIES / name
    stored = json.loads((folder / "memtest-calibration.json").read_text())["fingerprint"]
    monkeypatch.setenv(CACHE_ENV, "none")
    assert fingerprint(folder) == stored
    assert not cache.exists()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert fingerprint(folder) == stored  # cold: hashed, then cached
    assert str(folder.resolve()) in _entries(cache, "folders")

    def no_reading(*_: object) -> None:
        raise AssertionError("a warm cache must not read the weights again")

    monkeypatch.setattr(locate, "_hash_into", no_reading)
    assert fingerprint(folder) == stored  # warm


def test_file_hash_is_cached_and_recomputed_after_any_change(cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "adapter.safetensors"
    f.write_bytes(b"a" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    entry = _entries(cache, "files")[str(f.resolve())]
    assert isinstance(entry, dict) and entry["sha256"] == hashlib.sha256(b"a" * 1000).hexdigest()
    # Same size, new content, new mtime: hashed again.
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    # Same size, new content, mtime set back to the cached one (cp -p, rsync --times): ctime still moves.
    st = f.stat()
    f.write_bytes(b"c" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    assert file_sha256(f) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_folder_fingerprint_after_a_change_equals_the_uncached_one(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(CANARIES / "base", folder)
    before = fingerprint(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, one bit
    st = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    cached = fingerprint(folder)
    monkeypatch.setenv(CACHE_ENV, "none")
    assert cached == fingerprint(folder) != before
    # A file added or removed changes the key too.
    monkeypatch.setenv(CACHE_ENV, str(cache))
    (folder / "unet" / "extra.json").write_text("{}")
    with_extra = fingerprint(folder)
    assert with_extra != cached
    (folder / "unet" / "extra.json").unlink()
    assert fingerprint(folder) == cached


def test_racy_files_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "fingerprints.json"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x")
    file_sha256(f)  # written a moment ago: a second write in the same timestamp tick would be invisible
    assert not cache.exists() or str(f.resolve()) not in _entries(cache, "files")


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"schema": "other"}', b"\xff\xfe"])
def test_a_corrupt_cache_is_ignored_and_rebuilt(cache: Path, tmp_path: Path, content: bytes) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights")
    assert file_sha256(f) == hashlib.sha256(b"weights").hexdigest()
    assert str(f.resolve()) in _entries(cache, "files")
    assert not list(cache.parent.glob(".*.tmp"))  # no temporary file left behind


def test_the_cache_file_stays_private_to_its_user(cache: Path, tmp_path: Path) -> None:
    """The cache maps the user's file paths to hashes: 0600 whatever the umask (it goes through memtest._io)."""
    import stat

    old = os.umask(0o022)
    try:
        f = tmp_path / "w.safetensors"
        f.write_bytes(b"weights")
        file_sha256(f)
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text())["schema"] == "memtest.fingerprints/1"


def test_a_poisoned_entry_is_not_served_for_a_different_stat(cache: Path, tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights")
    file_sha256(f)
    doc = json.loads(cache.read_text())
    doc["files"][str(f.resolve())]["stat"][0] += 1  # an entry for another size
    doc["files"][str(f.resolve())]["sha256"] = "0" * 64
    cache.write_text(json.dumps(doc))
    assert file_sha256(f) == hashlib.sha256(b"weights").hexdigest()


def test_disabled_or_unwritable_cache_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights")
    monkeypatch.setattr(locate, "_RACY_SECONDS", -60.0)
    monkeypatch.setenv(CACHE_ENV, "none")
    assert locate.cache_path() is None
    assert file_sha256(f) == hashlib.sha256(b"weights").hexdigest()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "sub" / "fingerprints.json"))  # its folder cannot be created
    assert file_sha256(f) == hashlib.sha256(b"weights").hexdigest()
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert locate.cache_path() == tmp_path / "xdg" / "memtest" / "fingerprints.json"


def test_a_checkpoint_under_a_cache_folder_still_hashes_its_files(tmp_path: Path) -> None:
    """Only a `.cache` inside the checkpoint is skipped; one in the path above it (the Hugging Face hub
    cache, a venv under ~/.cache) used to make every such checkpoint hash to sha256 of nothing."""
    plain = tmp_path / "plain"
    shutil.copytree(CANARIES / "base", plain)
    under = tmp_path / ".cache" / "hub" / "base"
    shutil.copytree(CANARIES / "base", under)
    (under / ".cache").mkdir()
    (under / ".cache" / "download.json").write_text("{}")  # hub metadata inside the checkpoint: not hashed
    assert fingerprint(under) == fingerprint(plain) != hashlib.sha256().hexdigest()
