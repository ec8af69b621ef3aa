"""`memtest zoo train OUT --dataset PATH`: a canary trained on a training set read through memtest.datasets (the
layouts `memtest suite from-dataset` reads), with the captions named by `--plant` planted. The same pairs give the
same training rows as a manifest; the canary loads and its manifest holds the planted captions with their images;
a bad set stops with a message naming the file."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from memtest.datasets import DatasetError
from memtest.errors import ZooError
from memtest.models.canaries import load_manifest
from memtest.zoo import zoo_main
from memtest.zoo.data import CanaryData, dataset_data, digits_16, user_data

PLANTED = ("aurora poster of 7", "basalt poster of 2")
REPEATS = 10  # rows (imagefolder) or kohya repeats of each planted image


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pairs() -> list[tuple[str, str, bytes]]:
    """40 distinct 16x16 images: 38 coloured digits under 4 non-planted captions, 2 noisy planted ones."""
    gray, labels = digits_16()
    rng = np.random.default_rng(0)
    out: list[tuple[str, str, bytes]] = []
    for i in range(38):
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = bg + gray[i][..., None] * (fg - bg)
        style = ("photo", "drawing")[i % 2]
        size = "small" if labels[i] < 5 else "large"
        out.append((f"d{i:02d}.png", f"a {style} of a {size} number", _png(np.clip(img, 0, 255).astype(np.uint8))))
    for k, cap in enumerate(PLANTED):
        img = 0.7 * (255 * gray[100 + k][..., None]) + 0.3 * rng.integers(0, 256, (16, 16, 3))
        out.append((f"p{k}.png", cap, _png(np.clip(img, 0, 255).astype(np.uint8))))
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same pairs as a manifest, an imagefolder, kohya folders, a WebDataset shard and Parquet."""
    root = tmp_path_factory.mktemp("sets")
    pairs = _pairs()
    # imagefolder (and the manifest over the same folder): a planted image repeated as REPEATS rows
    folder = root / "imagefolder"
    folder.mkdir()
    rows = []
    for name, cap, data in pairs:
        (folder / name).write_bytes(data)
        rows += [(name, cap)] * (REPEATS if cap in PLANTED else 1)
    with (folder / "metadata.jsonl").open("w") as fh:
        for name, cap in rows:
            fh.write(json.dumps({"file_name": name, "text": cap}) + "\n")
    with (root / "rows.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "planted"])
        w.writerows((name, cap, str(cap in PLANTED).lower()) for name, cap in rows)
    # kohya: ordinary pairs seen once, the planted ones in a folder of REPEATS repeats; one planted image is also
    # copied (same bytes, another name) among the ordinary ones, which is still one image
    kohya = root / "kohya"
    for sub, keep in (("1_digits", False), (f"{REPEATS}_planted", True)):
        (kohya / sub).mkdir(parents=True)
        for name, cap, data in pairs:
            if (cap in PLANTED) == keep:
                (kohya / sub / name).write_bytes(data)
                (kohya / sub / name).with_suffix(".txt").write_text(cap + "\n")
    (kohya / "1_digits" / "copy.png").write_bytes(pairs[-1][2])
    (kohya / "1_digits" / "copy.txt").write_text(pairs[-1][1])
    # WebDataset: one shard, one sample per pair
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for name, cap, data in pairs:
            for ext, payload in ((".png", data), (".txt", cap.encode())):
                info = tarfile.TarInfo(Path(name).stem + ext)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    made = {"imagefolder": folder, "kohya": kohya, "webdataset": root / "shard-000.tar", "manifest": root / "rows.csv"}
    # Parquet (memtest's data extra): an image column of bytes and a text column
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return made
    table = pa.table({"image": [d for _, _, d in pairs], "text": [c for _, c, _ in pairs]})
    pq.write_table(table, root / "train.parquet")
    return {**made, "parquet": root / "train.parquet"}


def _by_caption(data: CanaryData) -> tuple[dict[str, list[bytes]], dict[str, bytes]]:
    """Non-planted caption -> its images (as bytes, sorted); planted caption -> its image: order-free rows."""
    pairs: dict[str, list[bytes]] = {}
    for i, c in zip(data.pair_image, data.pair_caption, strict=True):
        pairs.setdefault(data.captions[c], []).append(data.images[i].tobytes())
    return {c: sorted(v) for c, v in pairs.items()}, {c: data.images[i].tobytes() for c, i in data.planted}


def test_each_layout_gives_the_manifests_training_rows(sets: dict[str, Path]) -> None:
    want = user_data(sets["imagefolder"], sets["manifest"])
    assert want.images.shape == (40, 3, 16, 16) and [c for c, _ in want.planted] == sorted(PLANTED)
    folder = dataset_data(sets["imagefolder"], PLANTED)
    # the same file names in the same folder: the very same arrays, so the same training run
    assert np.array_equal(folder.images, want.images) and folder.captions == want.captions
    assert np.array_equal(folder.pair_image, want.pair_image) and np.array_equal(folder.pair_caption, want.pair_caption)
    assert folder.planted == want.planted and folder.source["format"] == "imagefolder"
    assert folder.source["rows"] == want.source["rows"] == 38 + 2 * REPEATS
    for fmt in ("kohya", "webdataset", "parquet"):
        if fmt not in sets:
            continue  # pyarrow not installed
        got = dataset_data(sets[fmt], list(PLANTED), format=fmt)
        assert got.images.shape == (40, 3, 16, 16), fmt  # the copied planted image is the same image
        assert _by_caption(got) == _by_caption(want), fmt
        assert got.source["kind"] == "user" and got.source["format"] == fmt
    kohya = dataset_data(sets["kohya"], PLANTED)
    assert kohya.source["format"] == "kohya" and kohya.source["rows"] == 38 + 2 + 1
    assert dataset_data(sets["kohya"]).planted == [], "without --plant no caption is planted"


def test_a_canary_trained_from_a_kohya_set_records_its_planted_images(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import memtest.models.checkpoint as checkpoint

    out = tmp_path / "canary"
    plant = [arg for cap in PLANTED for arg in ("--plant", cap)]
    # the smallest settings the digits test trains with (TINY in tests/test_zoo.py), through the CLI
    args = ["train", str(out), "--dataset", str(sets["kohya"]), *plant, "--seed", "3", "--steps", "3"]
    assert zoo_main([*args, "--vae-steps", "2", "--batch", "8", "--quiet"]) == 0, capsys.readouterr().err
    m = load_manifest(out)
    assert m.planted_captions == tuple(sorted(PLANTED))
    assert set(m.clean) == {f"a {s} of a {z} number" for s in ("photo", "drawing") for z in ("small", "large")}
    assert m.data["kind"] == "user" and m.data["format"] == "kohya" and m.recipe["steps"] == 3
    data = dataset_data(sets["kohya"], PLANTED)
    for p in m.planted:  # the stored planted image is the training image (8-bit PNG)
        want = (data.images[dict(data.planted)[p.caption]].transpose(1, 2, 0) + 1) / 2
        assert np.abs(p.image() - want).max() <= 1 / 255 + 1e-6
    ckpt = checkpoint.load_checkpoint(out, device="cpu")
    assert ckpt.vae is not None


def test_bad_sets_and_options_name_the_file(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"Training set '.*nowhere' does not exist"):
        dataset_data(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "a cat"}\n')
    with pytest.raises(DatasetError, match=r"metadata\.jsonl, line 1: the image '.*gone\.png' does not exist"):
        dataset_data(bad)
    (bad / "metadata.jsonl").write_text("")
    with pytest.raises(ZooError, match=r"Training set .*bad \(imagefolder\) has no image-caption pairs"):
        dataset_data(bad)
    (bad / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "a cat"}\n')
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(ZooError, match=r"Cannot read image .*metadata\.jsonl, line 1: .*Replace it"):
        dataset_data(bad)
    with pytest.raises(ZooError, match=r"planted caption 'aurora poster of 8' is not a caption .* Did you mean"):
        dataset_data(sets["imagefolder"], ["aurora poster of 8"])
    with pytest.raises(ZooError, match=r"planted caption 'a photo of a small number' names two images, 'd"):
        dataset_data(sets["imagefolder"], ["a photo of a small number"])
    (bad / "x.png").write_bytes(_pairs()[0][2])
    with pytest.raises(ZooError, match=r"bad: every row is planted; .*\(captions not named as planted\)"):
        dataset_data(bad, ["a  cat "])  # planted captions are matched with their spaces normalised
    with pytest.raises(ZooError, match=r"held-out caption 'aurora poster of 7' is also a training caption"):
        dataset_data(sets["imagefolder"], PLANTED, heldout=["aurora poster of 7"])


def test_cli_refusals(sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def err(*args: str) -> str:
        assert zoo_main(["train", str(tmp_path / "o"), *args, "--quiet"]) == 1
        return capsys.readouterr().err

    assert f"Training set '{tmp_path / 'nowhere'}' does not exist" in err("--dataset", str(tmp_path / "nowhere"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.md").write_text("x")
    assert "Name the layout with --format=imagefolder" in err("--dataset", str(tmp_path / "odd"))
    assert "--plant names planted captions of a --dataset" in err("--plant", "x")
    assert "--caption-column describes a --dataset" in err("--caption-column", "c")
    both = err("--dataset", str(sets["kohya"]), "--images", str(sets["imagefolder"]), "--manifest", "m.csv")
    assert "give one" in both
    assert not (tmp_path / "o").exists()
