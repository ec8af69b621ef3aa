"""Stable Diffusion 1.x / 2.x: a UNet, one CLIP text encoder, a DDPM noise schedule (SPEC.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.errors import CheckpointError
from memtest.models.families.base import Component, Cond, Family

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint


def tokenize(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length, as the diffusers pipelines pad them."""
    ids: torch.Tensor = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


def ddim_pipeline_call(
    pipe: Any, ckpt: Checkpoint, latents: torch.Tensor, guidance_scale: float, num_inference_steps: int, **kwargs: Any
) -> Any:
    """Run a diffusers pipeline with DDIM from the checkpoint's own schedule (the scorer's sampler, so the
    first step is the one the detector looks at) from given initial latents; images (n, H, W, 3) in [0, 1]."""
    import numpy as np
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(ckpt.scheduler.config)
    sigma0 = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
    with torch.no_grad():
        out = pipe(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=int(latents.shape[0]),
            # the pipeline multiplies given latents by init_noise_sigma; ours already carry it
            latents=(latents.detach() / sigma0).to(ckpt.device, ckpt.dtype),
            output_type="np",
            **kwargs,
        )
    return np.asarray(out.images, dtype=np.float32)


def need_vae(ckpt: Checkpoint) -> None:
    if ckpt.vae is None:
        raise CheckpointError(
            f"Checkpoint {ckpt.name} has no VAE, so it cannot decode images; scoring works without "
            "one, but generation and mitigation images need a `vae/` folder."
        )


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

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: int, cond: Cond) -> torch.Tensor:
        out: torch.Tensor = ckpt.unet(x, t, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]
        return out

    def pipeline(self, ckpt: Checkpoint) -> Any:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=ckpt.vae,
            text_encoder=ckpt.text_encoder,
            tokenizer=ckpt.tokenizer,
            unet=ckpt.unet,
            scheduler=ckpt.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(
        self,
        ckpt: Checkpoint,
        latents: torch.Tensor,
        *,
        prompt: str | None,
        cond: Cond | None,
        guidance_scale: float,
        num_inference_steps: int,
    ) -> Any:
        need_vae(ckpt)
        kwargs: dict[str, Any] = {}
        if cond is not None:
            kwargs["prompt_embeds"] = cond["prompt_embeds"].detach().to(ckpt.device, ckpt.dtype)
            with torch.no_grad():
                kwargs["negative_prompt_embeds"] = self.encode(ckpt, [""])["prompt_embeds"].to(ckpt.dtype)
        else:
            kwargs["prompt"] = prompt
        return ddim_pipeline_call(self.pipeline(ckpt), ckpt, latents, guidance_scale, num_inference_steps, **kwargs)
