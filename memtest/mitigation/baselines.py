"""The baselines SAIL is compared with, behind the same interface: random token addition (`rta`) and
random number addition (`rna`) to the prompt (Somepalli et al., 2023), and prompt-embedding optimisation
of the first-step score-difference norm (`embedding`, Wen et al., ICLR 2024)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memtest.detection.metrics import measure_sharpness
from memtest.detection.noise import edit_rng
from memtest.detection.scoring import detector_sharpness, start_point
from memtest.errors import MitigationError
from memtest.evidence.generation import generate_images
from memtest.mitigation.outcome import Mitigation
from memtest.mitigation.target import as_scorer, first_step, resolve_threshold, seed_images
from memtest.models.families.base import Cond, cond_expand

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint


#: Baselines: words (RTA) or numbers (RNA) added to the prompt.
DEFAULT_ADDITIONS = 2
#: Prompt-embedding optimisation (Wen et al.): Adam learning rate and step budget.
DEFAULT_EMBEDDING_LR = 0.1
DEFAULT_EMBEDDING_STEPS = 50


def _word_pool(tokenizer: Any) -> list[str]:
    """Whole words of the tokenizer's vocabulary (tokens that end a word and are letters only)."""
    words = set()
    for tok in tokenizer.get_vocab():
        if tok.endswith("</w>") and tok[:-4].isalpha() and len(tok) > 5:
            words.add(tok[:-4])
    return sorted(words)


def insert_words(prompt: str, words: Sequence[str], rng: np.random.Generator) -> str:
    """`prompt` with each of `words` inserted at a random word boundary."""
    parts = prompt.split()
    for word in words:
        parts.insert(int(rng.integers(0, len(parts) + 1)), str(word))
    return " ".join(parts)


def _prompt_baseline(
    method: str,
    scorer: Scorer,
    prompt: str,
    new_prompt_fn: Callable[[np.random.Generator], str],
    threshold: float | None,
    seed: int,
    images: bool,
    guidance_scale: float,
    num_inference_steps: int | None,
) -> Mitigation:
    thr = resolve_threshold(scorer, threshold)
    seeds = scorer.seeds_for(prompt)
    x = scorer.noise(seeds)
    _, e_c, e_0 = first_step(scorer, prompt)
    before = detector_sharpness(scorer, e_c, e_0, x)
    started = time.perf_counter()
    new_prompt = new_prompt_fn(edit_rng(method, seed, prompt))
    seconds = time.perf_counter() - started
    after = detector_sharpness(scorer, scorer.embed([new_prompt]), e_0, x)
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = seed_images(scorer, prompt, x, guidance_scale, num_inference_steps)
        after_imgs, _ = seed_images(scorer, new_prompt, x, guidance_scale, num_inference_steps)
    ok = all(v < thr for v in after)
    return Mitigation(
        method=method,
        prompt=prompt,
        threshold=thr,
        succeeded=ok,
        reason=(
            f"the altered prompt {new_prompt!r} is "
            + ("below" if ok else "not below")
            + f" the threshold {thr:.6g} at every original x_T"
        ),
        seeds=tuple(seeds),
        sharpness_before=tuple(before),
        sharpness_after=tuple(after),
        latents_before=x,
        latents_after=x,
        prompt_after=new_prompt,
        steps=None,
        seconds=seconds,
        images_before=before_imgs,
        images_after=after_imgs,
        generation_seconds=gen_seconds,
    )


def mitigate_rta(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    threshold: float | None = None,
    additions: int = DEFAULT_ADDITIONS,
    seed: int = 0,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """Random token addition: `additions` random word-final tokens of the tokenizer's vocabulary (letters
    only), each inserted at a random word boundary of the prompt."""
    scorer = as_scorer(target)
    words = _word_pool(scorer.ckpt.tokenizer)
    if not words:
        raise MitigationError(f"The tokenizer of {scorer.ckpt.name} has no whole-word tokens to add (RTA).")

    def new_prompt(rng: np.random.Generator) -> str:
        return insert_words(prompt, [words[int(i)] for i in rng.integers(0, len(words), additions)], rng)

    return _prompt_baseline(
        "rta", scorer, prompt, new_prompt, threshold, seed, images, guidance_scale, num_inference_steps
    )


def mitigate_rna(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    threshold: float | None = None,
    additions: int = DEFAULT_ADDITIONS,
    digits: int = 3,
    seed: int = 0,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """Random number addition: `additions` random integers below 10**digits, each inserted at a random word
    boundary of the prompt."""
    scorer = as_scorer(target)

    def new_prompt(rng: np.random.Generator) -> str:
        return insert_words(prompt, [str(int(rng.integers(0, 10**digits))) for _ in range(additions)], rng)

    return _prompt_baseline(
        "rna", scorer, prompt, new_prompt, threshold, seed, images, guidance_scale, num_inference_steps
    )


def mitigate_embedding(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    threshold: float | None = None,
    lr: float = DEFAULT_EMBEDDING_LR,
    max_steps: int = DEFAULT_EMBEDDING_STEPS,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """Wen et al.: optimise the prompt embedding with Adam to shrink ‖ε_c − ε_0‖² at the first step.

    The loss is averaged over the detector's n initial noises; the optimisation stops once the
    sharpness at every one of them falls below the threshold (SAIL's acceptance rule, so the methods are
    compared on one criterion), or after `max_steps`. Generation uses the optimised embedding.
    """
    scorer = as_scorer(target)
    thr = resolve_threshold(scorer, threshold)
    seeds = scorer.seeds_for(prompt)
    x = scorer.noise(seeds)
    t, c_c, c_0 = first_step(scorer, prompt)
    method, h = scorer.settings.method, scorer.fd_h
    pt = start_point(scorer, c_c, c_0, x)  # the measured point (x itself for DDPM families)
    before = measure_sharpness(scorer.s_delta_fn(t, c_c, c_0), pt, method, h).tolist()
    rows = len(x)
    started = time.perf_counter()
    with torch.no_grad():
        o_0 = scorer.forward(pt, t, cond_expand(c_0, rows))
    # The family says which conditioning entries are the prompt's embedding (SDXL: also the pooled one);
    # the rest (e.g. SDXL's time ids) stay fixed.
    keys = [k for k in scorer.family.embedding_keys if k in c_c]
    emb = {k: c_c[k].detach().clone().float().requires_grad_(True) for k in keys}
    opt = torch.optim.Adam(list(emb.values()), lr=lr)

    def current() -> Cond:
        return {**c_c, **{k: v.to(c_c[k].dtype) for k, v in emb.items()}}

    after = before
    steps = 0
    while True:
        if steps and scorer.process.lead_timesteps:
            # flow matching: the lead Euler steps are guided by the embedding, so the measured point moves
            # with it (the loss treats it as fixed within a step)
            pt = start_point(scorer, current(), c_0, x)
            with torch.no_grad():
                o_0 = scorer.forward(pt, t, cond_expand(c_0, rows))
        with torch.no_grad():
            after = measure_sharpness(scorer.s_delta_fn(t, current(), c_0), pt, method, h).tolist()
        if all(v < thr for v in after) or steps >= max_steps:
            break
        with torch.enable_grad():
            o_c = scorer.forward(pt, t, cond_expand(current(), rows))
            loss = scorer.process.difference(o_c, o_0, pt.float(), t).flatten(1).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
        opt.step()
        steps += 1
    seconds = time.perf_counter() - started
    ok = all(v < thr for v in after)
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = seed_images(scorer, prompt, x, guidance_scale, num_inference_steps)
        after_imgs = generate_images(
            scorer.ckpt,
            x,
            cond={k: v.detach() for k, v in current().items()},
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps or scorer.settings.num_inference_steps,
        )
    return Mitigation(
        method="embedding",
        prompt=prompt,
        threshold=thr,
        succeeded=ok,
        reason=(
            f"sharpness below the threshold {thr:.6g} at every original x_T after {steps} step(s)"
            if ok
            else f"step budget of {max_steps} exhausted: sharpness still {max(after):.6g} >= threshold {thr:.6g}"
        ),
        seeds=tuple(seeds),
        sharpness_before=tuple(before),
        sharpness_after=tuple(after),
        latents_before=x,
        latents_after=x,
        steps=steps,
        seconds=seconds,
        images_before=before_imgs,
        images_after=after_imgs,
        generation_seconds=gen_seconds,
        embedding_after=emb["prompt_embeds"].detach(),
        details={"lr": lr, "max_steps": max_steps},
    )
