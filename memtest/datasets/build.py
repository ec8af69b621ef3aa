"""A suite from a training set: one clean case per distinct caption, with its training images and its risk tags.

One pass over the set's rows (memtest.datasets.readers, streamed): each image is read within the evidence layer's
limits, hashed, and stored beside the suite when it has no file of its own (memtest.datasets.images); what stays in
memory is one small record per distinct caption and per distinct image, never the images. Then near-duplicate
clusters are found over every image of the set (memtest.datasets.risk), each caption gets its tags, the riskiest come
first (and ``top_risk`` keeps the K riskiest), and the suite is written with memtest.audit.suites.dump_suite and read
back with load_suite, so what is returned is what an audit will load.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from memtest.audit.suites import Suite, SuiteCard, SuiteCase, dump_suite, load_suite
from memtest.datasets.errors import DatasetError
from memtest.datasets.images import ImageFacts, ImageStore, inspect_image, reference, sample_bytes
from memtest.datasets.readers import Format, ReadOptions, iter_samples, resolve_format
from memtest.datasets.risk import DEFAULT_DISTANCE, CaptionRisk, at_risk_floor, near_duplicate_labels


@dataclass
class _Caption:
    first: int
    rows: int = 0
    repeats: int = 0
    images: dict[str, None] = field(default_factory=dict)  # sha256 -> None, in first-seen order


@dataclass(frozen=True)
class Cluster:
    """A near-duplicate cluster of two or more training rows: its rows, distinct images, exposure (repeats summed
    over its rows) and the captions trained with it."""

    rows: int
    images: int
    exposure: int
    captions: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSuite:
    """What `suite_from_dataset` wrote: the suite (as loaded back), the layout read, the set's counts, the risk of
    every caption (riskiest first, before ``top_risk``), the duplicate clusters (largest first) and the images it
    stored beside the suite."""

    suite: Suite
    format: Format
    pairs: int
    captions: int
    images: int
    risks: dict[str, CaptionRisk]
    clusters: tuple[Cluster, ...]
    stored: int
    distance: int

    @property
    def at_risk(self) -> int:
        return sum(risk.at_risk for risk in self.risks.values())


def case_id(caption: str) -> str:
    """A caption's case id: the same caption gets the same id from any layout and any subset."""
    return "c-" + hashlib.sha256(caption.encode("utf-8")).hexdigest()[:12]


def suite_from_dataset(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str | None = None,
    caption_column: str | None = None,
    image_column: str | None = None,
    caption_extension: str | None = None,
    root: str | os.PathLike[str] | None = None,
    name: str | None = None,
    top_risk: int | None = None,
    distance: int = DEFAULT_DISTANCE,
    copy_images: bool = False,
    folder_captions: bool = False,
) -> DatasetSuite:
    """Read the training set at ``path`` and write the suite file ``output`` (and ``OUTPUT.images/`` for images that
    live in archives or tables, or all of them with ``copy_images``). ``format`` is one of
    memtest.datasets.FORMATS, or None/"auto" to detect it."""
    source = Path(path)
    out = Path(output)
    fmt = resolve_format(source, format)
    if top_risk is not None and (isinstance(top_risk, bool) or top_risk < 1):
        raise DatasetError(f"top_risk must be a whole number >= 1, got {top_risk!r}.")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise DatasetError(f"The suite file '{out}' must end in .yaml or .yml. Name the output SUITE.yaml.")
    if out.is_dir():
        raise DatasetError(f"'{out}' is a folder. Name the suite file to write, e.g. {out / 'suite.yaml'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    options = ReadOptions(
        caption_column=caption_column,
        image_column=image_column,
        caption_extension=caption_extension,
        root=Path(root) if root is not None else None,
        folder_captions=folder_captions,
    )
    store = ImageStore(out)
    facts: dict[str, ImageFacts] = {}
    refs: dict[str, str] = {}
    rows_of: Counter[str] = Counter()
    repeats_of: Counter[str] = Counter()
    row_repeats: Counter[int] = Counter()
    captions: dict[str, _Caption] = {}
    pairs = 0
    for index, sample in enumerate(iter_samples(source, fmt, options)):
        pairs += 1
        data = sample_bytes(sample)
        sha = hashlib.sha256(data).hexdigest()
        if sha not in facts:
            where = sample.where + (f" ({sample.name})" if sample.name else "")
            facts[sha] = inspect_image(data, where)
            if sample.path is None or copy_images:
                refs[sha] = store.put(data, facts[sha])
            else:
                refs[sha] = reference(sample.path, out)
        del data
        entry = captions.setdefault(sample.caption, _Caption(first=index))
        entry.rows += 1
        entry.repeats += sample.repeats
        entry.images[sha] = None
        rows_of[sha] += 1
        repeats_of[sha] += sample.repeats
        row_repeats[sample.repeats] += 1
    if not captions:
        raise DatasetError(
            f"The training set '{source}' ({fmt}) has no image-caption pairs. Check the path and the layout."
        )

    shas = list(facts)
    labels = dict(zip(shas, near_duplicate_labels([facts[s].phash for s in shas], distance), strict=True))
    cluster_rows: Counter[int] = Counter()
    cluster_exposure: Counter[int] = Counter()
    cluster_images: Counter[int] = Counter()
    for sha, label in labels.items():
        cluster_rows[label] += rows_of[sha]
        cluster_exposure[label] += repeats_of[sha]
        cluster_images[label] += 1
    exposures = {
        caption: max(entry.repeats, *(cluster_exposure[labels[s]] for s in entry.images))
        for caption, entry in captions.items()
    }
    floor = at_risk_floor(row_repeats)
    risks = {
        caption: CaptionRisk(
            rows=entry.rows,
            repeats=entry.repeats,
            images=len(entry.images),
            dup_cluster=max(cluster_rows[labels[s]] for s in entry.images),
            exposure=exposures[caption],
            at_risk=exposures[caption] >= floor,
        )
        for caption, entry in captions.items()
    }
    ranked = sorted(captions, key=lambda c: (*risks[c].order(), captions[c].first))
    risks = {caption: risks[caption] for caption in ranked}
    kept = ranked[:top_risk] if top_risk is not None else ranked

    members: dict[int, list[str]] = {}
    for caption in ranked:
        for label in dict.fromkeys(labels[s] for s in captions[caption].images):
            members.setdefault(label, []).append(caption)
    clusters = tuple(
        sorted(
            (
                Cluster(cluster_rows[label], cluster_images[label], cluster_exposure[label], tuple(names))
                for label, names in members.items()
                if cluster_rows[label] > 1
            ),
            key=lambda c: (-c.exposure, -c.rows, c.captions),
        )
    )

    cases = tuple(
        SuiteCase(
            id=case_id(caption),
            prompt=caption,
            expectation="clean",
            tags=risks[caption].tags(),
            images=tuple(refs[s] for s in captions[caption].images),
        )
        for caption in kept
    )
    if len({case.id for case in cases}) != len(cases):  # pragma: no cover - a 48-bit hash collision
        raise DatasetError("Two captions share a case id (a hash collision). Report this as a memtest bug.")
    shown = f"{len(cases)} of {len(captions)}" if len(cases) < len(captions) else f"{len(captions)}"
    suite = Suite(
        name=_suite_name(name or out.stem),
        version="1",
        card=SuiteCard(
            description=(
                f"The {shown} distinct training captions of the {fmt} training set '{source.name}' ({pairs} "
                f"image-caption pairs, {len(facts)} distinct images), riskiest first, each with its training images."
            ),
            provenance=f"Read from {source} ({fmt}) by memtest.datasets.",
            caveats=(
                "Tags: repeats:N (times per epoch), images:K (distinct images), dup-cluster:M (training rows in the "
                f"largest near-duplicate cluster of its images, phash within {distance} bits), dup-caption:R (rows "
                f"with this exact caption), at-risk (exposure at least {floor}, twice a typical row's repeats).",
                "The training images are the training set's own, under its licence: share the suite only where that "
                "licence allows.",
            ),
        ),
        defaults={},
        cases=cases,
    )
    _write_text(out, dump_suite(suite))
    store.prune({image for case in cases for image in case.images})
    return DatasetSuite(
        suite=load_suite(out),
        format=fmt,
        pairs=pairs,
        captions=len(captions),
        images=len(facts),
        risks=risks,
        clusters=clusters,
        stored=sum(1 for path in store.created if path.is_file()),
        distance=distance,
    )


def _suite_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "dataset"


def _write_text(path: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise DatasetError(f"Cannot write the suite file '{path}' ({exc.strerror or exc}). Check the folder.") from None


__all__ = ["Cluster", "DatasetSuite", "case_id", "suite_from_dataset"]
