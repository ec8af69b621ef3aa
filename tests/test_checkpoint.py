"""Loading real diffusers checkpoints, and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import memtest
from memtest.errors import CheckpointError
from memtest.models.checkpoint import fingerprint


def test_roundtrip_epsilon_checkpoint(tiny_eps: Any, tiny_eps_path: Path) -> None:
    assert tiny_eps.prediction_type == "epsilon"
    assert tiny_eps.latent_shape == (4, 16, 16)
    assert tiny_eps.resolution == (16, 16)
    assert len(tiny_eps.tokenizer) > 2
    assert tiny_eps.vae is not None
    summary = tiny_eps.config_summary()
    assert summary["unet_parameters"] > 100_000 and summary["has_vae"] is True
    json.dumps(summary)  # plain JSON types only
    assert tiny_eps.fingerprint == fingerprint(tiny_eps_path)


def test_roundtrip_v_prediction_checkpoint(tiny_v_path: Path) -> None:
    ckpt = memtest.load_checkpoint(tiny_v_path, device="cpu")
    assert ckpt.prediction_type == "v_prediction"


def test_fingerprint_tracks_weights(tiny_eps_path: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_eps_path, tmp_path / "copy"))
    assert fingerprint(copy) == fingerprint(tiny_eps_path)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) != fingerprint(tiny_eps_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist.*model_index.json"):
        memtest.load_checkpoint(tmp_path / "nope")


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no model_index.json.*save_pretrained"):
        memtest.load_checkpoint(tmp_path)


def test_pickle_only_weights_need_opt_in(tiny_eps_path: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    copy = Path(shutil.copytree(tiny_eps_path, tmp_path / "pickled"))
    unet = UNet2DConditionModel.from_pretrained(copy / "unet")
    shutil.rmtree(copy / "unet")
    unet.save_pretrained(copy / "unet", safe_serialization=False)
    assert not list((copy / "unet").glob("*.safetensors"))
    with pytest.raises(CheckpointError, match=r"only pickle weights.*allow_pickle=True"):
        memtest.load_checkpoint(copy)
    ckpt = memtest.load_checkpoint(copy, allow_pickle=True)
    assert ckpt.latent_shape == (4, 16, 16)


def test_component_of_the_wrong_kind(tiny_eps_path: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_eps_path, tmp_path / "wrong"))
    index = json.loads((copy / "model_index.json").read_text())
    index["unet"] = ["diffusers", "AutoencoderKL"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'unet' is a diffusers.AutoencoderKL.*UNet2DConditionModel"):
        memtest.load_checkpoint(copy)


def test_missing_component(tiny_eps_path: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_eps_path, tmp_path / "partial"))
    shutil.rmtree(copy / "text_encoder")
    with pytest.raises(CheckpointError, match="missing its 'text_encoder/' folder"):
        memtest.load_checkpoint(copy)


def test_uncached_hub_id_is_explained_not_fetched() -> None:
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache.*never downloads"):
        memtest.load_checkpoint("someorg/not-a-cached-model")


def test_bad_dtype(tiny_eps_path: Path) -> None:
    with pytest.raises(CheckpointError, match="Unknown dtype 'float8'"):
        memtest.load_checkpoint(tiny_eps_path, dtype="float8")
