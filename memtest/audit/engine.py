"""The engine: one process's checkpoint, scorer, calibration and results cache, and the results document it
describes. It loads the checkpoint and scorer on first use, so importing this module costs nothing (no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from memtest.audit.calibration import Calibration, checkpoint_calibration
from memtest.audit.options import AuditConfig
from memtest.audit.records import AuditCase, CaseRecord, MitigationEntry, ScoreRecord
from memtest.audit.results import RESULTS_SCHEMA
from memtest.detection.records import AttributionEntry
from memtest.errors import ScoringError, option
from memtest.progress import ProgressFn

if TYPE_CHECKING:
    from memtest.audit.baseline import Baseline
    from memtest.detection.scoring import Scorer
    from memtest.evidence import Confirmation, CopyThreshold, Descriptor
    from memtest.models.checkpoint import Checkpoint


@dataclass(frozen=True)
class AdapterInfo:
    """One LoRA adapter as the audit names it: as given, where it was found, its scale and sha256."""

    text: str
    path: Path
    scale: float
    sha256: str


class Subject:
    """What an audit is about, found without torch: the checkpoint (name, folder) and its LoRA adapters, and
    the fingerprints that identify it. A missing checkpoint or adapter fails here, at start-up."""

    def __init__(self, config: AuditConfig) -> None:
        from memtest.models.adapters import parse_lora
        from memtest.models.locate import resolve_checkpoint

        self.name, self.folder = resolve_checkpoint(config.checkpoint)
        self._loras = [parse_lora(text) for text in config.loras]
        self._texts = config.loras
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The base checkpoint folder's fingerprint (without adapters)."""
        if self._fingerprint is None:
            from memtest.models.locate import fingerprint

            self._fingerprint = fingerprint(self.folder)
        return self._fingerprint

    def subject_fingerprint(self) -> str:
        """The fingerprint of base + adapters: the one calibrations, the results cache and results use."""
        from memtest.models.adapters import adapters_fingerprint

        return adapters_fingerprint(self.fingerprint(), self._loras)

    def adapters(self) -> list[AdapterInfo]:
        from memtest.models.locate import file_sha256

        return [
            AdapterInfo(text, spec.path, spec.scale, file_sha256(spec.path))
            for text, spec in zip(self._texts, self._loras, strict=True)
        ]


class ResultsCache:
    """Scores on disk keyed by checkpoint fingerprint + settings, one JSON line per prompt.

    Appends are single short writes, so several xdist workers can share one file.
    """

    def __init__(self, root: str | Path | None, identity: dict[str, Any]) -> None:
        self.path: Path | None = None
        self._data: dict[str, ScoreRecord] = {}
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
                    self._data[rec["prompt"]] = cast(ScoreRecord, rec)

    def get(self, prompt: str) -> ScoreRecord | None:
        return self._data.get(prompt)

    def put(self, records: Sequence[ScoreRecord]) -> None:
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
        self._checkpoint: Checkpoint | None = None
        self._scorer: Scorer | None = None
        self._cache: ResultsCache | None = None
        self._calibration: tuple[Calibration, bool] | None = None
        self._baseline: Baseline | None = None
        self._planted: np.ndarray | None = None
        self._reproduced: dict[tuple[int, ...], np.ndarray | None] = {}
        self._own_copy: dict[str, Any] | None = None

    def loaded(self) -> bool:
        """Whether this process has a scorer on the loaded checkpoint (so it can describe its run). False too when
        the checkpoint loaded but the detector refused it: that refusal is the run's error, not its context."""
        return self._checkpoint is not None and self._scorer is not None

    @property
    def checkpoint(self) -> Checkpoint:
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
                config=self.config.config,
            )
            self.loads += 1
        return self._checkpoint

    def device(self) -> str | None:
        """The configured device; with CUDA and parallel workers, worker i uses GPU i mod the device count."""
        if self.config.device not in (None, "", "auto", "cuda"):
            return self.config.device
        import torch

        if not torch.cuda.is_available():
            return "cpu" if self.config.device in (None, "", "auto") else self.config.device
        return f"cuda:{(self.config.worker_index or 0) % torch.cuda.device_count()}"

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            from memtest.detection.scoring import Scorer

            self._scorer = Scorer(self.checkpoint, self.config.score)
        return self._scorer

    def identity(self) -> dict[str, Any]:
        return dict(self.scorer.identity())

    @property
    def cache(self) -> ResultsCache:
        if self._cache is None:
            self._cache = ResultsCache(self.config.cache_dir, self.identity())
        return self._cache

    def cached(self, prompt: str) -> ScoreRecord | None:
        """The prompt's scores if this process has them (scored or found in the results cache)."""
        return self.cache.get(prompt)

    def scores(self, prompts: Sequence[str], progress: ProgressFn | None = None) -> dict[str, ScoreRecord]:
        """Scores for `prompts` (from the cache where present), as plain-JSON records."""
        todo = list(dict.fromkeys(p for p in prompts if self.cache.get(p) is None))
        # A cache hit is a prompt this process needed for the first time and found already scored.
        first_time = set(prompts) - self._served
        self.cache_hits += len(first_time - set(todo))
        self._served |= first_time
        if todo:
            fresh = [r.to_dict() for r in self.scorer.score(todo, progress=progress)]
            records: list[ScoreRecord] = [
                {"prompt": r["prompt"], "score": r["score"], "values": r["values"], "seeds": r["seeds"]} for r in fresh
            ]
            self.cache.put(records)
            self.scored += len(records)
        out: dict[str, ScoreRecord] = {}
        for p in prompts:
            rec = self.cache.get(p)
            if rec is None:  # pragma: no cover - put() just stored it
                raise ScoringError(f"No score was produced for prompt {p!r}.")
            out[p] = rec
        return out

    def calibration(self) -> tuple[Calibration, bool]:
        """The calibration the gate uses and whether a base model's was accepted; fails closed."""
        if self._calibration is None:
            from memtest.models.locate import resolve_checkpoint

            _, folder = resolve_checkpoint(self.config.checkpoint)
            self._calibration = checkpoint_calibration(
                self.identity(),
                folder,
                path=self.config.calibration,
                accept_base=self.config.accept_base_calibration,
                missing=(
                    f"No calibration for checkpoint {self.config.checkpoint}: the gate needs a threshold. "
                    f"Calibrate once on reference prompts ({option('calibrate')}, writing "
                    f"{option('calibration', 'memtest-calibration.json')}), then pass "
                    f"{option('calibration', 'memtest-calibration.json')}."
                ),
            )
        return self._calibration

    def training_images(self, case: AuditCase) -> np.ndarray | None:
        """What a case's generations are compared with: its suite's `images:`, else, on a canary that plants
        captions, every planted training image (so a planted caption's own image must come out closest, and a
        clean caption must match none), else None."""
        from memtest.evidence import canary_planted, load_images

        if case.images:
            return np.stack(load_images(case.images, case=case.id))
        if self._planted is None:
            self._planted = canary_planted(self.checkpoint)[1]
        return self._planted if len(self._planted) else None

    def copy_threshold(self, descriptor: str) -> CopyThreshold | None:
        """The calibration's copy threshold for `descriptor` (memtest.evidence), if it has one."""
        if self.config.calibrate:
            return None
        cal, accepted = self.calibration()
        entry = cal.copy_thresholds.get(descriptor)
        source = str(entry.get("source", "calibrated")) if entry is not None else ""
        if entry is None and accepted:
            # A copy threshold belongs to this checkpoint's generations against its training images, which a
            # base's calibration never saw: when the detection threshold is the base's, take the copy threshold
            # from the checkpoint's own calibration if it has one for the same scoring settings.
            entry = self._own_copy_thresholds().get(descriptor)
            source = "calibrated on this checkpoint (its own calibration file; the detection threshold is the base's)"
        if entry is None:
            return None
        from memtest.evidence import CopyThreshold

        return CopyThreshold.from_entry(entry, source)

    def _own_copy_thresholds(self) -> dict[str, Any]:
        if self._own_copy is None:
            self._own_copy = self._read_own_copy_thresholds()
        return self._own_copy

    def _read_own_copy_thresholds(self) -> dict[str, Any]:
        """The copy thresholds of the checkpoint's own calibration file, when it exists and was made with this
        run's scoring settings (so the same initial noises); else none. An unusable own file only means no
        calibrated copy threshold (the evidence then says so): the gate's threshold is the accepted base's."""
        from memtest.audit.calibration import CALIBRATION_FILENAME
        from memtest.errors import MemtestError
        from memtest.models.locate import resolve_checkpoint

        _, folder = resolve_checkpoint(self.config.checkpoint)
        own = folder / CALIBRATION_FILENAME
        if self.config.calibration is not None and Path(self.config.calibration).resolve() == own.resolve():
            return {}
        if not own.is_file():
            return {}
        try:
            cal, accepted = checkpoint_calibration(self.identity(), folder, path=own, accept_base=False, missing="")
        except MemtestError:
            return {}
        return dict(cal.copy_thresholds) if not accepted else {}

    def attribute(self, case: AuditCase) -> AttributionEntry:
        """Each word's share of the case's memorization signal (memtest.detection.attribution), from the
        detector's own initial noises."""
        from memtest.detection.attribution import attribute

        return attribute(self.scorer, case.prompt).to_dict()

    def confirm(self, case: AuditCase) -> Confirmation:
        """Generate the case's images from the detector's initial noises and compare them with its training
        images and with each other (memtest.evidence), by the run's copy rule (`copy_rule`)."""
        from memtest.evidence import compare_generations, generate

        training = self.training_images(case)
        generations = generate(self.scorer, case.prompt)
        descriptor, threshold = self.copy_rule(generations.images, training)
        return compare_generations(
            generations,
            training,
            descriptor=descriptor,
            threshold=threshold,
            reproduced=self.reproduced_images(case, training, generations.images),
        )

    def copy_rule(self, images: np.ndarray, training: np.ndarray | None) -> tuple[Descriptor, CopyThreshold | None]:
        """The descriptor the copy-descriptor option picks for `images` against `training`, and the calibrated copy
        threshold for it (None: the descriptor's convention, else none). One choice for the confirmation and for
        the mitigation's copy counts."""
        from memtest.evidence import choose_descriptor

        descriptor = choose_descriptor(self.config.copy_descriptor, images, training).descriptor
        return descriptor, self.copy_threshold(descriptor.name)

    def reproduced_images(self, case: AuditCase, training: np.ndarray | None, like: np.ndarray) -> np.ndarray | None:
        """The case's training images `training` (`training_images`) as the checkpoint's VAE reproduces them, at
        the size of the generations `like` (memtest.evidence.reproduce_training); the canary's planted set is
        reproduced once per run."""
        from memtest.evidence import reproduce_training

        if training is None:
            return None
        if case.images:
            return reproduce_training(self.checkpoint, training, like)
        key = tuple(np.shape(like)[1:3])
        if key not in self._reproduced:
            self._reproduced[key] = reproduce_training(self.checkpoint, training, like)
        return self._reproduced[key]

    def evidence_entry(self, case: AuditCase, found: Confirmation) -> dict[str, Any]:
        """What the case record keeps of a confirmation: the measurements always; thumbnails of the generations
        unless `report_images` is "none"; thumbnails of the closest training images only with "all" (training
        images are the data the audit protects, and the results file and report are made to be shared)."""
        from memtest.evidence.images import png_thumbnails

        entry: dict[str, Any] = dict(found.to_dict())
        mode = self.config.report_images
        if mode == "none":
            entry["thumbnails"] = []
        if mode == "all" and found.closest:
            training = self.training_images(case)
            assert training is not None  # closest indexes into it
            shown = sorted(set(found.closest))
            entry["training_thumbnails"] = dict(zip(map(str, shown), png_thumbnails(training[shown]), strict=True))
        return entry

    def baseline(self) -> Baseline | None:
        """The base model's results the run compares with (the baseline option), read and checked once."""
        if self.config.baseline is None:
            return None
        if self._baseline is None:
            from memtest.audit.baseline import Baseline

            self._baseline = Baseline.load(self.config.baseline, self.config.score.to_dict())
        return self._baseline

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
        s = self.config.score
        timesteps = ident.get("timesteps")  # each detector records its own (tiled_l2 measures finished images)
        return {
            **s.to_dict(),
            "timestep": timesteps[0] if timesteps else None,
            "timesteps": timesteps,
            "resolution": ident["resolution"],
            "dtype": ident["dtype"],
            "fd_h": ident.get("fd_h"),
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
    cases: Sequence[CaseRecord],
    *,
    command: str,
    calibration: dict[str, Any] | None,
    shard: tuple[int, int] | None = None,
    mitigation: Sequence[MitigationEntry] = (),
    spectra: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A results document (`RESULTS_SCHEMA`) from an engine context (see `Engine.context`) and case records.
    With a calibration and judged cases it carries the run's flag budget (memtest.audit.budget)."""
    from memtest._version import __version__
    from memtest.audit.budget import flag_budget
    from memtest.audit.results import summarize

    ordered = sorted(cases, key=lambda c: (c["id"], c.get("kind", "detect")))
    budget = None
    if calibration is not None and any(c.get("verdict") for c in ordered):
        budget = flag_budget(ordered, float(calibration["fpr"]), int(calibration["n_reference"])).to_dict()
    return {
        "schema": RESULTS_SCHEMA,
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
        "budget": budget,
    }


__all__ = ["AdapterInfo", "Engine", "ProgressFn", "ResultsCache", "Subject", "environment_record", "results_document"]
