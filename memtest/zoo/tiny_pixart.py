"""Build a tiny, randomly initialised PixArtSigmaPipeline fully offline, every component a real diffusers /
transformers class saved with safetensors.

It exercises the PixArt-Sigma family (T5 conditioning with its attention mask, the learned-sigma split of
the transformer's output, the DDPM first step, exact JVPs through masked cross-attention, generation) in
seconds on a CPU. The T5 tokenizer and encoder are the flow builders' (memtest.zoo.tiny_flow): a unigram
vocabulary built in memory, no SentencePiece model, no hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memtest.zoo.tiny import tiny_autoencoder
from memtest.zoo.tiny_flow import TinyFlowConfig, build_t5, build_t5_tokenizer


@dataclass(frozen=True)
class TinyPixArtConfig:
    """Sizes of a tiny PixArt-Sigma checkpoint. Latents are (4, sample_size, sample_size)."""

    sample_size: int = 8
    latent_channels: int = 4  # PixArt-Sigma uses SDXL's VAE: 4 latent channels
    learned_sigma: bool = True  # the transformer outputs 2x channels (ε and the variance), as released
    t5_width: int = 64  # = the transformer's caption_channels
    t5_layers: int = 2
    heads: int = 2
    head_dim: int = 16
    layers: int = 2
    with_vae: bool = True
    vae_channels: int = 32
    vae_levels: int = 2  # images are 2^(levels-1) x latents
    #: The T5 tokenizer's `model_max_length`; the family pads T5 to min(300, this) tokens (None: 300).
    t5_max_length: int | None = None

    @property
    def image_size(self) -> int:
        return int(self.sample_size * 2 ** (self.vae_levels - 1))


def build_pixart_transformer(cfg: TinyPixArtConfig) -> Any:
    from diffusers import PixArtTransformer2DModel

    inner = cfg.heads * cfg.head_dim
    return PixArtTransformer2DModel(
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.latent_channels,
        out_channels=2 * cfg.latent_channels if cfg.learned_sigma else cfg.latent_channels,
        num_layers=cfg.layers,
        cross_attention_dim=inner,
        caption_channels=cfg.t5_width,
        sample_size=cfg.sample_size,
        patch_size=2,
        interpolation_scale=1,
        use_additional_conditions=False,  # Sigma: no resolution / aspect-ratio micro-conditions
    )


def build_pixart_vae(cfg: TinyPixArtConfig) -> Any:
    """SDXL's VAE layout at toy size (4 latent channels, SDXL's scaling factor)."""
    return tiny_autoencoder(
        cfg.vae_channels, cfg.latent_channels, cfg.image_size, cfg.vae_levels, scaling_factor=0.13025
    )


def build_pixart_scheduler() -> Any:
    """The released PixArt-Sigma scheduler: DPM-Solver++ (2M) over the linear DDPM schedule, ε-prediction."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
    )


def build_pixart_sigma_pipeline(captions: Sequence[str], cfg: TinyPixArtConfig | None = None, seed: int = 0) -> Any:
    """A complete, randomly initialised PixArtSigmaPipeline."""
    import torch
    from diffusers import PixArtSigmaPipeline

    cfg = cfg or TinyPixArtConfig()
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(captions, cfg.t5_max_length)
    t5 = build_t5(TinyFlowConfig(t5_width=cfg.t5_width, t5_layers=cfg.t5_layers), tokenizer)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=t5,
        vae=build_pixart_vae(cfg) if cfg.with_vae else None,
        transformer=build_pixart_transformer(cfg),
        scheduler=build_pixart_scheduler(),
    )
