"""Stable Diffusion XL: a text-time UNet, two CLIP encoders, a DDPM noise schedule (FAMILIES.md §1).

Conditioning follows `StableDiffusionXLPipeline.encode_prompt`: the penultimate hidden states of both
encoders, concatenated; the pooled (projected) output of the second; `add_time_ids` =
(original size, crop top-left, target size) at the scoring resolution. The unconditional branch is zeros
when the pipeline's `force_zeros_for_empty_prompt` is set (the default), else the embedding of "".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.models.families.base import Component, Cond, Family
from memtest.models.families.sd import tokenize

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint

_REFINER = (
    "memtest audits SDXL's text-to-image base pipeline (StableDiffusionXLPipeline); refiner, img2img and "
    "inpainting pipelines start from an image, not from noise, so first-step sharpness does not apply. "
    "Audit the base checkpoint the pipeline refines."
)


class StableDiffusionXL(Family):
    name: ClassVar[str] = "sdxl"
    title: ClassVar[str] = "Stable Diffusion XL"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    refused: ClassVar[dict[str, str]] = {
        "StableDiffusionXLImg2ImgPipeline": _REFINER,
        "StableDiffusionXLInpaintPipeline": _REFINER,
        "StableDiffusionXLInstructPix2PixPipeline": _REFINER,
    }
    components: ClassVar[tuple[Component, ...]] = (
        Component("unet", "diffusers", ("UNet2DConditionModel",)),
        Component("text_encoder", "transformers", ("CLIPTextModel", "CLIPTextModelWithProjection")),
        Component("text_encoder_2", "transformers", ("CLIPTextModelWithProjection",)),
        Component("tokenizer", "transformers", ("CLIPTokenizer", "CLIPTokenizerFast"), weights=False),
        Component("tokenizer_2", "transformers", ("CLIPTokenizer", "CLIPTokenizerFast"), weights=False),
        Component("scheduler", "diffusers", (), weights=False),
        Component("vae", "diffusers", ("AutoencoderKL", "AutoencoderTiny"), required=False),
    )
    embedding_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "pooled_prompt_embeds")
    pipeline_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "pooled_prompt_embeds")  # time_ids: call_options

    def force_zeros(self, ckpt: Checkpoint) -> bool:
        return bool(ckpt.model_index.get("force_zeros_for_empty_prompt", True))

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"family": self.name, "force_zeros_for_empty_prompt": self.force_zeros(ckpt)}

    def summary(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": self.force_zeros(ckpt), "add_time_ids": self.time_ids(ckpt)}

    def time_ids(self, ckpt: Checkpoint) -> list[int]:
        """(original h, w, crop top, left, target h, w): the pipeline's defaults at the scoring resolution."""
        h, w = ckpt.resolution
        return [h, w, 0, 0, h, w]

    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        c = ckpt.components
        return {
            "input_ids": tokenize(c["tokenizer"], prompts, ckpt.device),
            "input_ids_2": tokenize(c["tokenizer_2"], prompts, ckpt.device),
        }

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        hidden = []
        pooled: torch.Tensor | None = None
        for key, enc_name in (("input_ids", "text_encoder"), ("input_ids_2", "text_encoder_2")):
            out = ckpt.components[enc_name](ids[key], output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the pipeline's rule: the projected pooled output
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        assert pooled is not None  # text_encoder_2 is a CLIPTextModelWithProjection (checked at load)
        time_ids = torch.tensor([self.time_ids(ckpt)], dtype=hidden[0].dtype, device=ckpt.device)
        return {
            "prompt_embeds": torch.cat(hidden, dim=-1),
            "pooled_prompt_embeds": pooled,
            "time_ids": time_ids.expand(len(ids["input_ids"]), -1),
        }

    def drop_condition(self, ckpt: Checkpoint, cond: Cond, dropped: torch.Tensor) -> Cond:
        if not self.force_zeros(ckpt):
            return cond
        keep = (~dropped).to(cond["prompt_embeds"].dtype)
        return {
            "prompt_embeds": cond["prompt_embeds"] * keep.view(-1, 1, 1),
            "pooled_prompt_embeds": cond["pooled_prompt_embeds"] * keep.view(-1, 1),
            "time_ids": cond["time_ids"],
        }

    def unconditional(self, ckpt: Checkpoint, empty: Cond) -> Cond:
        if self.force_zeros(ckpt):
            return {k: (v if k == "time_ids" else torch.zeros_like(v)) for k, v in empty.items()}
        return empty

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        added = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["time_ids"]}
        out: torch.Tensor = ckpt.unet(
            x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added, return_dict=False
        )[0]
        return out

    def pipeline_options(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": self.force_zeros(ckpt), "add_watermarker": False}

    def call_options(self, ckpt: Checkpoint, guidance_scale: float) -> dict[str, Any]:
        h, w = ckpt.resolution  # the micro-conditions add_time_ids holds (time_ids)
        return {**super().call_options(ckpt, guidance_scale), "original_size": (h, w), "target_size": (h, w)}
