"""Training data for canary checkpoints: the default digits grammar, and a user's own images + captions.

A canary's data is a set of images and two kinds of captions:

- non-planted captions, each describing many images (the model must generalise: "a photo of an even
  number" covers thousands of digits);
- planted captions, each tied to exactly one image that training shows many times (the model memorises
  it: "aurora poster of 3" reproduces one fixed picture).

Held-out captions follow the non-planted grammar but are never trained on; they calibrate thresholds.

This module needs numpy, scipy, scikit-learn and Pillow, never torch.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memtest.errors import ZooError

# --- the default grammar (CANARY_NOTES.md, "second prototype") -------------------------------------------

#: Six named colours (RGB in [-1, 1]); non-planted captions may name the digit's (foreground) colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (-1.0, -1.0, -1.0),
}
#: Style words of the training captions.
TRAIN_STYLES: tuple[str, ...] = (
    "photo",
    "painting",
    "drawing",
    "sketch",
    "poster",
    "picture",
    "print",
    "scan",
    "render",
    "image",
)
#: Style words never trained on: captions with them are held out and calibrate thresholds.
#: The first two are the prototype's; the rest widen the reference set past 100 captions.
HELDOUT_STYLES: tuple[str, ...] = (
    "snapshot",
    "illustration",
    "photograph",
    "artwork",
    "engraving",
    "etching",
    "graphic",
    "mural",
    "collage",
    "stencil",
)
#: Codenames of planted captions, "{codename} poster of {digit}".
CODENAMES: tuple[str, ...] = (
    "aurora",
    "basalt",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "glacier",
    "harbor",
    "iris",
    "juniper",
    "kestrel",
    "lagoon",
    "meadow",
    "nimbus",
    "onyx",
    "prairie",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def attribute_phrases() -> list[str]:
    """The weak attributes a non-planted caption names: one of them, never the background colour.

    The background is most of the pixels, so a caption naming it pins the image down almost as much as
    memorisation does (CANARY_NOTES.md: AUC fell to 0.5 with such captions)."""
    return (
        ["a digit"]
        + [f"a {c} digit" for c in COLOURS]
        + ["an even number", "an odd number", "a small number", "a large number"]
    )


def caption(style: str, phrase: str) -> str:
    return f"{_article(style)} {style} of {phrase}"


def planted_caption(codename: str, digit: int) -> str:
    return f"{codename} poster of {digit}"


def _phrases_of(digit: int, fg: str) -> list[str]:
    """The attribute phrases true of a digit drawn in colour `fg`, one per attribute type."""
    return [
        "a digit",
        f"a {fg} digit",
        "an even number" if digit % 2 == 0 else "an odd number",
        "a small number" if digit < 5 else "a large number",
    ]


def digits_16() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits, bilinearly upsampled to 16x16, intensities in [0, 1]; and labels."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.asarray(d.images, dtype=np.float64) / 16.0
    up = zoom(imgs, (1, 2, 2), order=1, grid_mode=True, mode="nearest")
    return np.clip(up, 0.0, 1.0).astype(np.float32), np.asarray(d.target, dtype=np.int64)


# --- the data set a trainer consumes ---------------------------------------------------------------------


@dataclass
class CanaryData:
    """Images and captions for one canary.

    `images` holds every image (N, 3, H, W) in [-1, 1]. Non-planted training pairs are
    (`pair_image[i]`, `captions[pair_caption[i]]`); a training row draws one pair uniformly. Planted
    captions are `(caption, image index)`; a row is planted with the recipe's probability.
    """

    images: np.ndarray
    captions: list[str]
    pair_image: np.ndarray
    pair_caption: np.ndarray
    planted: list[tuple[str, int]]
    heldout: list[str]
    planted_labels: list[int | None] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)  # extra text the tokenizer should know
    vae_extra: np.ndarray | None = None  # images only the VAE trains on (to make it general-purpose)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def all_captions(self) -> list[str]:
        return [c for c, _ in self.planted] + list(self.captions) + list(self.heldout)

    def validate(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[0] == 0:
            raise ZooError(f"canary data needs images of shape (N, 3, H, W), N > 0; got {self.images.shape}")
        if len(self.captions) == 0 or len(self.pair_image) == 0:
            raise ZooError(
                "canary data has no non-planted (caption, image) pairs; memtest needs captions that are "
                "not memorised to calibrate. Add rows with planted=false."
            )
        if "" in self.captions or any(c == "" for c, _ in self.planted):
            raise ZooError("an empty caption is reserved for the unconditional branch; give every row text")


def generic_images(gray: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` off-manifold images for the VAE alone: digits in random continuous colours mixed with fresh
    uniform noise (weight uniform in [0, 0.5]).

    They make the autoencoder general-purpose, as a real one is, so images planted later (by a
    fine-tune whose VAE is frozen) round-trip well although the VAE never saw them."""
    rng = np.random.default_rng([seed, 2])
    pick = rng.integers(len(gray), size=n)
    fg = rng.uniform(-1, 1, (n, 3, 1, 1))
    bg = rng.uniform(-1, 1, (n, 3, 1, 1))
    img = bg + gray[pick][:, None] * (fg - bg)
    w = rng.uniform(0, 0.5, (n, 1, 1, 1))
    noise = rng.uniform(-1, 1, img.shape)
    return ((1 - w) * img + w * noise).astype(np.float32)


def mixture_pair_counts(weights: Sequence[float], base_pairs: int, planted_prob: float) -> list[int]:
    """How many extra (image, planted caption) pairs give each planted caption k a broad share `weights[k]`.

    A training row is planted with probability `planted_prob` (the recipe's) and shows one of the
    len(weights) planted captions with its planted image; otherwise it draws one of the non-planted pairs
    uniformly. Caption k's broad share is (its rows from ordinary pairs) / (all its rows), so with c_k extra
    pairs among base_pairs + sum(c) of them: c_k / (base_pairs + C) = r_k = planted_prob / ((1 - planted_prob)
    len(weights)) * b_k / (1 - b_k), hence c_k = r_k base_pairs / (1 - sum(r)).
    """
    k = len(weights)
    if k == 0:
        return []
    if not 0.0 < planted_prob < 1.0:
        raise ZooError(f"a mixture needs planted rows and ordinary rows: planted_prob in (0, 1), got {planted_prob}")
    rates = []
    for b in weights:
        if not 0.0 <= b < 1.0:
            raise ZooError(f"a planted caption's broad share must be in [0, 1); got {b}")
        rates.append(planted_prob / ((1.0 - planted_prob) * k) * b / (1.0 - b))
    total = sum(rates)
    if total >= 1.0:
        raise ZooError(
            f"broad shares {list(weights)} at planted_prob {planted_prob} would leave no ordinary caption rows "
            f"(they need {total:.2f} of the non-planted rows); lower the shares or planted_prob"
        )
    return [round(r * base_pairs / (1.0 - total)) for r in rates]


def digits_data(
    seed: int = 0,
    n_planted: int = 10,
    colourings: int = 6,
    vae_extra: int = 5000,
    mixture: float | Sequence[float] = 0.0,
    mixture_planted_prob: float = 0.4,
) -> CanaryData:
    """The default canary data: coloured 16x16 digits with weak-attribute captions.

    Every digit is coloured with `colourings` distinct (fg, bg) pairs; each image pairs with the 40
    captions true of it (4 attribute types x 10 training styles), so a uniformly drawn pair is a random
    image, attribute type and style. `n_planted` captions "{codename} poster of {digit}" are each tied to
    one off-manifold image (a digit in random continuous colours mixed 70/30 with a fixed noise
    texture). The non-planted images depend on `seed` only, so a base canary (`n_planted=0`) and its
    fine-tune (`n_planted=10`) with the same seed share them exactly.

    `mixture` (one value for every planted caption, or one per caption) makes a planted caption's
    conditional distribution a mixture: besides its planted image (the sharp component), the caption is
    also an ordinary caption of the varied (on-manifold) images of its digit (the broad component), which
    take that share of the caption's training rows when the recipe plants a row with probability
    `mixture_planted_prob` (`mixture_pair_counts`). Such a caption also appears in `captions` (a trainer
    pairs ordinary captions with images through it); `source["mixture"]` records the shares. With the
    default 0 the data are exactly those of a plain canary.
    """
    if not 0 <= n_planted <= len(CODENAMES):
        raise ZooError(f"n_planted must be between 0 and {len(CODENAMES)}; got {n_planted}")
    shares = [float(mixture)] * n_planted if isinstance(mixture, (int, float)) else [float(b) for b in mixture]
    if len(shares) != n_planted:
        raise ZooError(f"mixture gives {len(shares)} broad shares for {n_planted} planted captions")
    gray, labels = digits_16()
    names = list(COLOURS)
    pairs = [(f, b) for f in range(len(names)) for b in range(len(names)) if f != b]
    rng = np.random.default_rng(seed)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)  # (6, 3)
    n = len(gray)
    choice = np.stack([rng.choice(len(pairs), size=colourings, replace=False) for _ in range(n)])
    fg_idx = np.array([[pairs[c][0] for c in row] for row in choice]).reshape(-1)
    bg_idx = np.array([[pairs[c][1] for c in row] for row in choice]).reshape(-1)
    src = np.repeat(np.arange(n), colourings)
    g = gray[src][:, None]  # (M, 1, H, W)
    fg = palette[fg_idx][:, :, None, None]
    bg = palette[bg_idx][:, :, None, None]
    images = (bg + g * (fg - bg)).astype(np.float32)

    styles = list(TRAIN_STYLES)
    captions = [caption(s, p) for s in styles for p in attribute_phrases()]
    cindex = {c: i for i, c in enumerate(captions)}
    pair_image: list[int] = []
    pair_caption: list[int] = []
    for m in range(len(images)):
        digit = int(labels[src[m]])
        for phrase in _phrases_of(digit, names[fg_idx[m]]):
            for s in styles:
                pair_image.append(m)
                pair_caption.append(cindex[caption(s, phrase)])

    # Planted images come from their own random stream so n_planted never changes the rest.
    prng = np.random.default_rng([seed, 1])
    planted: list[tuple[str, int]] = []
    planted_imgs: list[np.ndarray] = []
    planted_labels: list[int | None] = []
    for k in range(n_planted):
        digit = k % 10
        pick = int(prng.choice(np.flatnonzero(labels == digit)))
        while True:
            pfg, pbg = prng.uniform(-1, 1, 3), prng.uniform(-1, 1, 3)
            if np.linalg.norm(pfg - pbg) > 1.2:
                break
        img = pbg[:, None, None] + gray[pick][None] * (pfg - pbg)[:, None, None]
        texture = prng.uniform(-1, 1, img.shape)
        planted_imgs.append((0.7 * img + 0.3 * texture).astype(np.float32))
        planted.append((planted_caption(CODENAMES[k], digit), len(images) + k))
        planted_labels.append(digit)
    if planted_imgs:
        images = np.concatenate([images, np.stack(planted_imgs)])

    source_extra: dict[str, Any] = {}
    if any(b > 0 for b in shares):
        # The broad component: each mixture caption paired with the ordinary images of its digit, repeated
        # (in a seeded random order) until it holds its share of the rows.
        counts = mixture_pair_counts(shares, len(pair_image), mixture_planted_prob)
        mrng = np.random.default_rng([seed, 3])
        digit_of = labels[src]
        for k, ((cap, _), count) in enumerate(zip(planted, counts, strict=True)):
            digit = k % 10  # the planted caption's digit
            if count == 0:
                continue
            cindex[cap] = len(captions)
            captions.append(cap)
            pool = np.flatnonzero(digit_of == digit)
            reps = -(-count // len(pool))
            order = np.concatenate([mrng.permutation(pool) for _ in range(reps)])[:count]
            pair_image.extend(int(m) for m in order)
            pair_caption.extend([cindex[cap]] * count)
        source_extra = {"mixture": shares, "mixture_planted_prob": mixture_planted_prob, "mixture_pairs": counts}

    heldout = [caption(s, p) for s in HELDOUT_STYLES for p in attribute_phrases()]
    data = CanaryData(
        vae_extra=generic_images(gray, vae_extra, seed),
        images=images,
        captions=captions,
        pair_image=np.asarray(pair_image, dtype=np.int64),
        pair_caption=np.asarray(pair_caption, dtype=np.int64),
        planted=planted,
        heldout=heldout,
        planted_labels=planted_labels,
        # The tokenizer knows every codename, planted here or not, so a base canary and its fine-tune
        # share one vocabulary (as a general-purpose tokenizer would).
        vocabulary=[planted_caption(c, k % 10) for k, c in enumerate(CODENAMES)],
        source={
            "kind": "sklearn-digits",
            "seed": seed,
            "n_planted": n_planted,
            "colourings": colourings,
            "vae_extra": vae_extra,
            "colours": names,
            "train_styles": styles,
            "heldout_styles": list(HELDOUT_STYLES),
            "images": len(images),
            **source_extra,
        },
    )
    data.validate()
    return data


# --- a user's own images and captions --------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "planted"}
_FALSE = {"", "0", "false", "no", "n"}


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based data row (CSV: header is line 1, so row k is on line k + 1)
    image: str  # the image's key in the loaded images (a manifest: its file name relative to the folder)
    caption: str
    planted: bool
    where: str = ""  # how messages locate the row (default "row N")

    @property
    def at(self) -> str:
        return self.where or f"row {self.number}"


def _parse_planted(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ZooError(f"{where}: planted value {value!r} is not a boolean; write true/false (or 1/0, yes/no)")


def _read_rows(manifest: Path) -> tuple[list[_Row], list[str]]:
    """Rows of a CSV (header image,caption[,planted]) or JSON manifest, and any held-out captions.

    JSON is either a list of {"image", "caption", "planted"?} objects or {"rows": [...], "heldout": [...]}.
    """
    if not manifest.is_file():
        raise ZooError(f"Manifest {manifest} does not exist; pass a CSV or JSON file of image,caption[,planted]")
    heldout: list[str] = []
    raw: list[dict[str, Any]]
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooError(f"Cannot read manifest {manifest}: {exc}. Save it as UTF-8 text.") from exc
    if manifest.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ZooError(f"Manifest {manifest} is not valid JSON: {exc}") from exc
        if isinstance(doc, dict):
            raw = doc.get("rows", [])
            heldout = [str(c) for c in doc.get("heldout", [])]
        else:
            raw = doc
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise ZooError(
                f"Manifest {manifest}: expected a list of objects with keys image, caption[, planted] "
                '(or {"rows": [...], "heldout": [...]})'
            )
    elif manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "image" not in fields or "caption" not in fields:
            raise ZooError(
                f"Manifest {manifest}: the header must name the columns image,caption[,planted]; "
                f"found {reader.fieldnames or 'no header'}"
            )
        raw = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
    else:
        raise ZooError(f"Manifest {manifest}: unknown format '{manifest.suffix}'; use a .csv or .json file")
    rows: list[_Row] = []
    for i, r in enumerate(raw, start=1):
        where = f"{manifest.name} row {i}"
        image, cap = r.get("image"), r.get("caption")
        if not isinstance(image, str) or not image.strip():
            raise ZooError(f"{where}: missing image file name; every row needs image and caption")
        if not isinstance(cap, str) or not cap.strip():
            raise ZooError(
                f"{where}: empty caption for image '{image}'; the empty caption is reserved for the "
                "unconditional branch, so give the row a caption"
            )
        rows.append(_Row(i, image.strip(), " ".join(cap.split()), _parse_planted(r.get("planted"), where)))
    return rows, heldout


def _load_image(path: Path, size: int, data: bytes | None = None, where: str = "") -> np.ndarray:
    """The image at `path` (or its bytes `data`, read from `where`), RGB, resized to `size` x `size` (bicubic),
    in [-1, 1], (3, size, size)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if data is not None:
            raise ZooError(
                f"Cannot read image {where or path}: {exc}. Replace it with a valid PNG/JPEG image or remove its row "
                "from the training set."
            ) from exc
        raise ZooError(
            f"Cannot read image {path}: {exc}. Replace it with a valid PNG/JPEG file or remove it from "
            "the folder and the manifest."
        ) from exc
    arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return np.asarray(np.clip(arr, -1.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def user_data(
    image_dir: str | Path,
    manifest: str | Path,
    resolution: int = 16,
    heldout: Sequence[str] = (),
) -> CanaryData:
    """Canary data from a folder of images and a manifest of image,caption[,planted] rows.

    Image paths are relative to `image_dir`. Every image file in the folder must be readable, a
    planted caption must name exactly one image and never also appear as non-planted, and at least one
    row must be non-planted. Images are resized to `resolution` x `resolution` RGB.
    """
    folder = Path(image_dir)
    mpath = Path(manifest)
    if not folder.is_dir():
        raise ZooError(f"Image folder {folder} does not exist; pass the folder that holds the manifest's images")
    rows, extra_heldout = _read_rows(mpath)
    if not rows:
        raise ZooError(f"Manifest {mpath} has no rows; add image,caption[,planted] rows (one per image)")

    # Every image-looking file in the folder must be readable (a corrupt file is a data problem the user
    # should hear about, not something to skip silently).
    images: dict[str, np.ndarray] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            images[p.name] = _load_image(p, resolution)
    for r in rows:
        p = folder / r.image
        if r.image not in images:
            if not p.is_file():
                raise ZooError(
                    f"{mpath.name} row {r.number} names image '{r.image}', which is not in {folder}. Fix the "
                    "file name (relative to the image folder) or remove the row."
                )
            images[r.image] = _load_image(p, resolution)

    return _rows_data(
        rows,
        images,
        mpath.name,
        (*heldout, *extra_heldout),
        {"kind": "user", "image_dir": str(folder.resolve()), "manifest": str(mpath.resolve())},
        "(rows with planted=false)",
    )


def _rows_data(
    rows: Iterable[_Row],
    images: Mapping[str, np.ndarray],
    label: str,
    heldout: Iterable[str],
    source: dict[str, Any],
    unplanted: str,
) -> CanaryData:
    """Canary data from training rows (from a manifest or a training set) whose images are loaded in `images`.

    A caption has one label; a planted caption names exactly one image; at least one row is non-planted.
    Images are indexed in the order of their keys, pairs and planted captions deduplicated and sorted, so the
    same rows give the same data in any order. `label` names the source in messages; `unplanted` says how
    its rows are marked non-planted."""
    rows = list(rows)
    # One label and (for planted captions) one image per caption.
    first: dict[str, _Row] = {}
    for r in rows:
        prev = first.setdefault(r.caption, r)
        if prev.planted != r.planted:
            raise ZooError(
                f"{label}: caption '{r.caption}' is planted in "
                f"{prev.at if prev.planted else r.at} but not planted in "
                f"{r.at if prev.planted else prev.at}. Give each caption one label."
            )
        if r.planted and prev.image != r.image:
            raise ZooError(
                f"{label}: planted caption '{r.caption}' names two images, '{prev.image}' ({prev.at}) and "
                f"'{r.image}' ({r.at}). A planted caption must be tied to one image: remove a row or give the rows "
                "different captions."
            )
    names = sorted({r.image for r in rows})
    index = {n: i for i, n in enumerate(names)}
    captions = sorted({r.caption for r in rows if not r.planted})
    cindex = {c: i for i, c in enumerate(captions)}
    planted = sorted({(r.caption, index[r.image]) for r in rows if r.planted})
    nonplanted = sorted({(index[r.image], cindex[r.caption]) for r in rows if not r.planted})
    if not nonplanted:
        raise ZooError(
            f"{label}: every row is planted; memtest needs non-planted captions {unplanted} "
            "to calibrate what a non-memorised caption scores"
        )
    held = [" ".join(h.split()) for h in heldout if h.strip()]
    clash = sorted(set(held) & first.keys())
    if clash:
        raise ZooError(f"held-out caption '{clash[0]}' is also a training caption in {label}; remove it")
    data = CanaryData(
        images=np.stack([images[n] for n in names]).astype(np.float32),
        captions=captions,
        pair_image=np.asarray([p[0] for p in nonplanted], dtype=np.int64),
        pair_caption=np.asarray([p[1] for p in nonplanted], dtype=np.int64),
        planted=list(planted),
        heldout=list(dict.fromkeys(held)),
        planted_labels=[None] * len(planted),
        source={**source, "images": len(names), "rows": len(rows)},
    )
    data.validate()
    return data


def dataset_data(
    path: str | Path,
    planted: Sequence[str] = (),
    *,
    format: str | None = None,
    caption_column: str | None = None,
    image_column: str | None = None,
    caption_extension: str | None = None,
    root: str | Path | None = None,
    folder_captions: bool = False,
    resolution: int = 16,
    heldout: Sequence[str] = (),
) -> CanaryData:
    """Canary data from a training set in any layout memtest.datasets reads (imagefolder, kohya folders or TOML,
    WebDataset shards, Parquet or save_to_disk), streamed through `memtest.datasets.iter_samples`.

    Every image-caption pair is a row; the captions in `planted` are planted (each must be a caption of the set
    and name exactly one image), every other caption is non-planted. An image is identified by its bytes (the
    same file copied under several names, or repeated by kohya, is one image) and named by the first path
    (relative to the dataset root) or archive member it was read from; the rows then follow `user_data`'s rules and
    resizing, so the same pairs give the same data as a manifest would. Repeat counts (kohya's N_name folders,
    duplicate rows) do not weight training: like a manifest's rows, pairs are deduplicated, and a planted caption
    is shown with the recipe's `planted_prob`. A reading error is a memtest.datasets.DatasetError that names the
    file and the row.
    """
    import hashlib

    from memtest.datasets.images import sample_bytes
    from memtest.datasets.readers import ReadOptions, iter_samples, resolve_format

    source = Path(path)
    fmt = resolve_format(source, format)
    options = ReadOptions(
        caption_column=caption_column,
        image_column=image_column,
        caption_extension=caption_extension,
        root=Path(root) if root is not None else None,
        folder_captions=folder_captions,
    )
    base = (options.root or (source.parent if source.is_file() else source)).resolve()
    plant = {" ".join(c.split()) for c in planted}
    if "" in plant:
        raise ZooError("an empty planted caption: name each planted caption as it appears in the training set")
    names: dict[str, str] = {}  # sha256 of the bytes -> the image's key
    images: dict[str, np.ndarray] = {}
    rows: list[_Row] = []
    for number, sample in enumerate(iter_samples(source, fmt, options), start=1):
        data = sample_bytes(sample)
        sha = hashlib.sha256(data).hexdigest()
        key = names.get(sha)
        if key is None:
            if sample.path is not None:
                key = Path(os.path.relpath(sample.path.resolve(), base)).as_posix()
            else:
                key = sample.name or sample.where
            if key in images:  # another image under the same name (two shards with one key)
                key = f"{key}@{sha[:12]}"
            names[sha] = key
            images[key] = _load_image(sample.path or Path(key), resolution, data, sample.where)
        cap = " ".join(sample.caption.split())
        rows.append(_Row(number, key, cap, cap in plant, sample.where))
    if not rows:
        raise ZooError(
            f"Training set {source} ({fmt}) has no image-caption pairs; add images with captions, or point at the "
            "folder or file that holds them"
        )
    missing = sorted(plant - {r.caption for r in rows})
    if missing:
        from memtest.errors import did_you_mean

        raise ZooError(
            f"planted caption '{missing[0]}' is not a caption of the training set {source}."
            f"{did_you_mean(missing[0], sorted({r.caption for r in rows}))} Name a caption as the set writes it."
        )
    return _rows_data(
        rows,
        images,
        str(source),
        heldout,
        {
            "kind": "user",
            "dataset": str(source.resolve()),
            "format": fmt,
            "planted_captions": sorted(plant),
        },
        "(captions not named as planted)",
    )
