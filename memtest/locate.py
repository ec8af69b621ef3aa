"""Find a checkpoint and fingerprint it without importing torch (used by the plugin's header)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import CheckpointError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_WEIGHT_SUFFIXES = (".safetensors", *_PICKLE_SUFFIXES)
_HASHED_SUFFIXES = (*_WEIGHT_SUFFIXES, ".json", ".txt", ".model")


def fingerprint(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every weight and config file, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES and ".cache" not in p.parts
    )
    for p in files:
        rel = p.relative_to(folder).as_posix()
        if "/" not in rel and rel.startswith("memtest-"):
            continue  # memtest's own files (canary manifest, calibration) describe the model, they are not it
        digest.update(rel.encode() + b"\0")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_location(path_or_id: str | Path) -> tuple[str, Path]:
    text = str(path_or_id)
    if text.startswith("zoo:"):
        from .zoo import resolve_zoo

        return text, resolve_zoo(text[4:])
    path = Path(text).expanduser()
    if path.exists():
        return text, path.resolve()
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
    if looks_like_path:
        raise CheckpointError(
            f"Checkpoint folder '{text}' does not exist. Pass the folder that holds model_index.json, "
            "a shipped canary such as 'zoo:finetuned', or a hub id already in the local cache."
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


def resolve_checkpoint(path_or_id: str | Path) -> tuple[str, Path]:
    """(display name, folder) for a path, `zoo:<name>` or cached hub id; raises CheckpointError."""
    return resolve_location(path_or_id)
