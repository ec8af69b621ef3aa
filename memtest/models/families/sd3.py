"""Stable Diffusion 3 / 3.5: an MMDiT transformer, CLIP-L + CLIP-G (+ optional T5), flow matching (FAMILIES.md).

Conditioning follows `StableDiffusion3Pipeline.encode_prompt` at its defaults: the penultimate hidden states of
both CLIP encoders, concatenated and zero-padded to T5's width, followed by T5's last hidden state padded to
`max_sequence_length` tokens (zeros of the transformer's `joint_attention_dim` when the checkpoint has no T5,
`text_encoder_3: [null, null]`); pooled projections = both CLIP encoders' projected pooled outputs. Both
CLIP tokenizers pad to the first tokenizer's max length, as the pipeline does. The unconditional branch is the
embedding of "". The schedule is `set_timesteps(num_inference_steps)` with the checkpoint's shift (or the
dynamic shift from the image sequence length when the scheduler sets `use_dynamic_shifting`).

`max_sequence_length` is the pipeline's default, 256, capped by the T5 tokenizer's own `model_max_length`
when the checkpoint declares a shorter one (released SD3/SD3.5 declare 512 or more, so they get 256): a tiny
T5 that declares 16 tokens is trained, scored and sampled on 16 padded tokens instead of 256 (the flow
canaries; padding a toy model to 256 tokens made training 5-8x slower). Scores record it in the identity and
generation passes it to the pipeline, so scoring and sampling see the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.models.families.base import Component, Cond
from memtest.models.families.flow import FlowFamily

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint

_CLIP_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
_T5_TOKENIZERS = ("T5TokenizerFast", "T5Tokenizer")


def pad_ids(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device) -> torch.Tensor:
    """Token ids padded and truncated to `max_length`, as the flow pipelines tokenize."""
    ids: torch.Tensor = tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


class StableDiffusion3(FlowFamily):
    name: ClassVar[str] = "sd3"
    title: ClassVar[str] = "Stable Diffusion 3"
    pipelines: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    refused: ClassVar[dict[str, str]] = {
        name: "memtest audits text-to-image pipelines only (first-step sharpness starts from noise); audit the "
        "StableDiffusion3Pipeline checkpoint this pipeline was made from."
        for name in ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    }
    components: ClassVar[tuple[Component, ...]] = (
        Component("transformer", "diffusers", ("SD3Transformer2DModel",)),
        Component("text_encoder", "transformers", ("CLIPTextModelWithProjection",)),
        Component("text_encoder_2", "transformers", ("CLIPTextModelWithProjection",)),
        Component("text_encoder_3", "transformers", ("T5EncoderModel",), required=False),
        Component("tokenizer", "transformers", _CLIP_TOKENIZERS, weights=False),
        Component("tokenizer_2", "transformers", _CLIP_TOKENIZERS, weights=False),
        Component("tokenizer_3", "transformers", _T5_TOKENIZERS, required=False, weights=False),
        Component("scheduler", "diffusers", (), weights=False),
        Component("vae", "diffusers", ("AutoencoderKL",), required=False),
    )
    embedding_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "pooled_prompt_embeds")
    #: T5 tokens, the pipeline's default `max_sequence_length` (capped by a shorter T5 tokenizer: see above).
    max_sequence_length: ClassVar[int] = 256

    def has_t5(self, ckpt: Checkpoint) -> bool:
        c = ckpt.components
        return c.get("text_encoder_3") is not None and c.get("tokenizer_3") is not None

    def sequence_length(self, ckpt: Checkpoint) -> int:
        """T5 tokens of this checkpoint: 256, or fewer when its T5 tokenizer declares a shorter model_max_length."""
        if not self.has_t5(ckpt):
            return self.max_sequence_length
        return min(self.max_sequence_length, int(ckpt.components["tokenizer_3"].model_max_length))

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"family": self.name, "t5": self.has_t5(ckpt), "max_sequence_length": self.sequence_length(ckpt)}

    def summary(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"t5": self.has_t5(ckpt), "max_sequence_length": self.sequence_length(ckpt)}

    def latent_shape(self, ckpt: Checkpoint) -> tuple[int, int, int]:
        cfg = ckpt.denoiser.config
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def schedule(self, ckpt: Checkpoint, num_inference_steps: int) -> dict[str, Any]:
        cfg = ckpt.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        _, h, w = self.latent_shape(ckpt)
        p = int(ckpt.denoiser.config.patch_size)
        mu = calculate_shift(
            (h // p) * (w // p),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.16),
        )
        return {"mu": float(mu)}

    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        c = ckpt.components
        clip_length = int(c["tokenizer"].model_max_length)  # the pipeline pads both CLIP inputs to this
        ids = {
            "input_ids": pad_ids(c["tokenizer"], prompts, clip_length, ckpt.device),
            "input_ids_2": pad_ids(c["tokenizer_2"], prompts, clip_length, ckpt.device),
        }
        if self.has_t5(ckpt):
            ids["input_ids_3"] = pad_ids(c["tokenizer_3"], prompts, self.sequence_length(ckpt), ckpt.device)
        return ids

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        c = ckpt.components
        hidden, pooled = [], []
        for key, enc_name in (("input_ids", "text_encoder"), ("input_ids_2", "text_encoder_2")):
            out = c[enc_name](ids[key], output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        rows = clip.shape[0]
        if "input_ids_3" in ids:
            t5 = c["text_encoder_3"](ids["input_ids_3"])[0]
        else:
            width = int(ckpt.denoiser.config.joint_attention_dim)
            t5 = clip.new_zeros(rows, self.max_sequence_length, width)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled_prompt_embeds": torch.cat(pooled, dim=-1)}

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        """`t` is σ · 1000 as the pipeline passes it: one float, or one per row (training)."""
        if isinstance(t, torch.Tensor):
            timestep = t.to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        else:
            timestep = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        out: torch.Tensor = ckpt.denoiser(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
        return out

    def call_options(self, ckpt: Checkpoint, guidance_scale: float) -> dict[str, Any]:
        return {**super().call_options(ckpt, guidance_scale), "max_sequence_length": self.sequence_length(ckpt)}
