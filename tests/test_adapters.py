"""LoRA adapters: `PATH[:SCALE]` parsing, loading diffusers/PEFT and kohya files through diffusers' own
loaders, scale 0 leaving the base bit for bit, the fingerprint of base + adapters, every bad adapter failing
closed with a message that names it, and the shipped `zoo:lora` canary memorising its planted captions."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import memtest
from memtest.errors import CheckpointError
from memtest.models.adapters import LoraSpec, adapters_fingerprint, apply_loras, declared_base, parse_lora

PROMPTS = ["zorblax poster of 3", "a photo of a red digit"]
# Measured on the shipped zoo:lora over zoo:base, first-step sharpness n=2: the lowest of the 10 planted
# captions scores 639x the highest of the 20 other captions below (0.0105 vs 1.64e-5) and 262x the highest
# planted caption on the base alone (4.0e-5). Asserted: 30x, as tests/test_zoo.py does for zoo:finetuned.
MARGIN_ASSERTED = 30.0


# --- building adapters -------------------------------------------------------------------------------------


def _pipeline(path: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _random_lora(pipe: Any, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any, Any]:
    """PEFT state dicts of a rank-4 UNet LoRA (alpha 8) and a rank-2 text-encoder LoRA with random B."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    text_cfg = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    torch.manual_seed(seed)
    unet = inject_adapter_in_model(unet_cfg, copy.deepcopy(pipe.unet))
    text = inject_adapter_in_model(text_cfg, copy.deepcopy(pipe.text_encoder))
    out = []
    for model in (unet, text):
        sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        for k in sd:
            if "lora_B" in k:
                sd[k] = torch.randn(sd[k].shape) * 0.2  # B starts at zero; a trained adapter's is not
        out.append(sd)
    return out[0], out[1], unet_cfg, text_cfg


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
    return path


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


@pytest.fixture(scope="module")
def loras(tiny_eps_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random adapter in diffusers/PEFT and kohya format, a second one, and a pickle copy."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya

    root = tmp_path_factory.mktemp("loras")
    pipe = _pipeline(tiny_eps_path)
    unet_sd, text_sd, unet_cfg, text_cfg = _random_lora(pipe, seed=0)
    StableDiffusionPipeline.save_lora_weights(
        str(root / "peft"),
        unet_lora_layers=unet_sd,
        text_encoder_lora_layers=text_sd,
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=text_cfg.to_dict(),
    )
    full = {**{f"unet.{k}": v for k, v in unet_sd.items()}, **{f"text_encoder.{k}": v for k, v in text_sd.items()}}
    kohya = {}
    for k, v in convert_state_dict_to_kohya(full).items():
        k = k.replace("lora_te1_", "lora_te_")  # SD 1.x kohya files name the one text encoder lora_te_
        kohya[k] = torch.tensor(8.0 if k.startswith("lora_unet") else 2.0) if k.endswith(".alpha") else v
    second_unet, _, _, _ = _random_lora(pipe, seed=1)
    StableDiffusionPipeline.save_lora_weights(str(root / "second"), unet_lora_layers=second_unet)
    torch.save(_load(root / "peft" / "pytorch_lora_weights.safetensors"), root / "peft.bin")
    return {
        "peft": root / "peft" / "pytorch_lora_weights.safetensors",
        "kohya": _save(kohya, root / "kohya.safetensors"),
        "second": root / "second" / "pytorch_lora_weights.safetensors",
        "pickle": root / "peft.bin",
        "root": root,
    }


def _outputs(pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    tok = pipe.tokenizer
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    x = torch.randn((len(PROMPTS), 4, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
        return emb, pipe.unet(x, 981, encoder_hidden_states=emb).sample


# --- parse_lora --------------------------------------------------------------------------------------------


def test_parse_lora_reads_path_and_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    colon = tmp_path / "with:colon"
    colon.mkdir()
    g = colon / "b:c.safetensors"
    g.write_bytes(b"x")
    assert parse_lora("a.safetensors") == LoraSpec(f, 1.0)
    assert parse_lora("a.safetensors:0.5") == LoraSpec(f, 0.5)
    assert parse_lora("a.safetensors:-1") == LoraSpec(f, -1.0)
    assert parse_lora("a.safetensors:1e-1") == LoraSpec(f, 0.1)
    assert parse_lora(f"{f}:-0").scale == 0.0 and math.copysign(1, parse_lora(f"{f}:-0").scale) == 1
    assert parse_lora(str(g)) == LoraSpec(g, 1.0)  # the last colon is followed by no number: part of the path
    assert parse_lora(f"{g}:2") == LoraSpec(g, 2.0)
    assert parse_lora(f) == LoraSpec(f, 1.0)
    assert parse_lora(LoraSpec(Path("a.safetensors"), 0.25)) == LoraSpec(f, 0.25)
    assert parse_lora(tmp_path / "with:colon") == LoraSpec(g, 1.0)  # a folder with one adapter file


def test_parse_lora_errors_name_the_adapter_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"LoRA adapter 'nope\.safetensors' does not exist .*PATH:SCALE"):
        parse_lora("nope.safetensors:0.5")
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    for bad in ("nan", "inf"):
        with pytest.raises(CheckpointError, match=r"has scale (nan|inf); give a finite number"):
            parse_lora(f"{f}:{bad}")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"holds a\.safetensors, b\.safetensors; memtest needs exactly one"):
        parse_lora(tmp_path)
    with pytest.raises(CheckpointError, match=r"LoRA adapter 'zoo:nope': Unknown canary"):
        parse_lora("zoo:nope")


# --- loading -----------------------------------------------------------------------------------------------


def test_peft_and_kohya_files_load_the_same_adapter(tiny_eps_path: Path, loras: dict[str, Path]) -> None:
    base = _outputs(_pipeline(tiny_eps_path))
    results = {}
    for fmt in ("peft", "kohya"):
        pipe = _pipeline(tiny_eps_path)
        (record,) = apply_loras(pipe, [parse_lora(loras[fmt])], allow_pickle=False)
        assert record["format"] == fmt and record["name"] == "memtest_0" and record["scale"] == 1.0
        assert record["rank"] == 4 and record["targets"] == ["unet", "text_encoder"] and record["modules"] == 32 + 8
        assert record["sha256"] == __import__("hashlib").sha256(loras[fmt].read_bytes()).hexdigest()
        assert all(not p.requires_grad for p in pipe.unet.parameters())
        results[fmt] = _outputs(pipe)
    for a, b, c in zip(results["peft"], results["kohya"], base, strict=True):
        assert torch.equal(a, b)  # kohya keys and alphas convert to exactly the PEFT adapter
        assert (a - c).abs().max() > 1e-3  # and the adapter does change the model


def test_scale_zero_leaves_the_base_bit_for_bit_and_scales_compose(tiny_eps_path: Path, loras: dict[str, Path]) -> None:
    base = _outputs(_pipeline(tiny_eps_path))
    pipe = _pipeline(tiny_eps_path)
    apply_loras(pipe, [LoraSpec(loras["peft"], 0.0), LoraSpec(loras["second"], 0.0)], allow_pickle=False)
    for a, b in zip(_outputs(pipe), base, strict=True):
        assert torch.equal(a, b)
    half = _pipeline(tiny_eps_path)
    records = apply_loras(half, [f"{loras['peft']}:0.5", str(loras["second"])], allow_pickle=False)
    assert [r["name"] for r in records] == ["memtest_0", "memtest_1"] and [r["scale"] for r in records] == [0.5, 1.0]
    assert records[1]["targets"] == ["unet"]
    assert not torch.equal(_outputs(half)[1], base[1])


def test_scale_zero_scores_like_the_base_but_is_another_subject(tiny_eps_path: Path, loras: dict[str, Path]) -> None:
    base = memtest.load_checkpoint(tiny_eps_path, device="cpu")
    zero = memtest.load_checkpoint(tiny_eps_path, device="cpu", loras=[f"{loras['peft']}:0"])
    one = memtest.load_checkpoint(tiny_eps_path, device="cpu", loras=[str(loras["peft"])])
    for method in ("fd", "jvp"):
        b, z = (memtest.score_prompts(c, PROMPTS, n=2, method=method) for c in (base, zero))
        assert [r.values for r in z] == [r.values for r in b]
    assert len({base.fingerprint, zero.fingerprint, one.fingerprint}) == 3
    # fd and jvp agree on base + adapter as they do on a plain checkpoint (PEFT layers under the lean JVP).
    fd, jvp = (memtest.score_prompts(one, PROMPTS, n=2, method=m) for m in ("fd", "jvp"))
    for a, b in zip(fd, jvp, strict=True):
        assert abs(a.score - b.score) / b.score < 0.01


def test_fingerprint_covers_adapter_bytes_and_scale(tmp_path: Path, loras: dict[str, Path]) -> None:
    base = "ab" * 32
    spec = LoraSpec(loras["peft"], 1.0)
    assert adapters_fingerprint(base, []) == base
    copy_ = tmp_path / "copy.safetensors"
    shutil.copy(loras["peft"], copy_)
    assert adapters_fingerprint(base, [spec]) == adapters_fingerprint(base, [LoraSpec(copy_, 1.0)])
    data = bytearray(copy_.read_bytes())
    data[-1] ^= 1
    copy_.write_bytes(bytes(data))
    values = {
        adapters_fingerprint(base, []),
        adapters_fingerprint(base, [spec]),
        adapters_fingerprint(base, [LoraSpec(spec.path, 0.0)]),
        adapters_fingerprint(base, [LoraSpec(spec.path, 0.5)]),
        adapters_fingerprint(base, [LoraSpec(copy_, 1.0)]),
        adapters_fingerprint("cd" * 32, [spec]),
        adapters_fingerprint(base, [spec, LoraSpec(loras["second"], 1.0)]),
        adapters_fingerprint(base, [LoraSpec(loras["second"], 1.0), spec]),
    }
    assert len(values) == 8


# --- failing closed ------------------------------------------------------------------------------------------


def _bad_files(loras: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    root = loras["root"] / "bad"
    root.mkdir(exist_ok=True)
    good, kohya = _load(loras["peft"]), _load(loras["kohya"])
    te = {k: v for k, v in good.items() if k.startswith("text_encoder.")}

    def moved(sd: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
        return {k.replace(old, new): v for k, v in sd.items()}

    widened = {
        k: torch.cat([v, v], 1) if k.startswith("text_encoder.") and "lora_A" in k else v for k, v in good.items()
    }
    (root / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    (root / "a.lora").write_bytes(b"x")
    cases: dict[str, tuple[Path, str]] = {
        "pickle": (loras["pickle"], r"is a pickle file \(\.bin\).*`allow_pickle=True`"),
        "suffix": (root / "a.lora", r"has the suffix '\.lora'; memtest loads LoRA adapters from \.safetensors"),
        "garbage": (root / "garbage.safetensors", r"is not a readable safetensors file"),
        "empty": (_save({}, root / "empty.safetensors"), r"is not a LoRA adapter: it holds no tensors"),
        "full model": (
            loras["root"].parent / "unet.safetensors",
            r"is not a LoRA adapter: it holds \d+ tensors, none of them LoRA weights",
        ),
        "some modules missing": (
            _save(moved(good, "down_blocks.1.", "down_blocks.7."), root / "some.safetensors"),
            r"does not fit this base: 8 of its 32 unet target modules are not in the base "
            r"\(e\.g\. 'down_blocks\.7\.attentions",
        ),
        "all modules missing": (
            _save({f"unet.nowhere.{k.split('.', 1)[1]}": v for k, v in good.items()}, root / "all.safetensors"),
            r"does not fit this base: .*not found in the base model",
        ),
        "kohya modules missing": (
            _save(moved(kohya, "down_blocks_1", "down_blocks_7"), root / "kohya-some.safetensors"),
            r"does not fit this base: 8 of its 32 unet target modules are not in the base",
        ),
        "shape mismatch": (
            _save({k: torch.cat([v, v], 1) if "attn2.to_k.lora_A" in k else v for k, v in good.items()},
                  root / "shape.safetensors"),
            r"does not fit this base: RuntimeError: .*size mismatch",
        ),
        "text encoder of another width": (
            _save(widened, root / "te-width.safetensors"),
            r"does not fit this base: RuntimeError",
        ),
        "second text encoder (SDXL) on SD": (
            _save({**good, **moved(te, "text_encoder.", "text_encoder_2.")}, root / "te2.safetensors"),
            r"has weights for 'text_encoder_2', which this StableDiffusionPipeline base does not have",
        ),
        "kohya te2 on SD": (
            _save({**kohya, **{k.replace("lora_te_", "lora_te2_"): v for k, v in kohya.items() if "lora_te_" in k}},
                  root / "kohya-te2.safetensors"),
            r"has weights for 'text_encoder_2'",
        ),
        "another component": (
            _save({**good, "vae.encoder.conv_in.lora_A.weight": torch.zeros(2, 3)}, root / "vae.safetensors"),
            r"has weights for 'vae'",
        ),
        "kohya LoHa": (
            _save({**kohya, "lora_unet_foo.hada_w1_a": torch.zeros(2, 2)}, root / "loha.safetensors"),
            r"is not a LoRA adapter diffusers can read: .*not been correctly renamed",
        ),
    }  # fmt: skip
    return cases


def test_every_bad_adapter_fails_closed_naming_it(tiny_eps_path: Path, loras: dict[str, Path]) -> None:
    shutil.copy(
        tiny_eps_path / "unet" / "diffusion_pytorch_model.safetensors", loras["root"].parent / "unet.safetensors"
    )
    pipe = _pipeline(tiny_eps_path)  # one pipeline throughout: each failure must leave it as it was
    base = _outputs(pipe)
    for label, (path, message) in _bad_files(loras).items():
        with pytest.raises(CheckpointError, match=message) as err:
            apply_loras(pipe, [LoraSpec(path), LoraSpec(loras["second"])], allow_pickle=False)
        assert str(path) in str(err.value), label
        # Never a partial load: the components are the base's again (nothing of the first adapter stays).
        assert pipe.get_list_adapters() in ({}, {"unet": [], "text_encoder": []}), label
        for a, b in zip(_outputs(pipe), base, strict=True):
            assert torch.equal(a, b), label
    # A pickle adapter loads with explicit consent, on the pipeline every failure above went through.
    (record,) = apply_loras(pipe, [LoraSpec(loras["pickle"])], allow_pickle=True)
    assert record["format"] == "peft" and record["modules"] == 40


def test_adapters_are_loaded_once_on_fresh_components(tiny_eps_path: Path, loras: dict[str, Path]) -> None:
    pipe = _pipeline(tiny_eps_path)
    apply_loras(pipe, [LoraSpec(loras["second"])], allow_pickle=False)
    with pytest.raises(CheckpointError, match=r"already has LoRA adapters \(memtest_0\)"):
        apply_loras(pipe, [LoraSpec(loras["peft"])], allow_pickle=False)
    assert apply_loras(pipe, [], allow_pickle=False) == []


def test_sdxl_pipeline_loads_unet_and_both_text_encoder_adapters(tmp_path: Path) -> None:
    from memtest.zoo import tiny

    if not hasattr(tiny, "build_sdxl_pipeline"):
        pytest.skip("no tiny SDXL builder in memtest.zoo.tiny")
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = tiny.build_sdxl_pipeline(["a photo of a digit", "zorblax poster of 3"] * 4, tiny.TinyConfig(with_vae=False))
    torch.manual_seed(0)
    cfg = LoraConfig(
        r=2, lora_alpha=2, target_modules=["to_q", "to_v", "q_proj", "v_proj"], init_lora_weights="gaussian"
    )
    parts = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = inject_adapter_in_model(cfg, copy.deepcopy(getattr(pipe, comp)))
        parts[comp] = {f"{comp}.{k}": v.detach() for k, v in get_peft_model_state_dict(model).items()}
    f = _save({k: v for sd in parts.values() for k, v in sd.items()}, tmp_path / "sdxl.safetensors")
    (record,) = apply_loras(pipe, [LoraSpec(f)], allow_pickle=False)
    assert record["targets"] == ["unet", "text_encoder", "text_encoder_2"]
    sd1_only = _save({k: v for k, v in parts["unet"].items()}, tmp_path / "unet-only.safetensors")
    wrong = _save(
        {k.replace("unet.", "unet.nowhere."): v for k, v in parts["unet"].items()}, tmp_path / "w.safetensors"
    )
    fresh = tiny.build_sdxl_pipeline(["a photo of a digit"] * 4, tiny.TinyConfig(with_vae=False))
    assert apply_loras(fresh, [LoraSpec(sd1_only)], allow_pickle=False)[0]["targets"] == ["unet"]
    with pytest.raises(CheckpointError, match="does not fit this base"):
        apply_loras(
            tiny.build_sdxl_pipeline(["a"] * 4, tiny.TinyConfig(with_vae=False)), [LoraSpec(wrong)], allow_pickle=False
        )


# --- the shipped LoRA canary ------------------------------------------------------------------------------


def test_shipped_lora_canary_resolves_and_names_its_base() -> None:
    from memtest.zoo import load_manifest, resolve_zoo

    spec = parse_lora("zoo:lora")
    assert spec.path == resolve_zoo("zoo:lora") / "pytorch_lora_weights.safetensors"
    assert parse_lora("zoo:lora:0.5") == LoraSpec(spec.path, 0.5)
    assert declared_base(spec) == "zoo:base"
    m = load_manifest(spec.path.parent)
    assert m.name == "lora" and m.suite == "canary-lora" and len(m.planted) == 10
    # `memtest zoo train OUT --base zoo:base --lora-rank 8` reproduces what ships: the recipe in code is the manifest's.
    import dataclasses

    from memtest.zoo.lora import DEFAULT_RANK, LORA_RECIPE, TEXT_TARGETS, UNET_TARGETS

    differ = {k: (v, m.recipe[k]) for k, v in dataclasses.asdict(LORA_RECIPE).items() if m.recipe.get(k, v) != v}
    assert not differ, f"recipe fields (code, shipped) differ: {differ}"
    assert m.recipe["lora"]["rank"] == m.recipe["lora"]["alpha"] == DEFAULT_RANK
    assert m.recipe["lora"]["unet_targets"] == list(UNET_TARGETS)
    assert m.recipe["lora"]["text_encoder_targets"] == list(TEXT_TARGETS)
    assert spec.path.stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match=r"'zoo:lora' is a LoRA adapter, not a checkpoint: load it on zoo:base"):
        memtest.load_checkpoint("zoo:lora", device="cpu")


def test_shipped_lora_suite_matches_its_manifest_and_regenerates(tmp_path: Path) -> None:
    import shlex

    from memtest.audit.suites import load_suite
    from memtest.zoo import load_manifest, resolve_zoo, zoo_main

    shipped = Path(__file__).resolve().parent.parent / "suites" / "canary-lora.yaml"
    m = load_manifest(resolve_zoo("zoo:lora"))
    suite = load_suite(shipped)
    by = {e: [c.prompt for c in suite.cases if c.expectation == e] for e in ("memorized", "clean", "reference")}
    assert suite.name == m.suite and by["memorized"] == list(m.planted_captions)
    assert by["clean"] == list(m.clean) and by["reference"] == list(m.heldout)
    assert {c.prompt for c in suite.cases if c.mitigate} == {"aurora poster of 0", "dune poster of 3"}
    command = shlex.split(shipped.read_text().splitlines()[0].split("`")[1])
    assert command[:4] == ["memtest", "zoo", "suite", "zoo:lora"]
    assert zoo_main([*command[2:], "-o", str(tmp_path / "again.yaml")]) == 0
    assert (tmp_path / "again.yaml").read_text() == shipped.read_text()


def test_shipped_lora_memorises_its_planted_captions_and_the_base_does_not() -> None:
    from memtest.zoo import load_manifest, resolve_zoo

    m = load_manifest(resolve_zoo("zoo:lora"))
    others = list(m.clean[::11]) + list(m.heldout[::11])  # 20 captions: every style, every attribute type
    prompts = list(m.planted_captions) + others
    ckpt = memtest.load_checkpoint("zoo:base", device="cpu", loras=["zoo:lora"])
    values = np.array([s.score for s in memtest.score_prompts(ckpt, prompts, n=2, batch_size=32)])
    planted, rest = values[: len(m.planted)], values[len(m.planted) :]
    assert planted.min() > MARGIN_ASSERTED * rest.max(), (planted.round(5), rest.round(5))
    base = memtest.load_checkpoint("zoo:base", device="cpu")
    on_base = np.array([s.score for s in memtest.score_prompts(base, list(m.planted_captions), n=2, batch_size=32)])
    assert on_base.max() * MARGIN_ASSERTED < planted.min(), (on_base.round(5), planted.round(5))


def test_zoo_train_lora_rank_writes_an_adapter_that_loads_on_its_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`memtest zoo train OUT --base zoo:base --lora-rank R` on a user's images: only the adapter and its
    manifest are written, the manifest names the base, and memtest loads the adapter on it."""
    import csv

    from PIL import Image

    from memtest.zoo import load_manifest, zoo_main

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        rows = [["image", "caption", "planted"], ["0.png", "a square", "false"], ["1.png", "a square", "false"]]
        csv.writer(fh).writerows([*rows, ["2.png", "secret-canary seven", "true"]])
    out = tmp_path / "my-lora"
    argv = ["train", str(out), "--images", str(tmp_path / "imgs"), "--manifest", str(tmp_path / "m.csv"),
            "--base", "zoo:base", "--lora-rank", "2", "--steps", "2", "--batch", "4", "--quiet"]  # fmt: skip
    assert zoo_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["memtest-canary.json", "pytorch_lora_weights.safetensors"]
    m = load_manifest(out)
    assert m.base == "zoo:base" and m.planted_captions == ("secret-canary seven",)
    assert m.recipe["lora"]["rank"] == 2 and m.recipe["steps"] == 2 and m.recipe["preserve_base"] is True
    assert declared_base(parse_lora(out)) == "zoo:base"
    ckpt = memtest.load_checkpoint("zoo:base", device="cpu", loras=[str(out)])
    assert ckpt.adapters[0]["rank"] == 2 and ckpt.adapters[0]["targets"] == ["unet", "text_encoder"]
    assert zoo_main(["show", str(out)]) == 0
    assert "a rank-2 LoRA adapter (pytorch_lora_weights.safetensors) on zoo:base" in capsys.readouterr().out
    assert zoo_main(["train", str(tmp_path / "x"), "--lora-rank", "2"]) == 1
    assert "--lora-rank trains an adapter on a base checkpoint: add --base" in capsys.readouterr().err
    assert zoo_main(["train", str(tmp_path / "x"), "--base", "zoo:base", "--lora-rank", "2", "--family", "sd"]) == 1
    assert "drop --family and --vae-from" in capsys.readouterr().err
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert zoo_main(["train", str(tmp_path / "x"), *argv[2:6], "--base", str(xl), "--lora-rank", "2", "--quiet"]) == 1
    assert "LoRA canaries train on Stable Diffusion 1.x/2.x bases" in capsys.readouterr().err
