"""Training sets as suites (memtest.datasets, `memtest suite from-dataset`): one small set written in the four layouts
gives the same suite; paths never leave the root; every malformed input is an error naming its file and row; the
near-duplicate distance holds on a synthetic measurement; the suite written loads and its images load."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from memtest.audit.suites import Suite, resolve_suite
from memtest.cli import main
from memtest.datasets import (
    DEFAULT_DISTANCE,
    DatasetError,
    detect_format,
    near_duplicate_labels,
    suite_from_dataset,
)
from memtest.evidence.images import load_image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
imagehash = pytest.importorskip("imagehash")

SIDE = 32
#: The training pairs: 8 images, 6 captions; "a green hill at dawn" has three images, image 7 nearly copies image 0.
PAIRS = [
    (0, "a red fox in the snow"),
    (1, "a blue boat on a lake"),
    (2, "a green hill at dawn"),
    (3, "a green hill at dawn"),
    (4, "portrait of a grey cat"),
    (5, "a city street at night"),
    (6, "a green hill at dawn"),
    (7, "a fox in snow, photograph"),
]


def base_image(seed: int, side: int = SIDE) -> Image.Image:
    """A smooth random image: 8x8 random colours, upscaled."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)


def png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def training_images() -> list[bytes]:
    images = [base_image(100 + i) for i in range(7)]
    images.append(ImageEnhance.Brightness(images[0]).enhance(1.08))  # a near duplicate of image 0
    return [png(im) for im in images]


IMAGES = training_images()


def write_imagefolder(folder: Path, csv_format: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "train").mkdir()
    for i, data in enumerate(IMAGES):
        (folder / "train" / f"{i:04d}.png").write_bytes(data)
    if csv_format:
        lines = ["file_name,text", *(f'train/{i:04d}.png,"{caption}"' for i, caption in PAIRS)]
        (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        rows = [json.dumps({"file_name": f"train/{i:04d}.png", "text": caption}) for i, caption in PAIRS]
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def write_kohya(folder: Path, repeats: int = 1, toml: bool = False) -> Path:
    sub = folder / ("images" if toml else f"{repeats}_things")
    sub.mkdir(parents=True)
    for n, (i, caption) in enumerate(PAIRS):
        (sub / f"{n:04d}.png").write_bytes(IMAGES[i])
        (sub / f"{n:04d}.{'caption' if n % 2 else 'txt'}").write_text(caption + "\n", encoding="utf-8")
    if toml:
        config = folder / "dataset.toml"
        config.write_text(
            f'[general]\nresolution = 512\n\n[[datasets]]\n\n  [[datasets.subsets]]\n  image_dir = "images"\n'
            f"  num_repeats = {repeats}\n",
            encoding="utf-8",
        )
        return config
    return folder


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_webdataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for shard, chunk in enumerate((PAIRS[:5], PAIRS[5:])):
        with tarfile.open(folder / f"shard-{shard:05d}.tar", "w") as archive:
            for n, (i, caption) in enumerate(chunk):
                key = f"s{shard}_{n:04d}"
                add_member(archive, f"{key}.png", IMAGES[i])
                if n % 2:
                    add_member(archive, f"{key}.json", json.dumps({"text": caption, "width": SIDE}).encode())
                else:
                    add_member(archive, f"{key}.txt", caption.encode())
    return folder


def image_table() -> object:
    images = [{"bytes": IMAGES[i], "path": f"{n}.png"} for n, (i, _) in enumerate(PAIRS)]
    return pa.table({"image": images, "text": [caption for _, caption in PAIRS]})


def write_parquet(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(image_table(), folder / "train-00000-of-00001.parquet", row_group_size=3)
    return folder


def write_save_to_disk(folder: Path) -> Path:
    """The layout of datasets' save_to_disk: state.json and Arrow IPC stream files."""
    folder.mkdir(parents=True)
    table = image_table()
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table, max_chunksize=3)
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "train"}
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    return folder


WRITERS: dict[str, Callable[[Path], Path]] = {
    "imagefolder": write_imagefolder,
    "imagefolder-csv": lambda p: write_imagefolder(p, csv_format=True),
    "kohya": write_kohya,
    "kohya-toml": lambda p: write_kohya(p, toml=True),
    "webdataset": write_webdataset,
    "parquet": write_parquet,
    "save_to_disk": write_save_to_disk,
}


def pixels(path: Path) -> str:
    return hashlib.sha256(load_image(path).tobytes()).hexdigest()


def summary(suite: Suite) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Caption -> (tags, the pixel hashes of its images): what must not depend on the layout."""
    return {
        case.prompt: (case.tags, tuple(sorted(pixels(p) for p in case.image_paths(suite.path)))) for case in suite.cases
    }


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Suite]:
    base = tmp_path_factory.mktemp("formats")
    out = {}
    for name, writer in WRITERS.items():
        dataset = writer(base / name / "data")
        made = suite_from_dataset(dataset, base / name / "suites" / "train.yaml")
        assert made.pairs == len(PAIRS) and made.captions == 6 and made.images == 8, name
        out[name] = resolve_suite(base / name / "suites" / "train.yaml")
    return out


def test_the_four_layouts_give_the_same_suite(suites: dict[str, Suite]) -> None:
    first = summary(suites["imagefolder"])
    assert sorted(first) == sorted({caption for _, caption in PAIRS})
    for name, suite in suites.items():
        assert summary(suite) == first, name
        assert [case.id for case in suite.cases] == [case.id for case in suites["imagefolder"].cases], name
        assert {case.expectation for case in suite.cases} == {"clean"}
    want = {pixels_of(i) for i, caption in PAIRS if caption == "a green hill at dawn"}
    assert set(first["a green hill at dawn"][1]) == want


def pixels_of(index: int) -> str:
    return hashlib.sha256(
        (np.asarray(Image.open(io.BytesIO(IMAGES[index])).convert("RGB"), dtype=np.float32) / 255.0).tobytes()
    ).hexdigest()


def test_risk_tags_name_repeats_images_and_the_near_duplicate_cluster(suites: dict[str, Suite]) -> None:
    tags = {case.prompt: case.tags for case in suites["imagefolder"].cases}
    assert tags["a green hill at dawn"] == ("repeats:3", "images:3", "dup-cluster:1", "dup-caption:3", "at-risk")
    assert tags["a red fox in the snow"] == ("repeats:1", "images:1", "dup-cluster:2", "at-risk")
    assert tags["a fox in snow, photograph"] == ("repeats:1", "images:1", "dup-cluster:2", "at-risk")
    assert tags["a blue boat on a lake"] == ("repeats:1", "images:1", "dup-cluster:1")
    # riskiest first
    assert [case.prompt for case in suites["imagefolder"].cases][:3] == [
        "a green hill at dawn",
        "a red fox in the snow",
        "a fox in snow, photograph",
    ]


def test_images_in_archives_are_stored_beside_the_suite_by_content(suites: dict[str, Suite]) -> None:
    for name in ("webdataset", "parquet", "save_to_disk"):
        suite = suites[name]
        assert suite.path is not None
        store = suite.path.parent / "train.images"
        files = sorted(p.name for p in store.iterdir())
        assert len(files) == 8, name
        assert all(image.startswith("train.images/") for case in suite.cases for image in case.images)
        for file in store.iterdir():
            assert file.name.startswith(hashlib.sha256(file.read_bytes()).hexdigest()[:24])
    disk = suites["imagefolder"]
    assert disk.path is not None and not (disk.path.parent / "train.images").exists()
    assert all(image.startswith("../data/train/") for case in disk.cases for image in case.images)


def test_kohya_repeats_multiply_and_a_uniform_repeat_is_not_a_risk(tmp_path: Path) -> None:
    for toml in (False, True):
        data = write_kohya(tmp_path / f"k{toml}", repeats=10, toml=toml)
        made = suite_from_dataset(data, tmp_path / f"k{toml}.yaml")
        tags = {case.prompt: case.tags for case in made.suite.cases}
        assert tags["a green hill at dawn"][:2] == ("repeats:30", "images:3")
        assert "at-risk" in tags["a green hill at dawn"] and "at-risk" in tags["a red fox in the snow"]
        assert tags["a blue boat on a lake"] == ("repeats:10", "images:1", "dup-cluster:1")


def test_top_risk_keeps_the_riskiest_and_prunes_their_stored_images(tmp_path: Path) -> None:
    data = write_webdataset(tmp_path / "wds")
    made = suite_from_dataset(data, tmp_path / "top.yaml", top_risk=2)
    assert [case.prompt for case in made.suite.cases] == ["a green hill at dawn", "a red fox in the snow"]
    assert made.captions == 6 and len(made.risks) == 6
    assert len(list((tmp_path / "top.images").iterdir())) == 4  # three hill images, one fox
    assert [(c.rows, c.images, c.captions) for c in made.clusters] == [
        (2, 2, ("a red fox in the snow", "a fox in snow, photograph"))
    ]


def test_the_hash_distance_separates_near_duplicates_from_unrelated_images() -> None:
    """The measurement behind DEFAULT_DISTANCE (docs/datasets.md): re-encodings, resizes, brightness and contrast
    changes, noise and a 3% crop stay within it; distinct images are far beyond it."""

    def phash(im: Image.Image) -> object:
        return imagehash.phash(im)

    def jpeg(im: Image.Image) -> Image.Image:
        out = io.BytesIO()
        im.save(out, "JPEG", quality=70)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")

    def noise(im: Image.Image) -> Image.Image:
        arr = np.asarray(im).astype(np.int16) + np.random.default_rng(1).integers(-12, 13, (64, 64, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    edits: dict[str, Callable[[Image.Image], Image.Image]] = {
        "jpeg": jpeg,
        "resize": lambda im: im.resize((48, 48)).resize((64, 64)),
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
        "contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.85),
        "noise": noise,
        "crop": lambda im: im.crop((2, 2, 62, 62)).resize((64, 64), Image.Resampling.BICUBIC),
    }
    bases = [base_image(i, 64) for i in range(40)]
    hashes = [phash(im) for im in bases]
    near = {name: [phash(edit(im)) - h for im, h in zip(bases, hashes, strict=True)] for name, edit in edits.items()}
    far = [hashes[i] - hashes[j] for i in range(len(hashes)) for j in range(i + 1, len(hashes))]
    for name, distances in near.items():
        limit = 4 if name != "crop" else DEFAULT_DISTANCE + 6
        assert max(distances) <= limit, (name, distances)
    assert np.mean([d <= DEFAULT_DISTANCE for d in near["crop"]]) >= 0.8
    assert min(far) > DEFAULT_DISTANCE + 4, min(far)


def test_bucketed_clusters_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    hashes = [int(h) for h in rng.integers(0, 2**63, 300, dtype=np.int64)]
    for k in range(60):  # plant chains of near neighbours
        flips = rng.choice(64, size=int(rng.integers(1, 12)), replace=False)
        hashes.append(hashes[k] ^ int(sum(1 << int(b) for b in flips)))
    labels = near_duplicate_labels(hashes, DEFAULT_DISTANCE)
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if bin(hashes[i] ^ hashes[j]).count("1") <= DEFAULT_DISTANCE:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    brute = [find(i) for i in range(len(hashes))]
    assert len(set(brute)) < len(hashes)  # the planted neighbours joined something
    for i in range(len(hashes)):
        for j in range(len(hashes)):
            assert (labels[i] == labels[j]) == (brute[i] == brute[j])


# --------------------------------------------------------------------------------------------------
# Refusals: paths out of the root, malformed files, each named with its row
# --------------------------------------------------------------------------------------------------


def metadata(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(IMAGES[0])
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def refuse(path: Path, out: Path, *words: str, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        suite_from_dataset(path, out, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


GOOD = '{"file_name": "a.png", "text": "ok"}'


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ('{"file_name": "../outside.png", "text": "x"}', ("'..'", "line 2")),
        ('{"file_name": "/etc/passwd", "text": "x"}', ("absolute", "line 2")),
        ('{"file_name": "missing.png", "text": "x"}', ("does not exist", "line 2")),
        ('{"file_name": "a.png"}', ("no caption column", "caption_column", "line 2")),
        ('{"file_name": "a.png", "text": "   "}', ("empty", "line 2")),
        ('{"text": "no image"}', ("file_name", "line 2")),
        ('{"file_name": "a.png", "text": "x"', ("not valid JSON", "line 2")),
        ("[1, 2]", ("not an object", "line 2")),
    ],
)
def test_imagefolder_rows_are_refused_with_file_and_line(tmp_path: Path, row: str, words: tuple[str, ...]) -> None:
    folder = metadata(tmp_path / "set", [GOOD, row])
    message = refuse(folder, tmp_path / "s.yaml", "metadata.jsonl", *words)
    assert not (tmp_path / "s.yaml").exists(), message


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(IMAGES[1])
    folder = metadata(tmp_path / "set", [GOOD, '{"file_name": "link.png", "text": "x"}'])
    os.symlink(outside, folder / "link.png")
    refuse(folder, tmp_path / "s.yaml", "line 2", "outside the dataset root")


def test_a_csv_row_with_too_many_fields_names_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "a.png").write_bytes(IMAGES[0])
    (folder / "metadata.csv").write_text("file_name,text\na.png,fine\na.png,a, b\n", encoding="utf-8")
    refuse(folder, tmp_path / "s.yaml", "metadata.csv, line 3", "more fields")


def test_an_empty_set_and_an_unknown_layout_are_errors(tmp_path: Path) -> None:
    refuse(metadata(tmp_path / "empty", []), tmp_path / "s.yaml", "no image-caption pairs")
    (tmp_path / "nothing").mkdir()
    refuse(tmp_path / "nothing", tmp_path / "s.yaml", "Cannot tell the layout", "format")
    refuse(tmp_path / "absent", tmp_path / "s.yaml", "does not exist")


def test_damaged_images_are_named_with_their_row(tmp_path: Path) -> None:
    folder = metadata(tmp_path / "set", [GOOD, '{"file_name": "b.png", "text": "broken"}'])
    (folder / "b.png").write_bytes(IMAGES[1][:60])
    refuse(folder, tmp_path / "s.yaml", "line 2", "damaged or truncated")
    table = pa.table({"image": [{"bytes": b"not an image", "path": "x.png"}], "text": ["a"]})
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "t.parquet")
    refuse(tmp_path / "pq", tmp_path / "s.yaml", "t.parquet, row 1", "x.png", "not an image")


def test_a_decompression_bomb_is_refused(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    Image.new("L", (8000, 6000)).save(bomb, "PNG")  # 48 megapixels, a few kilobytes
    table = pa.table({"image": [bomb.getvalue()], "caption": ["bomb"]})
    pq.write_table(table, tmp_path / "b.parquet")
    refuse(tmp_path / "b.parquet", tmp_path / "s.yaml", "b.parquet, row 1", "pixels")


def test_kohya_refusals(tmp_path: Path) -> None:
    data = write_kohya(tmp_path / "k")
    (data / "1_things" / "0000.txt").unlink()
    refuse(data, tmp_path / "s.yaml", "0000.png", "no caption file", "folder_captions")
    made = suite_from_dataset(data, tmp_path / "s.yaml", folder_captions=True)
    assert "things" in {case.prompt for case in made.suite.cases}
    (tmp_path / "bad.toml").write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '../../x'\n")
    refuse(tmp_path / "bad.toml", tmp_path / "s.yaml", "datasets[1].subsets[1]", "outside the dataset root")
    (tmp_path / "broken.toml").write_text("[[datasets]\n")
    refuse(tmp_path / "broken.toml", tmp_path / "s.yaml", "broken.toml", "not valid TOML")


def test_webdataset_refusals(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "evil.tar", "w") as archive:
        add_member(archive, "a.png", IMAGES[0])
        add_member(archive, "a.txt", b"fine")
        add_member(archive, "../escape.txt", b"x")
    refuse(tmp_path / "evil.tar", tmp_path / "s.yaml", "evil.tar", "'../escape.txt'", "never extracts")
    assert not (tmp_path.parent / "escape.txt").exists()
    with tarfile.open(tmp_path / "nocap.tar", "w") as archive:
        add_member(archive, "a.png", IMAGES[0])
    refuse(tmp_path / "nocap.tar", tmp_path / "s.yaml", "nocap.tar", "sample 'a'", "no caption")
    with tarfile.open(tmp_path / "link.tar", "w") as archive:
        info = tarfile.TarInfo("a.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    refuse(tmp_path / "link.tar", tmp_path / "s.yaml", "link.tar", "a link")
    (tmp_path / "cut.tar").write_bytes((tmp_path / "evil.tar").read_bytes()[:700])
    refuse(tmp_path / "cut.tar", tmp_path / "s.yaml", "cut.tar", "damaged")


def test_parquet_refusals(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    refuse(tmp_path / "junk.parquet", tmp_path / "s.yaml", "junk.parquet", "Parquet")
    pq.write_table(pa.table({"image": [IMAGES[0]], "label": [3]}), tmp_path / "nocap.parquet")
    refuse(tmp_path / "nocap.parquet", tmp_path / "s.yaml", "no caption column", "'label'", "caption_column")
    pq.write_table(pa.table({"image": ["../x.png"], "text": ["a"]}), tmp_path / "up.parquet")
    refuse(tmp_path / "up.parquet", tmp_path / "s.yaml", "up.parquet, row 1", "'..'")
    pq.write_table(pa.table({"image": [IMAGES[0], None], "text": ["a", "b"]}), tmp_path / "hole.parquet")
    refuse(tmp_path / "hole.parquet", tmp_path / "s.yaml", "hole.parquet, row 2", "image bytes")
    # What `datasets`' to_parquet writes for images loaded from local files (seen with datasets 5.2): a struct
    # with no bytes and the absolute path; refused with how to embed the images.
    cell = {"bytes": None, "path": str(tmp_path / "x.png")}
    pq.write_table(pa.table({"image": [cell], "text": ["a"]}), tmp_path / "paths.parquet")
    refuse(tmp_path / "paths.parquet", tmp_path / "s.yaml", "paths.parquet, row 1", "absolute path", "save_to_disk")


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(write_imagefolder(tmp_path / "a")) == "imagefolder"
    assert detect_format(write_kohya(tmp_path / "b")) == "kohya"
    assert detect_format(write_kohya(tmp_path / "c", toml=True)) == "kohya"
    assert detect_format(write_webdataset(tmp_path / "d")) == "webdataset"
    assert detect_format(write_parquet(tmp_path / "e")) == "parquet"
    assert detect_format(write_save_to_disk(tmp_path / "f")) == "parquet"


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def test_the_command_writes_a_suite_whose_images_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_parquet(tmp_path / "pq")
    out = tmp_path / "out" / "mine.yaml"
    code = main(["suite", "from-dataset", str(data), "-o", str(out), "--top-risk", "3", "--name", "My Set"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 cases of 6 distinct captions" in printed and "duplicate cluster" in printed
    suite = resolve_suite(str(out))
    assert suite.name == "my-set" and len(suite.cases) == 3
    assert all("at-risk" in case.tags for case in suite.cases)
    for case in suite.cases:
        for path in case.image_paths(suite.path):
            assert load_image(path, case=case.id).shape == (SIDE, SIDE, 3)


def test_the_command_spells_its_own_flags_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = metadata(tmp_path / "set", ['{"file_name": "a.png", "caption": "x"}'])
    code = main(["suite", "from-dataset", str(folder), "-o", str(tmp_path / "s.yaml"), "--caption-column", "txt"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--caption-column=caption" in err and "line 1" in err


def test_no_torch_is_imported() -> None:
    import subprocess

    code = "import sys, memtest.datasets, memtest.cli; sys.exit('torch' in sys.modules or 'pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
