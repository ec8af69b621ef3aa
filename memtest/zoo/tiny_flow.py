"""Build tiny, randomly initialised flow-matching checkpoints fully offline: StableDiffusion3Pipeline and
FluxPipeline at toy size, every component a real diffusers / transformers class saved with safetensors.

They exercise the SD3 and Flux families (conditioning, packing, the flow schedule, exact JVPs through their
attention, generation) in seconds on a CPU. The CLIP tokenizers are the canaries' byte-pair encoding
(memtest.zoo.tiny); T5's is a unigram vocabulary of the captions' words and every printable character,
built in memory with the `tokenizers`-backed T5Tokenizer (no SentencePiece model, no hub).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from memtest.zoo.tiny import build_tokenizer, tiny_autoencoder


@dataclass(frozen=True)
class TinyFlowConfig:
    """Sizes of a tiny flow checkpoint. Latents are (latent_channels, sample_size, sample_size)."""

    sample_size: int = 8
    latent_channels: int = 16  # SD3 and Flux VAEs have 16 latent channels
    text_hidden: int = 32  # each CLIP encoder's width (SD3 concatenates two, so T5 must be at least twice it)
    text_layers: int = 2
    max_length: int = 16  # CLIP tokens
    vocab_size: int = 400
    t5_width: int = 64  # = the transformer's joint_attention_dim
    t5_layers: int = 2
    heads: int = 2
    head_dim: int = 16
    layers: int = 2  # SD3 joint blocks; Flux: this many double-stream and this many single-stream blocks
    with_t5: bool = True  # SD3 only (Flux's T5 is not optional)
    with_vae: bool = True
    vae_channels: int = 32
    vae_levels: int = 1  # VAE blocks; each one after the first halves the side (images are 2^(levels-1) x latents)
    shift: float = 3.0  # SD3's scheduler shift
    #: The T5 tokenizer's `model_max_length`; the SD3 family pads T5 to min(256, this) tokens (None: 256).
    t5_max_length: int | None = None

    @property
    def image_size(self) -> int:
        """The image side (the latent side times the VAE's scale factor)."""
        return int(self.sample_size * 2 ** (self.vae_levels - 1))


def build_t5_tokenizer(captions: Iterable[str], model_max_length: int | None = None) -> Any:
    """A unigram T5 tokenizer: whole caption words (preferred), then single characters, so no text maps to
    the unknown token except characters outside ASCII. `model_max_length` (default: none declared) is saved
    with it; the SD3 family pads T5 inputs to min(256, model_max_length) tokens."""
    from transformers import T5Tokenizer

    words = sorted({w for c in captions for w in re.findall(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]+", c)})
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {piece for piece, _ in vocab}
    chars = string.ascii_letters + string.digits + string.punctuation
    for piece, score in [("\u2581" + w, -1.0) for w in words] + [(p, -5.0) for c in chars for p in (c, "\u2581" + c)]:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return T5Tokenizer(vocab=vocab, extra_ids=0, **kwargs)


def build_t5(cfg: TinyFlowConfig, tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.t5_width,
        d_kv=cfg.t5_width // 4,
        d_ff=2 * cfg.t5_width,
        num_layers=cfg.t5_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _clip_config(cfg: TinyFlowConfig, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=cfg.text_hidden,
        intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=4,
        max_position_embeddings=cfg.max_length,
        projection_dim=cfg.text_hidden,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_flow_vae(cfg: TinyFlowConfig) -> Any:
    """`vae_levels` blocks (one: no downsampling, vae_scale_factor 1): image_size² RGB images <-> 16-channel
    latents, with SD3's scaling and shift factors (the flow pipelines need a shift factor)."""
    return tiny_autoencoder(
        cfg.vae_channels,
        cfg.latent_channels,
        cfg.image_size,
        cfg.vae_levels,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_sd3_transformer(cfg: TinyFlowConfig) -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=cfg.sample_size,
        patch_size=2,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        num_layers=cfg.layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.t5_width,
        caption_projection_dim=cfg.heads * cfg.head_dim,
        pooled_projection_dim=2 * cfg.text_hidden,
        pos_embed_max_size=cfg.sample_size // 2,
    )


def build_flux_transformer(cfg: TinyFlowConfig, guidance_embeds: bool = True) -> Any:
    from diffusers import FluxTransformer2DModel

    rope = cfg.head_dim // 4 * 2  # even axes summing to the head dim
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * cfg.latent_channels,
        num_layers=cfg.layers,
        num_single_layers=cfg.layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.t5_width,
        pooled_projection_dim=cfg.text_hidden,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(cfg.head_dim - 2 * rope, rope, rope),
    )


def build_sd3_pipeline(
    captions: Sequence[str], cfg: TinyFlowConfig | None = None, seed: int = 0, tokenizer: Any = None
) -> Any:
    """A complete, randomly initialised StableDiffusion3Pipeline (T5 optional: `cfg.with_t5`)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    cfg = cfg or TinyFlowConfig()
    torch.manual_seed(seed)
    tokenizer = tokenizer or build_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    t5_tokenizer = build_t5_tokenizer(captions, cfg.t5_max_length) if cfg.with_t5 else None
    return StableDiffusion3Pipeline(
        transformer=build_sd3_transformer(cfg),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        vae=build_flow_vae(cfg) if cfg.with_vae else None,
        text_encoder=CLIPTextModelWithProjection(_clip_config(cfg, tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(cfg, tokenizer)),
        tokenizer_2=tokenizer,
        text_encoder_3=build_t5(cfg, t5_tokenizer) if t5_tokenizer is not None else None,
        tokenizer_3=t5_tokenizer,
    )


def build_flux_pipeline(
    captions: Sequence[str],
    cfg: TinyFlowConfig | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    guidance_embeds: bool = True,
) -> Any:
    """A complete, randomly initialised FluxPipeline (dev-like with a guidance embedding, or schnell-like)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    cfg = cfg or TinyFlowConfig()
    torch.manual_seed(seed)
    tokenizer = tokenizer or build_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    t5_tokenizer = build_t5_tokenizer(captions)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=build_flow_vae(cfg) if cfg.with_vae else None,
        text_encoder=CLIPTextModel(_clip_config(cfg, tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=build_t5(cfg, t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=build_flux_transformer(cfg, guidance_embeds),
    )


#: The flow canaries' model (zoo:flow-base, zoo:flow-finetuned): 16x16 images through a two-level VAE into
#: 8x8x16 latents (1,024 dimensions, as the SD canaries' 16x16x4), an SD3 transformer of 3 joint blocks at
#: width 64 (16 image tokens), two CLIP encoders of width 32 and a T5 of width 64 whose tokenizer declares
#: 16 tokens (so the SD3 family pads T5 to 16 tokens, not 256). About 0.7M parameters, 2.9 MB.
FLOW_CANARY_CONFIG = TinyFlowConfig(
    sample_size=8,
    vae_levels=2,
    vae_channels=24,
    heads=4,
    head_dim=16,
    layers=3,
    t5_max_length=16,
)
