"""Training images read safely: a case's training images come from paths the user wrote, so a file is refused
before it is decoded when it is larger than a byte limit, when its header announces more pixels than a pixel limit
(a decompression bomb: a few kilobytes that decode to gigabytes), or when Pillow itself calls it a bomb; it is
decoded fully (`load`, EXIF orientation applied, RGB) so that nothing is left half-read behind a lazy file handle.
Images come back like every image in memtest: float32 arrays (H, W, 3) in [0, 1] (a pipeline's
`output_type="np"`, `memtest.models.canaries.decode_png`)."""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memtest.evidence.errors import EvidenceError

#: The largest training image read, in pixels (width x height): 40 megapixels, above any training set's
#: images (SD trains at 0.26-1 megapixel) and below Pillow's own bomb limit (about 89 megapixels).
MAX_PIXELS = 40_000_000
#: The largest training image file read, in bytes (50 MiB).
MAX_BYTES = 50 * 1024 * 1024
#: Formats Pillow may read a training image as: the common still-image formats, nothing exotic.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def load_image(
    path: str | Path, *, case: str | None = None, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES
) -> np.ndarray:
    """One training image as (H, W, 3) float32 in [0, 1]; any problem is an `EvidenceError` naming the case and the
    file and saying how to fix it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    where = f"Training image {str(p)!r}" + (f" of case {case!r}" if case else "")
    if max_pixels < 1 or max_bytes < 1:
        raise EvidenceError(f"max_pixels and max_bytes must be positive, got {max_pixels!r} and {max_bytes!r}.")
    try:
        size = os.stat(p).st_size
    except FileNotFoundError as exc:
        raise EvidenceError(f"{where} does not exist. Fix the path, or remove it from the case.") from exc
    except OSError as exc:
        raise EvidenceError(f"{where} cannot be read ({exc}). Check the path and its permissions.") from exc
    if not p.is_file():
        raise EvidenceError(f"{where} is not a file. Name an image file (one of {', '.join(FORMATS)}).")
    if size > max_bytes:
        raise EvidenceError(
            f"{where} has {size:,} bytes, over the limit of {max_bytes:,}. Store a smaller copy (the comparison "
            "resizes images anyway) or raise max_bytes."
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns above its limit and raises above twice it: both refuse the file here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise EvidenceError(
                        f"{where} is {width}x{height} pixels ({width * height:,}), over the limit of {max_pixels:,} "
                        "(a decompression bomb, or an image far larger than training images). Store a smaller copy "
                        "or raise max_pixels."
                    )
                im.load()
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise EvidenceError(
            f"{where} is refused as a decompression bomb ({exc}). Store a smaller copy of the image."
        ) from exc
    except UnidentifiedImageError as exc:
        raise EvidenceError(
            f"{where} is not an image Pillow can read as {', '.join(FORMATS)}. Convert it to PNG or JPEG."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data (Pillow raises all three)
        raise EvidenceError(f"{where} is damaged or truncated ({exc}). Replace it with an intact copy.") from exc
    return np.asarray(rgb, dtype=np.float32) / 255.0


def load_images(
    paths: Sequence[str | Path],
    *,
    case: str | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> list[np.ndarray]:
    """Several training images (`load_image` each; their sizes may differ)."""
    if isinstance(paths, (str, Path)):
        raise EvidenceError(f"load_images takes a list of paths, got the single path {str(paths)!r}.")
    return [load_image(p, case=case, max_pixels=max_pixels, max_bytes=max_bytes) for p in paths]


def as_images(images: np.ndarray | Sequence[np.ndarray], what: str = "images") -> list[np.ndarray]:
    """`images` ((N, H, W, 3) or a list of (H, W, 3)) as a list of float32 (H, W, 3) arrays in [0, 1], checked."""
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise EvidenceError(f"{what}[{i}] has shape {arr.shape}; an image is (H, W, 3) in [0, 1].")
        if not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1.0 + 1e-6:
            raise EvidenceError(f"{what}[{i}] has values outside [0, 1]; images are float RGB in [0, 1].")
        out.append(np.clip(arr, 0.0, 1.0))
    return out


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (height, width, 3) float64, bilinear per channel in float (no 8-bit rounding;
    antialiased when shrinking); an image already that size is returned as it is."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    if arr.shape[0] == height and arr.shape[1] == width:
        return arr.astype(np.float64)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize((width, height), Image.Resampling.BILINEAR)
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1).astype(np.float64), 0.0, 1.0)


#: Longest side of the thumbnails stored in results records.
THUMBNAIL_SIZE = 64


def png_thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> list[str]:
    """(N, H, W, 3) in [0, 1] -> base64 PNGs (no data: prefix), shrunk so the longer side is <= size."""
    from PIL import Image

    out = []
    for img in np.asarray(images, dtype=np.float32):
        pil = Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="RGB")
        if max(pil.size) > size:
            pil.thumbnail((size, size))
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


__all__ = [
    "FORMATS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "THUMBNAIL_SIZE",
    "as_images",
    "load_image",
    "load_images",
    "png_thumbnails",
    "resize_to",
]
