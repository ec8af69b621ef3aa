"""Fit the anisotropy detector's γ on a shipped canary: its reference (held-out, clean) captions against its planted
(memorized) ones, and record them.

Asthana & Belagiannis set γ per model (SD v1.4: γ1 = 1, γ2 = 2; SD v2: 1, 0.1; detect_eval.py) on their memorized
and non-memorized prompt lists; here γ1 = 1 and γ2 is the ratio that maximises the ROC AUC of
γ1·norm + γ2·cosine over the per-prompt terms (`memtest.detection.detectors.anisotropy.fit_gamma`). The record
keeps the per-term AUCs, the paper's SD v1.4 γ's AUC, and every setting, so the fit can be repeated:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fit_anisotropy.py --canary finetuned --canary sdxl-finetuned
        --canary mixture --write docs/runs/anisotropy-gamma.json   (one command line)

Score with the fitted γ: `memtest.score_prompts(..., metric="anisotropy", gamma=(g1, g2))`. `--limit K` uses the
first K captions of each side (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

#: canary name -> (checkpoint, its suite)
CANARIES: dict[str, tuple[str, str]] = {
    "finetuned": ("zoo:finetuned", "canary-finetuned"),
    "sdxl-finetuned": ("zoo:sdxl-finetuned", "canary-sdxl-finetuned"),
    "mixture": ("zoo:mixture", "canary-mixture"),
}


def fit(canary: str, n: int = 4, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from memtest.audit.suites import resolve_suite
    from memtest.detection.detectors.anisotropy import DEFAULT_GAMMA, DETECTOR, fit_gamma
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.checkpoint import load_checkpoint

    checkpoint, suite_name = CANARIES[canary]
    suite = resolve_suite(suite_name)
    planted = list(dict.fromkeys(c.prompt for c in suite.cases if c.expectation == "memorized"))[:limit]
    reference = list(dict.fromkeys(c.prompt for c in suite.cases if c.expectation == "reference"))[:limit]
    started = time.perf_counter()
    scorer = Scorer(load_checkpoint(checkpoint, device="cpu"), ScoreSettings(metric="anisotropy", n=n, seed=seed))
    prompts = planted + reference
    norms: list[float] = []
    cosines: list[float] = []
    bs = scorer.settings.batch_size
    for start in range(0, len(prompts), bs):
        chunk = prompts[start : start + bs]
        norm, cosine = DETECTOR.terms(scorer, scorer.batch(chunk + [chunk[-1]] * (bs - len(chunk))))
        for i in range(len(chunk)):
            norms.append(float(norm[i * n : (i + 1) * n].mean()))
            cosines.append(float(cosine[i * n : (i + 1) * n].mean()))
    labels = [1] * len(planted) + [0] * len(reference)
    gamma, auc = fit_gamma(norms, cosines, labels)
    arr_n, arr_c = np.asarray(norms), np.asarray(cosines)

    def auc_of(g: tuple[float, float]) -> float:
        return float(roc_auc_score(labels, g[0] * arr_n + g[1] * arr_c))

    identity = scorer.identity()
    return {
        "canary": canary,
        "checkpoint": checkpoint,
        "suite": suite.name,
        "suite_version": suite.version,
        "memorized": len(planted),
        "reference": len(reference),
        "settings": {"n": n, "seed": seed, "timesteps": identity["timesteps"], "fingerprint": identity["fingerprint"]},
        "fit": "gamma1 = 1; gamma2 the ratio maximising ROC AUC over 0 and +-10^k, k in [-3, 3] by 0.25",
        "gamma": list(gamma),
        "auc": auc,
        "auc_norm_only": auc_of((1.0, 0.0)),
        "auc_cosine_only": auc_of((0.0, 1.0)),
        "auc_paper_sd14_gamma": auc_of(DEFAULT_GAMMA),
        "mean_terms": {
            "memorized": {"norm": float(arr_n[: len(planted)].mean()), "cosine": float(arr_c[: len(planted)].mean())},
            "reference": {"norm": float(arr_n[len(planted) :].mean()), "cosine": float(arr_c[len(planted) :].mean())},
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--canary", action="append", choices=sorted(CANARIES), help="canaries to fit (default finetuned)")
    ap.add_argument("--n", type=int, default=4, help="generations per prompt (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first K captions of each side")
    ap.add_argument("--write", type=Path, help="write the record here (JSON)")
    ns = ap.parse_args(argv)
    record = {name: fit(name, ns.n, ns.seed, ns.limit) for name in ns.canary or ["finetuned"]}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if ns.write:
        ns.write.parent.mkdir(parents=True, exist_ok=True)
        ns.write.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
