"""Stable Diffusion 1.x / 2.x: a UNet, one CLIP text encoder, a DDPM noise schedule (SPEC.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.models.families.base import Component, Cond, Family

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint


def tokenize(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length, as the diffusers pipelines pad them."""
    ids: torch.Tensor = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


class StableDiffusion(Family):
    name: ClassVar[str] = "sd"
    title: ClassVar[str] = "Stable Diffusion 1.x/2.x"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    refused: ClassVar[dict[str, str]] = {
        name: "memtest audits text-to-image pipelines only; load the text-to-image checkpoint this pipeline "
        "was made from (StableDiffusionPipeline) instead."
        for name in (
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
            "StableDiffusionUpscalePipeline",
            "StableDiffusionDepth2ImgPipeline",
        )
    }
    components: ClassVar[tuple[Component, ...]] = (
        Component("unet", "diffusers", ("UNet2DConditionModel",)),
        Component("text_encoder", "transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
        Component("tokenizer", "transformers", ("CLIPTokenizer", "CLIPTokenizerFast"), weights=False),
        Component("scheduler", "diffusers", (), weights=False),
        Component("vae", "diffusers", ("AutoencoderKL", "AutoencoderTiny"), required=False),
    )

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {}  # the first family: calibrations made before families existed carry no family key

    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        return {"input_ids": tokenize(ckpt.tokenizer, prompts, ckpt.device)}

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        return {"prompt_embeds": ckpt.text_encoder(ids["input_ids"])[0]}

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        out: torch.Tensor = ckpt.unet(x, t, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]
        return out

    def pipeline_options(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
