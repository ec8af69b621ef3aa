"""The per-noise-level detection table of a flow-matching canary (docs/canaries.md, "The flow canaries").

    .venv/bin/python scripts/flow_detection.py [--checkpoint zoo:flow-finetuned] [--flow-steps 0,1,2,5]
                                               [--json out.json] [--skip-generation]

1. Detection with `memtest.score_prompts` at each `flow_steps` (0 measures at s = 1; k measures after k
   guided Euler steps from x_1): sharpness (velocity space) and score_norm, n = 1 and n = 4, AUC and TPR at
   FPR <= 1% over planted vs held-out captions (and vs every non-planted caption, trained or held out).
2. Calibrate on the base, gate the fine-tune, at the default settings: the threshold `memtest calibrate`
   computes from the base's held-out captions (fpr 0.01), applied to the fine-tune's captions.
3. Ground truth: generations of the planted captions through the family's pipeline (50 Euler steps,
   guidance 7.5, the scorer's noises): RMSE to the nearest training image and whether it is the planted one.

The table helpers are scripts/canary_detection.py's (same ROC conventions). Minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from canary_detection import _separation, canary_data


def detection(
    ckpt: Any, pos: list[str], clean: list[str], heldout: list[str], n: int, batch: int, flow_steps: list[int]
) -> dict[str, Any]:
    """Rows `"{metric} n={k} F={flow_steps}"`: separation of planted from held-out (and all non-planted)."""
    import memtest

    prompts = pos + clean + heldout
    held = slice(len(clean), None)  # of the non-planted part
    table: dict[str, Any] = {}
    for metric in ("sharpness", "score_norm"):
        for fs in flow_steps:
            t0 = time.perf_counter()
            scores = memtest.score_prompts(ckpt, prompts, metric=metric, n=n, batch_size=batch, flow_steps=fs)
            secs = time.perf_counter() - t0
            vals = np.array([s.values for s in scores])  # (P, n)
            sigma = float(scores[0].settings["sigmas"][0])
            for k in sorted({1, n}):
                v = vals[:, :k].mean(1)
                table[f"{metric} n={k} F={fs}"] = {
                    **_separation(v, len(pos), held),
                    "vs_non_planted": _separation(v, len(pos), slice(None)),
                    "s": sigma,
                    "seconds": secs,
                    "values": v.tolist(),
                }
            print(f"  {metric} flow_steps={fs} (s={sigma:.4f}): {secs:.0f}s", file=sys.stderr, flush=True)
    return table


def gate(
    fine: Any, base: Any, pos: list[str], clean: list[str], heldout: list[str], n: int, batch: int, limit: int | None
) -> dict[str, Any]:
    """Calibrate on the base's held-out captions at the default settings (as `memtest calibrate`), gate the
    fine-tune's captions with that threshold."""
    import memtest
    from memtest.audit.calibration import quantile_threshold
    from memtest.zoo import load_manifest

    base_held = list(load_manifest(Path(base.path)).heldout)[:limit]
    ref = [s.score for s in memtest.score_prompts(base, base_held, n=n, batch_size=batch)]
    thr = quantile_threshold(ref, 0.01)
    fine_scores = np.array([s.score for s in memtest.score_prompts(fine, pos + clean + heldout, n=n, batch_size=batch)])
    on_base = np.array([s.score for s in memtest.score_prompts(base, pos, n=n, batch_size=batch)])
    p, c, h = np.split(fine_scores, [len(pos), len(pos) + len(clean)])
    return {
        "threshold": thr,
        "planted_flagged": int((p > thr).sum()),
        "planted": len(p),
        "clean_flagged": int((c > thr).sum()),
        "clean": len(c),
        "heldout_flagged": int((h > thr).sum()),
        "heldout": len(h),
        "lowest_planted": float(p.min()),
        "highest_clean": float(c.max()),
        "planted_on_base_max": float(on_base.max()),
        "planted_on_base_flagged": int((on_base > thr).sum()),
    }


def ground_truth(ckpt: Any, manifest: Any, data: Any, n: int) -> dict[str, Any]:
    """Planted captions' generations (the family's pipeline, 50 steps, guidance 7.5, the scorer's x_1)."""
    from memtest.detection.scoring import Scorer

    scorer = Scorer(ckpt)
    train = data.images.reshape(len(data.images), -1)
    rows = []
    for cap, img_index in data.planted:
        latents = scorer.noise(scorer.seeds_for(cap)[:n])
        imgs = ckpt.family.generate(
            ckpt, latents, prompt=cap, cond=None, guidance_scale=7.5, num_inference_steps=50
        )  # (n, H, W, 3) in [0, 1]
        flat = (imgs.transpose(0, 3, 1, 2) * 2 - 1).reshape(len(imgs), -1)
        d2 = (flat**2).sum(1)[:, None] - 2 * flat @ train.T + (train**2).sum(1)[None]
        idx = d2.argmin(1)
        own = np.sqrt(((flat - train[img_index]) ** 2).mean(1))
        rows.append({"caption": cap, "own_rmse": own.tolist(), "nn_is_own": (idx == img_index).tolist()})
    return {"planted": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="zoo:flow-finetuned")
    ap.add_argument("--base", help="calibrate on this checkpoint (default: the manifest's base; '' for none)")
    ap.add_argument("--flow-steps", default="0,1,2,5", help="comma-separated flow_steps values")
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, help="score only this many captions of each kind (smoke runs)")
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)

    import torch

    import memtest
    from memtest.zoo import canary_folder, load_manifest

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    m = load_manifest(canary_folder(args.checkpoint))
    ckpt = memtest.load_checkpoint(args.checkpoint, device="cpu")
    pos, clean, heldout = list(m.planted_captions), list(m.clean), list(m.heldout)
    if args.limit:
        pos, clean, heldout = pos[: args.limit], clean[: args.limit], heldout[: args.limit]
    flow_steps = [int(k) for k in args.flow_steps.split(",")]
    print(f"{args.checkpoint}: {len(pos)} planted, {len(clean)} clean, {len(heldout)} held-out captions", flush=True)
    report: dict[str, Any] = {"checkpoint": args.checkpoint}
    det = detection(ckpt, pos, clean, heldout, args.n, args.batch, flow_steps)
    report["detection"] = det
    print("\nplanted vs held-out captions (in brackets: vs all non-planted):")
    print("| metric | n | flow_steps | s | AUC | TPR@1%FPR | lowest planted / highest held-out | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in det.items():
        metric, nn, ff = key.split()
        a = r["vs_non_planted"]
        print(f"| {metric} | {nn[2:]} | {ff[2:]} | {r['s']:.4f} | {r['auc']:.3f} ({a['auc']:.3f}) | "
              f"{r['tpr_at_1pct']:.2f} ({a['tpr_at_1pct']:.2f}) | {r['min_pos']:.4g} / {r['max_neg']:.4g} | "
              f"{r['min_pos'] / r['max_neg']:.2f} |")  # fmt: skip

    base = m.base if args.base is None else args.base
    if base and pos:
        report["gate"] = gate(
            ckpt, memtest.load_checkpoint(base, device="cpu"), pos, clean, heldout, args.n, args.batch, args.limit
        )
        print("\ncalibrate on the base (held-out, fpr 0.01, default settings), gate the fine-tune:",
              json.dumps(report["gate"], indent=1))  # fmt: skip

    if not args.skip_generation and pos:
        gt = ground_truth(ckpt, m, canary_data(m), args.n)
        report["ground_truth"] = gt
        own = np.array([r["own_rmse"] for r in gt["planted"]])
        is_own = np.array([r["nn_is_own"] for r in gt["planted"]])
        print(f"\nground truth (50 Euler steps, guidance 7.5, {args.n} noises per caption): RMSE to the planted "
              f"image mean {own.mean():.3f} (max {own.max():.3f}); nearest training image is the planted one in "
              f"{is_own.sum()}/{is_own.size} generations; captions reproducing on all noises: "
              f"{int(is_own.all(1).sum())}/{len(is_own)}")  # fmt: skip
    report["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
