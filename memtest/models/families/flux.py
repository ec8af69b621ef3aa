"""Flux.1 (dev, schnell): an MMDiT + single-stream transformer on packed 2x2 latents, CLIP pooled + T5, flow
matching with a dynamic shift (FAMILIES.md §1-2).

Conditioning follows `FluxPipeline.encode_prompt` at its defaults: the CLIP text model's pooled output and
T5's last hidden state padded to `max_sequence_length` = 512 tokens. Latents are (C, H, W) everywhere in
memtest; the family packs them into the transformer's (H/2 · W/2, 4C) tokens with the pipeline's image
position ids inside `forward` and unpacks the velocity, so the metric's x is the pipeline's unpacked latent.

Flux-dev is guidance-distilled: the pipeline's `guidance_scale` (3.5 by default) enters the transformer as an
embedding, and its sampler steps with the conditional velocity alone (no classifier-free guidance unless
`true_cfg_scale` > 1). memtest does the same: the unconditional branch is the empty prompt at the same
guidance value (it has no trained null condition), the sampler's Euler steps use the conditional velocity, and
the embedded guidance is the family's `guidance` (recorded in the identity), not the CFG scale setting.
The schedule is the pipeline's: sigmas linspace(1, 1/N, N), shifted by mu = calculate_shift(image sequence
length) from the scheduler's config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from memtest.models.families.base import Component, Cond
from memtest.models.families.flow import FlowFamily, latent_side
from memtest.models.families.sd3 import pad_ids

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint

#: FluxPipeline's `default_sample_size` (latent side without a VAE to read the image size from).
DEFAULT_LATENT_SIDE = 128


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 · W/2, 4C) tokens, as `FluxPipeline._pack_latents`."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack` for latents of side h x w, as `FluxPipeline._unpack_latents`."""
    b, _, ch = tokens.shape
    x = tokens.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (H/2 · W/2, 3) of the packed tokens, as `FluxPipeline._prepare_latent_image_ids`."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape((h // 2) * (w // 2), 3).to(device=device, dtype=dtype)


class Flux(FlowFamily):
    name: ClassVar[str] = "flux"
    title: ClassVar[str] = "Flux.1"
    pipelines: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    refused: ClassVar[dict[str, str]] = {
        name: "memtest audits text-to-image pipelines only (first-step sharpness starts from noise); audit the "
        "FluxPipeline checkpoint this pipeline was made from."
        for name in ("FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline", "FluxKontextPipeline")
    }
    components: ClassVar[tuple[Component, ...]] = (
        Component("transformer", "diffusers", ("FluxTransformer2DModel",)),
        Component("text_encoder", "transformers", ("CLIPTextModel",)),
        Component("text_encoder_2", "transformers", ("T5EncoderModel",)),
        Component("tokenizer", "transformers", ("CLIPTokenizer", "CLIPTokenizerFast"), weights=False),
        Component("tokenizer_2", "transformers", ("T5TokenizerFast", "T5Tokenizer"), weights=False),
        Component("scheduler", "diffusers", (), weights=False),
        Component("vae", "diffusers", ("AutoencoderKL",), required=False),
    )
    embedding_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "pooled_prompt_embeds")
    #: T5 tokens, the pipeline's default `max_sequence_length`.
    max_sequence_length: ClassVar[int] = 512
    #: The embedded guidance of guidance-distilled checkpoints (FluxPipeline's default `guidance_scale`).
    guidance: ClassVar[float] = 3.5

    def guidance_value(self, ckpt: Checkpoint) -> float | None:
        """The embedded guidance, or None for checkpoints without a guidance embedding (schnell)."""
        return self.guidance if bool(ckpt.denoiser.config.guidance_embeds) else None

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {
            "family": self.name,
            "guidance": self.guidance_value(ckpt),
            "max_sequence_length": self.max_sequence_length,
        }

    def summary(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"guidance": self.guidance_value(ckpt), "max_sequence_length": self.max_sequence_length}

    def latent_shape(self, ckpt: Checkpoint) -> tuple[int, int, int]:
        channels = int(ckpt.denoiser.config.in_channels) // 4
        vae = ckpt.components.get("vae")
        if vae is None or vae.config.get("sample_size") is None:
            return (channels, DEFAULT_LATENT_SIDE, DEFAULT_LATENT_SIDE)
        size = vae.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        scale = int(2 ** (len(vae.config.block_out_channels) - 1))
        return (channels, latent_side(h, scale, 2), latent_side(w, scale, 2))

    def schedule(self, ckpt: Checkpoint, num_inference_steps: int) -> dict[str, Any]:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = ckpt.scheduler.config
        _, h, w = self.latent_shape(ckpt)
        mu = calculate_shift(
            (h // 2) * (w // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        out: dict[str, Any] = {"mu": float(mu), "cfg": False}
        if not cfg.get("use_flow_sigmas", False):
            out["sigmas"] = [float(s) for s in np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)]
        return out

    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        c = ckpt.components
        return {
            "input_ids": pad_ids(c["tokenizer"], prompts, int(c["tokenizer"].model_max_length), ckpt.device),
            "input_ids_2": pad_ids(c["tokenizer_2"], prompts, self.max_sequence_length, ckpt.device),
        }

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        c = ckpt.components
        pooled = c["text_encoder"](ids["input_ids"], output_hidden_states=False).pooler_output
        return {"prompt_embeds": c["text_encoder_2"](ids["input_ids_2"])[0], "pooled_prompt_embeds": pooled}

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        """`t` is σ · 1000 as the pipeline passes it: one float, or one per row."""
        b, _, h, w = x.shape
        if isinstance(t, torch.Tensor):
            timestep = t.to(device=x.device, dtype=x.dtype).reshape(-1).expand(b)
        else:
            timestep = torch.full((b,), t, dtype=x.dtype, device=x.device)
        guidance = self.guidance_value(ckpt)
        prompt_embeds = cond["prompt_embeds"]
        out: torch.Tensor = ckpt.denoiser(
            hidden_states=pack(x),
            timestep=timestep / 1000,
            guidance=None if guidance is None else torch.full((b,), guidance, dtype=torch.float32, device=x.device),
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=prompt_embeds,
            txt_ids=prompt_embeds.new_zeros(prompt_embeds.shape[1], 3),
            img_ids=image_ids(h, w, x.device, x.dtype),
            return_dict=False,
        )[0]
        return unpack(out, h, w)

    # -- generation: the embedded guidance is the family's (`guidance_scale`, a CFG scale, does not apply: the
    # pipeline steps with the conditional velocity, and takes no unconditional branch); latents are packed
    negative_conditioning: ClassVar[bool] = False

    def call_options(self, ckpt: Checkpoint, guidance_scale: float) -> dict[str, Any]:
        options = super().call_options(ckpt, guidance_scale)
        return {**options, "guidance_scale": self.guidance, "max_sequence_length": self.max_sequence_length}

    def pipeline_latents(self, ckpt: Checkpoint, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        return super().pipeline_latents(ckpt, pipe, pack(latents))
