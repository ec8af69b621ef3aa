"""PixArt-Sigma: a DiT (`PixArtTransformer2DModel`), one T5 encoder, a DDPM noise schedule (FAMILIES.md §1).

Conditioning follows `PixArtSigmaPipeline.encode_prompt` at its defaults (`clean_caption=False`): each prompt
lower-cased and stripped, T5-tokenized and padded to `max_sequence_length` tokens, T5's last hidden state
computed with the attention mask, and the mask itself kept in the conditioning (`prompt_attention_mask`),
because the transformer receives it as `encoder_attention_mask`. `max_sequence_length` is the pipeline's 300,
capped by the T5 tokenizer's `model_max_length` when it declares fewer (as the SD3 family caps its T5); scoring,
the identity and generation use the same length. The unconditional branch is the embedding of "" (the
pipeline's negative prompt) with its own mask. The pipeline's `__call__` defaults to `clean_caption=True`, which
takes effect only where bs4 and ftfy are installed; memtest never cleans captions and generation passes
`clean_caption=False`, so scores and images do not depend on what else is installed.

The transformer is trained with a DDPM schedule and predicts ε with a learned variance: it outputs twice the
latent channels and the pipeline keeps the first half (when `out_channels // 2 == in_channels`); `forward`
does the same, so the process sees ε. Sigma passes no micro-conditions
(`added_cond_kwargs={"resolution": None, "aspect_ratio": None}`). The process is `DDPMProcess` over the
checkpoint's own scheduler config (DDIM from its noise schedule, as the SD family), and generation runs the
pipeline with that DDIM scheduler, so its first step is the one the detector looks at.

PixArt-Alpha (`PixArtAlphaPipeline`) is refused: it pads T5 to 120 tokens and its 1024-px checkpoints take
resolution and aspect-ratio micro-conditions, which this family does not build.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from memtest.models.families.base import Component, Cond, Family

if TYPE_CHECKING:
    from memtest.models.families.base import Checkpoint

_ALPHA = (
    "memtest audits PixArt-Sigma (PixArtSigmaPipeline) of the PixArt family; PixArt-Alpha pads T5 to 120 tokens "
    "and its 1024-px checkpoints take resolution and aspect-ratio micro-conditions, which memtest does not build. "
    "Audit a PixArtSigmaPipeline checkpoint."
)


class PixArtSigma(Family):
    name: ClassVar[str] = "pixart-sigma"
    title: ClassVar[str] = "PixArt-Sigma"
    pipelines: ClassVar[tuple[str, ...]] = ("PixArtSigmaPipeline",)
    refused: ClassVar[dict[str, str]] = {"PixArtAlphaPipeline": _ALPHA}
    components: ClassVar[tuple[Component, ...]] = (
        # Released PixArt-Sigma folders declare the legacy Transformer2DModel (norm_type ada_norm_single),
        # which diffusers' pipeline loading remaps to PixArtTransformer2DModel; the weights are the same names.
        Component(
            "transformer",
            "diffusers",
            ("PixArtTransformer2DModel", "Transformer2DModel"),
            loads_as=(("Transformer2DModel", "PixArtTransformer2DModel"),),
        ),
        Component("text_encoder", "transformers", ("T5EncoderModel",)),
        Component("tokenizer", "transformers", ("T5TokenizerFast", "T5Tokenizer"), weights=False),
        Component("scheduler", "diffusers", (), weights=False),
        Component("vae", "diffusers", ("AutoencoderKL",), required=False),
    )
    denoiser: ClassVar[str] = "transformer"
    #: T5 tokens, the pipeline's default `max_sequence_length` (capped by a shorter T5 tokenizer).
    max_sequence_length: ClassVar[int] = 300

    def sequence_length(self, ckpt: Checkpoint) -> int:
        return min(self.max_sequence_length, int(ckpt.components["tokenizer"].model_max_length))

    def learned_sigma(self, ckpt: Checkpoint) -> bool:
        """Whether the transformer also outputs the variance channels (dropped, as the pipeline drops them)."""
        cfg = ckpt.denoiser.config
        return int(cfg.out_channels) // 2 == int(cfg.in_channels)

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"family": self.name, "max_sequence_length": self.sequence_length(ckpt)}

    def summary(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"max_sequence_length": self.sequence_length(ckpt), "learned_sigma": self.learned_sigma(ckpt)}

    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        # the pipeline's _text_preprocessing without clean_caption: lower-case and strip
        text = [p.lower().strip() for p in prompts]
        out = ckpt.components["tokenizer"](
            text,
            padding="max_length",
            max_length=self.sequence_length(ckpt),
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return {
            "input_ids": out.input_ids.to(ckpt.device),
            "prompt_attention_mask": out.attention_mask.to(ckpt.device),
        }

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        mask = ids["prompt_attention_mask"]
        embeds = ckpt.components["text_encoder"](ids["input_ids"], attention_mask=mask)[0]
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        """ε: the transformer called as the pipeline calls it, the learned-variance channels dropped."""
        if isinstance(t, torch.Tensor):
            timestep = t.to(device=x.device).reshape(-1).expand(x.shape[0])
        else:
            timestep = torch.tensor([t], dtype=torch.int64, device=x.device).expand(x.shape[0])
        out: torch.Tensor = ckpt.denoiser(
            x,
            encoder_hidden_states=cond["prompt_embeds"],
            encoder_attention_mask=cond["prompt_attention_mask"],
            timestep=timestep,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        if self.learned_sigma(ckpt):
            out = out.chunk(2, dim=1)[0]
        return out

    # -- generation: DDIM from the checkpoint's schedule, at the checkpoint's own resolution ------------
    pipeline_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "prompt_attention_mask")

    def call_options(self, ckpt: Checkpoint, guidance_scale: float) -> dict[str, Any]:
        return {
            **super().call_options(ckpt, guidance_scale),
            "use_resolution_binning": False,  # binning would resize to the released models' aspect-ratio bins
            "max_sequence_length": self.sequence_length(ckpt),
            "clean_caption": False,  # as the conditioning: the pipeline's default cleans only with bs4 and ftfy
        }

    def conditioning_kwargs(self, ckpt: Checkpoint, cond: Cond, null: Cond | None, images: int) -> dict[str, Any]:
        # one row each (the pipeline repeats given embeddings and masks); it refuses its default negative
        # prompt "" beside negative embeddings
        return {**super().conditioning_kwargs(ckpt, cond, null, images), "negative_prompt": None}
