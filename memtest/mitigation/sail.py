"""SAIL (sharpness-aware initial latents, Jeon et al., ICML 2025): the model-agnostic optimisation of
the initial noise (`sail`, on any batched x -> s_delta(x)) and SAIL on a checkpoint (`mitigate_sail`).
The method and the choices where the paper is silent: the package docstring (memtest.mitigation)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memtest.defaults import DEFAULT_MITIGATION_STEPS
from memtest.detection.metrics import ScoreFn, fd_step, squared_norm
from memtest.detection.metrics import measure_sharpness as measure_sharpness  # re-exported: its home was here
from memtest.detection.noise import NoiseFn
from memtest.detection.noise import SeedStream as SeedStream  # re-exported: their public home was here
from memtest.detection.noise import fresh_seed as fresh_seed
from memtest.detection.noise import gaussian_noise as gaussian_noise
from memtest.detection.scoring import detector_sharpness as detector_sharpness
from memtest.errors import MitigationError
from memtest.mitigation.outcome import AcceptedLatent as AcceptedLatent  # re-exported: their home was here
from memtest.mitigation.outcome import Mitigation
from memtest.mitigation.outcome import SailResult as SailResult
from memtest.mitigation.target import as_scorer, first_step, resolve_threshold, seed_images

if TYPE_CHECKING:
    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import Checkpoint

#: Adam learning rate of the paper.
DEFAULT_LR = 0.05
#: Norm term / first term at the acceptance threshold, on the Gaussian shell (see the module docstring).
ALPHA_RATIO = 0.1
#: Optimisation steps (of the whole batch) before SAIL gives up.
DEFAULT_MAX_STEPS = DEFAULT_MITIGATION_STEPS
#: Steps a candidate may take before it restarts from a fresh seed (the paper's code: 10). A planted caption
#: of zoo:finetuned needs 40-90 Adam steps to fall 50-100x to the calibrated threshold; restarting after 20
#: threw every candidate away before it got there (0 of 40 accepted in 100 steps), so within the default
#: budget a candidate keeps its seed, and restarts only pay off when the budget is raised.
DEFAULT_RESTART_AFTER = 100
#: Exact sharpness checks only for candidates whose forward-difference estimate (from the loss) is below this
#: multiple of the threshold (and for every candidate's first x_T). On zoo:finetuned it leaves the optimisation
#: and the acceptances as they were and makes a step 25-35% cheaper (docs/mitigation.md). None: check every step.
DEFAULT_SCREEN: float | None = 2.0


# --------------------------------------------------------------------------------------------------
# SAIL, model-agnostic


@dataclass(frozen=True)
class SailStep:
    """Passed to `sail(callback=...)` after every check: the state the acceptance decision saw."""

    step: int
    x: torch.Tensor  # a copy of the candidates at the check
    seeds: tuple[int, ...]
    sharpness: tuple[float, ...]
    accepted: tuple[int, ...]  # slots accepted at this check


class BatchAdam:
    """torch.optim.Adam applied row by row, with a step count per row so one row can restart alone."""

    def __init__(self, x: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.t = [0] * x.shape[0]

    def reset(self, i: int) -> None:
        self.m[i].zero_()
        self.v[i].zero_()
        self.t[i] = 0

    def step(self, x: torch.Tensor, grad: torch.Tensor, rows: Sequence[int]) -> None:
        for i in rows:
            self.t[i] += 1
            g = grad[i]
            self.m[i].mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v[i].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            bc1 = 1 - self.b1 ** self.t[i]
            bc2 = 1 - self.b2 ** self.t[i]
            denom = (self.v[i].sqrt() / math.sqrt(bc2)).add_(self.eps)
            x[i].addcdiv_(self.m[i], denom, value=-self.lr / bc1)


def sail_loss(
    s_delta: ScoreFn, x: torch.Tensor, delta: float, alpha: float, start: ScoreFn | None = None
) -> torch.Tensor:
    """L(x) per row: ‖s_Δ(y + δ s_Δ(y)) − s_Δ(y)‖² + α ‖x‖² with y = start(x), the measured point (y = x
    without `start`); differentiable in x."""
    y = x if start is None else start(x)
    s = s_delta(y)
    return _probe_term(s_delta, y, s, delta) + alpha * squared_norm(x)


def _probe_term(s_delta: ScoreFn, y: torch.Tensor, s: torch.Tensor, delta: float) -> torch.Tensor:
    """The first term of `sail_loss` per row, ‖s_Δ(y + δ s) − s‖² with s = s_Δ(y): a forward difference of
    δ² ‖H_Δ s_Δ‖² (`memtest.detection.metrics.sharpness`), so divided by δ² it estimates the sharpness."""
    return squared_norm(s_delta(y + delta * s) - s)


def default_alpha(delta: float, threshold: float, dim: int, init_noise_sigma: float = 1.0) -> float:
    """α = ALPHA_RATIO · δ² τ / (d σ₀²): on the Gaussian shell the norm term is ALPHA_RATIO times the first
    term at the acceptance threshold τ."""
    if threshold <= 0 or not math.isfinite(threshold):
        return 0.0
    return ALPHA_RATIO * delta**2 * threshold / (dim * init_noise_sigma**2)


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MitigationError(f"SAIL setting {name} must be a positive integer, got {value!r}.")
    return value


def sail(
    s_delta: ScoreFn,
    noise: NoiseFn,
    seeds: Sequence[int],
    threshold: float,
    *,
    n: int | None = None,
    batch_size: int | None = None,
    lr: float = DEFAULT_LR,
    alpha: float | None = None,
    delta: float | None = None,
    renormalize: bool = False,
    init_noise_sigma: float = 1.0,
    max_steps: int = DEFAULT_MAX_STEPS,
    restart_after: int = DEFAULT_RESTART_AFTER,
    method: str = "fd",
    h: float | None = None,
    salt: str | None = None,
    callback: Callable[[SailStep], None] | None = None,
    screen: float | None = DEFAULT_SCREEN,
    warm_start: int = 0,
    start: ScoreFn | None = None,
) -> SailResult:
    """Find `n` initial noises whose sharpness is below `threshold` (SPEC.md §4).

    `s_delta` maps a batch x (B, ...) to s_Δ(x); `noise(seeds)` draws x_T for seeds. Candidates start
    from `seeds` (the unmitigated generations' seeds), then from fresh seeds derived from `salt`.
    `n` defaults to len(seeds), `batch_size` (candidates optimised in parallel) to n. `method` and `h` are
    the detector's Hessian-vector-product settings, used for the acceptance check. Returns a
    `SailResult`; when `max_steps` runs out first, `succeeded` is False and `reason` says why.

    Cheaper variants (acceptance is always the detector's own measurement):

    - `screen=f`: every step's loss already holds a forward-difference estimate of the sharpness,
      ‖s_Δ(x + δ s_Δ(x)) − s_Δ(x)‖² / δ²; the exact check (two more evaluations, reusing s_Δ(x)) runs only
      for candidates whose estimate is below f times the threshold, and for each candidate's first x_T.
      A step then costs the loss and its gradient alone (about 6 evaluations instead of 9).
    - `warm_start=k`: before optimising, measure the sharpness of the given seeds and of k fresh ones and
      let candidates enter the batch flattest first (seeds already below the threshold are accepted at
      once, with 0 steps). Screening costs about 3 evaluations per 4 seeds.

    `start` maps initial noises to the point the detector measures at (flow matching: the sampler's lead
    Euler steps from x_1, `Scorer.start_map`); sharpness and loss are taken there and differentiated through
    it, while the optimised variable, the norm term and the accepted latents stay the initial noises. A call
    of `start` counts as one evaluation.
    """
    if not seeds:
        raise MitigationError("SAIL needs at least one seed to start from.")
    want = _check_positive_int("n", n if n is not None else len(seeds))
    slots = _check_positive_int("batch_size", batch_size if batch_size is not None else want)
    _check_positive_int("restart_after", restart_after)
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
        raise MitigationError(f"SAIL setting max_steps must be a non-negative integer, got {max_steps!r}.")
    if not isinstance(warm_start, int) or isinstance(warm_start, bool) or warm_start < 0:
        raise MitigationError(f"SAIL setting warm_start must be a non-negative integer, got {warm_start!r}.")
    if screen is not None and not (screen >= 1 and math.isfinite(screen)):
        raise MitigationError(f"SAIL setting screen must be a finite number >= 1 (or None), got {screen!r}.")
    if not math.isfinite(threshold):
        raise MitigationError(f"The acceptance threshold must be a finite number, got {threshold!r}.")
    if not (lr > 0 and math.isfinite(lr)):
        raise MitigationError(f"SAIL's learning rate must be positive, got {lr!r}.")
    for name, value in (("alpha", alpha), ("delta", delta)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise MitigationError(f"SAIL setting {name} must be a non-negative finite number, got {value!r}.")
    started = time.perf_counter()
    stream = SeedStream(seeds, salt if salt is not None else ",".join(str(int(s)) for s in seeds))
    evaluations = 0
    rows_evaluated = 0

    def counted(z: torch.Tensor) -> torch.Tensor:
        nonlocal evaluations, rows_evaluated
        evaluations += 1
        rows_evaluated += int(z.shape[0])
        return s_delta(z)

    def at(z: torch.Tensor) -> torch.Tensor:
        """The measured point of initial noises z (z itself without `start`)."""
        nonlocal evaluations, rows_evaluated
        if start is None:
            return z
        evaluations += 1
        rows_evaluated += int(z.shape[0])
        return start(z)

    initial: dict[int, float] = {}
    queue: list[int] = []  # seeds screened by warm_start, flattest first; they enter the batch before fresh ones
    if warm_start:
        pool = [next(stream) for _ in range(len(seeds) + warm_start)]
        for i in range(0, len(pool), max(slots, 1)):
            chunk = pool[i : i + max(slots, 1)]
            with torch.no_grad():
                points = at(noise(chunk))
            values = measure_sharpness(counted, points, method=method, h=h).tolist()
            initial.update(zip(chunk, (float(v) for v in values), strict=True))
        queue = sorted(pool, key=lambda sd: initial[sd] if math.isfinite(initial[sd]) else math.inf)
    accepted: list[AcceptedLatent] = []
    # screened seeds already below the threshold are accepted as drawn, flattest first
    while queue and len(accepted) < want and initial[queue[0]] < threshold:
        seed = queue.pop(0)
        value = initial[seed]
        accepted.append(AcceptedLatent(seed, noise([seed])[0].detach().clone(), value, value, 0))
    known = dict(initial)  # exact sharpness of screened x_T: a candidate entering from the queue needs no check

    def next_seed() -> int:
        return queue.pop(0) if queue else next(stream)

    slot_seed = [next_seed() for _ in range(slots)]
    x = noise(slot_seed).detach().clone()
    dim = x[0].numel()
    h_abs = fd_step(x, h)
    radius = math.sqrt(dim) * init_noise_sigma
    adam = BatchAdam(x, lr)
    own = [0] * slots
    before: list[float | None] = [None] * slots
    history: list[tuple[float, ...]] = []
    steps = 0
    best_open = math.inf
    reason = ""
    checks = 0  # exact sharpness measurements of candidates (rows)
    sharp: list[float] = [math.nan] * slots

    def set_scale(s_now: torch.Tensor) -> None:
        nonlocal delta, alpha
        if delta is None:
            norms = s_now.detach().flatten(1).norm(dim=1)
            med = float(norms[torch.isfinite(norms)].median()) if torch.isfinite(norms).any() else 0.0
            delta = h_abs / med if med > 0 else h_abs
        if alpha is None:
            alpha = default_alpha(delta, threshold, dim, init_noise_sigma)

    while True:
        grad: torch.Tensor | None = None
        losses = [math.nan] * slots
        exact_rows = {i for i in range(slots) if own[i] == 0 and slot_seed[i] in known}
        for i in exact_rows:
            sharp[i] = known[slot_seed[i]]
        if len(accepted) >= want:
            reason = f"accepted {want} latent(s) below the threshold {threshold:.6g} after {steps} step(s)"
            break
        if screen is None or steps >= max_steps:
            # check every candidate exactly, then differentiate only the ones that step
            with torch.no_grad():
                y = at(x)
                s_now = counted(y)
            check = [i for i in range(slots) if i not in exact_rows]
        else:
            # one pass: the loss and its gradient for every candidate, whose first term estimates the sharpness
            xl = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                yl = at(xl)
                s_l = counted(yl)
                set_scale(s_l)
                assert delta is not None and alpha is not None
                first = _probe_term(counted, yl, s_l, delta)
                loss_all = first + alpha * squared_norm(xl)
                (grad,) = torch.autograd.grad(loss_all.sum(), xl)
            s_now, y = s_l.detach(), yl.detach()
            estimate = (first.detach() / max(delta, 1e-300) ** 2).tolist()
            losses = [float(v) for v in loss_all.detach().tolist()]
            cut = screen * threshold
            check = [i for i in range(slots) if i not in exact_rows and (own[i] == 0 or not (estimate[i] >= cut))]
            sharp = [known[slot_seed[i]] if i in exact_rows else float(v) for i, v in enumerate(estimate)]
        if check:
            rows_c = torch.tensor(check, device=x.device)
            values = measure_sharpness(
                counted, y.index_select(0, rows_c), method=method, h=h_abs, s_at_x=s_now.index_select(0, rows_c)
            ).tolist()
            checks += len(check)
            for i, v in zip(check, values, strict=True):
                sharp[i] = float(v)
        newly: list[int] = []
        restart: list[int] = []
        for i, value in enumerate(sharp):
            exact = i in check or i in exact_rows
            if own[i] == 0 and exact:
                before[i] = value
                initial[slot_seed[i]] = value
            if exact and math.isfinite(value) and value < threshold:
                newly.append(i)
                if len(accepted) < want:
                    b = before[i]
                    accepted.append(
                        AcceptedLatent(
                            seed=slot_seed[i],
                            latent=x[i].detach().clone(),
                            sharpness_before=float(b if b is not None else value),
                            sharpness_after=float(value),
                            steps=own[i],
                        )
                    )
            elif not math.isfinite(value) or own[i] >= restart_after:
                restart.append(i)
        if callback is not None:
            callback(SailStep(steps, x.detach().clone(), tuple(slot_seed), tuple(sharp), tuple(newly)))
        if len(accepted) >= want:
            reason = f"accepted {want} latent(s) below the threshold {threshold:.6g} after {steps} step(s)"
            break
        open_values = [v for i, v in enumerate(sharp) if i not in newly and math.isfinite(v)]
        best_open = min(open_values, default=best_open)
        if steps >= max_steps:
            reason = (
                f"step budget of {max_steps} exhausted with {len(accepted)} of {want} latent(s) below the "
                f"threshold {threshold:.6g} ({len(stream.used)} seeds tried; lowest sharpness of an unfinished "
                f"candidate {best_open:.6g}). Raise max_steps (the mitigation_steps option)"
                + ("" if renormalize else ", try renormalize=True")
                + ", or accept at a higher threshold."
            )
            break
        stepping = [i for i in range(slots) if i not in newly and i not in restart]
        if stepping:
            if grad is None:
                set_scale(s_now)
                assert delta is not None and alpha is not None
                # Only the candidates that step are differentiated (rows are independent).
                rows = torch.tensor(stepping, device=x.device)
                xl = x.index_select(0, rows).detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    loss = sail_loss(counted, xl, delta, alpha, None if start is None else at)
                    (grad_rows,) = torch.autograd.grad(loss.sum(), xl)
                grad = torch.zeros_like(x)
                grad.index_copy_(0, rows, grad_rows.detach().to(x.dtype))
                for i, v in zip(stepping, loss.detach().tolist(), strict=True):
                    losses[i] = float(v)
            history.append(tuple(losses[i] if i in stepping else math.nan for i in range(slots)))
            finite = torch.isfinite(grad.flatten(1)).all(dim=1).tolist()
            for i in list(stepping):
                if not (math.isfinite(losses[i]) and finite[i]):
                    stepping.remove(i)
                    restart.append(i)
            with torch.no_grad():
                adam.step(x, grad.to(x.dtype), stepping)
                if renormalize:
                    for i in stepping:
                        x[i].mul_(radius / max(float(x[i].norm()), 1e-30))
            for i in stepping:
                own[i] += 1
        steps += 1
        for i in sorted(set(newly) | set(restart)):
            seed = next_seed()
            slot_seed[i] = seed
            x[i] = noise([seed])[0].to(x.device, x.dtype)
            adam.reset(i)
            own[i] = 0
            before[i] = None
    return SailResult(
        accepted=tuple(accepted),
        wanted=want,
        steps=steps,
        seeds_tried=tuple(stream.used),
        succeeded=len(accepted) >= want,
        reason=reason,
        threshold=float(threshold),
        initial_sharpness=initial,
        history=tuple(history),
        final_sharpness=tuple(float(v) for v in sharp),
        settings={
            "lr": lr,
            "alpha": alpha,
            "delta": delta,
            "renormalize": renormalize,
            "init_noise_sigma": init_noise_sigma,
            "batch_size": slots,
            "max_steps": max_steps,
            "restart_after": restart_after,
            "method": method,
            "fd_h": h_abs,
            "screen": screen,
            "warm_start": warm_start,
        },
        seconds=time.perf_counter() - started,
        evaluations=evaluations,
        rows_evaluated=rows_evaluated,
        checks=checks,
    )


# --------------------------------------------------------------------------------------------------
# SAIL on a checkpoint


def mitigate_sail(
    target: Scorer | Checkpoint | str | Path,
    prompt: str,
    *,
    threshold: float | None = None,
    n: int | None = None,
    batch_size: int | None = None,
    lr: float = DEFAULT_LR,
    alpha: float | None = None,
    delta: float | None = None,
    renormalize: bool = False,
    max_steps: int = DEFAULT_MAX_STEPS,
    restart_after: int = DEFAULT_RESTART_AFTER,
    screen: float | None = DEFAULT_SCREEN,
    warm_start: int = 0,
    images: bool = True,
    guidance_scale: float = 7.5,
    num_inference_steps: int | None = None,
) -> Mitigation:
    """SAIL on a checkpoint: the detector's seeds, timestep, method and fd step; images before and after.

    `n` defaults to the scorer's n, and the first candidates start from the detector's seeds for the
    prompt, so `sharpness_before` are exactly the values the gate compared with the threshold.
    """
    scorer = as_scorer(target)
    thr = resolve_threshold(scorer, threshold)
    want = _check_positive_int("n", n if n is not None else scorer.settings.n)
    seeds = scorer.seeds_for(prompt, want)
    t, e_c, e_0 = first_step(scorer, prompt)
    s_fn = scorer.s_delta_fn(t, e_c, e_0)
    sigma0 = scorer.process.init_noise_sigma
    # flow matching: x_1 is optimised through the lead Euler steps to the measured noise level
    start = scorer.start_map(e_c, e_0) if scorer.process.lead_timesteps else None
    result = sail(
        s_fn,
        scorer.noise,
        seeds,
        thr,
        n=want,
        batch_size=batch_size,
        lr=lr,
        alpha=alpha,
        delta=delta,
        renormalize=renormalize,
        init_noise_sigma=sigma0,
        max_steps=max_steps,
        restart_after=restart_after,
        method=scorer.settings.method,
        h=scorer.fd_h,
        salt=f"{scorer.settings.seed}\0{prompt}",
        screen=screen,
        warm_start=warm_start,
        start=start,
    )
    originals = scorer.noise(seeds)
    missing = [s for s in seeds if s not in result.initial_sharpness]
    measured = dict(result.initial_sharpness)
    if missing:
        measured.update(zip(missing, detector_sharpness(scorer, e_c, e_0, scorer.noise(missing)), strict=True))
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = seed_images(scorer, prompt, originals, guidance_scale, num_inference_steps)
        if result.accepted:
            after_imgs = seed_images(scorer, prompt, result.latents, guidance_scale, num_inference_steps)[0]
    return Mitigation(
        method="sail",
        prompt=prompt,
        threshold=thr,
        succeeded=result.succeeded,
        reason=result.reason,
        seeds=tuple(seeds),
        sharpness_before=tuple(measured[s] for s in seeds),
        sharpness_after=tuple(result.sharpness_after),
        latents_before=originals,
        latents_after=result.latents if result.accepted else None,
        steps=result.steps,
        seconds=result.seconds,
        images_before=before_imgs,
        images_after=after_imgs,
        generation_seconds=gen_seconds,
        result=result,
        details=dict(result.settings),
    )
