"""Which words of a prompt carry its memorization signal (Wen et al., ICLR 2024, per-token significance).

A token's weight is the norm of the gradient of the detection signal with respect to that token's input
embedding, averaged over the prompt's generations. The signal is the detector's own quantity at the point it
measures: `score_norm` is Wen et al.'s ‖s_Δ‖² (one forward and one backward), `sharpness` is ‖H_Δ s_Δ‖² by
finite differences (two forwards and a backward). Both are read through the scorer's building blocks, so
every family is covered the same way.

Gradients are taken at the text encoders' token-embedding lookups (`get_input_embeddings()`), captured by a
forward hook, which sees the token ids that went in as well as the embeddings that came out. Wen et al. take
the gradient at the text encoder's output rows instead; an output row of a causal CLIP encoder mixes every
earlier token, so the input lookup is the cleaner attribution of one token, and it is the same place for CLIP
and T5 encoders, so no family needs its own rule. With several text encoders (SDXL, SD3) each encoder's
shares are computed separately and averaged (their gradient scales differ).

Weights are shares: over one encoder, words + special tokens + padding sum to 1. Words are the prompt's
whitespace-separated words, each with the summed weight of its tokens; a word the encoder truncated gets 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from memtest.detection.metrics import sharpness, squared_norm
from memtest.detection.records import AttributionEntry, WordWeight
from memtest.detection.scoring import Scorer, start_point
from memtest.errors import ScoringError
from memtest.models.families.base import cond_repeat_interleave

Signal = Literal["score_norm", "sharpness"]
SIGNALS: tuple[str, ...] = ("score_norm", "sharpness")


@dataclass(frozen=True)
class EncoderTokens:
    """One text encoder's tokens of the prompt and their weights (shares of the encoder's total)."""

    name: str
    tokens: tuple[str, ...]
    weights: tuple[float, ...]
    kinds: tuple[Literal["word", "special", "padding"], ...]
    words: tuple[float, ...]  # per prompt word


@dataclass(frozen=True)
class Attribution:
    prompt: str
    signal: str
    words: tuple[str, ...]
    weights: tuple[float, ...]  # per word, averaged over encoders
    special: float
    padding: float
    encoders: tuple[EncoderTokens, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def top(self) -> str | None:
        """The word with the largest weight (the first on a tie), or None for a prompt with no words."""
        if not self.words:
            return None
        return self.words[max(range(len(self.words)), key=lambda i: self.weights[i])]

    def to_dict(self) -> AttributionEntry:
        return {
            "signal": self.signal,
            "words": [{"word": w, "weight": float(v)} for w, v in zip(self.words, self.weights, strict=True)],
            "special": float(self.special),
            "padding": float(self.padding),
            "encoders": {
                e.name: [{"word": w, "weight": float(v)} for w, v in zip(self.words, e.words, strict=True)]
                for e in self.encoders
            },
            "top": self.top,
            "seconds": float(self.seconds),
        }


@dataclass
class _Lookup:
    name: str
    modules: list[torch.nn.Module]
    ids: torch.Tensor | None = None
    leaf: torch.Tensor | None = None


def _lookup(name: str, encoder: Any) -> _Lookup:
    """The token-embedding modules of one encoder: `get_input_embeddings()` and every embedding that shares its
    weight (T5's encoder reads `encoder.embed_tokens`, tied to the `shared` table the getter returns)."""
    table = encoder.get_input_embeddings()
    ptr = table.weight.data_ptr()
    tied: list[torch.nn.Module] = [
        m for m in encoder.modules() if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() == ptr
    ]
    return _Lookup(name, tied or [table])


def _text_encoders(scorer: Scorer) -> list[tuple[str, torch.nn.Module, Any]]:
    """(name, encoder, tokenizer) of every text encoder the checkpoint's family loaded, in component order."""
    comps = scorer.ckpt.components
    found = []
    for name, module in comps.items():
        if not name.startswith("text_encoder") or module is None:
            continue
        tokenizer = comps.get("tokenizer" + name[len("text_encoder") :])
        if tokenizer is None or not hasattr(module, "get_input_embeddings"):
            raise ScoringError(f"Text encoder {name} of {scorer.ckpt.name} has no tokenizer or token embedding.")
        found.append((name, module, tokenizer))
    if not found:
        raise ScoringError(f"{scorer.ckpt.name} has no text encoder: there are no tokens to attribute.")
    return found


@contextmanager
def _capture(lookups: Sequence[_Lookup]) -> Iterator[None]:
    """Replace each token-embedding lookup's output by a leaf that requires grad, and keep the ids it read."""
    handles = []

    def hook_for(lk: _Lookup) -> Callable[..., torch.Tensor]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            lk.ids = args[0].detach()
            lk.leaf = output.detach().requires_grad_(True)
            return lk.leaf

        return hook

    try:
        for lk in lookups:
            handles += [m.register_forward_hook(hook_for(lk)) for m in lk.modules]
        yield
    finally:
        for h in handles:
            h.remove()


def _signal(scorer: Scorer, signal: str, prompt: str, n: int) -> torch.Tensor:
    """The detection signal of `prompt` summed over its n generations, differentiable in its conditioning."""
    fam, ckpt = scorer.family, scorer.ckpt
    cond = fam.encode(ckpt, [prompt])
    c_c = cond_repeat_interleave(cond, n)
    c_0 = scorer.null(n)
    x_t = scorer.noise(scorer.seeds_for(prompt, n))
    with torch.no_grad():  # where the detector measures; its dependence on the prompt is not attributed
        x = start_point(scorer, c_c, c_0, x_t)
    s_fn = scorer.s_delta_fn(scorer.timesteps[0], c_c, c_0)
    if signal == "score_norm":
        return squared_norm(s_fn(x)).sum()
    method = scorer.settings.method if scorer.settings.method != "jvp" else "fd"
    return sharpness(s_fn, x, method=method, h=scorer.fd_h).sum()


def _align(words: Sequence[str], pieces: Sequence[str]) -> list[int | None]:
    """The word each token piece belongs to, by consuming the words' characters in order (case and spacing
    ignored); None where a piece does not continue the text (the tokenizer normalised it), from there on."""
    text = [(i, ch) for i, w in enumerate(words) for ch in w.lower()]
    pos = 0
    owners: list[int | None] = []
    for piece in pieces:
        p = "".join(piece.lower().split())
        chunk = "".join(ch for _, ch in text[pos : pos + len(p)])
        if not p or chunk != p:
            owners.append(None if p else (text[pos - 1][0] if pos else None))
            continue
        owners.append(text[pos][0])
        pos += len(p)
    return owners


def _encoder_tokens(
    name: str, tokenizer: Any, ids: torch.Tensor, grads: torch.Tensor, words: Sequence[str]
) -> EncoderTokens:
    """One encoder's per-token weights (gradient norms, as shares) and their words."""
    ids_1 = [int(i) for i in ids[0].tolist()]
    norms = grads[0].flatten(1).norm(dim=1).to(torch.float64)
    total = float(norms.sum())
    shares = [float(v) / total if total > 0 else 0.0 for v in norms.tolist()]
    # The prompt's own tokens are what the tokenizer gives without padding (specials included).
    own = len(tokenizer(" ".join(words), truncation=True, max_length=len(ids_1))["input_ids"])
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    tokens = [str(tokenizer.decode([tid])) for tid in ids_1]
    kinds: list[Literal["word", "special", "padding"]] = []
    for k, tid in enumerate(ids_1):
        kinds.append("padding" if k >= own else "special" if tid in special_ids else "word")
    word_pos = [k for k, kind in enumerate(kinds) if kind == "word"]
    pieces = [tokens[k] for k in word_pos]
    owners = _align(words, pieces)
    per_word = [0.0] * len(words)
    for k, owner in zip(word_pos, owners, strict=True):
        if owner is not None:
            per_word[owner] += shares[k]
        else:
            kinds[k] = "special"  # a piece the text cannot place: kept apart rather than guessed
    return EncoderTokens(name, tuple(tokens), tuple(shares), tuple(kinds), tuple(per_word))


def attribute(scorer: Scorer, prompt: str, *, signal: str = "score_norm", n: int | None = None) -> Attribution:
    """Each word's share of the gradient of `signal` at the prompt's token embeddings, over its first `n`
    generations (default: the scorer's n), on `scorer`'s checkpoint."""
    import time

    if signal not in SIGNALS:
        raise ScoringError(f"Unknown attribution signal {signal!r}. Choose one of: {', '.join(SIGNALS)}.")
    n = scorer.settings.n if n is None else n
    if not isinstance(n, int) or n < 1:
        raise ScoringError(f"The number of generations must be a positive integer, got {n!r}.")
    words = prompt.split()
    start = time.perf_counter()
    encoders = _text_encoders(scorer)
    scorer.null(1)  # encode "" before the hooks go in, so they see only the prompt
    lookups = [_lookup(name, enc) for name, enc, _ in encoders]
    with torch.enable_grad(), _capture(lookups):
        value = _signal(scorer, signal, prompt, n)
        leaves = [lk.leaf for lk in lookups]
        if any(leaf is None for leaf in leaves):
            raise ScoringError(f"A text encoder of {scorer.ckpt.name} did not run while encoding {prompt!r}.")
        if not torch.isfinite(value):
            raise ScoringError(f"The {signal} of {prompt!r} is not finite on {scorer.ckpt.name}: nothing to attribute.")
        grads = torch.autograd.grad(value, [leaf for leaf in leaves if leaf is not None], allow_unused=True)
    per_encoder = []
    for (name, _, tokenizer), lk, g in zip(encoders, lookups, grads, strict=True):
        assert lk.ids is not None and lk.leaf is not None
        grad = torch.zeros_like(lk.leaf) if g is None else g
        per_encoder.append(_encoder_tokens(name, tokenizer, lk.ids, grad.float(), words))
    k = len(per_encoder)
    weights = tuple(sum(e.words[i] for e in per_encoder) / k for i in range(len(words)))

    def share(kind: str) -> float:
        return sum(w for e in per_encoder for w, kd in zip(e.weights, e.kinds, strict=True) if kd == kind) / k

    return Attribution(
        prompt=prompt,
        signal=signal,
        words=tuple(words),
        weights=weights,
        special=share("special"),
        padding=share("padding"),
        encoders=tuple(per_encoder),
        seconds=time.perf_counter() - start,
    )


__all__ = ["SIGNALS", "Attribution", "AttributionEntry", "EncoderTokens", "WordWeight", "attribute"]
