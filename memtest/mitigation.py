"""Inference-time mitigation of memorization (SPEC.md §4): SAIL, and the baselines it is compared with.

SAIL (sharpness-aware initialization for latent diffusion, Jeon et al., ICML 2025) keeps the prompt and
the weights and chooses the initial noise x_T instead: memorization shows as a sharp landscape at the
first sampling step, and a deterministic sampler maps x_T one-to-one to the image, so an x_T where the
landscape is flat gives an image that is not the memorized one. memtest follows the paper, not the
published code:

    L(x) = ‖s_Δ(x + δ s_Δ(x)) − s_Δ(x)‖² + α ‖x‖²

- the probe direction s_Δ(x) is re-evaluated at the current x every step (and differentiated through);
- squared norms, as written (the first term is a finite-difference form of δ² ‖H_Δ s_Δ‖²);
- a batch of B candidates optimised in parallel with Adam (lr 0.05), each candidate with its own Adam
  state, so restarting one does not disturb the others;
- a candidate is accepted once its sharpness ‖H_Δ s_Δ‖², measured exactly as the detector measures it
  (same method and finite-difference step), falls below the acceptance threshold (default: the
  checkpoint's calibrated detection threshold); accepted latents are stored as independent copies;
- candidates that are not accepted after `restart_after` steps restart from fresh seeds that never
  repeat; the whole run stops at a step budget, and running out of it is a reported outcome
  (`succeeded=False` with a reason), not an exception.

Scale-dependent defaults (SPEC.md §4: the paper's α = 0.05 and loss thresholds belong to SD's latent size):

- δ: the detector's finite-difference step divided by the median ‖s_Δ‖ of the first candidates, so the
  probe point x + δ s_Δ(x) lies as far from x as the detector's own probes
  (`memtest.metrics.DEFAULT_FD_H` · √d) and the first term is δ² ‖H_Δ s_Δ‖² to the detector's accuracy.
- α: chosen so that on the Gaussian shell (‖x‖² = d σ₀², σ₀ = init_noise_sigma) the norm term equals
  `ALPHA_RATIO` (0.1) times the first term at the acceptance threshold τ:
  α = ALPHA_RATIO · δ² τ / (d σ₀²). The norm term then never dominates while a candidate is still sharper
  than the threshold (α = 0.01 on a 1,024-dimensional model swamped a sharpness of 1e-2 and collapsed x
  toward 0), yet it still penalises drifting off the shell.
- `renormalize=True` instead projects every candidate back onto the shell ‖x‖ = √d σ₀ after each step.

`sail` is model-agnostic: it takes any batched callable x -> s_Δ(x) (closed-form models test it).
`mitigate` runs SAIL or a baseline on a checkpoint through `memtest.scoring.Scorer` and generates the
images before and after through the checkpoint's own pipeline. Baselines with the same interface:
random token addition (`rta`) and random number addition (`rna`) to the prompt (Somepalli et al., 2023),
and prompt-embedding optimisation of the first-step score-difference norm ‖ε_c − ε_0‖ (`embedding`,
Wen et al., ICLR 2024). This mitigation acts at inference only: it does not change the weights, so it
does not protect a checkpoint whose weights are released.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .defaults import DEFAULT_MITIGATION_STEPS
from .errors import MitigationError
from .families.base import Cond, cond_expand
from .metrics import fd_step, hessian_vector_product

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .scoring import Scorer

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
NoiseFn = Callable[[Sequence[int]], torch.Tensor]

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
#: Baselines: words (RTA) or numbers (RNA) added to the prompt.
DEFAULT_ADDITIONS = 2
#: Prompt-embedding optimisation (Wen et al.): Adam learning rate and step budget.
DEFAULT_EMBEDDING_LR = 0.1
DEFAULT_EMBEDDING_STEPS = 50
#: Longest side of the thumbnails stored in results records.
THUMBNAIL_SIZE = 64

METHODS: tuple[str, ...] = ("sail", "rta", "rna", "embedding")


# --------------------------------------------------------------------------------------------------
# seeds


def fresh_seed(salt: str, k: int) -> int:
    """The k-th fresh seed of a run: 48 bits of sha256(salt, k), stable across runs and machines."""
    digest = hashlib.sha256(f"memtest-sail\0{salt}\0{k}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


class SeedStream:
    """Seeds in order: `first`, then fresh ones (`fresh_seed(salt, k)`); never the same seed twice."""

    def __init__(self, first: Sequence[int], salt: str) -> None:
        self._first = [int(s) for s in first]
        self._salt = salt
        self._k = 0
        self.used: list[int] = []
        self._seen: set[int] = set()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        while True:
            if self._first:
                seed = self._first.pop(0)
            else:
                seed = fresh_seed(self._salt, self._k)
                self._k += 1
            if seed not in self._seen:
                self._seen.add(seed)
                self.used.append(seed)
                return seed


def gaussian_noise(shape: Sequence[int], sigma: float = 1.0, device: str | torch.device = "cpu") -> NoiseFn:
    """seeds -> x_T of shape (len(seeds), *shape): N(0, σ² I), one CPU generator per seed."""
    shape = tuple(int(s) for s in shape)

    def noise(seeds: Sequence[int]) -> torch.Tensor:
        out = torch.empty((len(seeds), *shape), dtype=torch.float32)
        for i, seed in enumerate(seeds):
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            out[i] = torch.randn(shape, generator=gen, dtype=torch.float32)
        return (out * sigma).to(device)

    return noise


# --------------------------------------------------------------------------------------------------
# SAIL, model-agnostic


@dataclass(frozen=True)
class AcceptedLatent:
    """One accepted initial noise: an independent tensor, its seed, and its sharpness before and after."""

    seed: int
    latent: torch.Tensor
    sharpness_before: float  # at the seed's own x_T, before any step
    sharpness_after: float  # at `latent`, where the candidate was accepted
    steps: int  # this candidate's own optimisation steps


@dataclass(frozen=True)
class SailResult:
    """What `sail` found. `succeeded` is False (with `reason`) when the step budget ran out first."""

    accepted: tuple[AcceptedLatent, ...]
    wanted: int
    steps: int  # optimisation steps of the batch
    seeds_tried: tuple[int, ...]  # every seed a candidate started from, in order; no repeats
    succeeded: bool
    reason: str
    threshold: float
    initial_sharpness: dict[int, float]  # sharpness of every tried seed's x_T that was measured
    history: tuple[tuple[float, ...], ...]  # per step: each slot's loss L(x) before the step (nan: no step)
    final_sharpness: tuple[float, ...] = ()  # every slot's sharpness at the last check
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: int = 0  # calls of s_delta
    rows_evaluated: int = 0  # rows through s_delta (forward), the cost in units of one x
    checks: int = 0  # exact sharpness measurements of single candidates

    @property
    def latents(self) -> torch.Tensor:
        """The accepted latents stacked, (k, ...), k = len(accepted) (<= wanted)."""
        if not self.accepted:
            raise MitigationError(f"SAIL accepted no latent: {self.reason}")
        return torch.stack([a.latent for a in self.accepted])

    @property
    def sharpness_before(self) -> list[float]:
        return [a.sharpness_before for a in self.accepted]

    @property
    def sharpness_after(self) -> list[float]:
        return [a.sharpness_after for a in self.accepted]


@dataclass(frozen=True)
class SailStep:
    """Passed to `sail(callback=...)` after every check: the state the acceptance decision saw."""

    step: int
    x: torch.Tensor  # a copy of the candidates at the check
    seeds: tuple[int, ...]
    sharpness: tuple[float, ...]
    accepted: tuple[int, ...]  # slots accepted at this check


class _BatchAdam:
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


def _flat_sq(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).to(torch.promote_types(t.dtype, torch.float32)).pow(2).sum(dim=1)


def _hvp_context(method: str) -> contextlib.AbstractContextManager[Any]:
    if method != "jvp":
        return contextlib.nullcontext()
    # Fused SDPA kernels have no forward-mode derivative (pytorch#128971): use the math path.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def measure_sharpness(
    s_delta: ScoreFn, x: torch.Tensor, method: str = "fd", h: float | None = None, s_at_x: torch.Tensor | None = None
) -> torch.Tensor:
    """‖H_Δ s_Δ‖² per row of x, as the detector computes it; `s_at_x` reuses s_Δ(x) when known."""
    with torch.no_grad():
        s = s_delta(x) if s_at_x is None else s_at_x
    with _hvp_context(method):
        if method == "jvp":
            hv = hessian_vector_product(s_delta, x, s, method="jvp")
        else:
            with torch.no_grad():
                hv = hessian_vector_product(s_delta, x, s, method=method, h=h, s_at_x=s)
    return _flat_sq(hv.detach())


def sail_loss(
    s_delta: ScoreFn, x: torch.Tensor, delta: float, alpha: float, start: ScoreFn | None = None
) -> torch.Tensor:
    """L(x) per row: ‖s_Δ(y + δ s_Δ(y)) − s_Δ(y)‖² + α ‖x‖² with y = start(x), the measured point (y = x
    without `start`); differentiable in x."""
    y = x if start is None else start(x)
    s = s_delta(y)
    return _flat_sq(s_delta(y + delta * s) - s) + alpha * _flat_sq(x)


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
    adam = _BatchAdam(x, lr)
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
                first = _flat_sq(counted(yl + delta * s_l) - s_l)
                loss_all = first + alpha * _flat_sq(xl)
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
                f"candidate {best_open:.6g}). Raise max_steps (pytest: --memtest-mitigation-steps)"
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
# images: generation, thumbnails, copy distance


def generate_images(
    checkpoint: Checkpoint,
    latents: torch.Tensor,
    *,
    prompt: str | None = None,
    cond: Cond | None = None,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
) -> np.ndarray:
    """Images (n, H, W, 3) in [0, 1] from initial noises x_T (n, C, h, w) through the checkpoint's pipeline.

    The family's own diffusers pipeline with DDIM from the checkpoint's noise schedule (the scorer's sampler,
    so the first step is the one the detector looks at), classifier-free guidance against the family's
    unconditional branch. Give `prompt`, or `cond` (one prompt's conditioning, as `Scorer.embed` returns it).
    """
    if (prompt is None) == (cond is None):
        raise MitigationError("generate_images needs exactly one of prompt= and cond=.")
    images = checkpoint.family.generate(
        checkpoint,
        latents,
        prompt=prompt,
        cond=cond,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
    )
    return np.asarray(images, dtype=np.float32)


def png_thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> list[str]:
    """(N, H, W, 3) in [0, 1] -> base64 PNGs (no data: prefix), shrunk so the longer side is <= size."""
    from PIL import Image

    out = []
    for img in np.asarray(images, dtype=np.float32):
        pil = Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="RGB")
        if max(pil.size) > size:
            pil.thumbnail((size, size))
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def image_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """RMSE in [0, 1] pixel units between every image (N, H, W, 3) and every reference (M, H, W, 3): (N, M)."""
    a = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    b = np.asarray(references, dtype=np.float64).reshape(len(references), -1)
    if a.shape[1] != b.shape[1]:
        raise MitigationError(f"Images {np.shape(images)} and references {np.shape(references)} differ in size.")
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.asarray(np.sqrt(np.maximum(sq, 0.0) / a.shape[1]), dtype=np.float64)


def nearest_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Nearest-neighbour RMSE of every image to a set of references, (N,)."""
    return np.asarray(image_distances(images, references).min(axis=1), dtype=np.float64)


def vae_roundtrip(checkpoint: Checkpoint, image: np.ndarray) -> np.ndarray:
    """decode(encode(image)) with the posterior mean: the closest image the checkpoint can output for a
    training image. (H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]."""
    if checkpoint.vae is None:
        raise MitigationError(f"Checkpoint {checkpoint.name} has no VAE to reproduce an image with.")
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))[None] * 2.0 - 1.0
    x = torch.from_numpy(arr).to(checkpoint.device, checkpoint.dtype)
    with torch.no_grad():
        rec = checkpoint.vae.decode(checkpoint.vae.encode(x).latent_dist.mean).sample
    out = (rec[0].float().cpu().numpy().transpose(1, 2, 0) + 1.0) / 2.0
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def planted_image(checkpoint_folder: str | Path, prompt: str) -> np.ndarray | None:
    """The training image a canary checkpoint memorised for `prompt` ((H, W, 3) in [0, 1]), else None."""
    from .zoo.manifest import MANIFEST_NAME, load_manifest

    folder = Path(checkpoint_folder)
    if not (folder / MANIFEST_NAME).is_file():
        return None
    for p in load_manifest(folder).planted:
        if p.caption == prompt:
            return p.image()
    return None


#: A canary folder may hold this file: {"boundary": RMSE, "source": "..."}: an image closer than `boundary` to
#: the memorised image (as the VAE reproduces it) is a copy (scripts/mitigation_proof.py measures it).
COPY_FILENAME = "memtest-copy.json"


@dataclass(frozen=True)
class CopyReference:
    """What a generation of a planted caption is compared with: the memorised image as the checkpoint's VAE
    reproduces it, and (when the canary records one) the copy boundary."""

    image: np.ndarray  # (H, W, 3) in [0, 1]
    boundary: float | None

    def stats(self, images: np.ndarray | None) -> dict[str, Any] | None:
        """Mean RMSE of `images` to the memorised image and, with a boundary, how many are copies."""
        if images is None or len(images) == 0:
            return None
        d = image_distances(images, self.image[None])[:, 0]
        copies = None if self.boundary is None else int((d < self.boundary).sum())
        return {
            "distance": float(d.mean()),
            "copies": copies,
            "images": len(d),
            "rate": None if copies is None else copies / len(d),
        }


def copy_reference(checkpoint: Checkpoint, prompt: str) -> CopyReference | None:
    """The memorised image of `prompt` on a canary checkpoint (through its VAE) and its copy boundary, or None
    when the checkpoint plants no image for the prompt."""
    import json

    target = planted_image(checkpoint.path, prompt)
    if target is None:
        return None
    if checkpoint.vae is not None:
        target = vae_roundtrip(checkpoint, target)
    boundary = None
    path = Path(checkpoint.path) / COPY_FILENAME
    if path.is_file():
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("boundary")
        except (OSError, ValueError, AttributeError) as exc:
            raise MitigationError(f"{path} is not a readable copy record ({exc}); regenerate it") from exc
        if not isinstance(value, (int, float)) or not value > 0:
            raise MitigationError(f"{path}: boundary must be a positive number, got {value!r}")
        boundary = float(value)
    return CopyReference(target, boundary)


# --------------------------------------------------------------------------------------------------
# checkpoint level: SAIL and the baselines, one interface


@dataclass(frozen=True)
class Mitigation:
    """One prompt's mitigation on a checkpoint, whatever the method.

    `sharpness_before` are the detector's per-generation values at the original seeds' x_T;
    `sharpness_after` are measured the same way on what the method changed: SAIL at the accepted x_T,
    the prompt baselines at the original x_T under the new prompt or embedding. Images are (n, H, W, 3)
    in [0, 1]: `images_before` from the original seeds and prompt (unmitigated), `images_after` the
    mitigated generations. `seconds` is the mitigation alone; `generation_seconds` one full generation of
    the n unmitigated images, measured in the same run (the cost ratio is their quotient).
    """

    method: str
    prompt: str
    threshold: float
    succeeded: bool
    reason: str
    seeds: tuple[int, ...]
    sharpness_before: tuple[float, ...]
    sharpness_after: tuple[float, ...]
    latents_before: torch.Tensor
    latents_after: torch.Tensor | None
    prompt_after: str | None = None
    steps: int | None = None
    seconds: float = 0.0
    images_before: np.ndarray | None = None
    images_after: np.ndarray | None = None
    generation_seconds: float | None = None
    sail: SailResult | None = None
    embedding_after: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # On a canary that plants the prompt: `CopyReference.stats` of the images before and after
    # ({"distance", "copies", "images", "rate"}; copies and rate None without a recorded boundary).
    copy_before: dict[str, Any] | None = None
    copy_after: dict[str, Any] | None = None

    @property
    def cost_ratio(self) -> float | None:
        """Mitigation time over the time of one full generation of the same n images."""
        if not self.generation_seconds:
            return None
        return self.seconds / self.generation_seconds

    def record(
        self,
        id: str,
        *,
        copy_distance_before: float | None = None,
        copy_distance_after: float | None = None,
        thumbnail_size: int = THUMBNAIL_SIZE,
    ) -> dict[str, Any]:
        """The results document's `mitigation` entry (plain JSON types; images as small base64 PNGs)."""
        before, after = self.images_before, self.images_after
        return {
            "id": id,
            "prompt": self.prompt,
            "method": self.method,
            "threshold": float(self.threshold),
            "succeeded": bool(self.succeeded),
            "reason": self.reason,
            "steps": self.steps,
            "seeds": [int(s) for s in self.seeds],
            "seeds_tried": [int(s) for s in self.sail.seeds_tried] if self.sail is not None else [],
            "prompt_after": self.prompt_after,
            "sharpness_before": [float(v) for v in self.sharpness_before],
            "sharpness_after": [float(v) for v in self.sharpness_after],
            "images_before": png_thumbnails(before, thumbnail_size) if before is not None else [],
            "images_after": png_thumbnails(after, thumbnail_size) if after is not None else [],
            "copy_distance_before": None if copy_distance_before is None else float(copy_distance_before),
            "copy_distance_after": None if copy_distance_after is None else float(copy_distance_after),
            "seconds": float(self.seconds),
            "generation_seconds": None if self.generation_seconds is None else float(self.generation_seconds),
            "copy_before": self.copy_before,
            "copy_after": self.copy_after,
        }


def _scorer(target: Scorer | Checkpoint | str | Path) -> Scorer:
    from .checkpoint import Checkpoint, load_checkpoint
    from .scoring import Scorer

    if isinstance(target, Scorer):
        return target
    ckpt = target if isinstance(target, Checkpoint) else load_checkpoint(target)
    return Scorer(ckpt)


def resolve_threshold(scorer: Scorer, threshold: float | None) -> float:
    """`threshold` if given, else the checkpoint's own calibrated sharpness threshold (checked to match)."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise MitigationError(f"The acceptance threshold must be a finite number, got {threshold!r}.")
        return float(threshold)
    from .calibration import CALIBRATION_FILENAME, check_compatible, load_calibration

    ckpt = scorer.ckpt
    path = Path(ckpt.path) / CALIBRATION_FILENAME
    if not path.is_file():
        raise MitigationError(
            f"Checkpoint {ckpt.name} has no {CALIBRATION_FILENAME}, so SAIL has no acceptance threshold. Pass "
            "threshold= (for example a calibration's threshold), or calibrate first (`memtest calibrate`)."
        )
    cal = load_calibration(path)
    check_compatible(cal, scorer.identity())
    _check_sharpness_settings(scorer)
    return float(cal.threshold)


def reference_threshold(scorer: Scorer, quantile: float = 0.5) -> float:
    """A stricter acceptance threshold: the `quantile` of the checkpoint's calibration reference scores.

    The detection threshold is the sharpness of the sharpest non-memorized prompts (its 1 - fpr quantile);
    the median asks SAIL for a landscape as flat as a typical non-memorized prompt's. On a canary whose
    planted captions reproduce their image from every x_T, only the stricter one moves the image away.
    """
    from .calibration import CALIBRATION_FILENAME, check_compatible, load_calibration

    if not 0.0 <= quantile <= 1.0:
        raise MitigationError(f"quantile must be in [0, 1], got {quantile!r}.")
    path = Path(scorer.ckpt.path) / CALIBRATION_FILENAME
    if not path.is_file():
        raise MitigationError(
            f"Checkpoint {scorer.ckpt.name} has no {CALIBRATION_FILENAME} to take reference scores from."
        )
    cal = load_calibration(path)
    check_compatible(cal, scorer.identity())
    _check_sharpness_settings(scorer)
    return float(np.quantile(np.asarray(cal.reference_scores, dtype=np.float64), quantile))


def _check_sharpness_settings(scorer: Scorer) -> None:
    s = scorer.settings
    if s.metric != "sharpness" or s.steps != 1:
        raise MitigationError(
            f"Mitigation accepts on first-step sharpness, but the scorer measures {s.metric} over {s.steps} "
            "step(s), so its calibrated threshold does not apply. Score with metric=sharpness, steps=1, or pass "
            "a sharpness threshold explicitly."
        )


def _first_step(scorer: Scorer, prompt: str) -> tuple[int, Cond, Cond]:
    t = scorer.timesteps[0]
    return t, scorer.embed([prompt]), scorer.null()


def _start_point(scorer: Scorer, c_c: Cond, c_0: Cond, x: torch.Tensor) -> torch.Tensor:
    """Where the detector measures for initial noises x: x itself (DDPM families), or the point after the
    sampler's lead Euler steps from x_1 under the prompt's guidance (flow matching, `Scorer.start_map`)."""
    with torch.no_grad():
        return scorer.start_map(c_c, c_0)(x)


def _seed_images(
    scorer: Scorer, prompt: str, latents: torch.Tensor, guidance_scale: float, steps: int | None
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    images = generate_images(
        scorer.ckpt,
        latents,
        prompt=prompt,
        guidance_scale=guidance_scale,
        num_inference_steps=steps or scorer.settings.num_inference_steps,
    )
    return images, time.perf_counter() - started


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
    scorer = _scorer(target)
    thr = resolve_threshold(scorer, threshold)
    seeds = scorer.seeds_for(prompt)
    want = n if n is not None else len(seeds)
    if want > len(seeds):
        from .scoring import derive_seeds

        seeds = derive_seeds(scorer.settings.seed, want, prompt if scorer.settings.per_prompt_seeds else None)
    seeds = seeds[:want]
    t, e_c, e_0 = _first_step(scorer, prompt)
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
        points = _start_point(scorer, e_c, e_0, scorer.noise(missing))
        values = measure_sharpness(s_fn, points, scorer.settings.method, scorer.fd_h).tolist()
        measured.update(zip(missing, values, strict=True))
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = _seed_images(scorer, prompt, originals, guidance_scale, num_inference_steps)
        if result.accepted:
            after_imgs = generate_images(
                scorer.ckpt,
                result.latents,
                prompt=prompt,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps or scorer.settings.num_inference_steps,
            )
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
        sail=result,
        details=dict(result.settings),
    )


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


def _rng(prompt: str, method: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{method}\0{seed}\0{prompt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


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
    t, e_c, e_0 = _first_step(scorer, prompt)
    at_x = _start_point(scorer, e_c, e_0, x)
    before = measure_sharpness(scorer.s_delta_fn(t, e_c, e_0), at_x, scorer.settings.method, scorer.fd_h).tolist()
    started = time.perf_counter()
    new_prompt = new_prompt_fn(_rng(prompt, method, seed))
    seconds = time.perf_counter() - started
    e_new = scorer.embed([new_prompt])
    after = measure_sharpness(
        scorer.s_delta_fn(t, e_new, e_0), _start_point(scorer, e_new, e_0, x), scorer.settings.method, scorer.fd_h
    ).tolist()
    before_imgs = after_imgs = None
    gen_seconds = None
    if images:
        before_imgs, gen_seconds = _seed_images(scorer, prompt, x, guidance_scale, num_inference_steps)
        after_imgs, _ = _seed_images(scorer, new_prompt, x, guidance_scale, num_inference_steps)
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
    scorer = _scorer(target)
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
    scorer = _scorer(target)

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
    scorer = _scorer(target)
    thr = resolve_threshold(scorer, threshold)
    seeds = scorer.seeds_for(prompt)
    x = scorer.noise(seeds)
    t, c_c, c_0 = _first_step(scorer, prompt)
    method, h = scorer.settings.method, scorer.fd_h
    pt = _start_point(scorer, c_c, c_0, x)  # the measured point (x itself for DDPM families)
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
            pt = _start_point(scorer, current(), c_0, x)
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
        before_imgs, gen_seconds = _seed_images(scorer, prompt, x, guidance_scale, num_inference_steps)
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


def judge_mitigation(
    case: Any, mitigation: Mitigation, unmitigated: float, *, checkpoint: Checkpoint | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `mitigate` case record and the results' `mitigation` entry for a suite case (an `AuditCase`).

    The case passes when the method succeeded, every accepted x_T is below the threshold, and their mean
    sharpness is below `unmitigated` (the detector's score of the prompt). On a canary `checkpoint` whose
    manifest plants the prompt, the entry also carries the mean RMSE of the images before and after to the
    memorised training image as the checkpoint's VAE reproduces it (`vae_roundtrip`). A case with
    `mitigate: copy` must also pass `judge_copy` (the copy leaves); without a copy reference and boundary for
    the prompt it fails, naming the suite file, the case and the fix. Its record and entry get
    `copy_required: true` and `copy_verdict` ("passed" or "failed").
    """
    after = [float(v) for v in mitigation.sharpness_after]
    thr = float(mitigation.threshold)
    # With nothing accepted, the score is the lowest sharpness any candidate reached at the end.
    final = [v for v in (mitigation.sail.final_sharpness if mitigation.sail else ()) if math.isfinite(v)]
    score = sum(after) / len(after) if after else min(final, default=float(unmitigated))
    problems = []
    if not mitigation.succeeded:
        problems.append(f"SAIL did not finish: {mitigation.reason}")
    above = [v for v in after if not v < thr]
    if above:
        problems.append(f"{len(above)} accepted x_T at or above the threshold {thr:.6g}: {above}")
    if not after:
        problems.append("no latent was accepted")
    elif not score < unmitigated:
        problems.append(f"mean sharpness after {score:.6g} is not below the unmitigated {unmitigated:.6g}")
    record: dict[str, Any] = {
        "id": f"{case.id}[mitigate]",
        "suite": case.suite,
        "suite_version": case.suite_version,
        "case_id": case.case_id,
        "kind": "mitigate",
        "prompt": case.prompt,
        "expectation": case.expectation,
        "tags": list(case.tags),
        "score": score,
        "values": after,
        "seeds": [a.seed for a in mitigation.sail.accepted] if mitigation.sail is not None else list(mitigation.seeds),
        "threshold": thr,
        "margin": score - thr,
        "flagged": None,
        "unmitigated": float(unmitigated),
        "outcome": "failed" if problems else "passed",
        "message": (
            f"{case.id}: mitigation ({mitigation.method}) failed: " + "; ".join(problems)
            if problems
            else f"{case.id}: {len(after)} flat x_T found in {mitigation.steps} step(s), mean sharpness "
            f"{unmitigated:.6g} -> {score:.6g} (threshold {thr:.6g})"
        ),
    }
    if checkpoint is not None and mitigation.copy_before is None:
        mitigation = with_copy_stats(mitigation, checkpoint)
    cb, ca = mitigation.copy_before, mitigation.copy_after
    before_d = None if cb is None else float(cb["distance"])
    after_d = None if ca is None else float(ca["distance"])
    if cb is not None:
        record["copy_before"], record["copy_after"] = cb, ca
        record["message"] += "; " + describe_copies(cb, ca)
    entry = mitigation.record(case.id, copy_distance_before=before_d, copy_distance_after=after_d)
    if copy_required(case):
        problem = _copy_problem(case, mitigation, checkpoint)
        verdict = "failed" if problem else "passed"
        record["copy_required"] = entry["copy_required"] = True
        record["copy_verdict"] = entry["copy_verdict"] = verdict
        if problem:
            if not problems:
                record["message"] = f"{case.id}: mitigation ({mitigation.method}) failed: {problem}"
            else:
                record["message"] += f"; and {problem}"
            record["outcome"] = "failed"
        else:
            record["message"] += f"; the copy left ({COPY_RULE})"
    return record, entry


#: The rule of `mitigate: copy` (memtest.suites), as the messages state it.
COPY_RULE = "copies after at most half the copies before, as rates"


def copy_required(case: Any) -> bool:
    """Whether a suite case (a `SuiteCase` or an `AuditCase`) says `mitigate: copy`: the copy must leave."""
    return getattr(case, "mitigate", False) == "copy"


def judge_copy(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """Why the copy did not leave, or None when it did, from `CopyReference.stats` of the images before and after.

    The rule of `mitigate: copy`: copies must be counted (a recorded copy boundary), at least one of the
    unmitigated images must be a copy, and the copy rate of the mitigated images (SAIL: those from the accepted
    x_T) must be at most half the rate before: 4/4 -> 2/4 passes, 4/4 -> 3/4 fails, 1/4 -> 0/4 passes,
    4/4 -> 1/2 (two accepted) passes, 4/4 -> 2/3 fails.
    """
    if before is None:
        return "no copy reference: the checkpoint plants no image for this prompt"
    if before.get("copies") is None:
        return "copies are not counted: the checkpoint records no copy boundary"
    n_before, c_before = int(before["images"]), int(before["copies"])
    if c_before == 0:
        return f"nothing to remove: 0/{n_before} generations copy before mitigation"
    if after is None or not after.get("images"):
        return f"copies {c_before}/{n_before} before and no mitigated image to count copies in"
    n_after, c_after = int(after["images"]), int(after["copies"])
    if 2 * c_after * n_before > c_before * n_after:
        allowed = (c_before * n_after) // (2 * n_before)
        return (
            f"the copy did not leave: copies {c_before}/{n_before} -> {c_after}/{n_after}, "
            f"more than half the rate before (at most {allowed}/{n_after} allowed)"
        )
    return None


def _copy_problem(case: Any, mitigation: Mitigation, checkpoint: Checkpoint | None) -> str | None:
    """`judge_copy` with a message that names the suite file, the case and the fix where the case cannot be judged."""
    source = getattr(case, "source", None) or getattr(case, "suite", "the suite")
    line = getattr(case, "line", None)
    where = f"{source}{f', line {line}' if line else ''}, case '{getattr(case, 'case_id', case)}'"
    fix = f"use mitigate: true in {where}"
    before, after = mitigation.copy_before, mitigation.copy_after
    name = "the checkpoint" if checkpoint is None else checkpoint.name
    if before is None:
        if mitigation.images_before is None:
            return f"mitigate: copy needs the unmitigated images to count copies in ({where}); generate them"
        if checkpoint is None:
            return f"mitigate: copy needs the checkpoint to count copies on ({where}); pass checkpoint="
        return (
            f"mitigate: copy needs a checkpoint whose manifest plants this prompt (a copy reference); "
            f"{name} plants no image for {mitigation.prompt!r}: {fix}"
        )
    if before.get("copies") is None:
        return (
            f"mitigate: copy needs the copy boundary of {name} ({COPY_FILENAME} in its folder, "
            f"written by scripts/train_mixture_canary.py --finish) to count copies: add it, or {fix}"
        )
    problem = judge_copy(before, after)
    if problem is not None and before.get("copies") == 0:
        problem += f": the prompt does not copy on this checkpoint; {fix}"
    return problem


def describe_copies(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """ "copies 4/4 -> 1/4, RMSE to the memorised image 0.09 -> 0.21" (copies only with a recorded boundary)."""

    def count(c: dict[str, Any] | None) -> str:
        return "-" if c is None or c["copies"] is None else f"{c['copies']}/{c['images']}"

    dist = "-" if after is None else f"{after['distance']:.3f}"
    head = "" if before["copies"] is None else f"copies {count(before)} -> {count(after)}, "
    return f"{head}RMSE to the memorised image {before['distance']:.3f} -> {dist}"


_METHODS: dict[str, Callable[..., Mitigation]] = {
    "sail": mitigate_sail,
    "rta": mitigate_rta,
    "rna": mitigate_rna,
    "embedding": mitigate_embedding,
}


def mitigate(target: Scorer | Checkpoint | str | Path, prompt: str, method: str = "sail", **options: Any) -> Mitigation:
    """Mitigate `prompt` on a checkpoint (or a `Scorer`, whose settings and caches are reused) with `method`:
    sail (default), rta, rna or embedding; `options` go to `mitigate_<method>`."""
    fn = _METHODS.get(method)
    if fn is None:
        raise MitigationError(f"Unknown mitigation method {method!r}. Choose one of: {', '.join(METHODS)}.")
    scorer = _scorer(target)
    return with_copy_stats(fn(scorer, prompt, **options), scorer.ckpt)


def with_copy_stats(m: Mitigation, checkpoint: Checkpoint | None) -> Mitigation:
    """`m` with `copy_before` / `copy_after` filled in when `checkpoint` is a canary that plants the prompt."""
    if checkpoint is None or m.images_before is None:
        return m
    ref = copy_reference(checkpoint, m.prompt)
    if ref is None:
        return m
    import dataclasses

    return dataclasses.replace(m, copy_before=ref.stats(m.images_before), copy_after=ref.stats(m.images_after))


__all__ = [
    "ALPHA_RATIO",
    "COPY_FILENAME",
    "COPY_RULE",
    "METHODS",
    "AcceptedLatent",
    "CopyReference",
    "Mitigation",
    "SailResult",
    "SailStep",
    "SeedStream",
    "copy_reference",
    "copy_required",
    "default_alpha",
    "describe_copies",
    "fresh_seed",
    "gaussian_noise",
    "generate_images",
    "image_distances",
    "judge_copy",
    "judge_mitigation",
    "measure_sharpness",
    "mitigate",
    "mitigate_embedding",
    "mitigate_rna",
    "mitigate_rta",
    "mitigate_sail",
    "nearest_distances",
    "planted_image",
    "png_thumbnails",
    "reference_threshold",
    "sail",
    "sail_loss",
    "vae_roundtrip",
    "with_copy_stats",
]
