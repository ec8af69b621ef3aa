"""Single-file (original-format) checkpoints: a tiny SD 1.x folder rewritten in the LDM layout loads through
diffusers' `from_single_file` with the folder as its configs, to the same tensors and the same scores; a file
with a tensor too many or too few, a LoRA, a VAE alone, a pickle, or no configs is refused with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- a writer of the original (CompVis LDM / A1111) layout, from the layout itself ------------------------
_RESNET = {  # diffusers ResnetBlock2D -> LDM ResBlock (UNet)
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    head, _, leaf = key.rpartition(".")
    for new, old in table.items():
        if head == new or head.startswith(new + "."):
            return old + head[len(new) :] + "." + leaf
    return key


def ldm_unet(unet: Any) -> dict[str, Any]:
    """UNet2DConditionModel -> `model.diffusion_model.*` (openaimodel.UNetModel's names)."""
    cfg = unet.config
    per = cfg.layers_per_block + 1  # LDM input blocks per level: the resnets, then a downsampler
    levels = len(cfg.block_out_channels)
    out: dict[str, Any] = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        if key.startswith("time_embedding.linear_"):
            new = f"time_embed.{2 * (int(parts[1][-1]) - 1)}.{parts[2]}"
        elif key.startswith("add_embedding.linear_"):  # SDXL: the pooled text + size/crop embedding
            new = f"label_emb.0.{2 * (int(parts[1][-1]) - 1)}.{parts[2]}"
        elif parts[0] == "conv_in":
            new = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "conv_norm_out":
            new = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            new = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(i + 1) * per}.0.op.{rest.removeprefix('conv.')}"
            else:
                slot = 0 if kind == "resnets" else 1
                body = _rename(rest, _RESNET) if kind == "resnets" else rest
                new = f"input_blocks.{1 + i * per + j}.{slot}.{body}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * j}.{_rename(rest, _RESNET)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            has_attn = "CrossAttn" in cfg.up_block_types[i]
            if kind == "upsamplers":
                new = f"output_blocks.{i * per + per - 1}.{2 if has_attn else 1}.{rest}"
            else:
                slot = 0 if kind == "resnets" else 1
                body = _rename(rest, _RESNET) if kind == "resnets" else rest
                new = f"output_blocks.{i * per + j}.{slot}.{body}"
        else:
            raise AssertionError(f"unmapped UNet key {key}")
        out["model.diffusion_model." + new] = value
    assert levels == len(cfg.up_block_types)
    return out


def ldm_vae(vae: Any) -> dict[str, Any]:
    """AutoencoderKL -> `first_stage_model.*` (ldm.modules.diffusionmodules.model's Encoder/Decoder)."""
    levels = len(vae.config.block_out_channels)
    out: dict[str, Any] = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[2]}"
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{side}.mid.attn_1.{_rename(rest, _VAE_ATTN)}"
                if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        elif parts[1] in ("down_blocks", "up_blocks"):
            i, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
            level = i if side == "encoder" else levels - 1 - i  # the decoder counts its levels upward
            stage = "down" if side == "encoder" else "up"
            if kind in ("downsamplers", "upsamplers"):
                new = f"{side}.{stage}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.{rest}"
            else:
                new = f"{side}.{stage}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        else:
            raise AssertionError(f"unmapped VAE key {key}")
        out["first_stage_model." + new] = value
    return out


def ldm_clip(text_encoder: Any) -> dict[str, Any]:
    """CLIPTextModel -> `cond_stage_model.transformer.text_model.*` (the HF CLIP inside LDM's FrozenCLIPEmbedder)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        inner = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + inner] = value
    return out


_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}  # fmt: skip


def ldm_openclip(encoder: Any, prefix: str) -> dict[str, Any]:
    """CLIPTextModel(WithProjection) -> OpenCLIP's names (SD 2's encoder, SDXL's second): q/k/v stacked into
    in_proj, the projection stored transposed (width x embed)."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out: dict[str, Any] = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T
    for layer in range(encoder.config.num_hidden_layers):
        head = f"encoder.layers.{layer}."
        for leaf in ("weight", "bias"):
            qkv = [state.pop(f"{head}self_attn.{x}_proj.{leaf}") for x in "qkv"]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat(qkv)
        for key in [k for k in state if k.startswith(head)]:
            out[f"transformer.resblocks.{layer}.{_rename(key[len(head) :], _OPENCLIP)}"] = state.pop(key)
    assert not state, f"unmapped OpenCLIP keys {sorted(state)}"
    return {prefix + k: v for k, v in out.items()}


def ldm_state(ckpt: Any) -> dict[str, Any]:
    """A loaded tiny SD checkpoint's weights in the original layout (one state dict, as one file holds them)."""
    c = ckpt.components
    state = {**ldm_unet(c["unet"]), **ldm_vae(c["vae"])}
    if "text_encoder_2" in c:  # SDXL (sgm's conditioner): CLIP-L as in SD 1.x, the second encoder as OpenCLIP
        clip = ldm_clip(c["text_encoder"])
        state.update({k.replace("cond_stage_model.", "conditioner.embedders.0.", 1): v for k, v in clip.items()})
        state.update(ldm_openclip(c["text_encoder_2"], "conditioner.embedders.1.model."))
    else:
        state.update(ldm_clip(c["text_encoder"]))
    return {k: v.detach().contiguous() for k, v in state.items()}


def save(state: dict[str, Any], target: Path) -> Path:
    from safetensors.torch import save_file

    save_file(state, str(target))
    return target


@pytest.fixture(scope="module")
def ldm(tiny_eps: Any) -> dict[str, Any]:
    return ldm_state(tiny_eps)


@pytest.fixture(scope="module")
def single(ldm: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(ldm, tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def _refused(path: Path, match: str, **kwargs: Any) -> str:
    import memtest
    from memtest.errors import CheckpointError

    with pytest.raises(CheckpointError, match=match) as info:
        memtest.load_checkpoint(path, device="cpu", **kwargs)
    return str(info.value)


def test_single_file_loads_the_same_tensors_and_scores_as_its_folder(
    single: Path, tiny_eps: Any, tiny_eps_path: Path
) -> None:
    import torch

    import memtest
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.locate import file_sha256, fingerprint
    from memtest.models.single_file import classify

    info = classify(single)
    assert (info.model_type, info.family) == ("v1", "sd")  # the family, from the tensors' names alone
    folder = tiny_eps
    ckpt = memtest.load_checkpoint(single, device="cpu", config=tiny_eps_path)
    assert ckpt.family.name == "sd" and ckpt.path == single.resolve()
    for name in ("unet", "text_encoder", "vae"):
        a, b = folder.components[name].state_dict(), ckpt.components[name].state_dict()
        assert a.keys() == b.keys(), name
        unequal = [k for k in a if not torch.equal(a[k], b[k])]
        assert not unequal, (name, unequal[:3])
    # The file's own bytes identify it (folders keep their fingerprint over relative paths and bytes).
    assert ckpt.fingerprint == file_sha256(single) == fingerprint(single) != folder.fingerprint
    prompts = ["a photo of a red digit", "zorblax poster of 3"]
    settings = ScoreSettings(n=1)
    from_folder = [r.score for r in Scorer(folder, settings).score(prompts)]
    from_file = [r.score for r in Scorer(ckpt, settings).score(prompts)]
    assert from_file == from_folder


def test_a_tensor_too_many_or_too_few_is_refused_with_its_name(
    ldm: dict[str, Any], tiny_eps_path: Path, tmp_path: Path
) -> None:
    import torch

    extra = save({**ldm, "model.diffusion_model.extra_head.weight": torch.ones(3)}, tmp_path / "extra.safetensors")
    text = _refused(extra, "no component of the Stable Diffusion 1.x/2.x model uses", config=tiny_eps_path)
    assert "model.diffusion_model.extra_head.weight" in text
    # An extra tensor inside a block the conversion maps whole becomes a key the UNet does not have.
    inside = save(
        {**ldm, "model.diffusion_model.input_blocks.1.0.extra.weight": torch.ones(3)}, tmp_path / "in.safetensors"
    )
    text = _refused(inside, "does not use", config=tiny_eps_path)
    assert "down_blocks.0.resnets.0.extra.weight" in text
    state = dict(ldm)
    del state["model.diffusion_model.out.2.bias"]
    text = _refused(save(state, tmp_path / "missing.safetensors"), "lacks 1 tensor", config=tiny_eps_path)
    assert "conv_out.bias" in text and "unet" in text
    # diffusers would fill a text encoder the file lacks from the config folder: memtest refuses.
    no_clip = save({k: v for k, v in ldm.items() if not k.startswith("cond_stage_model.")}, tmp_path / "n.safetensors")
    _refused(no_clip, "holds no weights for the text_encoder", config=tiny_eps_path)


def test_what_an_a1111_file_holds_besides_weights_is_checked_not_dropped(
    ldm: dict[str, Any], tiny_eps: Any, tiny_eps_path: Path, tmp_path: Path
) -> None:
    """A real SD 1.5 file also holds LDM's noise schedule, EMA counters and CLIP's position ids: the schedule must
    be the base scheduler's, the rest changes no output."""
    import torch
    from diffusers import DDIMScheduler

    import memtest

    sched = DDIMScheduler.from_pretrained(tiny_eps_path / "scheduler")
    schedule = {"alphas_cumprod": sched.alphas_cumprod.clone(), "betas": sched.betas.clone()}
    extras = {
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(16)[None],
    }
    ok = save({**ldm, **schedule, **extras}, tmp_path / "schedule.safetensors")
    ckpt = memtest.load_checkpoint(ok, device="cpu", config=tiny_eps_path)
    a, b = tiny_eps.unet.state_dict(), ckpt.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The VAE is optional, as in a folder: a pruned file without one loads without one (never the base's).
    no_vae = save({k: v for k, v in ldm.items() if not k.startswith("first_stage_model.")}, tmp_path / "nv.safetensors")
    assert memtest.load_checkpoint(no_vae, device="cpu", config=tiny_eps_path).vae is None
    other = save({**ldm, "alphas_cumprod": torch.linspace(0.99, 0.01, 1000)}, tmp_path / "other.safetensors")
    _refused(other, "another noise schedule", config=tiny_eps_path)


def test_lora_vae_alone_and_pickle_files_are_refused_with_the_reason(ldm: dict[str, Any], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "style-lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 4),
        },
        str(lora),
    )
    assert "lora" in _refused(lora, "is a LoRA adapter, not a checkpoint")
    vae = save({k: v for k, v in ldm.items() if k.startswith("first_stage_model.")}, tmp_path / "vae.safetensors")
    _refused(vae, "holds a VAE alone")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm}, str(ckpt))
    _refused(ckpt, r"is a pickle \(\.ckpt\).*allow_pickle")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2)}, str(unknown))
    _refused(unknown, "not a single-file checkpoint of a family memtest audits")


def test_a_trusted_pickle_loads_when_allowed(ldm: dict[str, Any], tiny_eps_path: Path, tmp_path: Path) -> None:
    import torch

    import memtest

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm}, str(path))
    ckpt = memtest.load_checkpoint(path, device="cpu", config=tiny_eps_path, allow_pickle=True)
    assert ckpt.family.name == "sd"


def test_without_configs_the_error_names_the_option(
    single: Path, tiny_eps_path: Path, tiny_sdxl_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    text = _refused(single, "never downloads")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in text  # the base diffusers would have fetched
    assert "`config=BASE_FOLDER`" in text  # the option, spelled by each front end (--memtest-config, --config)
    _refused(single, "not a diffusers folder", config=tmp_path)
    _refused(single, "is a Stable Diffusion XL folder", config=tiny_sdxl_path)
    _refused(tiny_eps_path, "is for single-file checkpoints", config=tiny_eps_path)


def test_the_option_reaches_both_front_ends(single: Path, tiny_eps_path: Path) -> None:
    from memtest.audit import OPTION_NAMES, Subject, config_from_values
    from memtest.models.locate import file_sha256

    assert "config" in OPTION_NAMES
    cfg = config_from_values({"checkpoint": str(single), "config": str(tiny_eps_path)})
    assert cfg.config == str(tiny_eps_path)
    subject = Subject(cfg)
    assert subject.folder == single.resolve() and subject.fingerprint() == file_sha256(single)


def test_memtest_audit_gates_a_single_file_like_its_folder(
    single: Path, gate_env: dict[str, Any], tmp_path: Path
) -> None:
    """`memtest audit --checkpoint FILE --config BASE` through the normal path: the folder's calibration (another
    fingerprint, so accepted as the base's) gives every case the outcome it gives the folder."""
    import json

    from memtest.cli import main
    from memtest.models.locate import file_sha256

    out = tmp_path / "results.json"
    argv = ["audit", "-q", "--checkpoint", str(single), "--config", str(gate_env["checkpoint"]),
            "--suite", str(gate_env["suite"]), "--calibration", str(gate_env["calibration"]),
            "--accept-base-calibration", "--n", "1", "--confirm", "off", "--fail-on", "flag", "--cache-dir", "none",
            "--json", str(out), "--report", str(tmp_path / "report.html")]  # fmt: skip
    main(argv)
    cases = {c["id"].split("::")[-1]: c for c in json.loads(out.read_text(encoding="utf-8"))["cases"]}
    assert {k: c["outcome"] for k, c in cases.items()} == gate_env["expected"]
    assert {k: c["score"] for k, c in cases.items()} == gate_env["scores"]
    assert file_sha256(single) in out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL folder whose two text encoders differ in width (as CLIP-L and OpenCLIP-bigG do), which is how
    diffusers tells them apart in a single file."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from memtest.zoo.tiny import (
        TinyConfig,
        build_scheduler,
        build_text_encoder,
        build_tokenizer,
        build_vae,
        save_pipeline,
    )

    cfg = TinyConfig()
    torch.manual_seed(0)
    tokenizer = build_tokenizer(["a photo of a red digit", "zorblax poster of 3"] * 4, cfg.vocab_size, cfg.max_length)
    text_encoder = build_text_encoder(cfg, tokenizer)
    wide = {"hidden_size": 48, "intermediate_size": 96, "projection_dim": 40}
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**text_encoder.config.to_dict(), **wide}))
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48, attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=40 + 6 * 8,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=build_vae(cfg), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=build_scheduler(cfg), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )  # fmt: skip
    return save_pipeline(pipe, tmp_path_factory.mktemp("xl") / "tiny-xl")


def test_an_sdxl_single_file_loads_the_same_tensors_and_scores_as_its_folder(tiny_xl: Path, tmp_path: Path) -> None:
    import torch

    import memtest
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.single_file import classify

    folder = memtest.load_checkpoint(tiny_xl, device="cpu")
    state = ldm_state(folder)
    path = save({**state, "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6)}, tmp_path / "xl.safetensors")
    assert (classify(path).model_type, classify(path).family) == ("xl_base", "sdxl")
    ckpt = memtest.load_checkpoint(path, device="cpu", config=tiny_xl)
    assert ckpt.family.name == "sdxl"
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        a, b = folder.components[name].state_dict(), ckpt.components[name].state_dict()
        assert a.keys() == b.keys(), name
        assert not [k for k in a if not torch.equal(a[k], b[k])], name
    prompts = ["a photo of a red digit", "zorblax poster of 3"]
    settings = ScoreSettings(n=1)
    assert [r.score for r in Scorer(ckpt, settings).score(prompts)] == [
        r.score for r in Scorer(folder, settings).score(prompts)
    ]
    # The second encoder's layers are all used: one left out is refused by its converted name.
    dropped = {k: v for k, v in state.items() if k != "conditioner.embedders.1.model.transformer.resblocks.1.ln_2.bias"}
    text = _refused(save(dropped, tmp_path / "xl-missing.safetensors"), "lacks 1 tensor", config=tiny_xl)
    assert "text_encoder_2" in text and "layer_norm2.bias" in text


def test_an_sd2_style_openclip_file_loads_like_its_folder(tiny_v_path: Path, tmp_path: Path) -> None:
    """SD 2 keeps its text encoder in OpenCLIP's names (`cond_stage_model.model.*`) with a projection and logit
    scale diffusers leaves out by design: they are accounted for, everything else must be used."""
    import torch

    import memtest

    folder = memtest.load_checkpoint(tiny_v_path, device="cpu")
    c = folder.components
    state = {**ldm_unet(c["unet"]), **ldm_vae(c["vae"]), **ldm_openclip(c["text_encoder"], "cond_stage_model.model.")}
    unused = {
        "cond_stage_model.model.text_projection": torch.ones(32, 32),
        "cond_stage_model.model.logit_scale": torch.tensor(4.6),
    }
    path = save({**state, **unused}, tmp_path / "sd2.safetensors")
    ckpt = memtest.load_checkpoint(path, device="cpu", config=tiny_v_path)
    for name in ("unet", "text_encoder", "vae"):
        a, b = c[name].state_dict(), ckpt.components[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # The same encoder with a layer the base's config does not have is refused, not truncated.
    extra = {k.replace("resblocks.1.", "resblocks.2."): v.clone() for k, v in state.items() if ".resblocks.1." in k}
    text = _refused(save({**state, **extra}, tmp_path / "sd2-deeper.safetensors"), "does not use", config=tiny_v_path)
    assert "encoder.layers.2." in text
