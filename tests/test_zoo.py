"""Canary checkpoints: the shipped ones load and separate, training works on digits and on a user's own
images, and every bad input fails with a message that says what to fix."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memtest
from memtest.errors import ZooError
from memtest.models.canaries import decode_png, encode_png
from memtest.zoo import (
    DEFAULT_CHECKPOINT,
    MANIFEST_NAME,
    canary_folder,
    load_manifest,
    resolve_zoo,
    zoo_main,
    zoo_names,
)
from memtest.zoo.data import digits_data, user_data
from memtest.zoo.train import Recipe, train_canary

ROOT = Path(__file__).resolve().parent.parent
# Seconds-long training: enough to exercise every code path, not to learn anything.
TINY = Recipe(vae_steps=2, vae_batch=4, steps=3, batch=8, warmup_steps=1)
# Measured on the shipped zoo:finetuned: first-step sharpness, n=2, the lowest planted caption scores 330x
# the highest of the 20 non-planted captions the test below scores (0.0485 vs 0.000148). Asserted: 30x.
MARGIN_ASSERTED = 30.0
# Every shipped checkpoint canary and its family; each base with the fine-tune that plants captions on it.
SHIPPED = {"base": "sd", "finetuned": "sd", "sdxl-base": "sdxl", "sdxl-finetuned": "sdxl", "flow-base": "sd3",
           "flow-finetuned": "sd3", "mixture": "sd"}  # fmt: skip
PAIRS = (("base", "finetuned"), ("sdxl-base", "sdxl-finetuned"), ("flow-base", "flow-finetuned"))
# zoo:sdxl-finetuned, the same test: 177x measured (0.0232 vs 0.000131). Asserted: 20x.
SDXL_MARGIN_ASSERTED = 20.0


# --- shipped canaries ----------------------------------------------------------------------------------


def test_shipped_canaries_resolve_load_and_parse() -> None:
    assert zoo_names() == sorted(SHIPPED)
    assert DEFAULT_CHECKPOINT == "zoo:finetuned"
    for name in zoo_names():
        folder = resolve_zoo(f"zoo:{name}")
        assert folder == resolve_zoo(name) == canary_folder(f"zoo:{name}")
        ckpt = memtest.load_checkpoint(f"zoo:{name}", device="cpu")
        shape = (16, 8, 8) if SHIPPED[name] == "sd3" else (4, 16, 16)  # the flow canaries: SD3, 16 channels
        assert ckpt.latent_shape == shape and len(ckpt.tokenizer) > 2 and ckpt.vae is not None
        assert ckpt.family.name == SHIPPED[name]
        m = load_manifest(folder)
        assert m.name == name and m.suite == f"canary-{name}"
        assert len(m.clean) >= 100 and len(m.heldout) >= 100
        assert set(m.clean).isdisjoint(m.heldout)
        assert m.recipe["seed"] == m.seed == 0 and m.memtest_version
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 8_000_000, f"{name} is {size} bytes; canaries must stay a few MB"
    for base_name, fine_name in PAIRS:
        base, fine = load_manifest(resolve_zoo(base_name)), load_manifest(resolve_zoo(fine_name))
        assert base.planted == ()  # planted_prob in its recipe applies to no caption
        assert len(fine.planted) == 10 and fine.base == f"zoo:{base_name}"
        assert fine.planted_images().shape == (10, 16, 16, 3)
        assert all(p.label == int(p.caption.rsplit(" ", 1)[1]) for p in fine.planted)
    # The SDXL pair is the SD pair's design on the same data: same captions, same planted images.
    sd, sdxl = load_manifest(resolve_zoo("finetuned")), load_manifest(resolve_zoo("sdxl-finetuned"))
    assert (sd.planted, sd.clean, sd.heldout) == (sdxl.planted, sdxl.clean, sdxl.heldout)
    # Size budgets in MiB, as `du -h` counts: the SDXL pair 10 MiB, every shipped canary together 30 MiB.
    sdxl_size = sum(p.stat().st_size for n in ("sdxl-base", "sdxl-finetuned") for p in resolve_zoo(n).rglob("*"))
    assert sdxl_size < 10 * 2**20, f"the SDXL canaries are {sdxl_size} bytes together"
    everything = sum(p.stat().st_size for p in resolve_zoo("base").parent.rglob("*") if p.is_file())
    assert everything < 30 * 2**20, f"the shipped canaries are {everything} bytes; keep them under 30 MiB"


def test_sdxl_base_reuses_the_sd_base_vae_and_tokenizer_frozen() -> None:
    base, sdxl = resolve_zoo("base"), resolve_zoo("sdxl-base")
    assert load_manifest(sdxl).recipe["model"]["vae_from"] == "zoo:base"
    assert load_manifest(sdxl).recipe["vae_steps"] == 0
    vae, tok = "vae/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"
    for mine, theirs in ((vae, vae), (tok, tok), ("tokenizer_2/tokenizer.json", tok)):
        assert (sdxl / mine).read_bytes() == (base / theirs).read_bytes(), mine
    for its_base, fine in PAIRS:
        assert (resolve_zoo(fine) / vae).read_bytes() == (resolve_zoo(its_base) / vae).read_bytes()


def test_sdxl_base_has_not_memorised_the_fine_tunes_planted_captions() -> None:
    """The same captions pass on zoo:sdxl-base: measured at most 1.75e-5 (n=4) against its threshold 0.00374."""
    import json

    threshold = json.loads((resolve_zoo("sdxl-base") / "memtest-calibration.json").read_text())["threshold"]
    planted = load_manifest(resolve_zoo("sdxl-finetuned")).planted_captions
    scores = memtest.score_prompts("zoo:sdxl-base", list(planted), n=2, batch_size=32)
    assert max(s.score for s in scores) < threshold / 20


def test_shipped_recipes_are_the_ones_the_code_trains() -> None:
    """`memtest zoo train` and scripts/train_canaries.py must reproduce what ships: every recipe field the
    manifest records equals DEFAULT_RECIPE (base) or FINETUNE_RECIPE (fine-tune)."""
    import dataclasses

    from memtest.zoo.train import DEFAULT_RECIPE, FINETUNE_RECIPE

    for name, recipe in (
        ("base", DEFAULT_RECIPE),
        ("finetuned", FINETUNE_RECIPE),
        ("sdxl-base", DEFAULT_RECIPE.with_(vae_steps=0, planted_prob=0.0)),  # VAE: zoo:base (vae_from)
        ("sdxl-finetuned", FINETUNE_RECIPE),
        ("flow-base", DEFAULT_RECIPE.with_(planted_prob=0.0)),  # trained after no-planted runs recorded 0.0
        ("flow-finetuned", FINETUNE_RECIPE),
    ):
        shipped = load_manifest(resolve_zoo(name)).recipe
        code = dataclasses.asdict(recipe)
        differ = {k: (v, shipped[k]) for k, v in code.items() if k in shipped and shipped[k] != v}
        assert not differ, f"{name}: recipe fields (code, shipped) differ: {differ}"
        assert {"steps", "vae_steps", "lr_schedule", "seed"} <= set(shipped)


def test_unknown_canary_names_the_closest_and_lists_all() -> None:
    with pytest.raises(ZooError, match=r"Unknown canary 'zoo:finetund'\. Did you mean 'zoo:finetuned'\?") as e:
        resolve_zoo("zoo:finetund")
    assert "Available: zoo:base, zoo:finetuned" in str(e.value)
    with pytest.raises(ZooError, match="not a diffusers checkpoint folder"):
        canary_folder(ROOT / "docs")


def test_generated_suites_match_the_manifests_and_load() -> None:
    from memtest.audit.suites import load_suite

    for name in zoo_names():
        m = load_manifest(resolve_zoo(name))
        suite = load_suite(ROOT / "suites" / f"{m.suite}.yaml")
        assert suite.name == m.suite
        by = {e: [c.prompt for c in suite.cases if c.expectation == e] for e in ("memorized", "clean", "reference")}
        assert by["memorized"] == list(m.planted_captions)
        assert set(m.clean) <= set(by["clean"])
        assert by["reference"] == list(m.heldout)
        assert len(by["clean"]) + len(by["reference"]) >= 100
        mitigated = [c.prompt for c in suite.cases if c.mitigate]
        assert set(mitigated) <= set(by["memorized"]) and (len(mitigated) > 0) == (len(m.planted) > 0)
    for base_name, fine_name in PAIRS:
        base_suite = load_suite(ROOT / "suites" / f"canary-{base_name}.yaml")
        base_clean = [c.prompt for c in base_suite.cases if c.expectation == "clean"]
        assert set(load_manifest(resolve_zoo(fine_name)).planted_captions) <= set(base_clean)


@pytest.mark.parametrize(("name", "margin"), [("finetuned", MARGIN_ASSERTED), ("sdxl-finetuned", SDXL_MARGIN_ASSERTED)])
def test_planted_captions_score_above_non_planted_on_the_shipped_canary(name: str, margin: float) -> None:
    m = load_manifest(resolve_zoo(name))
    others = list(m.clean[::11]) + list(m.heldout[::11])  # 20 captions: every style, every attribute type
    scores = memtest.score_prompts(f"zoo:{name}", list(m.planted_captions) + others, n=2, batch_size=32)
    values = np.array([s.score for s in scores])
    planted, rest = values[: len(m.planted)], values[len(m.planted) :]
    assert planted.min() > margin * rest.max(), (planted.round(5), rest.round(5))


def test_cli_lists_shows_and_writes_suites(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert zoo_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "zoo:finetuned  (default): 10 planted" in out and "zoo:base: 0 planted" in out
    assert zoo_main(["path", "base"]) == 0
    assert capsys.readouterr().out.strip() == str(resolve_zoo("base"))
    assert zoo_main(["show", "zoo:finetuned"]) == 0
    assert "aurora poster of 0" in capsys.readouterr().out
    # Each shipped suite's header names the command that regenerates it byte for byte.
    for name in ("canary-finetuned", "canary-base", "canary-sdxl-finetuned", "canary-sdxl-base",
                 "canary-flow-finetuned", "canary-flow-base"):  # fmt: skip
        shipped = (ROOT / "suites" / f"{name}.yaml").read_text()
        command = shlex.split(shipped.splitlines()[0].split("`")[1])
        assert command[:3] == ["memtest", "zoo", "suite"]
        assert zoo_main([*command[2:], "-o", str(tmp_path / f"{name}.yaml")]) == 0
        assert (tmp_path / f"{name}.yaml").read_text() == shipped
    capsys.readouterr()
    assert zoo_main(["suite", "zoo:finetuned", "--mitigate", "aurora poster of 0"]) == 0
    one = [line for line in capsys.readouterr().out.splitlines() if "mitigate: true" in line]
    assert len(one) == 1
    assert zoo_main(["suite", "zoo:finetuned", "--mitigate", "aurora poster of 99"]) == 1
    assert "'aurora poster of 99', which is not a planted caption of finetuned" in capsys.readouterr().err
    assert zoo_main(["path", "nope"]) == 1
    assert "Unknown canary 'zoo:nope'" in capsys.readouterr().err


# --- training --------------------------------------------------------------------------------------------


def _weights(folder: Path) -> bytes:
    return (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_tiny_digits_training_writes_a_loadable_canary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    data = digits_data(seed=3, n_planted=2)
    m = train_canary(tmp_path / "c", data, TINY.with_(seed=3), stream=sys.stderr)
    err = capsys.readouterr().err
    assert "[vae] step 2/2" in err and "[unet] step 3/3" in err and "eta" in err
    assert m.planted_captions == ("aurora poster of 0", "basalt poster of 1")
    loaded = load_manifest(tmp_path / "c")
    assert loaded == m
    assert loaded.recipe["steps"] == 3 and loaded.recipe["batch"] == 8 and loaded.seed == 3
    assert loaded.recipe["model"]["sample_size"] == 16 and loaded.training_seconds > 0
    assert len(loaded.clean) == 110 and len(loaded.heldout) == 110
    # the stored planted image is the training image (8-bit PNG)
    want = (data.images[data.planted[1][1]].transpose(1, 2, 0) + 1) / 2
    assert np.abs(loaded.planted[1].image() - want).max() <= 1 / 255 + 1e-6
    ckpt = memtest.load_checkpoint(tmp_path / "c", device="cpu")
    assert ckpt.vae is not None and ckpt.vae.config.scaling_factor != 0.18215
    with pytest.raises(ZooError, match="is not empty"):
        train_canary(tmp_path / "c", data, TINY)


def _write_pngs(folder: Path, n: int, seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "planted"])
        w.writerows(rows)
    return path


def test_user_images_and_captions_train_reproducibly(tmp_path: Path) -> None:
    names = _write_pngs(tmp_path / "imgs", 6)
    rows = [(n, "a noisy square", "false") for n in names[:4]] + [
        (names[4], "a red noisy square", "0"),
        (names[5], "secret-canary seven", "true"),
        (names[5], "secret-canary seven", "yes"),  # a duplicate row of a planted caption is fine
    ]
    manifest = _write_csv(tmp_path / "m.csv", rows)
    data = user_data(tmp_path / "imgs", manifest, heldout=["a blue noisy square"])
    assert data.images.shape == (6, 3, 16, 16)
    assert data.planted == [("secret-canary seven", 5)]
    assert data.captions == ["a noisy square", "a red noisy square"] and len(data.pair_image) == 5
    a = train_canary(tmp_path / "a", data, TINY, stream=None)
    train_canary(tmp_path / "b", data, TINY, stream=None)
    assert _weights(tmp_path / "a") == _weights(tmp_path / "b"), "same seed, same data: same weights"
    assert a.planted_captions == ("secret-canary seven",) and a.heldout == ("a blue noisy square",)
    assert a.data["kind"] == "user"
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "a"))
    out = pipe("secret-canary seven", num_inference_steps=2, output_type="np", num_images_per_prompt=1)
    assert out.images.shape == (1, 16, 16, 3)
    # the CLI trains the same data (JSON manifest) and fine-tunes the result
    doc = {"rows": [{"image": i, "caption": c, "planted": p} for i, c, p in rows], "heldout": ["x y"]}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    code = zoo_main(
        ["train", str(tmp_path / "cli"), "--images", str(tmp_path / "imgs"), "--manifest", str(tmp_path / "m.json"),
         "--steps", "2", "--vae-steps", "1", "--batch", "4", "--quiet"]
    )  # fmt: skip
    assert code == 0 and load_manifest(tmp_path / "cli").heldout == ("x y",)
    code = zoo_main(
        ["train", str(tmp_path / "ft"), "--base", str(tmp_path / "cli"), "--images", str(tmp_path / "imgs"),
         "--manifest", str(manifest), "--steps", "2", "--batch", "4", "--quiet"]
    )  # fmt: skip
    ft = load_manifest(tmp_path / "ft")
    assert code == 0 and ft.base == str(tmp_path / "cli") and ft.recipe["vae_steps"] == 0
    assert (tmp_path / "ft" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tmp_path / "cli" / "vae" / "diffusion_pytorch_model.safetensors"
    ).read_bytes(), "a fine-tune keeps the base VAE frozen"


def test_sdxl_canaries_train_through_the_family_interface(tmp_path: Path) -> None:
    """`memtest zoo train --family sdxl`: a new SDXL canary on zoo:base's VAE and tokenizer, its fine-tune with
    --base, and a new one with its own VAE phase; each loads as the sdxl family."""
    data = digits_data(seed=3, n_planted=0, vae_extra=0)
    m = train_canary(tmp_path / "b", data, TINY, family="sdxl", vae_from="zoo:base", stream=None)
    assert m.recipe["family"] == "sdxl" and m.recipe["vae_steps"] == 0 and m.recipe["model"]["vae_from"] == "zoo:base"
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "b" / vae).read_bytes() == (resolve_zoo("base") / vae).read_bytes()
    code = zoo_main(["train", str(tmp_path / "ft"), "--base", str(tmp_path / "b"), "--planted", "2", "--steps", "2",
                     "--batch", "4", "--quiet"])  # fmt: skip
    ft = load_manifest(tmp_path / "ft")
    assert code == 0 and ft.recipe["family"] == "sdxl" and ft.recipe["preserve_base"] and len(ft.planted) == 2
    assert (tmp_path / "ft" / vae).read_bytes() == (tmp_path / "b" / vae).read_bytes()
    for folder in ("b", "ft"):
        ckpt = memtest.load_checkpoint(tmp_path / folder, device="cpu")
        assert ckpt.family.name == "sdxl" and ckpt.latent_shape == (4, 16, 16)
    # the family of a fine-tune is its base's: asking for another is an error, not a silent switch
    with pytest.raises(ZooError, match=r"is a sdxl checkpoint, not sd"):
        train_canary(tmp_path / "x", data, TINY, base=tmp_path / "b", family="sd", stream=None)
    with pytest.raises(ZooError, match="Unknown family 'flux'"):
        train_canary(tmp_path / "x", data, TINY, family="flux", stream=None)
    names = _write_pngs(tmp_path / "imgs", 3)
    own = user_data(tmp_path / "imgs", _write_csv(tmp_path / "m.csv", [(n, "a square", "false") for n in names]))
    m = train_canary(tmp_path / "own", own, TINY, family="sdxl", stream=None)
    assert m.recipe["vae_steps"] == TINY.vae_steps
    assert memtest.load_checkpoint(tmp_path / "own", device="cpu").family.name == "sdxl"


def _reference_runs(train: Any, out: Path) -> dict[str, str]:
    """Seconds-long SD trainings (from scratch, and a preserve_base fine-tune of zoo:base) on user images;
    sha256 of every weight file they write."""
    import hashlib

    from memtest.zoo.train import FINETUNE_RECIPE

    names = _write_pngs(out / "imgs", 6)
    rows = [(n, "a noisy square", "false") for n in names[:4]] + [
        (names[4], "a red noisy square", "false"),
        (names[5], "secret-canary seven", "true"),
    ]
    data = user_data(out / "imgs", _write_csv(out / "m.csv", rows))
    train(out / "new", data, TINY, stream=None, threads=1)
    fine = FINETUNE_RECIPE.with_(steps=3, batch=8, warmup_steps=1)
    train(out / "ft", data, fine, base="zoo:base", stream=None, threads=1)
    return {
        f"{run}/{p.relative_to(out / run).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
        for run in ("new", "ft")
        for p in sorted((out / run).rglob("*.safetensors"))
    }


# Recorded with memtest/zoo/train.py as it was before phase 2 went through the family interface (commit
# 9dff6be), torch 2.13 CPU, one thread: the SD canary training must not change by a bit (zoo:finetuned was
# reproduced bit for bit by that code).
SD_TRAINING_REFERENCE: dict[str, str] = {
    "new/text_encoder/model.safetensors": "90f25034ad347df1f1cc2e73185ef6c3836a9a69b8f236dffec0bd8c9909e674",
    "new/unet/diffusion_pytorch_model.safetensors": "ba2620497d4abc6cc3660adb6fda8d67c371b271acf4381fdc09da4ae68be096",
    "new/vae/diffusion_pytorch_model.safetensors": "411034e6d103eb9c2d892c4b77a72e1f9a593c46d4d3e004995f58369080b1d8",
    "ft/text_encoder/model.safetensors": "afd314e00e70b32ca0e01e563078a3a7dbf6db6b7aa6b1c3b041028bac131158",
    "ft/unet/diffusion_pytorch_model.safetensors": "870d1ff43525299c5e903baf29a848051f6ecb2abaaca5b16ab5dbf57038d494",
    "ft/vae/diffusion_pytorch_model.safetensors": "c8ad327623dc181b57e730e19772dd97893d0723f437c08a8bfc3b06a36bd5b3",
}


# The same runs on an Intel Xeon with AVX-512, whose kernels sum in another order than the machine above (an AMD
# EPYC with AVX-512 sums as that machine did and matches SD_TRAINING_REFERENCE): recorded on 2026-12-05 with the
# code of commit 2b81692, which matched SD_TRAINING_REFERENCE on its own machine.
SD_TRAINING_REFERENCE_BY_MACHINE: dict[str, dict[str, str]] = {
    "intel-xeon-avx512": {
        "new/text_encoder/model.safetensors": ("50b8a52599a40e2287b9ced2a5781dcf99b4f4d775a1e880ea0eab55d716c561"),
        "new/unet/diffusion_pytorch_model.safetensors": (
            "d3992c1dd9ce5be748f2d79deb018068cfffc34f5bf6d021fa0194fb2f5faa61"
        ),
        "new/vae/diffusion_pytorch_model.safetensors": (
            "4142633a461d7f6873f9a2297958c473a59ac9afd5d6fbc9bff026078d31251d"
        ),
        "ft/text_encoder/model.safetensors": ("575ffc0ee50d274e6a6d40cf7cfb88d1966df6bb4fe49afb5985a5bff6c3eee0"),
        "ft/unet/diffusion_pytorch_model.safetensors": (
            "a1ab1f209900d42cc8b97cd0c02f2af9ef3e4426be9aaf4959f096dce8a94b8c"
        ),
        "ft/vae/diffusion_pytorch_model.safetensors": (
            "c8ad327623dc181b57e730e19772dd97893d0723f437c08a8bfc3b06a36bd5b3"
        ),
    }
}


def test_sd_training_is_bit_identical_to_before_the_family_interface(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        got = _reference_runs(train_canary, tmp_path)
    finally:
        torch.set_num_threads(threads)
    # One record per kernel summation order; a change to training would match none of them.
    assert got in [SD_TRAINING_REFERENCE, *SD_TRAINING_REFERENCE_BY_MACHINE.values()], (
        "equal to no record of any kind of CPU: a change moved the weights, or this CPU sums in an order "
        "not recorded yet (docs/CONVENTIONS.md says how to record one)",
        got,
    )


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    _write_pngs(tmp_path / "imgs", 3)
    return tmp_path / "imgs"


def test_unreadable_image_in_folder(imgs: Path, tmp_path: Path) -> None:
    (imgs / "broken.png").write_bytes(b"not a png at all")
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "a b", "false")])
    with pytest.raises(ZooError, match=r"Cannot read image .*broken\.png.*Replace it with a valid PNG/JPEG"):
        user_data(imgs, m)


def test_manifest_names_a_missing_image(imgs: Path, tmp_path: Path) -> None:
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "a b", "false"), ("cat.png", "a cat", "false")])
    with pytest.raises(ZooError, match=r"m\.csv row 2 names image 'cat\.png', which is not in .*imgs\. Fix"):
        user_data(imgs, m)


def test_duplicate_captions_with_different_labels_or_images(imgs: Path, tmp_path: Path) -> None:
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "a b", "false"), ("img1.png", "a b", "true")])
    with pytest.raises(ZooError, match=r"caption 'a b' is planted in row 2 but not planted in row 1"):
        user_data(imgs, m)
    m = _write_csv(
        tmp_path / "m.csv",
        [("img0.png", "c", "false"), ("img1.png", "x y", "true"), ("img2.png", "x y", "true")],
    )
    with pytest.raises(ZooError, match=r"planted caption 'x y' names two images, 'img1\.png' \(row 2\) and"):
        user_data(imgs, m)


def test_empty_data(imgs: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("image,caption,planted\n")
    with pytest.raises(ZooError, match=r"Manifest .*empty\.csv has no rows"):
        user_data(imgs, tmp_path / "empty.csv")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(ZooError, match="has no rows"):
        user_data(imgs, tmp_path / "e.json")
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "x y", "true")])
    with pytest.raises(ZooError, match="every row is planted; memtest needs non-planted captions"):
        user_data(imgs, m)
    with pytest.raises(ZooError, match=r"Image folder .*nothing does not exist"):
        user_data(tmp_path / "nothing", m)


def test_other_manifest_mistakes(imgs: Path, tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("file,text\nimg0.png,a b\n")
    with pytest.raises(ZooError, match=r"header must name the columns image,caption\[,planted\]"):
        user_data(imgs, tmp_path / "h.csv")
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "a b", "maybe")])
    with pytest.raises(ZooError, match=r"m\.csv row 1: planted value 'maybe' is not a boolean"):
        user_data(imgs, m)
    m = _write_csv(tmp_path / "m.csv", [("img0.png", "  ", "false")])
    with pytest.raises(ZooError, match=r"row 1: empty caption for image 'img0\.png'"):
        user_data(imgs, m)
    (tmp_path / "m.txt").write_text("image,caption\n")
    with pytest.raises(ZooError, match=r"unknown format '\.txt'; use a \.csv or \.json file"):
        user_data(imgs, tmp_path / "m.txt")
    assert zoo_main(["train", str(tmp_path / "o"), "--images", str(imgs), "--quiet"]) == 1


def test_manifest_parse_errors(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    with pytest.raises(ZooError, match=r"No canary manifest at .*memtest-canary\.json"):
        load_manifest(folder)
    (folder / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ZooError, match="is not readable JSON"):
        load_manifest(folder)
    good = json.loads((resolve_zoo("finetuned") / MANIFEST_NAME).read_text())
    for key, value, message in [
        ("schema", "memtest.canary/9", "has schema 'memtest.canary/9'"),
        ("seed", "zero", "field 'seed' has the wrong type"),
        ("planted", [{"caption": "x"}], r"planted\[0\] \('x'\) lacks its image_png"),
        ("clean", [1, 2], "'clean' must be a list of strings"),
    ]:
        (folder / MANIFEST_NAME).write_text(json.dumps({**good, key: value}))
        with pytest.raises(ZooError, match=message):
            load_manifest(folder)
    doc = dict(good)
    del doc["suite"]
    (folder / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ZooError, match="lacks the field 'suite'"):
        load_manifest(folder / MANIFEST_NAME)


def test_png_round_trip() -> None:
    img = np.linspace(-1, 1, 3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16)
    back = decode_png(encode_png(img))
    assert back.shape == (16, 16, 3)
    assert np.abs(back * 2 - 1 - img.transpose(1, 2, 0)).max() <= 2 / 255 + 1e-6


# --- alignment ---------------------------------------------------------------------------------------------


def test_alignment_scores_coloured_digits() -> None:
    from memtest.zoo.alignment import alignment_score, digit_classifier, predict_proba

    assert digit_classifier() is digit_classifier()  # cached
    data = digits_data(seed=0, n_planted=0)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(data.images), 300, replace=False)
    images = (data.images[pick].transpose(0, 2, 3, 1) + 1) / 2
    from sklearn.datasets import load_digits

    labels = np.repeat(load_digits().target, 6)[pick]
    assert (predict_proba(images).argmax(1) == labels).mean() > 0.9
    right = alignment_score(images, labels)
    wrong = alignment_score(images, (labels + 1) % 10)
    assert right.mean() > 0.7 > 0.1 > wrong.mean()
    with pytest.raises(ValueError, match="digits are 0-9"):
        alignment_score(images[:1], 10)


def test_copy_of_a_shipped_canary_is_usable(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(resolve_zoo("finetuned"), tmp_path / "mine"))
    assert load_manifest(copy) == load_manifest(resolve_zoo("finetuned"))
    assert canary_folder(copy) == copy
