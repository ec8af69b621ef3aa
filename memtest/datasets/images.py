"""Training images as the suite writer sees them: read within memtest.evidence.images' limits (bytes, pixels,
decompression bombs, the same formats), hashed twice (SHA-256 of the bytes for identity, a perceptual hash for near
duplicates), and, when they live inside an archive or a table, stored beside the suite.

The store: an image with no file of its own (a WebDataset member, a Parquet cell) is written, byte for byte as the
training set holds it, to ``SUITE.images/<sha256[:24]>.<ext>`` next to the suite file ``SUITE.yaml``. The name is
its content hash, so the same image is stored once however many rows or shards hold it, a rerun rewrites nothing, and
a case's ``images:`` entry (``SUITE.images/....png``, relative to the suite file) loads with
memtest.evidence.images.load_image like any other training image. Images already on disk are referenced where they
are (relative to the suite file), unless ``copy_images`` asks for a self-contained suite.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from memtest.datasets.errors import DatasetError
from memtest.datasets.readers import Sample
from memtest.evidence.images import FORMATS, MAX_BYTES, MAX_PIXELS

#: File extensions of stored images, by the format Pillow reads them as.
SUFFIXES: Final = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


@dataclass(frozen=True)
class ImageFacts:
    """What the suite writer keeps of one distinct image: its content hash, its perceptual hash (64 bits, as an int)
    and the format Pillow read."""

    sha256: str
    phash: int
    format: str


def sample_bytes(sample: Sample) -> bytes:
    """The image bytes of a training pair, refused above memtest.evidence.images.MAX_BYTES before they are read."""
    if sample.data is not None:
        if len(sample.data) > MAX_BYTES:
            raise DatasetError(
                f"{sample.where}: the image has {len(sample.data):,} bytes, over the limit of {MAX_BYTES:,}. Store a "
                "smaller copy."
            )
        return sample.data
    if sample.path is None:
        raise DatasetError(f"{sample.where}: the row names no image. Fix the row.")
    try:
        size = sample.path.stat().st_size
        if size > MAX_BYTES:
            raise DatasetError(
                f"{sample.where}: the image '{sample.path}' has {size:,} bytes, over the limit of {MAX_BYTES:,}. Store "
                "a smaller copy."
            )
        return sample.path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"{sample.where}: cannot read the image '{sample.path}' ({exc.strerror or exc}). Check the file."
        ) from None


def inspect_image(data: bytes, where: str) -> ImageFacts:
    """Decode ``data`` within the evidence layer's limits and hash it; a bad image is a DatasetError at ``where``."""
    import imagehash
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise DatasetError(
                        f"{where}: the image is {width}x{height} pixels, over the limit of {MAX_PIXELS:,} (a "
                        "decompression bomb, or far larger than a training image). Store a smaller copy."
                    )
                im.load()
                kind = str(im.format)
                upright = ImageOps.exif_transpose(im)
                value = int(str(imagehash.phash(upright)), 16)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(
            f"{where}: the image is refused as a decompression bomb ({exc}). Store a smaller copy."
        ) from None
    except UnidentifiedImageError:
        raise DatasetError(
            f"{where}: not an image Pillow reads as {', '.join(FORMATS)}. Replace it with a PNG or JPEG."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"{where}: the image is damaged or truncated ({exc}). Replace it with an intact copy."
        ) from None
    return ImageFacts(hashlib.sha256(data).hexdigest(), value, kind)


class ImageStore:
    """Images written next to a suite file (see the module docstring); remembers the files it created."""

    def __init__(self, suite_path: Path) -> None:
        self.suite_path = suite_path
        self.folder = suite_path.with_name(suite_path.stem + ".images")
        self.created: set[Path] = set()

    def put(self, data: bytes, facts: ImageFacts) -> str:
        """Store ``data`` (once) and return its reference relative to the suite file."""
        name = f"{facts.sha256[:24]}.{SUFFIXES.get(facts.format, 'img')}"
        target = self.folder / name
        if not target.is_file():
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".part")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, target)
            except OSError as exc:
                raise DatasetError(
                    f"Cannot write the image store '{self.folder}' ({exc.strerror or exc}). Write the suite to a "
                    "folder you can write to."
                ) from None
            self.created.add(target)
        return f"{self.folder.name}/{name}"

    def prune(self, keep: set[str]) -> None:
        """Remove the files this store created that no kept case references (``keep``: references)."""
        for path in self.created:
            if f"{self.folder.name}/{path.name}" not in keep:
                path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def reference(path: Path, suite_path: Path) -> str:
    """How a suite file names an image on disk: relative to the suite's folder when possible, else absolute."""
    target = path.resolve()
    try:
        return Path(os.path.relpath(target, suite_path.resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows)
        return str(target)


__all__ = ["SUFFIXES", "ImageFacts", "ImageStore", "inspect_image", "reference", "sample_bytes"]
