"""Atomic file writes: the one way memtest replaces a file that others may be reading.

A writer goes through a temporary file in the target's folder and `os.replace`, so a reader (another
xdist worker, a CI artifact uploader, a browser reloading a report) sees the old file or the new one,
never half of one. Imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def shared_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None, fsync: bool = True) -> None:
    """Write `text` (UTF-8, newlines as written) to `path` through a temporary file in the same folder and
    os.replace, creating the folder first.

    `mode` is the new file's permissions; None gives what `open(path, "w")` would (`shared_mode()`), not
    mkstemp's 0600: results, reports and calibrations are meant to be shared and read by CI artifact
    uploaders. With `fsync` the bytes reach the disk before the rename, so a crash cannot leave an empty
    file under the old name; a cache that can be rebuilt may skip it. On any failure the temporary file is
    removed and the target is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            os.fchmod(handle.fileno(), shared_mode() if mode is None else mode)
            handle.write(text)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
