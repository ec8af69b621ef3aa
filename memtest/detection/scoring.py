"""Score prompts on a diffusers checkpoint with the detection metrics of SPEC.md §2.

One batch holds several prompts × n generations; the conditional and unconditional branches run in
one UNet forward. Text embeddings are computed once per distinct prompt, initial noises come from
seeds derived from a base seed, and every setting that changes a score is recorded with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memtest.detection.detectors.base import Batch, Detector, load_detector
from memtest.detection.metrics import fd_step, measure_sharpness
from memtest.detection.noise import derive_seeds, initial_noise
from memtest.detection.settings import METRICS, ScoreSettings
from memtest.errors import ScoringError, option
from memtest.models.checkpoint import Checkpoint, load_checkpoint
from memtest.models.families.base import (
    Cond,
    cond_cat,
    cond_expand,
    cond_len,
    cond_repeat_interleave,
    cond_rows,
    cond_tile,
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PromptScore:
    """One prompt's score: the mean over generations, the per-generation values, and its provenance."""

    prompt: str
    score: float
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "score": self.score,
            "values": list(self.values),
            "seeds": list(self.seeds),
            "settings": dict(self.settings),
        }


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Scorer:
    """Scores prompts on one checkpoint under fixed settings. Reuse it: conditionings are cached.

    Everything family-specific (conditioning, the model forward, the noise process) comes from the
    checkpoint's family (memtest.models.families); this class only batches, differentiates and records.
    """

    def __init__(self, checkpoint: Checkpoint, settings: ScoreSettings | None = None) -> None:
        self.ckpt = checkpoint
        self.family = checkpoint.family
        self.settings = (settings or ScoreSettings()).validate()
        s = self.settings
        if s.flow_steps is None:  # only a setting the user chose reaches the family (DDPM families refuse one)
            self.process = self.family.process(checkpoint, s.num_inference_steps, s.steps)
        else:
            self.process = self.family.process(checkpoint, s.num_inference_steps, s.steps, flow_steps=s.flow_steps)
        self.timesteps = list(self.process.timesteps)
        self._conds: dict[str, Cond] = {}
        self._null: Cond | None = None
        c, h, w = checkpoint.latent_shape
        self.dim = c * h * w
        #: the metric's detector (memtest.detection.detectors); it refuses what it cannot score here
        self.detector: Detector = load_detector(s.metric)
        self.detector.check(self)

    # -- identity ---------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Every setting that changes a score; calibrations must match it exactly. The keys every score shares,
        and the detector's own (`Detector.identity`)."""
        s = self.settings
        return {
            "metric": s.metric,
            "n": s.n,
            "seed": s.seed,
            "per_prompt_seeds": s.per_prompt_seeds,
            "num_inference_steps": s.num_inference_steps,
            **self.detector.identity(self),
            "latent_shape": list(self.ckpt.latent_shape),
            "resolution": list(self.ckpt.resolution),
            "dtype": str(self.ckpt.dtype).replace("torch.", ""),
            "fingerprint": self.ckpt.fingerprint,
            **self.family.identity(self.ckpt),
        }

    @property
    def fd_h(self) -> float:
        return fd_step(torch.empty(1, self.dim), self.settings.fd_h)

    # -- building blocks --------------------------------------------------------------------------
    def seeds_for(self, prompt: str, n: int | None = None) -> list[int]:
        """The detector's seeds for `prompt`: its n of them, or the first `n` (more than its own extend them)."""
        s = self.settings
        return derive_seeds(s.seed, s.n if n is None else n, prompt if s.per_prompt_seeds else None)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Initial latents x_T (`memtest.detection.noise.initial_noise`), drawn on the CPU so the same seed gives
        the same noise on any device."""
        return initial_noise(seeds, self.ckpt.latent_shape, self.process.init_noise_sigma, self.ckpt.device)

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> Cond:
        """The family's conditioning of each prompt (one row each), computed once per distinct prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._conds]
        if missing:
            cond = self.family.encode(self.ckpt, missing)
            for i, p in enumerate(missing):
                self._conds[p] = cond_rows(cond, i)
        return cond_cat([self._conds[p] for p in prompts])

    @torch.no_grad()
    def null(self, rows: int = 1) -> Cond:
        """The unconditional branch (the family decides: the empty prompt, or zeros), `rows` rows."""
        if self._null is None:
            self._null = self.family.unconditional(self.ckpt, self.embed([""]))
        return cond_expand(self._null, rows)

    def forward(self, x: torch.Tensor, t: int, cond: Cond) -> torch.Tensor:
        """The denoiser's raw output in float32 (the model runs in its own dtype)."""
        out = self.family.forward(self.ckpt, x.to(self.ckpt.dtype), t, cond)
        return out.to(torch.float32)

    def outputs(self, x: torch.Tensor, t: Any, c_c: Cond, c_0: Cond, x_0: torch.Tensor | None = None) -> torch.Tensor:
        """Raw model outputs for both branches in one forward, in float32, cond first.

        The unconditional branch runs at `x_0` (default: `x`) with `c_0` matching it: (B + len(x_0), ...) rows.
        """
        x_0 = x if x_0 is None else x_0
        return self.forward(torch.cat([x, x_0]), t, cond_cat([c_c, c_0]))

    _outputs = outputs  # the name tests used before detectors were modules

    def s_delta_fn(self, t: int, c_c: Cond, c_0: Cond) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> the field the metrics differentiate at timestep t (s_Δ for DDPM families)."""
        process = self.process

        def s_delta(x: torch.Tensor) -> torch.Tensor:
            reps = x.shape[0] // cond_len(c_c)
            # fd stacks probe points as cat([x + hu, x - hu]): tile the conditioning the same way.
            cc = cond_tile(c_c, reps) if reps > 1 else c_c
            c0 = cond_tile(c_0, reps) if reps > 1 else c_0
            o_c, o_0 = self.outputs(x, t, cc, c0).chunk(2)
            return process.field(o_c, o_0, x.to(torch.float32), t)

        return s_delta

    def start_map(self, c_c: Cond, c_0: Cond) -> Callable[[torch.Tensor], torch.Tensor]:
        """x_T -> the point the metric is measured at (the first measured timestep, `timesteps[0]`).

        DDPM families measure at x_T itself: the identity. Flow-matching checkpoints first take the sampler's
        guided Euler steps through `process.lead_timesteps`, as scoring does; the map is differentiable (no
        inference mode), so SAIL can optimise x_1 through it. Rows of x are generations; `c_c` and `c_0` have
        one row per generation (or are tiled like `s_delta_fn`'s).
        """
        return self.walk(c_c, c_0, self.process.lead_timesteps)

    def walk(
        self, c_c: Cond, c_0: Cond, through: Sequence[Any], guidance_scale: float | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> where the sampler is after its guided steps at the timesteps `through` (in order), in float32;
        the identity for none. Differentiable (no inference mode); conditioning as in `start_map`."""
        process = self.process
        steps = tuple(through)
        if not steps:
            return _identity
        scale = self.settings.guidance_scale if guidance_scale is None else guidance_scale

        def walked(x: torch.Tensor) -> torch.Tensor:
            reps = x.shape[0] // cond_len(c_c)
            cc = cond_tile(c_c, reps) if reps > 1 else c_c
            c0 = cond_tile(c_0, reps) if reps > 1 else c_0
            for t in steps:
                o_c, o_0 = self.outputs(x, t, cc, c0).chunk(2)
                x = process.step(process.guide(o_c, o_0, scale), t, x.to(torch.float32))
            return x.to(torch.float32)

        return walked

    # -- scoring ----------------------------------------------------------------------------------
    def batch(self, prompts: Sequence[str]) -> Batch:
        """What a detector scores: the prompts' seeds, initial noises (one row per generation) and both branches'
        conditionings (one row per generation)."""
        s = self.settings
        seeds = [self.seeds_for(p) for p in prompts]
        x = (
            torch.cat([self.noise(sd) for sd in seeds])
            if s.per_prompt_seeds
            else self.noise(seeds[0]).repeat(len(prompts), 1, 1, 1)
        )
        c_c = cond_repeat_interleave(self.embed(prompts), s.n)
        c_0 = self.null(cond_len(c_c))
        return Batch(tuple(prompts), tuple(tuple(sd) for sd in seeds), x, c_c, c_0)

    def _score_batch(self, prompts: Sequence[str]) -> list[PromptScore]:
        batch = self.batch(prompts)
        return self._results(prompts, batch, self.detector.score(self, batch))

    def _results(self, prompts: Sequence[str], batch: Batch, values: torch.Tensor) -> list[PromptScore]:
        """The prompts' scores from the detector's per-generation values on `batch`; a non-finite one is an error."""
        s = self.settings
        seeds = batch.seeds
        per_gen = values.to(torch.float64).cpu()
        if not torch.isfinite(per_gen).all():
            bad = list(
                dict.fromkeys(
                    p for i, p in enumerate(prompts) if not torch.isfinite(per_gen[i * s.n : (i + 1) * s.n]).all()
                )
            )
            raise ScoringError(
                f"The model produced a non-finite {s.metric} for {len(bad)} prompt(s) {bad!r} on checkpoint "
                f"{self.ckpt.name} (dtype {self.ckpt.dtype}). A score that is not a number cannot pass the gate: "
                f"check the weights for NaN/inf, or score in float32 ({option('dtype', 'float32')})."
            )
        ident = self.identity()
        results = []
        for i, prompt in enumerate(prompts):
            vals = tuple(float(v) for v in per_gen[i * s.n : (i + 1) * s.n])
            results.append(
                PromptScore(
                    prompt=prompt,
                    score=float(sum(vals) / len(vals)),
                    values=vals,
                    seeds=tuple(seeds[i]),
                    settings={**ident, "seeds": list(seeds[i])},
                )
            )
        return results

    def branches(
        self, x: torch.Tensor, t: Any, c_c: Cond, c_0: Cond, *, first: bool, prompts: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches' raw outputs at x, one row per generation (cond, uncond)."""
        n = self.settings.n
        if first and not self.settings.per_prompt_seeds and prompts > 1:
            # Every prompt starts from the same n noises, so the unconditional branch at x_T is the same for
            # all of them: run it once per noise (n rows, not prompts * n).
            out = self.outputs(x, t, c_c, cond_rows(c_0, slice(0, n)), x_0=x[:n])
            return out[: x.shape[0]], out[x.shape[0] :].repeat(prompts, 1, 1, 1)
        o_c, o_0 = self.outputs(x, t, c_c, c_0).chunk(2)
        return o_c, o_0

    def score(self, prompts: Sequence[str], progress: Progress | None = None) -> list[PromptScore]:
        prompts = validate_prompts(prompts)
        results: list[PromptScore] = []
        for chunk, padded in padded_batches(prompts, self.settings.batch_size):
            results.extend(self._score_batch(padded)[: len(chunk)])
            if progress is not None:
                progress(len(results), len(prompts))
        return results


def padded_batches(prompts: list[str], size: int) -> Iterator[tuple[list[str], list[str]]]:
    """(chunk, the chunk padded to `size` with repeats of its last prompt) for every batch of `prompts`.

    CPU kernels pick their algorithm by batch shape, and finite differences amplify the last-bit differences that
    follow. Padding every batch to the same shape makes a prompt's score independent of which prompts share its
    batch (and of how xdist splits a suite)."""
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        yield chunk, chunk + [chunk[-1]] * (size - len(chunk))


def score_together(
    scorers: Sequence[Scorer], prompts: Sequence[str], progress: Progress | None = None
) -> list[list[PromptScore]]:
    """`[s.score(prompts) for s in scorers]`, with the model's forwards along the trajectory run once for all of
    them: the scorers must be on one checkpoint, with the same settings apart from the metric, and their detectors
    must measure along the sampler's trajectory (`Detector.shares_walk`: sharpness, score_norm). Each scorer's
    results equal its own `score`'s, bit for bit."""
    from dataclasses import replace

    from memtest.detection.detectors.trajectory import TrajectoryDetector, walk

    if not scorers:
        return []
    lead = scorers[0]
    detectors: list[TrajectoryDetector] = []
    for sc in scorers:
        if sc.ckpt is not lead.ckpt or replace(sc.settings, metric=lead.settings.metric) != lead.settings:
            raise ScoringError("score_together takes scorers of one checkpoint whose settings differ only in metric.")
        if not (sc.detector.shares_walk and isinstance(sc.detector, TrajectoryDetector)):
            raise ScoringError(
                f"The {sc.settings.metric} metric does not measure along the sampler's trajectory, so it cannot share "
                "a walk with other metrics; score it on its own."
            )
        detectors.append(sc.detector)
    prompts = validate_prompts(prompts)
    results: list[list[PromptScore]] = [[] for _ in scorers]
    for chunk, padded in padded_batches(prompts, lead.settings.batch_size):
        batch = lead.batch(padded)
        for sc, out, values in zip(scorers, results, walk(lead, batch, detectors), strict=True):
            out.extend(sc._results(padded, batch, values)[: len(chunk)])
        if progress is not None:
            progress(len(results[0]), len(prompts))
    return results


def start_point(scorer: Scorer, c_c: Cond, c_0: Cond, x: torch.Tensor) -> torch.Tensor:
    """Where the detector measures for initial noises x: x itself (DDPM families), or the point after the
    sampler's lead Euler steps from x_1 under the prompt's guidance (flow matching, `Scorer.start_map`)."""
    with torch.no_grad():
        return scorer.start_map(c_c, c_0)(x)


def detector_sharpness(scorer: Scorer, c_c: Cond, c_0: Cond, x: torch.Tensor) -> list[float]:
    """The detector's first-step sharpness of the conditioning `c_c` at initial noises x on `scorer`'s checkpoint
    (its method and fd step, measured where it measures: `start_point`), through `metrics.measure_sharpness`."""
    s_fn = scorer.s_delta_fn(scorer.timesteps[0], c_c, c_0)
    points = start_point(scorer, c_c, c_0, x)
    return [float(v) for v in measure_sharpness(s_fn, points, scorer.settings.method, scorer.fd_h).tolist()]


def validate_prompts(prompts: Iterable[Any]) -> list[str]:
    if isinstance(prompts, str):
        raise ScoringError("prompts must be a list of strings, not a single string; wrap it: [prompt].")
    items = list(prompts)
    if not items:
        raise ScoringError("The prompt list is empty: pass at least one prompt to score.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise ScoringError(f"Prompt #{i} is a {type(p).__name__} ({p!r}), not a string.")
    return items


def score_prompts(
    checkpoint: Checkpoint | str | Path,
    prompts: Sequence[str],
    metric: str = "sharpness",
    n: int = 4,
    seed: int = 0,
    method: str = "fd",
    *,
    steps: int = 1,
    batch_size: int = 8,
    per_prompt_seeds: bool = False,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    fd_h: float | None = None,
    flow_steps: int | None = None,
    gamma: tuple[float, float] | None = None,
    variant: str | None = None,
    progress: Progress | None = None,
) -> list[PromptScore]:
    """Score each prompt; see `ScoreSettings` for the meaning of each setting."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    settings = ScoreSettings(
        metric=metric,
        method=method,
        n=n,
        seed=seed,
        per_prompt_seeds=per_prompt_seeds,
        steps=steps,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        fd_h=fd_h,
        flow_steps=flow_steps,
        gamma=gamma,
        variant=variant,
    )
    return Scorer(ckpt, settings).score(prompts, progress=progress)


__all__ = [
    "METRICS",
    "PromptScore",
    "ScoreSettings",
    "Scorer",
    "derive_seeds",
    "detector_sharpness",
    "score_prompts",
    "score_together",
    "start_point",
]
