"""Ren et al.'s inference-time mitigation (ECCV 2024, "Unveiling and Mitigating Memorization in Text-to-image
Diffusion Models through Cross Attention"): in every cross-attention layer, at every sampling step,

- the logit of the start token is multiplied by `c1` (1.25 in their released command) in the conditional branch
  only, so attention moves from the prompt's tokens to the start token, the "attention sink";
- the tokens after the prompt's end token (the padding, which CLIP pads with copies of the end token: the
  summary tokens) are masked out in both branches.

Constants from their code (renjie3/MemAttn, `local_cmd_inference_time_mitigation.sh`: `--c1 1.25 --cross_attn_mask
--miti_mem`, `mask_length_minis1` off, so the mask keeps the start token, the prompt's tokens and its end token).
Their code tells the branches apart by batch position (unconditional first); memtest's scorer batches the
conditional branch first and the pipeline the other way round, so here a row is unconditional when its text tokens
are the family's unconditional conditioning, bit for bit.

It applies where there is cross-attention onto a tokenizer with a start token (SD 1.x/2.x and SDXL); PixArt's T5
has no start token and SD3/Flux have no cross-attention, and both are refused with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memtest.detection.scoring import detector_sharpness
from memtest.errors import MitigationError
from memtest.mitigation.outcome import Mitigation
from memtest.mitigation.target import as_scorer, first_step, resolve_threshold, seed_images

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint

#: edit(logits, encoder_hidden_states) -> logits, logits shaped (batch, heads, queries, tokens), before the softmax.
Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EditedCrossAttention:
    """diffusers' `AttnProcessor` (math path) for one cross-attention module, with an `edit` of the logits before
    the softmax. (Detectors that only read attention use `memtest.detection.detectors.attention`, which keeps the
    model's own kernel; an edit has to replace the computation.)"""

    def __init__(self, name: str, edit: Edit) -> None:
        self.name = name
        self.edit = edit

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise MitigationError(f"{self.name} was installed as cross-attention but received no text tokens.")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        text = encoder_hidden_states
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        logits = torch.bmm(query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            logits = logits + attention_mask
        if attn.upcast_softmax:
            logits = logits.float()
        heads = attn.heads
        shaped = logits.view(batch, heads, logits.shape[1], logits.shape[2])
        logits = self.edit(shaped, text).reshape(batch * heads, logits.shape[1], logits.shape[2])
        probs = logits.softmax(dim=-1)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs.to(dtype), value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        out: torch.Tensor = hidden_states / attn.rescale_output_factor
        return out


def cross_attention_modules(denoiser: torch.nn.Module) -> list[str]:
    """Names of the denoiser's cross-attention modules, in module order."""
    from diffusers.models.attention_processor import Attention

    return [n for n, m in denoiser.named_modules() if isinstance(m, Attention) and m.is_cross_attention]


@contextmanager
def edited_cross_attention(denoiser: Any, edit: Edit, why: str) -> Iterator[list[str]]:
    """Run every cross-attention module of `denoiser` through `EditedCrossAttention(edit)` inside the block and put
    the denoiser's own processors back after it; yields the modules' names. A denoiser without cross-attention is
    refused, naming what (`why`) needs it."""
    names = cross_attention_modules(denoiser)
    if not names:
        raise MitigationError(
            f"{type(denoiser).__name__} has no cross-attention modules (its text and image tokens meet in joint "
            f"attention), so {why} does not apply to it."
        )
    original = dict(denoiser.attn_processors)
    chosen = set(names)
    replaced: dict[str, Any] = {}
    for key, proc in original.items():
        module = key.removesuffix(".processor")
        replaced[key] = EditedCrossAttention(module, edit) if module in chosen else proc
    denoiser.set_attn_processor(replaced)
    try:
        yield names
    finally:
        denoiser.set_attn_processor(original)


#: Ren et al.'s released setting: the start token's logit scale in the conditional branch.
DEFAULT_START_SCALE = 1.25


def prompt_length(scorer: Scorer, prompt: str) -> int:
    """Tokens of `prompt` with its start and end tokens, as the (first) tokenizer gives them: the mask's length.
    Refuses a tokenizer without a start token (the rescaling has no sink to move attention to)."""
    tokenizer = scorer.ckpt.components.get("tokenizer")
    if tokenizer is None:
        raise MitigationError(f"{scorer.ckpt.name} has no tokenizer; attention mitigation needs its tokens.")
    ids = tokenizer(prompt)["input_ids"][: int(min(tokenizer.model_max_length, 10**6))]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not ids or ids[0] != bos:
        raise MitigationError(
            f"The tokenizer of {scorer.ckpt.name} ({type(tokenizer).__name__}) puts no start token first, so Ren et "
            "al.'s rescaling (which moves attention to the start token) does not apply to it; use sail or resample."
        )
    return len(ids)


def ren_edit(null_tokens: torch.Tensor, keep: int, start_scale: float) -> Edit:
    """The logit edit: tokens from `keep` on masked in every row; the start token's logit times `start_scale` in
    rows whose text tokens are not `null_tokens` (the unconditional branch's, one row)."""

    def edit(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if text.shape[1:] != null_tokens.shape[1:]:
            raise MitigationError(
                f"Text tokens {tuple(text.shape)} do not match the unconditional {tuple(null_tokens.shape)}."
            )
        uncond = (text == null_tokens.to(text.dtype)).flatten(1).all(dim=1)
        out = logits.clone()
        cond = ~uncond
        out[cond, :, :, 0] = out[cond, :, :, 0] * start_scale
        if keep < out.shape[-1]:
            out[..., keep:] = float("-inf")
        return out

    return edit


def mitigate_attention(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    threshold: float | None = None,
    start_scale: float = DEFAULT_START_SCALE,
    mask_summary: bool = True,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """Ren et al.'s attention mitigation of `prompt` at the detector's own initial noises: the detector's
    sharpness before, and under the edited attention after (the acceptance rule of the other methods: below the
    threshold at every x_T), and the generations without and with it."""
    scorer = as_scorer(target)
    if not (start_scale > 0):
        raise MitigationError(f"start_scale must be a positive number, got {start_scale!r}.")
    thr = resolve_threshold(scorer, threshold)
    keep = prompt_length(scorer, prompt) if mask_summary else 10**9
    seeds = scorer.seeds_for(prompt)
    x = scorer.noise(seeds)
    _, e_c, e_0 = first_step(scorer, prompt)
    before = detector_sharpness(scorer, e_c, e_0, x)
    null_tokens = e_0[scorer.family.embedding_keys[0]]
    edit = ren_edit(null_tokens, keep, start_scale)
    why = "Ren et al.'s attention mitigation"
    started = time.perf_counter()
    with edited_cross_attention(scorer.ckpt.denoiser, edit, why):
        after = detector_sharpness(scorer, e_c, e_0, x)
        seconds = time.perf_counter() - started
        after_imgs = seed_images(scorer, prompt, x, guidance_scale, num_inference_steps)[0] if images else None
    before_imgs, gen_seconds = (
        seed_images(scorer, prompt, x, guidance_scale, num_inference_steps) if images else (None, None)
    )
    ok = all(v < thr for v in after)
    return Mitigation(
        method="attention",
        prompt=prompt,
        threshold=thr,
        succeeded=ok,
        reason=(
            f"under the edited attention the sharpness is {'below' if ok else 'not below'} the threshold "
            f"{thr:.6g} at every original x_T"
        ),
        seeds=tuple(seeds),
        sharpness_before=tuple(before),
        sharpness_after=tuple(after),
        latents_before=x,
        latents_after=x,
        steps=None,
        seconds=seconds,
        images_before=before_imgs,
        images_after=after_imgs,
        generation_seconds=gen_seconds,
        details={"start_scale": start_scale, "mask_summary": mask_summary, "kept_tokens": min(keep, 10**9)},
    )


__all__ = [
    "DEFAULT_START_SCALE",
    "EditedCrossAttention",
    "cross_attention_modules",
    "edited_cross_attention",
    "mitigate_attention",
    "prompt_length",
    "ren_edit",
]
