"""Thresholds calibrated on non-memorized reference prompts (SPEC.md §3).

threshold(a) = the (1 - a) quantile of reference scores ("higher" interpolation, so at most a fraction
a of the reference prompts lies above it); a prompt is flagged when its score exceeds the threshold.
A calibration records every setting that changes a score; the gate refuses one that does not match.
No torch here: the plugin reads calibrations at start-up without loading a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memtest._io import atomic_write_text
from memtest.errors import CalibrationError, MemtestError, option

CALIBRATION_SCHEMA = "memtest.calibration/1"
CALIBRATION_FILENAME = "memtest-calibration.json"
# Settings that may differ between calibration and gate without changing a score.
_IGNORED_KEYS = frozenset({"fingerprint", "seeds"})


def required_references(fpr: float) -> int:
    """Fewest reference prompts that can resolve a false-positive rate `fpr` (1/fpr, rounded up)."""
    if not 0.0 < fpr < 1.0:
        raise CalibrationError(f"The target false-positive rate must be in (0, 1), got {fpr!r}.")
    return math.ceil(1.0 / fpr - 1e-9)


def quantile_threshold(scores: Sequence[float] | np.ndarray[Any, Any], fpr: float) -> float:
    arr = np.asarray(scores, dtype=np.float64)
    return float(np.quantile(arr, 1.0 - fpr, method="higher"))


@dataclass(frozen=True)
class Calibration:
    threshold: float
    ci: tuple[float, float]
    fpr: float
    reference_scores: tuple[float, ...]
    reference_suite: str
    reference_version: str
    identity: dict[str, Any]
    checkpoint: str
    fingerprint: str
    created: str = ""
    memtest_version: str = ""
    bootstrap: dict[str, Any] = field(default_factory=dict)
    #: copy thresholds of confirmation (memtest.evidence), by descriptor name: {"value", "fpr", "references",
    #: "descriptor" (its settings), "source"}; measured on the same reference prompts' generations
    copy_thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None

    @property
    def n_reference(self) -> int:
        return len(self.reference_scores)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d["schema"] = CALIBRATION_SCHEMA
        d["ci"] = list(self.ci)
        d["reference_scores"] = list(self.reference_scores)
        d["n_reference"] = self.n_reference
        if not self.copy_thresholds:
            d.pop("copy_thresholds")  # files without them stay as they were
        return d

    def record(self, accepted_from_base: bool = False) -> dict[str, Any]:
        """The calibration as it appears in a results file."""
        return {
            "path": self.path,
            "threshold": self.threshold,
            "ci": list(self.ci),
            "fpr": self.fpr,
            "reference_suite": self.reference_suite,
            "reference_version": self.reference_version,
            "n_reference": self.n_reference,
            "reference_scores": list(self.reference_scores),
            "fingerprint": self.fingerprint,
            "checkpoint": self.checkpoint,
            "settings": dict(self.identity),
            "accepted_from_base": accepted_from_base,
            "created": self.created,
            "copy_thresholds": {name: dict(t) for name, t in self.copy_thresholds.items()},
        }


def calibrate(
    scores: Sequence[float],
    fpr: float,
    identity: Mapping[str, Any],
    *,
    reference_suite: str,
    reference_version: str,
    checkpoint: str,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Calibration:
    """Threshold at target false-positive rate `fpr` with a bootstrap confidence interval."""
    need = required_references(fpr)
    values = [float(s) for s in scores]
    if len(values) < need:
        raise CalibrationError(
            f"Calibrating at a false-positive rate of {fpr:g} needs at least {need} reference prompts; "
            f"suite '{reference_suite}' gave {len(values)}. Add reference prompts (expectation: reference) "
            f"or raise {option('fpr')} to at least {1.0 / max(len(values), 1):.3g}."
        )
    if not all(math.isfinite(v) for v in values):
        raise CalibrationError("A reference score is not finite; a calibration cannot be built from it.")
    arr = np.asarray(values, dtype=np.float64)
    threshold = quantile_threshold(arr, fpr)
    rng = np.random.default_rng(seed)
    boots = np.quantile(rng.choice(arr, size=(n_boot, arr.size), replace=True), 1.0 - fpr, axis=1, method="higher")
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    from memtest._version import __version__

    return Calibration(
        threshold=threshold,
        ci=(float(lo), float(hi)),
        fpr=float(fpr),
        reference_scores=tuple(values),
        reference_suite=reference_suite,
        reference_version=reference_version,
        identity={k: v for k, v in identity.items() if k not in _IGNORED_KEYS},
        checkpoint=checkpoint,
        fingerprint=str(identity.get("fingerprint", "")),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        memtest_version=__version__,
        bootstrap={"n_boot": n_boot, "level": level, "seed": seed},
    )


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    out = Path(path)
    text = json.dumps(cal.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(out, text + "\n")
    return out


_REQUIRED = ("threshold", "ci", "fpr", "reference_scores", "reference_suite", "identity", "fingerprint")


def load_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    fix = f"Recreate it ({option('calibrate')})."
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"Calibration file '{p}' does not exist. {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"Calibration file '{p}' is not readable JSON ({exc}). {fix}") from exc
    if not isinstance(data, dict) or data.get("schema") != CALIBRATION_SCHEMA:
        raise CalibrationError(f"'{p}' is not a memtest calibration (expected schema {CALIBRATION_SCHEMA!r}). {fix}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CalibrationError(f"Calibration '{p}' lacks {', '.join(missing)}. {fix}")
    try:
        threshold = float(data["threshold"])
        ci = (float(data["ci"][0]), float(data["ci"][1]))
        fpr = float(data["fpr"])
        scores = tuple(float(s) for s in data["reference_scores"])
        identity = dict(data["identity"])
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise CalibrationError(f"Calibration '{p}' has a malformed field ({exc}). {fix}") from exc
    if not math.isfinite(threshold):
        raise CalibrationError(f"Calibration '{p}' has a non-finite threshold. {fix}")
    return Calibration(
        threshold=threshold,
        ci=ci,
        fpr=fpr,
        reference_scores=scores,
        reference_suite=str(data["reference_suite"]),
        reference_version=str(data.get("reference_version", "")),
        identity=identity,
        checkpoint=str(data.get("checkpoint", "")),
        fingerprint=str(data["fingerprint"]),
        created=str(data.get("created", "")),
        memtest_version=str(data.get("memtest_version", "")),
        bootstrap=dict(data.get("bootstrap", {})),
        copy_thresholds=_copy_thresholds(data.get("copy_thresholds", {}), p, fix),
        path=str(p),
    )


def _copy_thresholds(raw: object, path: Path, fix: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise CalibrationError(f"Calibration '{path}' has a malformed copy_thresholds (not an object). {fix}")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise CalibrationError(f"Calibration '{path}' has a malformed copy threshold for {name!r}. {fix}")
        out[str(name)] = dict(entry)
    return out


def check_compatible(cal: Calibration, identity: Mapping[str, Any], accept_base: bool = False) -> bool:
    """Raise CalibrationError unless `cal` was made under the same settings (and checkpoint).

    Returns True when a different checkpoint's calibration was accepted (`accept_base`), which the
    results record.
    """
    where = cal.path or "the calibration"
    diffs = [
        f"{k}: calibration {cal.identity.get(k)!r} != run {identity.get(k)!r}"
        for k in sorted(set(cal.identity) | set(identity))
        if k not in _IGNORED_KEYS and cal.identity.get(k) != identity.get(k)
    ]
    if diffs:
        raise CalibrationError(
            f"Calibration '{where}' was made with other scoring settings, so its threshold does not apply: "
            + "; ".join(diffs)
            + f". Run with the calibration's settings, or recalibrate with these ({option('calibrate')})."
        )
    fp = str(identity.get("fingerprint", ""))
    if cal.fingerprint != fp:
        if accept_base:
            return True
        raise CalibrationError(
            f"Calibration '{where}' belongs to checkpoint {cal.checkpoint or '?'} (fingerprint "
            f"{cal.fingerprint[:12]}), not to this one ({fp[:12]}). Recalibrate on this checkpoint "
            f"({option('calibrate')}), or, to gate a fine-tune with its base model's calibration, pass "
            f"{option('accept_base_calibration')} (recorded in the results)."
        )
    return False


def find_calibration(folder: str | Path, path: str | Path | None = None) -> Path | None:
    """The calibration file an audit of the checkpoint in `folder` uses: `path` when given, else the one the
    checkpoint ships (`memtest-calibration.json` beside its model_index.json), else None."""
    if path:
        return Path(path)
    own = Path(folder) / CALIBRATION_FILENAME
    return own if own.is_file() else None


def checkpoint_calibration(
    identity: Mapping[str, Any],
    folder: str | Path,
    *,
    path: str | Path | None = None,
    accept_base: bool = False,
    missing: str,
    error: type[MemtestError] = CalibrationError,
) -> tuple[Calibration, bool]:
    """The one threshold resolver: the calibration for `identity` (see `find_calibration`), checked to match,
    and whether a base model's was accepted. None found raises `error(missing)`: the gate fails closed."""
    found = find_calibration(folder, path)
    if found is None:
        raise error(missing)
    cal = load_calibration(found)
    return cal, check_compatible(cal, identity, accept_base=accept_base)
