"""Build tiny, untrained StableDiffusionPipeline-format checkpoints fully offline.

Used by the canary trainer (memtest.zoo.train) and by tests that need a real diffusers checkpoint
without a model hub. Every component is a real diffusers / transformers class saved with
`save_pretrained` (safetensors), so `memtest.load_checkpoint` reads it like any user's checkpoint.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Special tokens of the CLIP tokenizer; the text encoder's bos/eos/pad ids come from them.
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_EOW = "</w>"


_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def train_bpe(captions: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges learned from `captions`, deterministically (ties break lexicographically).

    The `tokenizers` trainer breaks frequency ties in hash order, so the same captions gave different
    vocabularies from run to run; a canary must rebuild bit for bit from its seed.
    """
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    for piece in chars + [c + _EOW for c in chars]:
        vocab.setdefault(piece, len(vocab))
    counts: Counter[tuple[str, ...]] = Counter()
    for caption in captions:
        for word in _WORD.findall(caption.lower()):
            counts[(*word[:-1], word[-1] + _EOW)] += 1
    words = {w: c for w, c in counts.items()}
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, c in words.items():
            for a, b in itertools.pairwise(w):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        new_words: dict[tuple[str, ...], int] = {}
        for w, c in words.items():
            out: list[str] = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return vocab, merges


def build_tokenizer(captions: Iterable[str], vocab_size: int = 400, max_length: int = 16) -> Any:
    """A real byte-pair-encoding CLIPTokenizer trained on `captions`, fully offline.

    Every printable character (alone and word-final) is in the vocabulary, so no word ever maps to
    the unknown token; an offline hub load would silently give a 2-token tokenizer instead.
    """
    import json

    from transformers import CLIPTokenizer

    vocab, merges = train_bpe(captions, vocab_size)
    import inspect

    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        # transformers >= 5: in-memory vocab and (a, b) merge tuples ("a b" strings raise).
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, **specials)
    else:  # transformers 4: files only
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            vocab_file = Path(tmp) / "vocab.json"
            merges_file = Path(tmp) / "merges.txt"
            vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
            merges_file.write_text(
                "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
            )
            tokenizer = CLIPTokenizer(
                vocab_file=str(vocab_file),
                merges_file=str(merges_file),
                model_max_length=max_length,
                **specials,
            )
    if len(tokenizer) <= 2:
        raise RuntimeError("tokenizer training produced a degenerate vocabulary")
    return tokenizer


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a tiny checkpoint. The defaults follow CANARY_NOTES.md (about 1M UNet parameters)."""

    sample_size: int = 16
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 64)
    cross_attention_dim: int = 32
    attention_head_dim: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    max_length: int = 16
    vocab_size: int = 400
    prediction_type: str = "epsilon"
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    with_vae: bool = True
    vae_channels: int = 32


def build_unet(cfg: TinyConfig) -> Any:
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=8,
    )


def build_text_encoder(cfg: TinyConfig, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
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
    return CLIPTextModel(config)


def tiny_autoencoder(channels: int, latent_channels: int, sample_size: int, levels: int = 1, **extra: Any) -> Any:
    """The canaries' toy AutoencoderKL: `levels` one-layer blocks of `channels` (one: no downsampling);
    `extra` sets the family's scaling (and shift) factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(channels,) * levels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
        **extra,
    )


def build_vae(cfg: TinyConfig) -> Any:
    # One block, no downsampling: 16x16x3 images <-> 16x16x4 latents.
    return tiny_autoencoder(cfg.vae_channels, cfg.latent_channels, cfg.sample_size)


def build_scheduler(cfg: TinyConfig) -> Any:
    from diffusers import DDIMScheduler

    # Stable Diffusion's sampling settings: leading spacing, steps_offset=1 -> first step t=981 of 50.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=cfg.prediction_type,
    )


def build_pipeline(captions: Sequence[str], cfg: TinyConfig | None = None, seed: int = 0, tokenizer: Any = None) -> Any:
    """A complete, randomly initialised StableDiffusionPipeline built offline."""
    import torch
    from diffusers import StableDiffusionPipeline

    cfg = cfg or TinyConfig()
    torch.manual_seed(seed)
    tokenizer = tokenizer or build_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    pipe = StableDiffusionPipeline(
        vae=build_vae(cfg) if cfg.with_vae else None,
        text_encoder=build_text_encoder(cfg, tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(cfg),
        scheduler=build_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def save_pipeline(pipe: Any, path: str | Path) -> Path:
    """Save with safetensors weights (the only format memtest loads without an explicit opt-in)."""
    out = Path(path)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def build_sdxl_unet(cfg: TinyConfig, pooled_dim: int, time_embed_dim: int = 8) -> Any:
    """SDXL's UNet at the canaries' size: text-time added conditioning (pooled text + 6 size/crop ids)."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=2 * cfg.text_hidden,  # both encoders' hidden states, concatenated
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim,
    )


def build_sdxl_pipeline(
    captions: Sequence[str], cfg: TinyConfig | None = None, seed: int = 0, tokenizer: Any = None
) -> Any:
    """A complete, randomly initialised StableDiffusionXLPipeline built offline: two tiny CLIP encoders
    (the second with a projection, whose pooled output conditions the UNet), one BPE shared by both."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    cfg = cfg or TinyConfig()
    torch.manual_seed(seed)
    tokenizer = tokenizer or build_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    text_encoder = build_text_encoder(cfg, tokenizer)
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder.config)
    return StableDiffusionXLPipeline(
        vae=build_vae(cfg) if cfg.with_vae else None,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=build_sdxl_unet(cfg, pooled_dim=int(text_encoder.config.projection_dim)),
        scheduler=build_scheduler(cfg),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
