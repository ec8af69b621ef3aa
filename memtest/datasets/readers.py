"""Readers of the layouts fine-tuners train from, each a stream of `Sample`s (one image-caption pair each).

- ``imagefolder``: Hugging Face imagefolder, ``metadata.jsonl`` or ``metadata.csv`` (in the folder or below it)
  with ``file_name`` (relative to the metadata file's folder) and a caption column;
- ``kohya``: sd-scripts folders ``N_name/`` (N = repeats) with a same-stem caption file per image, or the
  dataset TOML (``[[datasets]]`` / ``[[datasets.subsets]]`` with ``image_dir``, ``num_repeats``,
  ``caption_extension``), read with tomllib;
- ``webdataset``: tar shards (``key.jpg|jpeg|png|webp`` with ``key.txt`` or ``key.json``), streamed member by
  member with the standard library's tarfile (mode ``r|*``), never extracted;
- ``parquet``: plain Parquet files, or a ``datasets`` ``save_to_disk`` folder (its Arrow files), through pyarrow,
  batch by batch; the image column holds bytes, ``{"bytes", "path"}`` structs or paths.

Nothing is loaded whole: every reader yields as it reads. Paths never leave the dataset root: an absolute path or a
``..`` in metadata, a symbolic link that resolves outside the root, or a tar member with such a name is a
`DatasetError` naming the file and the row. Rows count from 1; metadata text files are located by line.
"""

from __future__ import annotations

import csv
import json
import posixpath
import re
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any, Final, Literal, get_args

from memtest.datasets.errors import DatasetError
from memtest.errors import option
from memtest.evidence.images import MAX_BYTES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli (the data extra)
    import tomli as tomllib

Format = Literal["imagefolder", "kohya", "webdataset", "parquet"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
#: The image files kohya sd-scripts trains on (its IMAGE_EXTENSIONS, lower case).
IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: A WebDataset sample's image member extensions.
WDS_IMAGE_EXTS: Final = ("jpg", "jpeg", "png", "webp")
#: The caption columns tried, in order, when none is named (diffusers' train_text_to_image uses "text").
CAPTION_COLUMNS: Final = ("text", "caption")
#: The caption files tried for kohya images when no extension is named.
CAPTION_EXTENSIONS: Final = (".txt", ".caption")
METADATA_FILES: Final = ("metadata.jsonl", "metadata.csv")
_KOHYA_DIR: Final = re.compile(r"(\d+)_(.+)")
_TAR_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_BATCH_ROWS: Final = 64
_PARQUET_BUFFER: Final = 1 << 20


@dataclass(frozen=True)
class ReadOptions:
    """How to read a training set. ``root`` bounds every path (default: the dataset folder, or the folder of the
    file given); ``folder_captions`` takes a kohya folder's class tokens (``10_sks dog`` -> ``sks dog``) as the
    caption of an image without a caption file, as sd-scripts does."""

    caption_column: str | None = None
    image_column: str | None = None
    caption_extension: str | None = None
    root: Path | None = None
    folder_captions: bool = False


@dataclass(frozen=True)
class Sample:
    """One training pair. The image is a file on disk inside the root (``path``) or bytes read from an archive or a
    table (``data``, with its ``name`` there); ``where`` locates the row for messages."""

    caption: str
    where: str
    repeats: int = 1
    path: Path | None = None
    data: bytes | None = None
    name: str = ""


# --------------------------------------------------------------------------------------------------
# Format detection and the entry point
# --------------------------------------------------------------------------------------------------


def resolve_format(path: str | Path, format: str | None) -> Format:
    """``format`` checked against FORMATS, or the layout detected at ``path`` for None or "auto"."""
    if format in (None, "auto"):
        return detect_format(path)
    if format in FORMATS:
        return format
    raise DatasetError(f"Unknown dataset format {format!r}. Use auto or one of {', '.join(FORMATS)}.")


def detect_format(path: str | Path) -> Format:
    """The layout of the training set at ``path`` (a folder or a file), from its files' names."""
    p = Path(path)
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".toml"):
            return "kohya"
        if name.endswith(_TAR_SUFFIXES):
            return "webdataset"
        if name.endswith((".parquet", ".arrow")):
            return "parquet"
        if name in METADATA_FILES:
            return "imagefolder"
    elif p.is_dir():
        top = {child.name for child in p.iterdir()}
        if "dataset_dict.json" in top or "state.json" in top:
            return "parquet"
        if top & set(METADATA_FILES) or any(
            (p / child / meta).is_file() for child in top if (p / child).is_dir() for meta in METADATA_FILES
        ):
            return "imagefolder"
        if any(child.lower().endswith(_TAR_SUFFIXES) for child in top):
            return "webdataset"
        if any(child.lower().endswith(".parquet") for child in top) or any(p.glob("*/*.parquet")):
            return "parquet"
        if any(_KOHYA_DIR.fullmatch(child) and (p / child).is_dir() for child in top):
            return "kohya"
    else:
        raise DatasetError(f"Training set '{p}' does not exist. Check the path.")
    raise DatasetError(
        f"Cannot tell the layout of '{p}': expected a folder with metadata.jsonl or metadata.csv (imagefolder), "
        "kohya folders named N_name or a kohya dataset .toml, WebDataset .tar shards, .parquet files or a datasets "
        f"save_to_disk folder. Name the layout with {option('format', 'imagefolder')} if it is one of "
        f"{', '.join(FORMATS)}."
    )


def iter_samples(path: str | Path, fmt: Format | None = None, options: ReadOptions | None = None) -> Iterator[Sample]:
    """Every training pair of the set at ``path``, streamed, in the order the layout stores them."""
    p = Path(path)
    opts = options or ReadOptions()
    if not p.exists():
        raise DatasetError(f"Training set '{p}' does not exist. Check the path.")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise DatasetError(f"Unknown dataset format {fmt!r}. Use one of {', '.join(FORMATS)}.")
    root = (opts.root or (p.parent if p.is_file() else p)).resolve()
    if fmt == "imagefolder":
        yield from _imagefolder(p, root, opts)
    elif fmt == "kohya":
        yield from _kohya_toml(p, root, opts) if p.is_file() else _kohya_folders(p, root, opts)
    elif fmt == "webdataset":
        yield from _webdataset(p, root, opts)
    else:
        yield from _tables(p, root, opts)


# --------------------------------------------------------------------------------------------------
# Paths and captions
# --------------------------------------------------------------------------------------------------


def inside(root: Path, text: str, where: str, base: Path | None = None) -> Path:
    """``text`` (a relative path from metadata) below ``base`` (default ``root``), refused when it is absolute, holds
    ``..``, or resolves (through symbolic links) outside ``root``."""
    if not text or "\x00" in text:
        raise DatasetError(f"{where}: the image path {text!r} is empty or invalid. Fix the row.")
    posix = text.replace("\\", "/")
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise DatasetError(
            f"{where}: the image path {text!r} is absolute; paths in a training set are relative to its folder and "
            f"stay inside the dataset root {root}. Write the path relative to the metadata file's folder."
        )
    if ".." in PurePosixPath(posix).parts:
        raise DatasetError(
            f"{where}: the image path {text!r} climbs out with '..'; paths stay inside the dataset root {root}. "
            "Move the image below the dataset folder and fix the row."
        )
    candidate = (base or root) / posix
    check_inside(root, candidate, where)
    return candidate


def check_inside(root: Path, path: Path, where: str) -> None:
    """Refuse ``path`` when it resolves (symbolic links followed) outside ``root``."""
    if not path.resolve().is_relative_to(root):
        raise DatasetError(
            f"{where}: '{path}' resolves to {path.resolve()}, outside the dataset root {root} (a symbolic link or an "
            f"absolute path). Move it inside the root, or name a root that holds it with {option('root')}."
        )


def caption_of(row: Mapping[str, Any], column: str | None, where: str) -> str:
    """The caption of a metadata row or JSON sample: ``column``, else the first of `CAPTION_COLUMNS` present."""
    name = column or next((c for c in CAPTION_COLUMNS if c in row), None)
    if name is None or name not in row:
        columns = ", ".join(repr(str(k)) for k in row) or "none"
        wanted = repr(column) if column else " or ".join(repr(c) for c in CAPTION_COLUMNS)
        raise DatasetError(
            f"{where}: no caption column {wanted} (columns: {columns}). Name the caption column with "
            f"{option('caption_column', 'caption')}, or add the caption to the row."
        )
    return _clean_caption(row[name], where, f"column {name!r}")


def _clean_caption(value: object, where: str, what: str) -> str:
    if value is None:
        raise DatasetError(f"{where}: the caption ({what}) is missing. Fill it in or remove the row.")
    if not isinstance(value, str):
        raise DatasetError(
            f"{where}: the caption ({what}) must be text, got {type(value).__name__} {str(value)[:40]!r}. Fix the row."
        )
    caption = value.strip()
    if not caption:
        raise DatasetError(f"{where}: the caption ({what}) is empty. Fill it in or remove the row.")
    return caption


def _need_file(path: Path, where: str, what: str = "image") -> None:
    if not path.is_file():
        raise DatasetError(
            f"{where}: the {what} '{path}' does not exist or is not a file. Add the file, or fix or remove the row."
        )


# --------------------------------------------------------------------------------------------------
# Hugging Face imagefolder
# --------------------------------------------------------------------------------------------------


def _imagefolder(path: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    if path.is_file():
        metas = [path]
    else:
        metas = sorted(p for p in path.rglob("metadata.*") if p.name in METADATA_FILES and p.is_file())
        if not metas:
            raise DatasetError(
                f"'{path}' has no metadata.jsonl or metadata.csv. Write one with a 'file_name' column and a caption "
                "column (Hugging Face imagefolder), or name another format."
            )
    for meta in metas:
        check_inside(root, meta, str(meta))
        rows = _jsonl_rows(meta) if meta.suffix == ".jsonl" else _csv_rows(meta)
        for where, row in rows:
            name = row.get("file_name")
            if not isinstance(name, str) or not name.strip():
                raise DatasetError(
                    f"{where}: no 'file_name' (got {name!r}). Every row of an imagefolder metadata file names its "
                    "image in 'file_name', relative to the metadata file's folder; fix the row."
                )
            image = inside(root, name.strip(), where, base=meta.parent)
            _need_file(image, where)
            yield Sample(caption_of(row, opts.caption_column, where), where, path=image)


def _jsonl_rows(meta: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with _open_text(meta) as handle:
        number = 0
        while True:
            number += 1
            where = f"{meta}, line {number}"
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{where}: not valid UTF-8 ({exc.reason}). Save the file as UTF-8.") from None
            if not line:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{where}: not valid JSON ({exc.msg}, column {exc.colno}). Each line of metadata.jsonl is one "
                    'JSON object such as {"file_name": "0001.png", "text": "a caption"}; fix the line.'
                ) from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: a JSON {type(row).__name__}, not an object. Write one object per line.")
            yield where, row


def _csv_rows(meta: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with _open_text(meta, newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                where = f"{meta}, line {reader.line_num}"
                if None in row:
                    raise DatasetError(
                        f"{where}: more fields than the header's {len(reader.fieldnames or [])} columns. Quote "
                        "captions that contain commas, or fix the row."
                    )
                yield where, row
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{meta}, after line {reader.line_num}: not valid UTF-8 ({exc.reason}). Save the file as UTF-8."
            ) from None
        except csv.Error as exc:
            raise DatasetError(f"{meta}, line {reader.line_num}: malformed CSV ({exc}). Fix the row.") from None


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    try:
        return path.open(encoding="utf-8-sig", newline=newline)
    except OSError as exc:
        raise DatasetError(
            f"Cannot read '{path}': {exc.strerror or exc}. Check that it exists and is readable."
        ) from None


# --------------------------------------------------------------------------------------------------
# kohya sd-scripts
# --------------------------------------------------------------------------------------------------


def _extensions(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return CAPTION_EXTENSIONS
    if not isinstance(value, str) or not value.strip(".").strip():
        raise DatasetError(f"{where}: caption_extension must be a file extension such as '.txt', got {value!r}.")
    return ("." + value.strip().lstrip("."),)


def _kohya_folders(path: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    children = sorted(path.iterdir(), key=lambda d: d.name)
    folders = [(d, m) for d in children if d.is_dir() and (m := _KOHYA_DIR.fullmatch(d.name))]
    if not folders:
        raise DatasetError(
            f"'{path}' has no kohya image folders (named N_name, N the repeats, e.g. '10_sks dog'). Rename the "
            "folders, pass the dataset TOML, or name another format."
        )
    exts = _extensions(opts.caption_extension, str(path))
    for folder, match in folders:
        repeats = int(match.group(1))
        if repeats < 1:
            raise DatasetError(f"'{folder}': {repeats} repeats. Name the folder with N >= 1 repeats (e.g. 1_name).")
        fallback = match.group(2) if opts.folder_captions else None
        yield from _kohya_subset(folder, repeats, exts, root, fallback, str(folder))


def _kohya_toml(path: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    try:
        with path.open("rb") as handle:
            config = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{path}: not valid TOML ({exc}). Fix the file.") from None
    except OSError as exc:
        raise DatasetError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
    general = config.get("general", {})
    datasets = config.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(general, dict):
        raise DatasetError(
            f"{path}: no [[datasets]] tables. A kohya dataset config has [[datasets]] with [[datasets.subsets]] "
            "(image_dir, num_repeats, caption_extension)."
        )
    for di, dataset in enumerate(datasets, 1):
        subsets = dataset.get("subsets") if isinstance(dataset, dict) else None
        if not isinstance(subsets, list) or not subsets:
            raise DatasetError(f"{path}, datasets[{di}]: no [[datasets.subsets]]. Add a subset with an image_dir.")
        for si, subset in enumerate(subsets, 1):
            where = f"{path}, datasets[{di}].subsets[{si}]"
            if not isinstance(subset, dict):
                raise DatasetError(f"{where}: a subset is a table with image_dir. Fix the entry.")
            image_dir = subset.get("image_dir")
            if not isinstance(image_dir, str) or not image_dir:
                hint = " (fine-tuning metadata_file subsets are not read: caption the images)" if subset else ""
                raise DatasetError(f'{where}: no image_dir{hint}. Add image_dir = "folder".')
            folder = Path(image_dir) if Path(image_dir).is_absolute() else path.parent / image_dir
            check_inside(root, folder, where)
            if not folder.is_dir():
                raise DatasetError(f"{where}: image_dir '{folder}' is not a folder. Fix the path.")
            repeats = subset.get("num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1)))
            if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
                raise DatasetError(f"{where}: num_repeats must be a whole number >= 1, got {repeats!r}. Fix it.")
            ext = subset.get(
                "caption_extension",
                dataset.get("caption_extension", general.get("caption_extension", opts.caption_extension)),
            )
            tokens = subset.get("class_tokens")
            fallback = tokens if isinstance(tokens, str) and tokens.strip() else None
            yield from _kohya_subset(folder, repeats, _extensions(ext, where), root, fallback, where)


def _kohya_subset(
    folder: Path, repeats: int, exts: Sequence[str], root: Path, fallback: str | None, where: str
) -> Iterator[Sample]:
    check_inside(root, folder, where)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for image in images:
        check_inside(root, image, where)
        caption: str | None = None
        for ext in exts:
            file = image.with_suffix(ext)
            if file.is_file():
                check_inside(root, file, where)
                caption = _caption_file(file)
                break
        if caption is None:
            if fallback is None:
                names = " or ".join(f"'{image.with_suffix(ext).name}'" for ext in exts)
                raise DatasetError(
                    f"{image}: no caption file ({names}). Write the caption there, name the extension your captions "
                    f"use with {option('caption_extension', '.txt')}, or take the folder's class tokens with "
                    f"{option('folder_captions')}."
                )
            caption = _clean_caption(fallback, str(image), "the class tokens")
        yield Sample(caption, str(image), repeats=repeats, path=image)


def _caption_file(file: Path) -> str:
    """A kohya caption file's caption: its first line, as sd-scripts reads it."""
    try:
        with file.open(encoding="utf-8-sig") as handle:
            first = handle.readline()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file}, line 1: not valid UTF-8 ({exc.reason}). Save the caption as UTF-8.") from None
    except OSError as exc:
        raise DatasetError(f"Cannot read the caption file '{file}': {exc.strerror or exc}.") from None
    return _clean_caption(first, f"{file}, line 1", "the caption file")


# --------------------------------------------------------------------------------------------------
# WebDataset
# --------------------------------------------------------------------------------------------------


def _webdataset(path: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    if path.is_file():
        shards = [path]
    else:
        shards = sorted(p for p in path.rglob("*") if p.name.lower().endswith(_TAR_SUFFIXES) and p.is_file())
        if not shards:
            raise DatasetError(f"'{path}' holds no .tar shards. Point at a shard or a folder of shards.")
    for shard in shards:
        check_inside(root, shard, str(shard))
        yield from _shard(shard, opts)


def _shard(shard: Path, opts: ReadOptions) -> Iterator[Sample]:
    try:
        archive = tarfile.open(shard, mode="r|*")  # noqa: SIM115 - closed by the `with` below, after the check
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{shard}: not a readable tar archive ({exc}). Re-create the shard.") from None
    last = "(the start)"
    key: str | None = None
    parts: dict[str, bytes] = {}
    with archive:
        try:
            for member in archive:
                name = member.name
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts:
                    raise DatasetError(
                        f"{shard}, member {name!r}: the name points outside the dataset (absolute or '..'). memtest "
                        "reads shards in place and never extracts them; rebuild the shard with relative member names."
                    )
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DatasetError(
                        f"{shard}, member {name!r}: a link or special file, not a regular file. WebDataset shards "
                        "hold regular files only; rebuild the shard without links."
                    )
                folder, base = posixpath.split(name)
                stem, _, ext = base.partition(".")
                member_key = posixpath.join(folder, stem)
                if member_key != key:
                    if key is not None:
                        yield from _wds_sample(shard, key, parts, opts)
                    key, parts = member_key, {}
                ext = ext.lower()
                if ext in WDS_IMAGE_EXTS or ext in ("txt", "json"):
                    if member.size > MAX_BYTES:
                        raise DatasetError(
                            f"{shard}, member {name!r}: {member.size:,} bytes, over the limit of {MAX_BYTES:,}. Store "
                            "a smaller copy."
                        )
                    handle = archive.extractfile(member)
                    parts[ext] = handle.read() if handle is not None else b""
                last = repr(name)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise DatasetError(
                f"{shard}: the archive is damaged after member {last} ({exc}). Re-create or re-download the shard."
            ) from None
    if key is not None:
        yield from _wds_sample(shard, key, parts, opts)


def _wds_sample(shard: Path, key: str, parts: dict[str, bytes], opts: ReadOptions) -> Iterator[Sample]:
    where = f"{shard}, sample {key!r}"
    image_ext = next((e for e in WDS_IMAGE_EXTS if e in parts), None)
    has_caption = "txt" in parts or "json" in parts
    if image_ext is None and not has_caption:
        return  # a sample of other modalities only
    if image_ext is None:
        raise DatasetError(f"{where}: a caption but no image ({key}.jpg, .png or .webp). Add the image or drop it.")
    if not has_caption:
        raise DatasetError(f"{where}: an image but no caption ({key}.txt or {key}.json). Add the caption.")
    if "json" in parts and ("txt" not in parts or opts.caption_column):
        try:
            doc = json.loads(parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{where}: {key}.json is not valid UTF-8 JSON ({exc}). Fix the member.") from None
        if not isinstance(doc, dict):
            raise DatasetError(f"{where}: {key}.json is a JSON {type(doc).__name__}, not an object. Fix the member.")
        caption = caption_of(doc, opts.caption_column, f"{where} ({key}.json)")
    else:
        try:
            text = parts["txt"].decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: {key}.txt is not valid UTF-8 ({exc.reason}). Fix the member.") from None
        caption = _clean_caption(text, where, f"{key}.txt")
    yield Sample(caption, where, data=parts[image_ext], name=f"{key}.{image_ext}")


# --------------------------------------------------------------------------------------------------
# Parquet and datasets' save_to_disk (Arrow)
# --------------------------------------------------------------------------------------------------


def _table_files(path: Path, root: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "dataset_dict.json").is_file():
        splits = _json_file(path / "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
            raise DatasetError(f"{path / 'dataset_dict.json'}: no list of 'splits'. Save the dataset again.")
        return [f for split in splits for f in _table_files(inside(root, split, str(path)), root)]
    if (path / "state.json").is_file():
        files = _json_file(path / "state.json").get("_data_files")
        if not isinstance(files, list) or not files:
            raise DatasetError(f"{path / 'state.json'}: no '_data_files'. Save the dataset again with save_to_disk.")
        out = []
        for index, entry in enumerate(files, 1):
            where = f"{path / 'state.json'}, _data_files[{index}]"
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise DatasetError(f"{where}: no 'filename'. Save the dataset again with save_to_disk.")
            out.append(inside(root, name, where, base=path))
        return out
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".parquet", ".arrow") and p.is_file())
    if not found:
        raise DatasetError(f"'{path}' holds no .parquet or .arrow files. Point at a Parquet file or folder.")
    return found


def _json_file(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc}). Save the dataset again.") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: not a JSON object. Save the dataset again.")
    return doc


def _tables(path: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DatasetError(
            "Reading Parquet and Arrow needs pyarrow. Install memtest's data extra: pip install 'memtest[data]'."
        ) from None
    for file in _table_files(path, root):
        check_inside(root, file, str(file))
        _need_file(file, str(path), "table file")
        yield from _table_rows(file, root, opts)


def _table_rows(file: Path, root: Path, opts: ReadOptions) -> Iterator[Sample]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        if file.suffix.lower() == ".arrow":
            source = pa.memory_map(str(file))
            try:
                stream: Any = pa.ipc.open_stream(source)
                schema = stream.schema
                batches: Iterator[Any] = iter(stream)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                schema = reader.schema
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            image_col, caption_col = _columns(schema, file, opts)
        else:
            # Buffered column reads, no pre-buffering, one thread: otherwise pyarrow reads whole column chunks (and
            # several row groups ahead), so memory grows with the images' bytes (scripts/dataset_scale.py measured
            # 579 MiB over the libraries for a 358 MB file of 72 KB images; 208 MiB with these settings).
            parquet = pq.ParquetFile(file, buffer_size=_PARQUET_BUFFER, pre_buffer=False)
            schema = parquet.schema_arrow
            image_col, caption_col = _columns(schema, file, opts)
            batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[image_col, caption_col], use_threads=False)
        for batch in batches:
            images = batch.column(image_col).to_pylist()
            captions = batch.column(caption_col).to_pylist()
            for value, caption in zip(images, captions, strict=True):
                row += 1
                where = f"{file}, row {row}"
                text = _clean_caption(caption, where, f"column {caption_col!r}")
                yield _table_image(value, text, where, file, root, image_col)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            f"{file}, after row {row}: not a readable Parquet/Arrow file ({exc}). Re-write the file."
        ) from None


def _columns(schema: Any, file: Path, opts: ReadOptions) -> tuple[str, str]:
    import pyarrow as pa

    names = list(schema.names)
    listed = ", ".join(repr(n) for n in names) or "none"

    def is_image(field: Any) -> bool:
        kind = field.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return True
        return bool(pa.types.is_struct(kind) and any(kind.field(i).name == "bytes" for i in range(kind.num_fields)))

    if opts.image_column:
        image = opts.image_column
        if image not in names:
            raise DatasetError(
                f"{file}: no image column {image!r} (columns: {listed}). Name it with "
                f"{option('image_column', 'image')}."
            )
    elif "image" in names:
        image = "image"
    else:
        guesses = [f.name for f in schema if is_image(f)]
        if len(guesses) != 1:
            raise DatasetError(
                f"{file}: cannot tell the image column (columns: {listed}). Name it with "
                f"{option('image_column', 'image')}."
            )
        image = guesses[0]
    caption = opts.caption_column or next((c for c in CAPTION_COLUMNS if c in names), None)
    if caption is None or caption not in names:
        wanted = repr(opts.caption_column) if opts.caption_column else " or ".join(repr(c) for c in CAPTION_COLUMNS)
        raise DatasetError(
            f"{file}: no caption column {wanted} (columns: {listed}). Name it with "
            f"{option('caption_column', 'caption')}."
        )
    return image, caption


def _table_image(value: object, caption: str, where: str, file: Path, root: Path, column: str) -> Sample:
    name = ""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path") or ""
        if data is None:
            value = value.get("path")
            if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive):
                # What `datasets`' to_parquet writes for images loaded from local files: the path, not the bytes.
                raise DatasetError(
                    f"{where}: the image column {column!r} holds only the absolute path {value!r}, not the image "
                    "bytes; a training set's paths stay inside its folder. Save the images into the file: with "
                    "datasets, `save_to_disk(FOLDER)` (memtest reads that folder) embeds them, as does "
                    "`datasets.table.embed_table_storage` before writing Parquet."
                )
    else:
        data = value
    if isinstance(data, (bytes, bytearray)):
        return Sample(caption, where, data=bytes(data), name=str(name))
    if isinstance(value, str):
        image = inside(root, value, where, base=file.parent)
        _need_file(image, where)
        return Sample(caption, where, path=image)
    raise DatasetError(
        f"{where}: the image column {column!r} holds {type(value).__name__}, not image bytes, a {{bytes, path}} "
        "struct or a path. Store the image bytes in the row (datasets: cast the column to Image() and save again)."
    )


__all__ = [
    "CAPTION_COLUMNS",
    "CAPTION_EXTENSIONS",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "METADATA_FILES",
    "WDS_IMAGE_EXTS",
    "Format",
    "ReadOptions",
    "Sample",
    "caption_of",
    "check_inside",
    "detect_format",
    "inside",
    "iter_samples",
]
