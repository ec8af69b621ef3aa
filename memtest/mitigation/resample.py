"""Trajectory resampling (`resample`): keep the initial noises whose trajectory follows the caption the way an
ordinary caption's does, neither more (a copy) nor much less (the caption ignored).

SAIL moves x_T down the gradient of the first-step sharpness. On `zoo:mixture` the x_T it reaches stop
copying, but their images lose the caption's digit a quarter to a third of the time (docs/mitigation.md): the
gradient finds atypical x_T that flatten the first-step measurement. The first step is also a weaker predictor
of which draws copy there (AUC 0.89 for basalt over 256 draws) than the conditional-unconditional score
difference a few sampler steps later (Wen et al.'s magnitude ‖s_Δ‖², AUC 0.99-1.00 after 6 steps).

This method does not move x_T. It draws initial noises as the sampler would (the detector's seeds first, then
fresh ones that never repeat), runs the sampler's first `lead` guided steps, and reads m = ‖s_Δ‖² there. A draw
is accepted when m is below L, the level of ordinary, non-memorized captions: the 1 - fpr quantile (0.99) of m
over reference captions' draws (`reference_level`, `REFERENCE_DRAWS` draws each), the rule that calibrates the
detector applied per draw. Above it the text drives the trajectory as only memorised captions do (the
copies). Accepted x_T are ordinary Gaussian draws, so their images are the model's ordinary images for the
caption, and they show the caption as often as its ordinary non-copying generations do (on `zoo:mixture`,
about 0.8), no more. This removes a copy only where part of the noise space leads elsewhere (x_T-dependent
memorisation); where every draw copies, nothing is accepted and the run says so. A screened draw costs
`lead` + 1 guided model calls, against the 50 of a generation. `floor`/`ceiling` widen or narrow the band
(floor·L, ceiling·L); a floor was tried and did not help on held-out draws (docs/mitigation.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memtest.detection.noise import SeedStream
from memtest.detection.scoring import detector_sharpness
from memtest.errors import MemtestError, MitigationError, option
from memtest.mitigation.outcome import Mitigation, ResampleResult
from memtest.mitigation.target import as_scorer, resolve_threshold, seed_images
from memtest.models.families.base import Cond

if TYPE_CHECKING:
    from memtest.audit.calibration import Calibration
    from memtest.audit.suites import Suite
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint

#: Sampler steps taken before the magnitude is read (chosen on zoo:mixture's design draws, docs/mitigation.md).
DEFAULT_LEAD = 6
#: The reference quantile the level is taken at: 1 - the detector's default fpr (0.01).
DEFAULT_QUANTILE = 0.99
#: The band of accepted magnitudes, as factors of the reference level: below the level itself.
DEFAULT_FLOOR = 0.0
DEFAULT_CEILING = 1.0
#: Draws per reference caption for the level (the same seeds for every caption). The level is a tail quantile:
#: on zoo:mixture the 0.99 quantile over 4 draws per caption ranged 0.43-1.08 between seed blocks.
REFERENCE_DRAWS = 16
#: Draws screened per wanted latent before the run gives up.
DEFAULT_DRAWS_PER_LATENT = 64


def lead_walker(scorer: Scorer, lead: int) -> Scorer:
    """A scorer over the same checkpoint whose timesteps reach `lead` sampler steps past the measured one."""
    from memtest.detection.scoring import Scorer

    if not isinstance(lead, int) or isinstance(lead, bool) or lead < 0:
        raise MitigationError(f"resample setting lead must be a non-negative integer, got {lead!r}.")
    settings = dataclasses.replace(scorer.settings, steps=lead + 1)
    try:
        return Scorer(scorer.ckpt, settings)
    except MemtestError as exc:  # the settings' own check names the limit (num_inference_steps)
        raise MitigationError(f"resample cannot take {lead} lead step(s): {exc}") from exc


def trajectory_point(
    walker: Scorer, c_c: Cond, c_0: Cond, x: torch.Tensor, guidance_scale: float | None = None
) -> torch.Tensor:
    """Where the sampler is at the walker's last timestep from initial noises x: its guided steps through the
    timesteps before it (after, for flow matching, its lead Euler steps). `c_c`, `c_0`: one row each."""
    through = (*walker.process.lead_timesteps, *walker.timesteps[:-1])
    with torch.no_grad():
        return walker.walk(c_c, c_0, through, guidance_scale)(x.to(torch.float32))


def trajectory_magnitude(
    walker: Scorer, c_c: Cond, c_0: Cond, x: torch.Tensor, guidance_scale: float | None = None
) -> torch.Tensor:
    """‖s_Δ‖² per row of initial noises x at the walker's last timestep (`trajectory_point`), in float64."""
    y = trajectory_point(walker, c_c, c_0, x, guidance_scale)
    with torch.no_grad():
        field = walker.s_delta_fn(walker.timesteps[-1], c_c, c_0)(y)  # it tiles one-row conditioning
    return field.flatten(1).to(torch.float64).pow(2).sum(dim=1)


def reference_level(
    target: Scorer | Checkpoint | str | Path,
    references: Sequence[str],
    *,
    lead: int = DEFAULT_LEAD,
    quantile: float = DEFAULT_QUANTILE,
    draws: int = REFERENCE_DRAWS,
) -> float:
    """The `quantile` of ‖s_Δ‖² after `lead` sampler steps over `references` (non-memorized captions), each at
    `draws` of the detector's seeds for it: the acceptance level of `mitigate_resample`."""
    if not references:
        raise MitigationError("reference_level needs at least one reference caption.")
    if not 0.0 <= quantile <= 1.0:
        raise MitigationError(f"quantile must be in [0, 1], got {quantile!r}.")
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise MitigationError(f"reference_level setting draws must be a positive integer, got {draws!r}.")
    scorer = as_scorer(target)
    walker = lead_walker(scorer, lead)
    values: list[float] = []
    for caption in references:
        x = scorer.noise(scorer.seeds_for(caption, draws))
        values += trajectory_magnitude(walker, scorer.embed([caption]), scorer.null(), x).tolist()
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        raise MitigationError("Every reference magnitude is NaN or infinite; the checkpoint's outputs are not finite.")
    return float(np.quantile(finite, quantile))


#: reference_level results per (fingerprint, scorer identity, references, lead, quantile): a mitigation run
#: mitigates several prompts against one level, which costs (lead + 1) guided calls per reference draw.
_LEVELS: dict[tuple[Any, ...], float] = {}


def reference_captions(cal: Calibration, suites: Sequence[Suite] = ()) -> list[str]:
    """The reference captions a calibration was computed from: the reference cases of its `reference_suite`
    (one or several suite names joined by "+"), each taken from `suites` (a run's loaded suites) when one has
    that name, else from the built-in suite of that name."""
    from memtest.audit.suites import resolve_suite
    from memtest.errors import SuiteError

    where = cal.path or "the calibration"
    fix = f"pass level= or references= (non-memorized captions), or name the suite with {option('suite')}"
    by_name = {s.name: s for s in suites}
    captions: list[str] = []
    for name in cal.reference_suite.split("+"):
        suite = by_name.get(name)
        if suite is None:
            try:
                suite = resolve_suite(name)
            except SuiteError as exc:
                problem = f"its reference suite {name!r} cannot be loaded ({exc})"
                raise MitigationError(f"{where}: {problem}; {fix}.") from None
        captions += [c.prompt for c in suite.references()]
    if not captions:
        raise MitigationError(f"{where}: its reference suite {cal.reference_suite!r} has no reference cases; {fix}.")
    return captions


def calibration_references(scorer: Scorer) -> list[str]:
    """`reference_captions` of the checkpoint's own calibration file."""
    from memtest.audit.calibration import CALIBRATION_FILENAME, find_calibration, load_calibration

    path = find_calibration(scorer.ckpt.path)
    if path is None:
        raise MitigationError(
            f"Checkpoint {scorer.ckpt.name} has no {CALIBRATION_FILENAME} to take references from: pass level= "
            "or references= (non-memorized captions) to mitigate_resample."
        )
    return reference_captions(load_calibration(path))


def mitigate_resample(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    level: float | None = None,
    references: Sequence[str] | None = None,
    lead: int = DEFAULT_LEAD,
    quantile: float = DEFAULT_QUANTILE,
    floor: float = DEFAULT_FLOOR,
    ceiling: float = DEFAULT_CEILING,
    n: int | None = None,
    max_draws: int | None = None,
    batch_size: int | None = None,
    threshold: float | None = None,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """Accept `n` initial noises (default: the scorer's n) whose ‖s_Δ‖² after `lead` guided sampler steps lies
    in (floor·L, ceiling·L), L = `level` or `reference_level(references, lead, quantile)` (references default
    to the calibration's, `calibration_references`; the level is computed once per process), screening at most
    `max_draws` draws (default 64 per latent) in batches of `batch_size` (default n). `threshold` (default:
    the calibrated one) is only reported, as for the prompt baselines: the record's sharpness before/after is
    the detector's first-step sharpness at the original and the accepted x_T.
    """
    scorer = as_scorer(target)
    thr = resolve_threshold(scorer, threshold)
    if level is None:
        if references is None:
            references = calibration_references(scorer)
        if not references:
            raise MitigationError(
                "resample needs an acceptance level: pass level=, or references= (non-memorized captions, for "
                "example a suite's reference cases) to take it from (reference_level)."
            )
        key = (scorer.ckpt.fingerprint, repr(scorer.identity()), tuple(references), lead, quantile)
        if key not in _LEVELS:
            _LEVELS[key] = reference_level(scorer, references, lead=lead, quantile=quantile)
        level = _LEVELS[key]
    if not (level > 0 and math.isfinite(level)):
        raise MitigationError(f"The resample level must be a positive finite number, got {level!r}.")
    if not (0 <= floor < ceiling and math.isfinite(ceiling)):
        raise MitigationError(
            f"resample needs 0 <= floor < ceiling (finite), got floor={floor!r}, ceiling={ceiling!r}."
        )
    low, high = floor * level, ceiling * level
    want = n if n is not None else scorer.settings.n
    if not isinstance(want, int) or isinstance(want, bool) or want < 1:
        raise MitigationError(f"resample setting n must be a positive integer, got {want!r}.")
    seeds = scorer.seeds_for(prompt, want)
    budget = max_draws if max_draws is not None else DEFAULT_DRAWS_PER_LATENT * want
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < want:
        raise MitigationError(f"resample setting max_draws must be an integer >= n ({want}), got {budget!r}.")
    chunk = batch_size if batch_size is not None else want
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:  # 0 would screen nothing, forever
        raise MitigationError(f"resample setting batch_size must be a positive integer, got {chunk!r}.")
    walker = lead_walker(scorer, lead)
    c_c, c_0 = scorer.embed([prompt]), scorer.null()
    stream = SeedStream(seeds, f"resample\0{scorer.settings.seed}\0{prompt}")
    started = time.perf_counter()
    accepted: list[int] = []
    magnitudes: dict[int, float] = {}
    while len(accepted) < want and len(stream.used) < budget:
        batch = [next(stream) for _ in range(min(chunk, budget - len(stream.used)))]
        values = trajectory_magnitude(walker, c_c, c_0, scorer.noise(batch), guidance_scale).tolist()
        for seed, value in zip(batch, values, strict=True):
            magnitudes[seed] = float(value)
            if low < value < high and len(accepted) < want:
                accepted.append(seed)
    seconds = time.perf_counter() - started
    ok = len(accepted) >= want
    band = f"({low:.6g}, {high:.6g})"
    if ok:
        reason = f"accepted {len(accepted)} of {len(stream.used)} draws with ‖s_Δ‖² after {lead} step(s) in {band}"
    else:
        above = sum(1 for v in magnitudes.values() if not v < high)
        reason = (
            f"only {len(accepted)} of {want} draws in the band {band} of ‖s_Δ‖² after {lead} step(s) in "
            f"{len(stream.used)} draws ({above} above it, {len(magnitudes) - above - len(accepted)} below or "
            "not finite). Mostly above: the prompt is text-driven from (almost) every x_T, which choosing x_T "
            "cannot change. Raise max_draws, widen floor/ceiling, or try SAIL."
        )
    originals = scorer.noise(seeds)
    latents = scorer.noise(accepted) if accepted else None
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = seed_images(scorer, prompt, originals, guidance_scale, num_inference_steps)
        if latents is not None:
            after_imgs = seed_images(scorer, prompt, latents, guidance_scale, num_inference_steps)[0]
    details: dict[str, Any] = {
        "lead": lead,
        "level": float(level),
        "band": [low, high],
        "quantile": quantile if references else None,
        "draws": len(stream.used),
        "seeds_tried": list(stream.used),
        "accepted_seeds": list(accepted),
        "magnitude_before": [magnitudes.get(s, math.nan) for s in seeds],
        "magnitude_after": [magnitudes[s] for s in accepted],
    }
    return Mitigation(
        method="resample",
        prompt=prompt,
        threshold=thr,
        succeeded=ok,
        reason=reason,
        seeds=tuple(seeds),
        sharpness_before=tuple(detector_sharpness(scorer, c_c, c_0, originals)),
        sharpness_after=tuple(detector_sharpness(scorer, c_c, c_0, latents)) if latents is not None else (),
        latents_before=originals,
        latents_after=latents,
        steps=None,
        seconds=seconds,
        images_before=before_imgs,
        images_after=after_imgs,
        generation_seconds=gen_seconds,
        result=ResampleResult(accepted_seeds=tuple(accepted), seeds_tried=tuple(stream.used)),
        details=details,
    )
