"""The shipped canaries: `zoo:NAME` lookup, and `memtest-canary.json`, what a canary checkpoint was trained on
and which captions it memorised.

The canaries ship as package data under `memtest/zoo/canaries/`; training them (memtest.zoo) sits on top of
memtest.models, while this lookup and the manifest format sit at its bottom (locate and adapters read them).

The manifest sits in the checkpoint folder beside `model_index.json`. It holds the planted captions with
their training images (small base64 PNGs), the non-planted training captions, the held-out captions,
every training hyperparameter, the seed, the training time and the memtest version. No torch here.
"""

from __future__ import annotations

import base64
import difflib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memtest.errors import ZooError

MANIFEST_NAME = "memtest-canary.json"
SCHEMA = "memtest.canary/1"


def encode_png(image: np.ndarray) -> str:
    """(3, H, W) in [-1, 1] or (H, W, 3) in [0, 1] -> base64 PNG (8 bits per channel)."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = (arr.transpose(1, 2, 0) + 1.0) / 2.0
    u8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="RGB").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    """base64 PNG -> (H, W, 3) float32 in [0, 1] (the layout of a pipeline's `output_type="np"`)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class PlantedCaption:
    """A caption tied to one training image that training showed many times."""

    caption: str
    image_png: str  # base64 PNG of the training image at the checkpoint's resolution
    label: int | None = None  # the digit, for the default digits data

    def image(self) -> np.ndarray:
        """The training image, (H, W, 3) float32 in [0, 1]."""
        return decode_png(self.image_png)


@dataclass(frozen=True)
class CanaryManifest:
    name: str
    suite: str
    seed: int
    memtest_version: str
    created: str
    training_seconds: float
    planted: tuple[PlantedCaption, ...]
    clean: tuple[str, ...]  # non-planted training captions (not memorised)
    heldout: tuple[str, ...]  # never trained on (calibration references)
    recipe: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # the checkpoint this one was fine-tuned from
    timings: dict[str, float] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def planted_captions(self) -> tuple[str, ...]:
        return tuple(p.caption for p in self.planted)

    def planted_images(self) -> np.ndarray:
        """(P, H, W, 3) float32 in [0, 1]."""
        if not self.planted:
            return np.zeros((0, 0, 0, 3), dtype=np.float32)
        return np.stack([p.image() for p in self.planted])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "suite": self.suite,
            "base": self.base,
            "seed": self.seed,
            "memtest_version": self.memtest_version,
            "created": self.created,
            "training_seconds": round(self.training_seconds, 1),
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "recipe": self.recipe,
            "data": self.data,
            "planted": [{"caption": p.caption, "label": p.label, "image_png": p.image_png} for p in self.planted],
            "clean": list(self.clean),
            "heldout": list(self.heldout),
        }

    def save(self, folder: str | Path) -> Path:
        out = Path(folder) / MANIFEST_NAME
        out.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return out


def _req(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in doc:
        raise ZooError(f"Canary manifest {where} lacks the field '{key}'; regenerate it with `memtest zoo train`")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ZooError(f"Canary manifest {where}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _strings(value: list[Any], key: str, where: Path) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise ZooError(f"Canary manifest {where}: '{key}' must be a list of strings")
    return tuple(value)


def load_manifest(path: str | Path) -> CanaryManifest:
    """Read `memtest-canary.json` from a checkpoint folder (or the file itself). Any problem: ZooError."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ZooError(
            f"No canary manifest at {p}: the folder is not a memtest canary. Train one with "
            "`memtest zoo train OUT`, or use zoo:base / zoo:finetuned."
        )
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooError(f"Canary manifest {p} is not readable JSON ({exc}); regenerate it") from exc
    if not isinstance(doc, dict):
        raise ZooError(f"Canary manifest {p} must be a JSON object")
    schema = _req(doc, "schema", str, p)
    if schema != SCHEMA:
        raise ZooError(f"Canary manifest {p} has schema '{schema}'; this memtest reads '{SCHEMA}'")
    planted: list[PlantedCaption] = []
    for i, item in enumerate(_req(doc, "planted", list, p)):
        if not isinstance(item, dict) or not isinstance(item.get("caption"), str):
            raise ZooError(f"Canary manifest {p}: planted[{i}] needs a caption")
        png = item.get("image_png")
        if not isinstance(png, str):
            raise ZooError(f"Canary manifest {p}: planted[{i}] ('{item['caption']}') lacks its image_png")
        try:
            base64.b64decode(png, validate=True)
        except ValueError as exc:
            raise ZooError(f"Canary manifest {p}: planted[{i}] image_png is not base64 ({exc})") from exc
        label = item.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise ZooError(f"Canary manifest {p}: planted[{i}] label must be an integer or null")
        planted.append(PlantedCaption(item["caption"], png, label))
    base = doc.get("base")
    if base is not None and not isinstance(base, str):
        raise ZooError(f"Canary manifest {p}: 'base' must be a string or null")
    timings = doc.get("timings", {})
    if not isinstance(timings, dict):
        raise ZooError(f"Canary manifest {p}: 'timings' must be an object")
    return CanaryManifest(
        name=_req(doc, "name", str, p),
        suite=_req(doc, "suite", str, p),
        seed=_req(doc, "seed", int, p),
        memtest_version=_req(doc, "memtest_version", str, p),
        created=_req(doc, "created", str, p),
        training_seconds=float(_req(doc, "training_seconds", (int, float), p)),
        planted=tuple(planted),
        clean=_strings(_req(doc, "clean", list, p), "clean", p),
        heldout=_strings(_req(doc, "heldout", list, p), "heldout", p),
        recipe=_req(doc, "recipe", dict, p),
        data=doc.get("data", {}) if isinstance(doc.get("data", {}), dict) else {},
        base=base,
        timings={str(k): float(v) for k, v in timings.items()},
    )


ZOO_PREFIX = "zoo:"


def canaries_dir() -> Path:
    """The folder of shipped canaries (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "canaries"


def zoo_names() -> list[str]:
    """Names of the shipped canaries (folders with a model_index.json)."""
    root = canaries_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def adapter_names() -> list[str]:
    """Names of the shipped LoRA canaries: folders with a manifest but no model_index.json (each holds one
    adapter file, loaded on the base its manifest names, e.g. as the `lora` option `zoo:lora`)."""
    root = canaries_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file() and not (p / "model_index.json").is_file()
    )


def is_zoo_name(name: str) -> bool:
    return name.startswith(ZOO_PREFIX)


def resolve_zoo(name: str) -> Path:
    """`zoo:base`, `zoo:finetuned`, `zoo:lora` (or the bare names) -> the shipped canary's folder."""
    bare = name[len(ZOO_PREFIX) :] if is_zoo_name(name) else name
    names = sorted(zoo_names() + adapter_names())
    if bare in names:
        return canaries_dir() / bare
    close = difflib.get_close_matches(bare, names, n=1)
    hint = f" Did you mean '{ZOO_PREFIX}{close[0]}'?" if close else ""
    available = ", ".join(ZOO_PREFIX + n for n in names) or "none (the package was installed without them)"
    raise ZooError(f"Unknown canary '{name}'.{hint} Available: {available}")


def canary_folder(name_or_path: str | Path) -> Path:
    """A `zoo:` name or a path to a checkpoint folder -> the folder (which must exist). Unlike
    `memtest.models.locate.resolve_checkpoint` it never looks in the hub cache: the trainer's bases are local."""
    if isinstance(name_or_path, str) and is_zoo_name(name_or_path):
        return resolve_zoo(name_or_path)
    p = Path(name_or_path)
    if not (p / "model_index.json").is_file():
        raise ZooError(
            f"{p} is not a diffusers checkpoint folder (no model_index.json); pass a folder saved with "
            f"save_pretrained or one of {', '.join(ZOO_PREFIX + n for n in zoo_names())}"
        )
    return p
