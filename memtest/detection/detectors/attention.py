"""Cross-attention probabilities, recorded through diffusers' attention processors (no vendored model classes).

`recording(ckpt)` wraps every cross-attention processor of the denoiser (`...attn2.processor` in diffusers'
UNets) in a `Recorder` for the duration of a `with` block and puts the originals back afterwards. The wrapped
processor still computes the layer's output (its fused kernel, so outputs are bit for bit what they were); the
recorder computes the same layer's attention probabilities beside it, softmax(q kᵀ · scale) over the text tokens
through `Attention.get_attention_scores` (diffusers' own path, float32 upcast included), averages them over the
query positions (the image's pixels), and keeps one (rows, heads, tokens) array per layer call, in call order.

What a detector reads, per family: the SD family (one CLIP text encoder, conditioning = `prompt_embeds` only, a
UNet with `attn2` cross-attention) — the layers are the UNet's cross-attention layers in the order the forward
calls them (SD v1.4: 16, down → mid → up), the tokens the text encoder's padded sequence (77 for SD). Every
other family is refused with the reason (`cross_attention_layers`): SDXL concatenates two encoders' tokens and adds
pooled embeddings, so Ren et al.'s and Chen et al.'s layers and token positions do not carry over; PixArt, SD3 and
Flux attend jointly or through masks over T5 tokens, with no counterpart of the CLIP end token's role.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from memtest.errors import ScoringError

if TYPE_CHECKING:
    import torch

    from memtest.models.families.base import Checkpoint

#: The suffix of a cross-attention processor's name in diffusers' UNets.
CROSS = "attn2.processor"


def call_order(names: list[str]) -> list[str]:
    """UNet processor names in the order a forward calls them: down blocks, the mid block, up blocks (diffusers
    registers the up blocks before the mid block, so its own order is not the call order)."""
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

    def key(name: str) -> tuple[int, list[int]]:
        parts = name.split(".")
        return stage.get(parts[0], 3), [int(p) for p in parts if p.isdigit()]

    return sorted(names, key=key)


def cross_attention_layers(ckpt: Checkpoint, metric: str) -> list[str]:
    """The denoiser's cross-attention processor names in call order, or a refusal naming why `metric` cannot
    read them."""
    keys = set(ckpt.family.encode(ckpt, [""]).keys())
    names = call_order([n for n in getattr(ckpt.denoiser, "attn_processors", {}) if n.endswith(CROSS)])
    if keys != {"prompt_embeds"} or not names:
        raise ScoringError(
            f"The {metric} metric reads the cross-attention of an SD-style UNet over one CLIP encoder's tokens (Ren "
            f"et al.'s and Chen et al.'s layers and token positions are defined there); checkpoint {ckpt.name} is a "
            f"{ckpt.family.title} checkpoint whose conditioning ({', '.join(sorted(keys))}) or denoiser has no such "
            "layers. Choose sharpness, score_norm, anisotropy or tiled_l2."
        )
    return names


class Recorder:
    """A processor that records a cross-attention layer's probabilities (mean over query positions) and lets
    the wrapped processor compute the output."""

    def __init__(
        self, inner: Any, store: list[torch.Tensor], name: str = "", calls: list[str] | None = None, over: int = 2
    ) -> None:
        self.inner = inner
        self.store = store
        self.name = name
        self.calls = calls
        self.over = over

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is not None:
            self.store.append(probabilities(attn, hidden_states, encoder_hidden_states, self.over))
            if self.calls is not None:
                self.calls.append(self.name)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def probabilities(attn: Any, hidden_states: torch.Tensor, context: torch.Tensor, over: int = 2) -> torch.Tensor:
    """softmax(q kᵀ · scale) of one cross-attention call in float32, (rows, heads, queries, tokens) averaged over
    axis `over`: the query positions (2, the default: (rows, heads, tokens)) or the heads (1: (rows, queries,
    tokens), a map over the image per token)."""
    import torch

    x = hidden_states
    if x.ndim == 4:  # (B, C, H, W) -> (B, HW, C), as the processors do
        b, c, h, w = x.shape
        x = x.view(b, c, h * w).transpose(1, 2)
    if getattr(attn, "group_norm", None) is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    if getattr(attn, "norm_cross", False):
        context = attn.norm_encoder_hidden_states(context)
    with torch.no_grad():
        q = attn.head_to_batch_dim(attn.to_q(x))
        k = attn.head_to_batch_dim(attn.to_k(context))
        probs: torch.Tensor = attn.get_attention_scores(q, k, None)  # (rows * heads, queries, tokens)
    rows = x.shape[0]
    return probs.float().view(rows, attn.heads, probs.shape[1], probs.shape[2]).mean(dim=over)


@contextlib.contextmanager
def recording(
    ckpt: Checkpoint, store: list[torch.Tensor], calls: list[str] | None = None, over: int = 2
) -> Iterator[list[str]]:
    """Within the block, every cross-attention call of the denoiser appends its probabilities to `store` (averaged
    over axis `over`, see `probabilities`; and its layer's name to `calls`); yields the layers' names in call
    order. The original processors are restored afterwards."""
    unet = ckpt.denoiser
    original = dict(unet.attn_processors)
    names = call_order([n for n in original if n.endswith(CROSS)])
    wrapped = {n: Recorder(p, store, n, calls, over) if n.endswith(CROSS) else p for n, p in original.items()}
    unet.set_attn_processor(wrapped)
    try:
        yield names
    finally:
        unet.set_attn_processor(original)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """−Σ p log p over the last axis (0 log 0 = 0)."""
    import torch

    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)


__all__ = ["CROSS", "Recorder", "call_order", "cross_attention_layers", "entropy", "probabilities", "recording"]
