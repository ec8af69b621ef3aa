"""The ROC statistics a report shows: how well the run's scores separate its memorized cases from the
non-memorized ones (AUC, and the TPR reached at the calibration's target FPR). Numbers only: the curve is
drawn by svg.py. scikit-learn is imported only when a document has both labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RocStats:
    auc: float
    tpr_at_target: float | None
    target_fpr: float | None
    n_positive: int
    n_negative: int
    negatives_from: str
    # the curve to draw (intermediate points dropped)
    fpr: Sequence[float]
    tpr: Sequence[float]


def tpr_at_fpr(fpr: Sequence[float], tpr: Sequence[float], target: float) -> float:
    """The largest TPR whose FPR does not exceed `target` (0 when none does)."""
    best = 0.0
    for f, t in zip(fpr, tpr, strict=True):
        if f <= target + 1e-12 and t > best:
            best = float(t)
    return best


def roc_stats(doc: Mapping[str, Any]) -> RocStats | None:
    """The ROC of a (validated) results document: memorized cases are the positives; clean and reference
    cases, and the calibration's reference scores when the run did not score the reference suite itself,
    are the negatives. None when either side is empty."""
    cases = [c for c in doc["cases"] if c["score"] is not None]
    pos = [float(c["score"]) for c in cases if c["expectation"] == "memorized"]
    neg = [float(c["score"]) for c in cases if c["expectation"] in ("clean", "reference")]
    n_clean = sum(1 for c in cases if c["expectation"] == "clean")
    n_ref_cases = len(neg) - n_clean
    parts = []
    if n_clean:
        parts.append(f"{n_clean} clean cases")
    if n_ref_cases:
        parts.append(f"{n_ref_cases} reference cases")
    calibration = doc["calibration"]
    # Calibration reference scores are negatives too, unless the run scored the reference suite
    # itself (then they would be counted twice).
    if calibration is not None and n_ref_cases == 0 and calibration["reference_scores"]:
        neg += [float(v) for v in calibration["reference_scores"]]
        parts.append(f"{len(calibration['reference_scores'])} calibration reference scores")
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score, roc_curve  # lazy: ~0.5 s import, only when needed

    y_true = [1] * len(pos) + [0] * len(neg)
    scores = pos + neg
    auc = float(roc_auc_score(y_true, scores))
    fpr_all, tpr_all, _ = roc_curve(y_true, scores, drop_intermediate=False)
    target = float(calibration["fpr"]) if calibration is not None else None
    at_target = tpr_at_fpr(list(fpr_all), list(tpr_all), target) if target is not None else None
    fpr_pl, tpr_pl, _ = roc_curve(y_true, scores, drop_intermediate=True)
    return RocStats(
        auc,
        at_target,
        target,
        len(pos),
        len(neg),
        ", ".join(parts),
        [float(f) for f in fpr_pl],
        [float(t) for t in tpr_pl],
    )
