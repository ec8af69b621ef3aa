"""Strict component loading (memtest.models.loading) on real tiny diffusers/transformers components.

Each broken copy is made from the tiny checkpoint of conftest.py by editing its real weights files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from memtest.errors import CheckpointError

UNET = ("UNet2DConditionModel",)
VAE = ("AutoencoderKL",)
TEXT = ("CLIPTextModel", "CLIPTextModelWithProjection")
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors"}
WEIGHTS["text_encoder"] = "model.safetensors"


def _classes() -> dict[str, tuple[Any, tuple[str, ...]]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {"unet": (UNet2DConditionModel, UNET), "vae": (AutoencoderKL, VAE), "text_encoder": (CLIPTextModel, TEXT)}


def load(folder: Path, component: str, **kwargs: Any) -> Any:
    from memtest.models.loading import load_component

    cls, expected = _classes()[component]
    kwargs.setdefault("allow_pickle", False)
    return load_component(folder, component, cls, expected=expected, **kwargs)


def copy_component(src: Path, dst_root: Path, component: str, *, as_name: str | None = None) -> Path:
    shutil.copytree(src / component, dst_root / (as_name or component))
    return dst_root / (as_name or component)


def edit_weights(path: Path, edit: Any) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def same_weights(a: Any, b: Any) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.fixture(scope="module")
def reference(tiny_eps_path: Path) -> dict[str, Any]:
    """The tiny checkpoint's components as plain from_pretrained loads them."""
    return {c: cls.from_pretrained(str(tiny_eps_path / c)) for c, (cls, _) in _classes().items()}


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_a_complete_component_loads_the_same_weights(
    tiny_eps_path: Path, reference: dict[str, Any], component: str, capfd: pytest.CaptureFixture[str]
) -> None:
    model = load(tiny_eps_path, component)
    assert type(model).__name__ in _classes()[component][1]
    assert same_weights(model, reference[component])
    err = capfd.readouterr().err
    assert "accelerate" not in err and "Loading weights" not in err and "%|" not in err  # a quiet console


def test_missing_tensors_fail_instead_of_loading_uninitialised(
    tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    sub = copy_component(tiny_eps_path, tmp_path, "unet")
    dropped = sorted(reference["unet"].state_dict())[:3]
    edit_weights(sub / WEIGHTS["unet"], lambda s: [s.pop(k) for k in dropped])
    # What memtest guards against: diffusers itself loads this folder, with three tensors never loaded.
    from diffusers import UNet2DConditionModel

    _, info = UNet2DConditionModel.from_pretrained(str(sub), output_loading_info=True)
    assert sorted(info["missing_keys"]) == dropped

    with pytest.raises(CheckpointError) as err:
        load(tmp_path, "unet")
    msg = str(err.value)
    assert msg.startswith("Component 'unet' does not match its class")
    assert "lack 3 tensor(s) UNet2DConditionModel needs" in msg
    assert all(k in msg for k in dropped)
    assert "save_pretrained" in msg and "\n" not in msg


def test_missing_text_encoder_tensor(tiny_eps_path: Path, tmp_path: Path) -> None:
    sub = copy_component(tiny_eps_path, tmp_path, "text_encoder")
    edit_weights(sub / WEIGHTS["text_encoder"], lambda s: s.pop("final_layer_norm.weight"))
    with pytest.raises(CheckpointError, match=r"lack 1 tensor\(s\) CLIPTextModel needs \(final_layer_norm.weight\)"):
        load(tmp_path, "text_encoder")


@pytest.mark.parametrize("component", ["unet", "text_encoder"])
def test_unexpected_tensors_fail(tiny_eps_path: Path, tmp_path: Path, component: str) -> None:
    import torch

    sub = copy_component(tiny_eps_path, tmp_path, component)
    edit_weights(
        sub / WEIGHTS[component], lambda s: s.update({"extra.weight": torch.zeros(3), "lora.up": torch.ones(2)})
    )
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, component)
    cls = _classes()[component][1][0]
    assert f"hold 2 tensor(s) {cls} does not use (extra.weight, lora.up)" in str(err.value)
    assert f"Component '{component}'" in str(err.value)


def test_many_keys_are_cut_to_the_first_few(tiny_eps_path: Path, tmp_path: Path) -> None:
    import torch

    sub = copy_component(tiny_eps_path, tmp_path, "unet")
    edit_weights(sub / WEIGHTS["unet"], lambda s: s.update({f"extra.{i:02d}": torch.zeros(1) for i in range(12)}))
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, "unet")
    msg = str(err.value)
    assert "hold 12 tensor(s)" in msg and "extra.04, ... (7 more)" in msg and "extra.05" not in msg


def test_shape_mismatch_fails_with_both_shapes(tiny_eps_path: Path, tmp_path: Path) -> None:
    import torch

    sub = copy_component(tiny_eps_path, tmp_path, "unet")
    edit_weights(sub / WEIGHTS["unet"], lambda s: s.update({"conv_in.bias": torch.zeros(33)}))
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, "unet")
    assert "have 1 tensor(s) of the wrong shape (conv_in.bias is [33] in the file, [32] in the model)" in str(err.value)


def test_a_config_of_another_class_fails_before_loading(tiny_eps_path: Path, tmp_path: Path) -> None:
    copy_component(tiny_eps_path, tmp_path, "vae", as_name="unet")  # a VAE where the UNet belongs
    with pytest.raises(CheckpointError) as err:
        load(tmp_path, "unet")
    msg = str(err.value)
    assert f"Component 'unet' in '{tmp_path / 'unet'}' is AutoencoderKL" in msg
    assert "memtest needs UNet2DConditionModel there (config.json `_class_name`)" in msg
    assert "model_index.json" in msg

    copy_component(tiny_eps_path, tmp_path, "unet", as_name="text_encoder")
    with pytest.raises(CheckpointError, match=r"is of no class \(config.json has no architectures\)"):
        load(tmp_path, "text_encoder")


def test_sharded_weights_load_strictly(tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    from memtest.models.loading import find_weights

    sub = tmp_path / "unet"
    reference["unet"].save_pretrained(str(sub), max_shard_size="200KB")
    weights = find_weights(tmp_path, "unet", allow_pickle=False)
    assert weights.index is not None and len(weights.files) > 2
    assert same_weights(load(tmp_path, "unet"), reference["unet"])

    index = json.loads((sub / "diffusion_pytorch_model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    key = next(k for k, f in sorted(index["weight_map"].items()) if f == last)
    index["weight_map"][key] = sorted(set(index["weight_map"].values()))[0]
    (sub / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"names 1 tensor\(s\) its shard does not hold \({key}\)"):
        load(tmp_path, "unet")

    (sub / last).unlink()
    with pytest.raises(CheckpointError, match=rf"names 1 shard file\(s\) that are not in .*{last}"):
        load(tmp_path, "unet")


def test_a_sharded_checkpoint_missing_tensors_fails(
    tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    sub = tmp_path / "unet"
    reference["unet"].save_pretrained(str(sub), max_shard_size="200KB")
    index_path = sub / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    gone = sorted(k for k, f in index["weight_map"].items() if f == first)
    (sub / first).unlink()
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if f != first}
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"lack {len(gone)} tensor\(s\) UNet2DConditionModel needs"):
        load(tmp_path, "unet")


def test_variant_weights(tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    import copy

    from memtest.models.loading import find_weights

    half = {c: copy.deepcopy(reference[c]).half() for c in ("unet", "text_encoder")}
    for c in half:
        half[c].save_pretrained(str(tmp_path / c), variant="fp16")
    assert [p.name for p in (tmp_path / "unet").glob("*.safetensors")] == ["diffusion_pytorch_model.fp16.safetensors"]
    for c in half:
        assert find_weights(tmp_path, c, allow_pickle=False).variant == "fp16"
        assert same_weights(load(tmp_path, c), half[c])  # the only weights there: the fp16 variant

    with pytest.raises(CheckpointError, match=r"has no 'bf16' variant weights \(it has: fp16\)"):
        load(tmp_path, "unet", variant="bf16")
    reference["unet"].save_pretrained(str(tmp_path / "unet"))  # plain weights beside the variant: plain wins
    assert find_weights(tmp_path, "unet", allow_pickle=False).variant is None
    (tmp_path / "unet" / WEIGHTS["unet"]).unlink()
    copy.deepcopy(reference["unet"]).bfloat16().save_pretrained(str(tmp_path / "unet"), variant="bf16")
    with pytest.raises(CheckpointError, match=r"several weight variants \(bf16, fp16\) and no plain weights"):
        load(tmp_path, "unet")
    assert same_weights(load(tmp_path, "unet", variant="fp16"), half["unet"])


def test_pickle_weights_need_the_opt_in(tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    import torch

    sub = copy_component(tiny_eps_path, tmp_path, "text_encoder")
    (sub / WEIGHTS["text_encoder"]).unlink()
    torch.save(reference["text_encoder"].state_dict(), sub / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"has only pickle weights \(pytorch_model.bin\).*allow_pickle=True"):
        load(tmp_path, "text_encoder")
    assert same_weights(load(tmp_path, "text_encoder", allow_pickle=True), reference["text_encoder"])
    state = reference["text_encoder"].state_dict()
    state.pop("final_layer_norm.bias")
    torch.save(state, sub / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin in .* lack 1 tensor"):  # strict for pickle too
        load(tmp_path, "text_encoder", allow_pickle=True)


def test_unreadable_files(tiny_eps_path: Path, tmp_path: Path) -> None:
    sub = copy_component(tiny_eps_path, tmp_path, "unet")
    weights = sub / WEIGHTS["unet"]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"is not a readable safetensors file .* truncated or corrupt"):
        load(tmp_path, "unet")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"has no weights in .*diffusion_pytorch_model.safetensors"):
        load(tmp_path, "unet")
    (sub / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json' is not valid JSON"):
        load(tmp_path, "unet")


def test_legacy_key_names_load_as_their_library_renames_them(
    tiny_eps_path: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    """Old CLIP files carry a `text_model.` prefix and the position_ids buffer; old VAEs use query/key/value."""
    import torch

    te = copy_component(tiny_eps_path, tmp_path, "text_encoder")

    def old_clip(state: dict[str, Any]) -> None:
        old = {f"text_model.{k}": state.pop(k) for k in list(state)}
        state.update(old, **{"text_model.embeddings.position_ids": torch.arange(16)[None]})

    edit_weights(te / WEIGHTS["text_encoder"], old_clip)
    assert same_weights(load(tmp_path, "text_encoder"), reference["text_encoder"])

    vae = copy_component(tiny_eps_path, tmp_path, "vae")
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def old_attention(state: dict[str, Any]) -> None:
        for k in [k for k in state if ".attentions." in k]:
            new = k
            for a, b in names.items():
                new = new.replace(f".{a}.", f".{b}.")
            state[new] = state.pop(k)
        assert any(".query." in k for k in state)

    edit_weights(vae / WEIGHTS["vae"], old_attention)
    assert same_weights(load(tmp_path, "vae"), reference["vae"])


def test_tied_weights_are_not_missing(tmp_path: Path) -> None:
    """T5's encoder embedding is tied to `shared`: the file holds it once, and that is complete."""
    from transformers import T5Config, T5EncoderModel

    from memtest.models.loading import load_component

    model = T5EncoderModel(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    model.save_pretrained(str(tmp_path / "text_encoder_3"))
    loaded = load_component(
        tmp_path, "text_encoder_3", T5EncoderModel, expected=("T5EncoderModel",), allow_pickle=False
    )
    assert same_weights(loaded, model)
