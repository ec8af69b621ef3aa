"""The audit: which cases to score, how to judge them, and the results they produce.

Shared by `memtest audit` / `memtest calibrate` and the pytest plugin, so both give the same outcomes.
This module imports no torch: the `Engine` loads the checkpoint and scorer on first use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memtest.audit.calibration import CALIBRATION_FILENAME, Calibration, calibrate, check_compatible, load_calibration
from memtest.audit.suites import Mitigate, Suite, _did_you_mean, builtin_suites, resolve_suite
from memtest.defaults import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CHECKPOINT,
    DEFAULT_FPR,
    DEFAULT_MITIGATION_METHOD,
    DEFAULT_MITIGATION_STEPS,
    MITIGATION_ITEM_METHODS,
)
from memtest.detection.settings import ScoreSettings
from memtest.errors import CalibrationError, MemtestError, ScoringError, SuiteError

SUITE_FILENAME = "memtest-suite.yaml"
MANIFEST_FILENAME = "memtest-canary.json"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AuditConfig:
    """Effective settings of one audit (CLI or pytest), after CLI > ini > defaults."""

    checkpoint: str = DEFAULT_CHECKPOINT
    suites: tuple[str, ...] = ()
    metric: str = "sharpness"
    method: str = "fd"
    n: int = 4
    seed: int = 0
    steps: int = 1
    #: flow-matching checkpoints only: Euler steps before measuring (None: the default, DEFAULT_FLOW_STEPS)
    flow_steps: int | None = None
    batch_size: int = 8
    per_prompt_seeds: bool = False
    device: str | None = None
    dtype: str | None = None
    calibration: str | None = None
    calibrate: bool = False
    fpr: float = DEFAULT_FPR
    accept_base_calibration: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = DEFAULT_CACHE_DIR
    shard: tuple[int, int] | None = None
    mitigation_steps: int = DEFAULT_MITIGATION_STEPS
    #: how `mitigate` items choose x_T: "sail" or "resample" (MITIGATION_ITEM_METHODS)
    mitigation_method: str = DEFAULT_MITIGATION_METHOD
    #: LoRA adapters "PATH[:SCALE]" applied on the checkpoint, in order (memtest.models.adapters).
    loras: tuple[str, ...] = ()
    #: torch threads of this process; None = memtest's default (see memtest.threads).
    threads: int | None = None

    def score_settings(self) -> ScoreSettings:
        return ScoreSettings(
            metric=self.metric,
            method=self.method,
            n=self.n,
            seed=self.seed,
            steps=self.steps,
            flow_steps=self.flow_steps,
            batch_size=self.batch_size,
            per_prompt_seeds=self.per_prompt_seeds,
        ).validate()

    def validate(self) -> AuditConfig:
        self.score_settings()
        if not 0.0 < self.fpr < 1.0:
            raise CalibrationError(f"--memtest-fpr must be in (0, 1), got {self.fpr!r}.")
        steps = self.mitigation_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise MemtestError(f"--memtest-mitigation-steps must be a positive integer, got {steps!r}.")
        if self.mitigation_method not in MITIGATION_ITEM_METHODS:
            raise MemtestError(
                f"Unknown --memtest-mitigation-method {self.mitigation_method!r}."
                f"{_did_you_mean(self.mitigation_method, MITIGATION_ITEM_METHODS)} "
                f"Choose one of: {', '.join(MITIGATION_ITEM_METHODS)}."
            )
        return self


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/N' (1 <= i <= N) -> (i, N)."""
    if text is None or text == "":
        return None
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise MemtestError(f"--memtest-shard must look like i/N (for example 2/4), got {text!r}.") from None
    if not 1 <= i <= n:
        raise MemtestError(f"--memtest-shard {text!r}: the shard index must be between 1 and {n}.")
    return (i, n)


def shard_index(case_id: str, count: int) -> int:
    """Stable 1-based shard of a case: a hash of its id, so adding cases never moves others."""
    digest = hashlib.sha256(case_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True)
class AuditCase:
    suite: str
    suite_version: str
    case_id: str
    prompt: str
    expectation: str
    tags: tuple[str, ...] = ()
    mitigate: Mitigate = False  # the suite's value: True, False or "copy" (the copy must leave)
    source: str | None = None
    line: int | None = None

    @property
    def id(self) -> str:
        return f"{self.suite}::{self.case_id}"


def suite_cases(suite: Suite, calibrate: bool) -> list[AuditCase]:
    """Cases a run executes: references when calibrating, clean and memorized ones when gating."""
    wanted = {"reference"} if calibrate else {"clean", "memorized"}
    return [
        AuditCase(
            suite=suite.name,
            suite_version=suite.version,
            case_id=c.id,
            prompt=c.prompt,
            expectation=c.expectation,
            tags=tuple(c.tags),
            mitigate=c.mitigate,
            source=str(suite.path) if suite.path else None,
            line=c.line,
        )
        for c in suite.cases
        if c.expectation in wanted
    ]


def checkpoint_suite(folder: Path) -> str | None:
    """The suite a checkpoint ships for itself: `memtest-suite.yaml`, or the canary manifest's `suite`."""
    own = folder / SUITE_FILENAME
    if own.is_file():
        return str(own)
    manifest = folder / MANIFEST_FILENAME
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        name = data.get("suite") if isinstance(data, dict) else None
        return str(name) if isinstance(name, str) and name else None
    return None


def resolve_suites(names: Sequence[str], checkpoint_folder: Path | None, checkpoint_name: str) -> list[Suite]:
    if names:
        return [resolve_suite(n) for n in names]
    own = checkpoint_suite(checkpoint_folder) if checkpoint_folder else None
    if own is None:
        raise SuiteError(
            f"No suite was named and checkpoint {checkpoint_name} ships none ({SUITE_FILENAME}). "
            f"Pass --memtest-suite NAME or a path; built-in suites: {', '.join(sorted(builtin_suites()))}."
        )
    return [resolve_suite(own)]


def select_cases(suites: Iterable[Suite], calibrate: bool, shard: tuple[int, int] | None) -> list[AuditCase]:
    cases: list[AuditCase] = []
    for suite in suites:
        cases.extend(suite_cases(suite, calibrate))
    if shard is not None:
        i, n = shard
        cases = [c for c in cases if shard_index(c.id, n) == i]
    return cases


def judge(case: AuditCase, score: float, values: Sequence[float], threshold: float | None) -> dict[str, Any]:
    """The outcome of one case: a clean prompt must stay at or below the threshold, a memorized one above."""
    if not math.isfinite(score):
        raise ScoringError(f"Case {case.id} has a non-finite score ({score}); the gate fails closed.")
    record: dict[str, Any] = {
        "id": case.id,
        "suite": case.suite,
        "suite_version": case.suite_version,
        "case_id": case.case_id,
        "kind": "detect",
        "prompt": case.prompt,
        "expectation": case.expectation,
        "tags": list(case.tags),
        "score": float(score),
        "values": [float(v) for v in values],
        "threshold": None,
        "margin": None,
        "flagged": None,
        "outcome": "passed",
        "message": "",
    }
    if case.expectation == "reference" or threshold is None:
        return record
    flagged = score > threshold
    record.update(threshold=float(threshold), margin=float(score - threshold), flagged=flagged)
    if case.expectation == "clean" and flagged:
        record["outcome"] = "failed"
        record["message"] = (
            f"{case.id} scored {score:.6g}, above the threshold {threshold:.6g} (margin {score - threshold:+.3g}): "
            "the checkpoint may reproduce a training image for this prompt."
        )
    elif case.expectation == "memorized" and not flagged:
        record["outcome"] = "failed"
        record["message"] = (
            f"{case.id} is a known memorized prompt but scored {score:.6g}, at or below the threshold "
            f"{threshold:.6g} (margin {score - threshold:+.3g}): the gate did not flag it."
        )
    return record


class ResultsCache:
    """Scores on disk keyed by checkpoint fingerprint + settings, one JSON line per prompt.

    Appends are single short writes, so several xdist workers can share one file.
    """

    def __init__(self, root: str | Path | None, identity: dict[str, Any]) -> None:
        self.path: Path | None = None
        self._data: dict[str, dict[str, Any]] = {}
        if root is None:
            return
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(root) / f"scores-{key}.jsonl"
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn line from an interrupted run: rescore that prompt
                if (
                    isinstance(rec, dict)
                    and isinstance(rec.get("prompt"), str)
                    and isinstance(rec.get("score"), float)
                    and math.isfinite(rec["score"])
                ):
                    self._data[rec["prompt"]] = rec

    def get(self, prompt: str) -> dict[str, Any] | None:
        return self._data.get(prompt)

    def put(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            self._data[rec["prompt"]] = rec
        if self.path is None or not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)

    def __len__(self) -> int:
        return len(self._data)


class Engine:
    """One process's checkpoint, scorer, calibration and cache. Loads the checkpoint once, on first use."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config.validate()
        self.loads = 0
        self.scored = 0
        self.cache_hits = 0
        self._served: set[str] = set()
        self._checkpoint: Any = None
        self._scorer: Any = None
        self._cache: ResultsCache | None = None
        self._calibration: tuple[Calibration | None, bool] | None = None

    @property
    def checkpoint(self) -> Any:
        if self._checkpoint is None:
            from memtest.models.checkpoint import load_checkpoint
            from memtest.threads import apply_threads

            apply_threads(self.config.threads)  # before the first torch work of this process
            self._checkpoint = load_checkpoint(
                self.config.checkpoint,
                device=self.device(),
                dtype=self.config.dtype,
                allow_pickle=self.config.allow_pickle,
                loras=self.config.loras,
            )
            self.loads += 1
        return self._checkpoint

    def device(self) -> str | None:
        """The configured device; with CUDA and xdist, worker i uses GPU i mod the device count."""
        if self.config.device not in (None, "", "auto", "cuda"):
            return self.config.device
        import torch

        if not torch.cuda.is_available():
            return "cpu" if self.config.device in (None, "", "auto") else self.config.device
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
        return f"cuda:{index % torch.cuda.device_count()}"

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from memtest.detection.scoring import Scorer

            self._scorer = Scorer(self.checkpoint, self.config.score_settings())
        return self._scorer

    def identity(self) -> dict[str, Any]:
        return dict(self.scorer.identity())

    @property
    def cache(self) -> ResultsCache:
        if self._cache is None:
            self._cache = ResultsCache(self.config.cache_dir, self.identity())
        return self._cache

    def scores(self, prompts: Sequence[str], progress: Progress | None = None) -> dict[str, dict[str, Any]]:
        """Scores for `prompts` (from the cache where present), as plain-JSON records."""
        todo = list(dict.fromkeys(p for p in prompts if self.cache.get(p) is None))
        # A cache hit is a prompt this process needed for the first time and found already scored.
        first_time = set(prompts) - self._served
        self.cache_hits += len(first_time - set(todo))
        self._served |= first_time
        if todo:
            fresh = [r.to_dict() for r in self.scorer.score(todo, progress=progress)]
            records = [
                {"prompt": r["prompt"], "score": r["score"], "values": r["values"], "seeds": r["seeds"]} for r in fresh
            ]
            self.cache.put(records)
            self.scored += len(records)
        out: dict[str, dict[str, Any]] = {}
        for p in prompts:
            rec = self.cache.get(p)
            if rec is None:  # pragma: no cover - put() just stored it
                raise ScoringError(f"No score was produced for prompt {p!r}.")
            out[p] = rec
        return out

    def calibration_path(self) -> Path | None:
        if self.config.calibration:
            return Path(self.config.calibration)
        from memtest.models.locate import resolve_checkpoint

        _, folder = resolve_checkpoint(self.config.checkpoint)
        own = folder / CALIBRATION_FILENAME
        return own if own.is_file() else None

    def calibration(self) -> tuple[Calibration, bool]:
        """The calibration the gate uses and whether a base model's was accepted; fails closed."""
        if self._calibration is None:
            path = self.calibration_path()
            if path is None:
                raise CalibrationError(
                    f"No calibration for checkpoint {self.config.checkpoint}: the gate needs a threshold. "
                    "Calibrate once on reference prompts with `pytest --memtest --memtest-calibrate "
                    "--memtest-calibration=memtest-calibration.json` (or `memtest calibrate`), then pass "
                    "--memtest-calibration=memtest-calibration.json."
                )
            cal = load_calibration(path)
            accepted = check_compatible(cal, self.identity(), accept_base=self.config.accept_base_calibration)
            self._calibration = (cal, accepted)
        found, accepted = self._calibration
        assert found is not None
        return found, accepted

    def build_calibration(self, cases: Sequence[AuditCase], scores: dict[str, dict[str, Any]]) -> Calibration:
        refs = [c for c in cases if c.expectation == "reference"]
        if not refs:
            raise CalibrationError(
                "Calibration needs reference prompts (expectation: reference), and the selected suites have "
                "none. Name a suite with references, e.g. --memtest-suite coco-10k or the canary suite."
            )
        suites = sorted({(c.suite, c.suite_version) for c in refs})
        return calibrate(
            [scores[c.prompt]["score"] for c in refs],
            self.config.fpr,
            self.identity(),
            reference_suite="+".join(s for s, _ in suites),
            reference_version="+".join(v for _, v in suites),
            checkpoint=self.config.checkpoint,
        )

    def context(self) -> dict[str, Any]:
        """Plain-JSON description of this process's checkpoint, settings and calibration."""
        calibration = None
        if self._calibration is not None:
            cal, accepted = self._calibration
            if cal is not None:
                calibration = cal.record(accepted_from_base=accepted)
        return {
            "checkpoint": self.checkpoint_record(),
            "settings": self.settings_record(),
            "environment": environment_record(str(self.checkpoint.device)),
            "identity": self.identity(),
            "calibration": calibration,
        }

    def checkpoint_record(self) -> dict[str, Any]:
        ckpt = self.checkpoint
        return {
            "name": ckpt.name,
            "path": str(ckpt.path),
            "fingerprint": ckpt.fingerprint,
            "config": ckpt.config_summary(),
        }

    def settings_record(self) -> dict[str, Any]:
        ident = self.identity()
        s = self.config.score_settings()
        return {
            **s.to_dict(),
            "timestep": ident["timesteps"][0],
            "timesteps": ident["timesteps"],
            "resolution": ident["resolution"],
            "dtype": ident["dtype"],
            "fd_h": ident["fd_h"],
            "device": str(self.checkpoint.device),
            "fpr": self.config.fpr,
        }


def environment_record(device: str) -> dict[str, Any]:
    from memtest._version import __version__

    env = {
        "memtest": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    for mod in ("torch", "diffusers", "transformers"):
        module = sys.modules.get(mod)
        env[mod] = str(getattr(module, "__version__", "")) if module else ""
    return env


def results_document(
    context: dict[str, Any],
    cases: Sequence[dict[str, Any]],
    *,
    command: str,
    calibration: dict[str, Any] | None,
    shard: tuple[int, int] | None = None,
    mitigation: Sequence[dict[str, Any]] = (),
    spectra: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A `memtest.results/1` document from an engine context (see `Engine.context`) and case records."""
    from memtest._version import __version__
    from memtest.audit.results import summarize

    ordered = sorted(cases, key=lambda c: (c["id"], c.get("kind", "detect")))
    return {
        "schema": "memtest.results/1",
        "memtest_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": context["environment"],
        "checkpoint": context["checkpoint"],
        "settings": context["settings"],
        "calibration": calibration,
        "shard": {"index": shard[0], "count": shard[1]} if shard else None,
        "cases": ordered,
        "mitigation": list(mitigation),
        "spectra": list(spectra),
        "summary": summarize(ordered),
    }


def reproduce_command(config: AuditConfig, case: AuditCase) -> str:
    """A command that re-runs exactly this case with the same settings.

    It names every setting that changes the case's score or verdict: the checkpoint and each LoRA
    adapter (PATH[:SCALE], in order) with --memtest-allow-pickle when it was needed to load them, the
    case's suite, metric, method, n and seed (always, so an ini file cannot change them), steps,
    flow-steps, dtype, device and torch threads where not the default (threads and device can change
    a score's last bits), the calibration and --memtest-accept-base-calibration (the verdict), fpr where
    not the default, --memtest-calibrate when calibrating and the mitigation step budget (the `-k`
    selection also runs the case's `[mitigate]` item). Left out: batch_size (never changes a score, see
    `ScoreSettings`), the results cache (keyed by every setting that does), the shard (the `-k` selection
    replaces it) and output files. `per_prompt_seeds` has no command-line option, so it cannot be named.
    """
    d = AuditConfig()
    parts = ["pytest", "--memtest", f"--memtest-checkpoint={config.checkpoint}"]
    parts += [f"--memtest-lora={lora}" for lora in config.loras]
    if config.allow_pickle:
        parts.append("--memtest-allow-pickle")
    parts.append(f"--memtest-suite={case.source or case.suite}")
    parts += [
        f"--memtest-metric={config.metric}",
        f"--memtest-method={config.method}",
        f"--memtest-n={config.n}",
        f"--memtest-seed={config.seed}",
    ]
    if config.steps != d.steps:
        parts.append(f"--memtest-steps={config.steps}")
    if config.flow_steps is not None:
        parts.append(f"--memtest-flow-steps={config.flow_steps}")
    if config.dtype:
        parts.append(f"--memtest-dtype={config.dtype}")
    if config.device:
        parts.append(f"--memtest-device={config.device}")
    if config.threads is not None:
        parts.append(f"--memtest-threads={config.threads}")
    if config.calibrate:
        parts.append("--memtest-calibrate")
    if config.calibration:
        parts.append(f"--memtest-calibration={config.calibration}")
    if config.accept_base_calibration:
        parts.append("--memtest-accept-base-calibration")
    if config.fpr != d.fpr:
        parts.append(f"--memtest-fpr={config.fpr!r}")
    if config.mitigation_steps != d.mitigation_steps:
        parts.append(f"--memtest-mitigation-steps={config.mitigation_steps}")
    if config.mitigation_method != d.mitigation_method:
        parts.append(f"--memtest-mitigation-method={config.mitigation_method}")
    parts += ["-k", case.case_id]
    return shlex.join(parts)


__all__ = [
    "DEFAULT_CHECKPOINT",
    "AuditCase",
    "AuditConfig",
    "Engine",
    "ResultsCache",
    "judge",
    "parse_shard",
    "reproduce_command",
    "results_document",
    "select_cases",
    "shard_index",
]
