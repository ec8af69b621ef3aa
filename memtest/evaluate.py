"""`memtest evaluate`: the detector comparison table (method, steps, n, AUC, TPR at 1% FPR, model evaluations and
seconds per prompt) of one checkpoint on labelled prompts, as in Table 1 of Jeon et al. (ICML 2025).

Positives are the memorized cases of the positive suites, negatives the clean and reference cases of the negative
suites; the prompt is the unit of the ROC. Every (detector, steps) pair is scored once, at the largest n asked for:
a detector's seeds are base..base+n-1 (`memtest.detection.noise.derive_seeds`), so the first k generations of that
run start from the same initial noises as an n=k run, and the n=k row takes the mean of the first k per-generation
values (docs/evaluate.md says how close that is to a separate n=k run). `share=False` scores every n separately.

Detection quality uses scikit-learn's ROC: AUC, and TPR at FPR <= target taken at the empirical threshold (the
largest TPR whose FPR does not exceed the target on the ROC's points, no interpolation; SPEC.md §3). The
outputs are one JSON document (`memtest.evaluation/1`), a Markdown table and a self-contained HTML page with one
ROC curve per row (drawn by memtest.report.svg).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest._io import atomic_write_text
from memtest._version import __version__
from memtest.audit.gate import resolve_suites
from memtest.audit.suites import Suite, resolve_suite
from memtest.defaults import DEFAULT_FPR
from memtest.detection.settings import HVP_METHODS, METRICS, ScoreSettings
from memtest.errors import MemtestError, ScoringError, SuiteError, did_you_mean, option

if TYPE_CHECKING:
    from memtest.models.checkpoint import Checkpoint
    from memtest.progress import ProgressFn

SCHEMA = "memtest.evaluation/1"
#: The expectations that make a case a positive (from a positive suite) or a negative (from a negative suite).
POSITIVE_EXPECTATIONS = ("memorized",)
NEGATIVE_EXPECTATIONS = ("clean", "reference")
#: Extra denoiser evaluations per generation and measured step that the sharpness metric's Hessian-vector
#: product costs, by method (central difference: two points; forward difference: one; JVP: one forward-mode pass).
HVP_EVALUATIONS = {"fd": 2, "fd-forward": 1, "jvp": 1}
FILES = ("evaluation.json", "evaluation.md", "evaluation.html")


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class LabelledPrompt:
    """One prompt of the ROC: label 1 (a positive suite's memorized case) or 0 (a negative suite's clean or
    reference case)."""

    suite: str
    case_id: str
    prompt: str
    expectation: str
    label: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "id": self.case_id,
            "prompt": self.prompt,
            "expectation": self.expectation,
            "label": self.label,
        }


@dataclass(frozen=True)
class EvaluationRow:
    """One row of the table: detector `metric` averaged over the first `steps` sampling steps, mean of `n`
    generations. `applicable` is False (with `reason`) where the scorer refused the combination."""

    metric: str
    steps: int
    n: int
    applicable: bool
    reason: str | None = None
    auc: float | None = None
    tpr_at_fpr: float | None = None
    #: Denoiser evaluations per prompt, one evaluation = both classifier-free-guidance branches of one
    #: generation in one batched forward (SPEC.md §2's convention); None for a detector memtest has no formula for.
    model_evaluations: int | None = None
    #: Denoiser rows that actually ran, per prompt (each branch of each generation one row, batch padding and the
    #: shared unconditional branch at x_T included), counted by a forward hook on the denoiser module in the run
    #: this row's scores come from (scaled by n/N for a prefix row).
    denoiser_rows: float | None = None
    seconds_per_prompt: float | None = None
    #: "measured" (this n was scored by itself) or "scaled from n=N" (a prefix of the n=N run: its time * n/N).
    timing: str = "measured"
    #: "run" (scored at this n) or "prefix of n=N" (the first n generations of the n=N run).
    source: str = "run"
    #: The prompt's score (mean of its n per-generation values), in the result's prompt order.
    scores: tuple[float, ...] = ()
    #: The ROC curve to draw (scikit-learn's points, intermediate ones dropped).
    fpr: tuple[float, ...] = ()
    tpr: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.metric}, steps {self.steps}, n {self.n}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "steps": self.steps,
            "n": self.n,
            "applicable": self.applicable,
            "reason": self.reason,
            "auc": self.auc,
            "tpr_at_fpr": self.tpr_at_fpr,
            "model_evaluations": self.model_evaluations,
            "denoiser_rows": self.denoiser_rows,
            "seconds_per_prompt": self.seconds_per_prompt,
            "timing": self.timing,
            "source": self.source,
            "scores": list(self.scores),
            "roc": {"fpr": list(self.fpr), "tpr": list(self.tpr)},
        }


@dataclass(frozen=True)
class EvaluationResult:
    """The whole comparison: the labelled prompts, one row per (metric, steps, n), and what produced them."""

    checkpoint: str
    fingerprint: str
    prompts: tuple[LabelledPrompt, ...]
    rows: tuple[EvaluationRow, ...]
    target_fpr: float
    shared: bool
    positive_suites: tuple[str, ...]
    negative_suites: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    #: Per-generation values of every prompt at the largest n, by "metric/steps" (the n rows are their prefixes).
    values: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def positives(self) -> int:
        return sum(p.label for p in self.prompts)

    @property
    def negatives(self) -> int:
        return len(self.prompts) - self.positives

    def row(self, metric: str, steps: int, n: int) -> EvaluationRow:
        for r in self.rows:
            if (r.metric, r.steps, r.n) == (metric, steps, n):
                return r
        raise KeyError((metric, steps, n))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "memtest_version": __version__,
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            "positive_suites": list(self.positive_suites),
            "negative_suites": list(self.negative_suites),
            "positives": self.positives,
            "negatives": self.negatives,
            "target_fpr": self.target_fpr,
            "shared": self.shared,
            "settings": dict(self.settings),
            "environment": dict(self.environment),
            "rows": [r.to_dict() for r in self.rows],
            "prompts": [p.to_dict() for p in self.prompts],
            "values": {k: [list(v) for v in vals] for k, vals in self.values.items()},
        }


# --------------------------------------------------------------------------------------------------
# inputs


def parse_ints(text: str | Iterable[int], name: str) -> tuple[int, ...]:
    """'1,4,16' (or ints) as sorted distinct positive ints; a bad value names option `name`."""
    items: list[Any] = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    out: set[int] = set()
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            value = 0
        if isinstance(item, bool) or value < 1 or (isinstance(item, float) and item != value):
            raise MemtestError(
                f"{option(name)} takes positive integers separated by commas (e.g. {option(name, '1,4,16')}), "
                f"got {item!r}."
            )
        out.add(value)
    if not out:
        raise MemtestError(f"{option(name)} is empty: give at least one value, e.g. {option(name, '1,4')}.")
    return tuple(sorted(out))


def resolve_metrics(names: str | Sequence[str]) -> tuple[str, ...]:
    """Detector names ('all' or names, comma-separated or a list) in METRICS order; an unknown one is an error."""
    items = [names] if isinstance(names, str) else list(names)
    wanted = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not wanted:
        raise ScoringError(f"No metric named: pass {option('metric', 'all')} or some of {', '.join(METRICS)}.")
    if "all" in wanted:
        return tuple(METRICS)
    for name in wanted:
        if name not in METRICS:
            raise ScoringError(
                f"Unknown metric {name!r} ({option('metric')}).{did_you_mean(name, METRICS)} "
                f"Choose one of: all, {', '.join(METRICS)}."
            )
    return tuple(m for m in METRICS if m in wanted)


def _suites(items: Sequence[Suite | str | os.PathLike[str]]) -> list[Suite]:
    return [s if isinstance(s, Suite) else resolve_suite(s) for s in items]


def labelled_prompts(positives: Sequence[Suite], negatives: Sequence[Suite]) -> tuple[LabelledPrompt, ...]:
    """Positives then negatives, each distinct prompt once (its first case); a prompt on both sides is an error."""
    out: list[LabelledPrompt] = []
    seen: dict[str, LabelledPrompt] = {}
    for label, suites, wanted, name in (
        (1, positives, POSITIVE_EXPECTATIONS, "positive"),
        (0, negatives, NEGATIVE_EXPECTATIONS, "negative"),
    ):
        before = len(out)
        for suite in suites:
            for case in suite.cases:
                if case.expectation not in wanted:
                    continue
                prev = seen.get(case.prompt)
                if prev is not None:
                    if prev.label != label:
                        raise SuiteError(
                            f"Prompt {case.prompt!r} is a positive ({prev.suite}/{prev.case_id}) and a negative "
                            f"({suite.name}/{case.id}); a prompt has one label. Drop it from one of the suites."
                        )
                    continue
                item = LabelledPrompt(suite.name, case.id, case.prompt, case.expectation, label)
                seen[case.prompt] = item
                out.append(item)
        if len(out) == before:
            names = ", ".join(s.name for s in suites) or "(none)"
            raise SuiteError(
                f"No {name} prompts: the {name} suites ({names}) have no {' or '.join(wanted)} cases. "
                f"Pass {option(name, 'SUITE')} with a suite that has some."
            )
    return tuple(out)


def model_evaluations(metric: str, steps: int, n: int, method: str) -> int | None:
    """Denoiser evaluations per prompt, counting both CFG branches of a generation as one (batched) evaluation:
    score_norm n*steps; sharpness n*steps*(1 + the Hessian-vector product's evaluations); None for others."""
    if metric == "score_norm":
        return n * steps
    if metric == "sharpness":
        return n * steps * (1 + HVP_EVALUATIONS[method])
    return None


# --------------------------------------------------------------------------------------------------
# ROC


def roc_numbers(
    scores: Sequence[float], labels: Sequence[int], target: float
) -> tuple[float, float, list[float], list[float]]:
    """AUC, TPR at FPR <= target (empirical threshold: the largest TPR of a ROC point whose FPR does not exceed
    the target), and the curve to draw."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from memtest.report.stats import tpr_at_fpr

    auc = float(roc_auc_score(list(labels), list(scores)))
    fpr_all, tpr_all, _ = roc_curve(list(labels), list(scores), drop_intermediate=False)
    at = tpr_at_fpr([float(f) for f in fpr_all], [float(t) for t in tpr_all], target)
    fpr, tpr, _ = roc_curve(list(labels), list(scores), drop_intermediate=True)
    return auc, at, [float(f) for f in fpr], [float(t) for t in tpr]


# --------------------------------------------------------------------------------------------------
# scoring


@dataclass
class _Run:
    values: list[tuple[float, ...]]
    seconds: float
    rows: int


def refusal(ckpt: Checkpoint, settings: ScoreSettings) -> str | None:
    """Why the scorer refuses `settings` on `ckpt` (a ScoringError while it is set up: an unsupported
    combination, such as steps for a detector that ignores steps), or None when it accepts them."""
    from memtest.detection.scoring import Scorer

    try:
        Scorer(ckpt, settings)
    except ScoringError as exc:
        return exc.render()
    return None


def _score(ckpt: Checkpoint, settings: ScoreSettings, prompts: Sequence[str], progress: ProgressFn | None) -> _Run:
    """Score `prompts` under `settings` (which `refusal` accepted), counting the denoiser rows that ran. A
    ScoringError here (say, a non-finite score) propagates: a failure of the model, not of the combination."""

    return _score_many(ckpt, [settings], prompts, progress)[0]


def shares_walk(metric: str) -> bool:
    """Whether `metric`'s detector measures along the sampler's trajectory (`Detector.shares_walk`), so that it
    can be scored on one walk with the others that do."""
    from memtest.detection.detectors.base import load_detector

    return load_detector(metric).shares_walk


def _score_many(
    ckpt: Checkpoint, settings: Sequence[ScoreSettings], prompts: Sequence[str], progress: ProgressFn | None
) -> list[_Run]:
    """`_score` for several settings that differ only in the metric, on one walk of the trajectory when there are
    several (`memtest.detection.scoring.score_together`: each metric's values as its own run gives them): every
    run carries the walk's time and denoiser rows, which it shared."""
    from memtest.detection.scoring import Scorer, score_together

    scorers = [Scorer(ckpt, s) for s in settings]
    rows = [0]

    def count(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], _output: Any) -> None:
        # every call of the denoiser module, whichever path makes it (the scorer's forward, a JVP, a detector's
        # own sampling loop): its batch rows, each the cond or the uncond branch of one generation
        x: Any = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        shape = getattr(x, "shape", None)
        rows[0] += int(shape[0]) if shape else 0

    handle = ckpt.denoiser.register_forward_hook(count, with_kwargs=True)
    try:
        started = time.perf_counter()
        if len(scorers) == 1:
            each = [scorers[0].score(list(prompts), progress=progress)]
        else:
            each = score_together(scorers, list(prompts), progress=progress)
        seconds = time.perf_counter() - started
    finally:
        handle.remove()
    return [_Run([s.values for s in scores], seconds, rows[0]) for scores in each]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))  # the Scorer's own formula, so equal values give equal bits


def evaluate(
    checkpoint: Checkpoint | str | Path,
    positives: Sequence[Suite | str | os.PathLike[str]] = (),
    negatives: Sequence[Suite | str | os.PathLike[str]] = (),
    metrics: str | Sequence[str] = "all",
    ns: str | Sequence[int] = (1, 4),
    steps: str | Sequence[int] = (1,),
    *,
    method: str = "fd",
    seed: int = 0,
    batch_size: int = 8,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    target_fpr: float = DEFAULT_FPR,
    share: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    progress: Callable[[str], ProgressFn | None] | None = None,
) -> EvaluationResult:
    """Score every (metric, steps, n) combination on the labelled prompts and compute its ROC.

    `positives`/`negatives` are suites (names, paths or Suite objects); empty: the checkpoint's own suite (its
    memorized cases, and its clean and reference cases). `metrics` is 'all' or names from METRICS. With `share`
    each (metric, steps) is scored once at max(ns) and the smaller n take prefixes of its generations; without,
    every n is its own run. A combination the scorer refuses (ScoringError before scoring) is a row marked not
    applicable, with the reason. `progress(label)` gives the callable for one scoring run (or None).
    """
    from memtest.models.checkpoint import Checkpoint, load_checkpoint
    from memtest.models.locate import resolve_checkpoint

    metric_names = resolve_metrics(metrics)
    n_values = parse_ints(ns, "n")
    step_values = parse_ints(steps, "steps")
    if method not in HVP_METHODS:
        raise ScoringError(
            f"Unknown method {method!r} ({option('method')}).{did_you_mean(method, HVP_METHODS)} "
            f"Choose one of: {', '.join(HVP_METHODS)}."
        )
    if not (0.0 < target_fpr < 1.0):
        raise MemtestError(f"{option('fpr')} must be in (0, 1), got {target_fpr!r}.")
    too_many = [k for k in step_values if k > num_inference_steps]
    if too_many:
        raise ScoringError(
            f"{option('steps')} {too_many[0]} exceeds the sampler's {num_inference_steps} inference steps: the metric "
            f"averages over the first `steps` of them. Use at most {num_inference_steps}."
        )
    if isinstance(checkpoint, Checkpoint):
        name, folder = checkpoint.name, checkpoint.path
    else:
        name, folder = resolve_checkpoint(checkpoint)
    pos_suites = _suites(positives) if positives else resolve_suites([], folder, name)
    neg_suites = _suites(negatives) if negatives else resolve_suites([], folder, name)
    labelled = labelled_prompts(pos_suites, neg_suites)  # fail on the suites before loading the model
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device=device, dtype=dtype)
    prompts = [p.prompt for p in labelled]
    labels = [p.label for p in labelled]
    base = ScoreSettings(
        method=method,
        seed=seed,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )
    rows: list[EvaluationRow] = []
    values: dict[str, list[list[float]]] = {}
    # Metrics that measure along the trajectory share one walk per steps (their largest n): the forwards run once.
    walked: dict[tuple[str, int], tuple[_Run, tuple[str, ...]]] = {}
    if share:
        top_n = max(n_values)
        for k in step_values:
            group = [
                m
                for m in metric_names
                if shares_walk(m) and refusal(ckpt, replace(base, metric=m, steps=k, n=top_n)) is None
            ]
            if len(group) > 1:
                label = f"{'+'.join(group)} steps={k} n={top_n}"
                runs_k = _score_many(
                    ckpt,
                    [replace(base, metric=m, steps=k, n=top_n) for m in group],
                    prompts,
                    progress(label) if progress else None,
                )
                walked.update({(m, k): (run, tuple(group)) for m, run in zip(group, runs_k, strict=True)})
    for metric in metric_names:
        for k in step_values:
            combos = {n: replace(base, metric=metric, steps=k, n=n) for n in n_values}
            refusals = {n: refusal(ckpt, settings) for n, settings in combos.items()}
            usable = [n for n in n_values if refusals[n] is None]
            here = {
                n: EvaluationRow(metric, k, n, applicable=False, reason=refusals[n]) for n in n_values if refusals[n]
            }
            if usable:
                top = max(usable)
                runs: dict[int, _Run] = {}
                together = walked.get((metric, k)) if top == max(n_values) else None
                if together is not None:
                    runs[top] = together[0]
                for n in [] if together is not None else [top] if share else usable:
                    label = f"{metric} steps={k} n={n}"
                    runs[n] = _score(ckpt, combos[n], prompts, progress(label) if progress else None)
                values[f"{metric}/{k}"] = [list(v) for v in runs[top].values]
                for n in usable:
                    run = runs.get(n) or runs[top]
                    scores = [_mean(v[:n]) for v in run.values]
                    auc, at, fpr, tpr = roc_numbers(scores, labels, target_fpr)
                    scale = n / len(run.values[0])
                    here[n] = EvaluationRow(
                        metric,
                        k,
                        n,
                        applicable=True,
                        auc=auc,
                        tpr_at_fpr=at,
                        model_evaluations=model_evaluations(metric, k, n, method),
                        denoiser_rows=run.rows * scale / len(prompts),
                        seconds_per_prompt=run.seconds * scale / len(prompts),
                        timing=(
                            ("measured" if n in runs else f"scaled from n={top}")
                            + (f", one walk shared by {', '.join(together[1])}" if together is not None else "")
                        ),
                        source="run" if n in runs else f"prefix of n={top}",
                        scores=tuple(scores),
                        fpr=tuple(fpr),
                        tpr=tuple(tpr),
                    )
            rows += [here[n] for n in n_values]
    return EvaluationResult(
        checkpoint=ckpt.name,
        fingerprint=ckpt.fingerprint,
        prompts=labelled,
        rows=tuple(rows),
        target_fpr=target_fpr,
        shared=share,
        positive_suites=tuple(s.name for s in pos_suites),
        negative_suites=tuple(s.name for s in neg_suites),
        settings={
            "metrics": list(metric_names),
            "steps": list(step_values),
            "n": list(n_values),
            "method": method,
            "seed": seed,
            "batch_size": batch_size,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "device": str(ckpt.device),
            "dtype": str(ckpt.dtype).replace("torch.", ""),
        },
        environment=_environment(),
        values=values,
    )


def _environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torch_threads": int(torch.get_num_threads()),
        "machine": platform.machine(),
    }


# --------------------------------------------------------------------------------------------------
# outputs


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _seconds(row: EvaluationRow) -> str:
    if row.seconds_per_prompt is None:
        return "n/a"
    mark = ("*" if row.timing.startswith("scaled") else "") + ("†" if "shared" in row.timing else "")
    return f"{row.seconds_per_prompt:.3g}{mark}"


def _evaluations(row: EvaluationRow) -> str:
    if row.model_evaluations is not None:
        return str(row.model_evaluations)
    if row.denoiser_rows:  # 0: the detector ran the model outside the denoiser module memtest can watch
        return f"~{row.denoiser_rows / 2:.3g}"  # measured rows, both branches counted as one evaluation
    return "n/a"


def _md(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, no line breaks."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def table_rows(result: EvaluationResult) -> list[dict[str, str]]:
    """The table's cells as text, in the order of the paper's Table 1 columns."""
    pct = f"{100 * result.target_fpr:g}%"
    return [
        {
            "method": r.metric,
            "steps": str(r.steps),
            "n": str(r.n),
            "AUC": _num(r.auc),
            f"TPR@{pct}FPR": _num(r.tpr_at_fpr),
            "model evals / prompt": _evaluations(r),
            "s / prompt": _seconds(r),
        }
        for r in result.rows
    ]


def to_markdown(result: EvaluationResult) -> str:
    """The comparison as a Markdown table like the paper's Table 1, with what it was measured on."""
    cells = table_rows(result)
    head = list(cells[0]) if cells else ["method", "steps", "n", "AUC"]
    s = result.settings
    lines = [
        f"# memtest evaluate: {_md(result.checkpoint)}",
        "",
        f"{result.positives} positive prompts ({_md(', '.join(result.positive_suites))}: memorized) vs "
        f"{result.negatives} negative prompts ({_md(', '.join(result.negative_suites))}: clean and reference); "
        f"TPR at FPR <= {result.target_fpr:g} at the empirical threshold. Method {s.get('method')}, seed "
        f"{s.get('seed')}, {s.get('num_inference_steps')} inference steps, guidance {s.get('guidance_scale')}, "
        f"{s.get('device')} {s.get('dtype')}, {result.environment.get('torch_threads')} torch thread(s).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(_md(c[h]) for h in head) + " |" for c in cells]
    notes = [
        "Model evaluations per prompt count both classifier-free-guidance branches of one generation as one "
        "(batched) denoiser evaluation; `~` marks a count measured from the rows that ran."
    ]
    shared = sorted({r.timing.split("shared by ", 1)[1] for r in result.rows if "shared by " in r.timing})
    if shared:
        notes.append(
            f"`†` one walk of the sampler's trajectory served {'; '.join(shared)}: their forwards ran once, and each "
            "row shows that walk's time and model rows (its own run would cost its count of evaluations)."
        )
    if any(r.timing.startswith("scaled") for r in result.rows):
        notes.append(
            f"`*` seconds scaled from the n={max(s.get('n') or [1])} run (n/N of its time): those rows are prefixes "
            "of its generations, not separate runs."
        )
    for r in result.rows:
        if not r.applicable:
            notes.append(f"{_md(r.label)}: not applicable: {_md(r.reason or '')}")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _css() -> str:
    from memtest._resources import data_dir

    css = (data_dir("reports") / "report.css").read_text(encoding="utf-8")
    if "</style" in css.lower():
        raise MemtestError("Report asset report.css contains a closing tag; reinstall memtest.")
    return css


#: No scripts at all: the page is static.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)


def to_html(result: EvaluationResult) -> str:
    """One self-contained page: the table, one ROC curve per applicable row, and every prompt's scores. Every
    text from the inputs is escaped (Jinja autoescape, svg.py's writer); a CSP forbids scripts and remote loads."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    from markupsafe import Markup

    from memtest._resources import data_dir
    from memtest.report.svg import roc_svg

    env = Environment(
        loader=FileSystemLoader(str(data_dir("reports"))),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    cells = table_rows(result)
    plots = [
        {"label": r.label, "svg": roc_svg(r.fpr, r.tpr, r.auc, result.target_fpr, r.tpr_at_fpr)}
        for r in result.rows
        if r.applicable and r.auc is not None
    ]
    shown = [r for r in result.rows if r.applicable and r.n == max(result.settings.get("n") or [r.n])]
    prompt_rows = [{"p": p, "scores": [f"{r.scores[i]:.5g}" for r in shown]} for i, p in enumerate(result.prompts)]
    return env.get_template("evaluate.html.j2").render(
        {
            "r": result,
            "css": Markup(_css()),
            "csp": CSP,
            "head": list(cells[0]) if cells else [],
            "cells": cells,
            "plots": plots,
            "shown": [r.label for r in shown],
            "prompt_rows": prompt_rows,
            "notes": [f"{r.label}: not applicable: {r.reason}" for r in result.rows if not r.applicable],
            "kv": [
                (k, ", ".join(str(x) for x in v) if isinstance(v, list) else str(v))
                for k, v in [*result.settings.items(), *result.environment.items()]
            ],
            "version": __version__,
        }
    )


def write_outputs(result: EvaluationResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write evaluation.json, evaluation.md and evaluation.html into `out_dir` (created); return their paths."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemtestError(f"Cannot create the output folder {folder} ({option('out')}): {exc}.") from None
    paths = {suffix: folder / name for suffix, name in zip(("json", "md", "html"), FILES, strict=True)}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], to_markdown(result))
    atomic_write_text(paths["html"], to_html(result))
    return paths


def summary_lines(result: EvaluationResult) -> list[str]:
    """The table as plain text lines for a terminal."""
    cells = table_rows(result)
    if not cells:
        return []
    head = list(cells[0])
    widths = {h: max(len(h), *(len(c[h]) for c in cells)) for h in head}
    lines = ["  ".join(h.ljust(widths[h]) for h in head)]
    lines += ["  ".join(c[h].ljust(widths[h]) for h in head) for c in cells]
    return lines


__all__ = [
    "CSP",
    "SCHEMA",
    "EvaluationResult",
    "EvaluationRow",
    "LabelledPrompt",
    "evaluate",
    "labelled_prompts",
    "model_evaluations",
    "parse_ints",
    "resolve_metrics",
    "roc_numbers",
    "summary_lines",
    "to_html",
    "to_markdown",
    "write_outputs",
]
