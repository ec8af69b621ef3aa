"""Find a checkpoint and fingerprint it without importing torch (used by the plugin's header).

Fingerprints are exact hashes of the bytes, but hashing a 7 GB SDXL folder takes minutes, so the result is
cached per file (and per folder) keyed by what a change to the file must change: absolute path, size,
mtime_ns, ctime_ns, inode and device. A file whose stat differs is hashed again; a file modified within
`_RACY_SECONDS` of being hashed is never cached (a write in the same timestamp tick would be invisible to the
key). The cache is a small JSON file, written atomically; a corrupt or unreadable one is ignored and
rebuilt. `MEMTEST_FINGERPRINT_CACHE=none` disables it; any other value is the cache file to use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memtest._io import atomic_write_text
from memtest.errors import CheckpointError, option

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HASHED_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")

CACHE_ENV = "MEMTEST_FINGERPRINT_CACHE"
_CACHE_SCHEMA = "memtest.fingerprints/1"
_CACHE_OFF = ("none", "off", "0", "false", "no")
_RACY_SECONDS = 2.0
_MAX_ENTRIES = 512  # per kind; the least recently used go first


def cache_path() -> Path | None:
    """The fingerprint cache file, or None when MEMTEST_FINGERPRINT_CACHE disables it."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in _CACHE_OFF:
        return None
    if value:
        return Path(value).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "memtest" / "fingerprints.json"


def _stat_key(st: os.stat_result) -> list[int]:
    # ctime and the device as well as the key the issue names: ctime changes on every write and cannot be set
    # back by `touch` or `cp -p`, so an in-place rewrite that restores mtime still re-hashes.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _settled(st: os.stat_result, started: float) -> bool:
    """True when the file was last changed well before hashing began (not racy)."""
    newest = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    return newest < started - _RACY_SECONDS


class _Cache:
    """Read-merge-write JSON cache. Every failure degrades to 'no cache', never to an error."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.doc = self._read() if path is not None else {}

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        ok = (
            isinstance(doc, dict)
            and doc.get("schema") == _CACHE_SCHEMA
            and isinstance(doc.get("files"), dict)
            and isinstance(doc.get("folders"), dict)
        )
        return doc if ok else {}

    def get(self, kind: str, key: str, stat: list[Any]) -> str | None:
        entry = self.doc.get(kind, {}).get(key)
        if not isinstance(entry, dict) or entry.get("stat") != stat:
            return None
        value = entry.get("sha256")
        return value if isinstance(value, str) and len(value) == 64 else None

    def put(self, kind: str, key: str, stat: list[Any], value: str) -> None:
        if self.path is None:
            return
        # Re-read so that entries written meanwhile by another process (xdist workers) survive.
        doc = self._read()
        doc["schema"] = _CACHE_SCHEMA
        for k in ("files", "folders"):
            doc.setdefault(k, {})
        doc[kind][key] = {"stat": stat, "sha256": value, "used": time.time()}
        for k in ("files", "folders"):
            table = doc[k]
            if len(table) > _MAX_ENTRIES:
                keep = sorted(table, key=lambda name: table[name].get("used", 0), reverse=True)[:_MAX_ENTRIES]
                doc[k] = {name: table[name] for name in keep}
        self.doc = doc
        # Readers (other xdist workers) see the old file or the new one, never half. The cache stays private
        # to its user (0600) and skips fsync: a cache lost in a crash is rebuilt.
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps(doc, separators=(",", ":")), mode=0o600, fsync=False)


def _hash_into(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes (hex), from the cache when its stat is unchanged."""
    path = Path(path).resolve()
    cache = _Cache(cache_path())
    before = path.stat()
    stat = _stat_key(before)
    hit = cache.get("files", str(path), stat)
    if hit is not None:
        return hit
    started = time.time()
    digest = hashlib.sha256()
    _hash_into(digest, path)
    value = digest.hexdigest()
    after = path.stat()
    if _stat_key(after) == stat and _settled(after, started):
        cache.put("files", str(path), stat, value)
    return value


def _hashed_files(folder: Path) -> Iterator[tuple[str, Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in HASHED_SUFFIXES)
    for p in files:
        rel = p.relative_to(folder).as_posix()
        # Only a `.cache` inside the checkpoint (hub download metadata) is skipped: a checkpoint that itself
        # lies under ~/.cache (the Hugging Face cache, a poetry venv) must still hash its files.
        if ".cache" in rel.split("/"):
            continue
        if "/" not in rel and rel.startswith("memtest-"):
            continue  # memtest's own files (canary manifest, calibration) describe the model, they are not it
        yield rel, p


def is_single_file(path: str | Path) -> bool:
    """Whether `path` is one weights file (a single-file, original-format checkpoint) rather than a folder."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES


def fingerprint(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every weight and config file, in sorted order.

    The value is the same with or without the cache (shipped calibrations store it); the cache only skips
    re-reading a folder none of whose hashed files changed. A single-file checkpoint's fingerprint is the
    sha256 of the file's bytes (`file_sha256`).
    """
    folder = Path(folder)
    if is_single_file(folder):
        return file_sha256(folder)
    files = list(_hashed_files(folder))
    stat = [[rel, *_stat_key(p.stat())] for rel, p in files]
    key = str(folder.resolve())
    cache = _Cache(cache_path())
    hit = cache.get("folders", key, stat)
    if hit is not None:
        return hit
    started = time.time()
    digest = hashlib.sha256()
    for rel, p in files:
        digest.update(rel.encode() + b"\0")
        _hash_into(digest, p)
        digest.update(b"\0")
    value = digest.hexdigest()
    after = [(p, p.stat()) for _, p in files]
    unchanged = [[rel, *_stat_key(st)] for (rel, _), (_, st) in zip(files, after, strict=True)] == stat
    if unchanged and all(_settled(st, started) for _, st in after):
        cache.put("folders", key, stat, value)
    return value


def resolve_checkpoint(path_or_id: str | Path) -> tuple[str, Path]:
    """(display name, folder) for a path, `zoo:<name>` or cached hub id; raises CheckpointError. A path to one
    weights file (a single-file checkpoint) comes back as that file."""
    text = str(path_or_id)
    if text.startswith("zoo:"):
        from memtest.models.canaries import resolve_zoo

        folder = resolve_zoo(text[4:])
        if not (folder / "model_index.json").is_file():
            from memtest.models.canaries import load_manifest

            base = load_manifest(folder).base or "its base checkpoint"
            raise CheckpointError(
                f"'{text}' is a LoRA adapter, not a checkpoint: load it on {base}, e.g. "
                f"{option('checkpoint', base)} {option('lora', text)} (library: "
                f"load_checkpoint('{base}', loras=['{text}']))."
            )
        return text, folder
    path = Path(text).expanduser()
    if path.exists():
        return text, path.resolve()
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
    if looks_like_path:
        raise CheckpointError(
            f"Checkpoint folder '{text}' does not exist. Pass the folder that holds model_index.json, "
            "a single-file checkpoint (.safetensors), a shipped canary such as 'zoo:finetuned', or a hub id "
            "already in the local cache."
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(text, local_files_only=True)
    except Exception as exc:  # any miss in the offline cache
        raise CheckpointError(
            f"'{text}' is not a local folder and is not in the local Hugging Face cache "
            f"({type(exc).__name__}). memtest never downloads at test time: download it once with "
            f"`hf download {text}` on a machine with network access, or pass a local folder."
        ) from exc
    return text, Path(local)
