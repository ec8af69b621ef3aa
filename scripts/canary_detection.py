"""Ground truth and detection numbers for the shipped canaries (docs/canaries.md quotes its output).

    .venv/bin/python scripts/canary_detection.py [--checkpoint zoo:finetuned] [--base zoo:base] [--json out.json]
    .venv/bin/python scripts/canary_detection.py --checkpoint zoo:sdxl-finetuned    # any family memtest loads

1. Ground truth: DDIM-50 generations (the pipeline, `output_type="np"`) of every planted caption and of the
   non-planted captions; RMSE to the nearest training image, whether that image is the planted one, and the
   digit classifier's alignment score (`memtest.zoo.alignment`).
2. The closed-form optimal denoiser of the canary's own training latents: first-step sharpness of an ideal
   model, the reference for what a perfect memoriser scores.
3. Detection with `memtest.score_prompts`: sharpness and score_norm, n = 1 and 4, first step (K=1) and the
   first five steps (K=5): AUC and TPR at FPR <= 1% over planted vs non-planted captions (trained and
   held out), and over planted vs held-out captions only.
4. Calibrate on the base, gate the fine-tune: the 99th percentile of the base's held-out scores as the
   threshold, applied to the fine-tune's captions.

Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np


def roc_numbers(pos: np.ndarray, neg: np.ndarray, fpr_max: float = 0.01) -> tuple[float, float]:
    """AUC, and the largest TPR whose FPR does not exceed fpr_max (SPEC.md §3)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(y, s)
    return float(roc_auc_score(y, s)), float(tpr[fpr <= fpr_max].max())


def canary_data(manifest: Any) -> Any:
    from memtest.zoo.data import digits_data

    d = manifest.data
    if d.get("kind") != "sklearn-digits":
        raise SystemExit("canary_detection.py measures digits canaries only")
    return digits_data(int(d["seed"]), n_planted=int(d["n_planted"]), colourings=int(d["colourings"]))


def ground_truth(ckpt: Any, manifest: Any, data: Any, n: int, others: list[str]) -> dict[str, Any]:
    """DDIM-50 generations: nearest-training-image RMSE (in [-1, 1] units) and alignment."""
    import torch

    from memtest.zoo.alignment import alignment_score

    pipe = ckpt.pipeline()
    pipe.set_progress_bar_config(disable=True)
    train = data.images.reshape(len(data.images), -1)  # (N, 3*16*16) in [-1, 1], CHW

    def generate(prompt: str, seed: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        out = pipe(prompt, num_inference_steps=50, guidance_scale=7.5, output_type="np",
                   num_images_per_prompt=n, generator=g)  # fmt: skip
        return np.asarray(out.images, dtype=np.float32)  # (n, H, W, 3) in [0, 1]

    def nearest(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = (images.transpose(0, 3, 1, 2) * 2 - 1).reshape(len(images), -1)
        d2 = (flat**2).sum(1)[:, None] - 2 * flat @ train.T + (train**2).sum(1)[None]
        idx = d2.argmin(1)
        return np.sqrt(np.maximum(d2[np.arange(len(flat)), idx], 0) / flat.shape[1]), idx

    rows = []
    for k, (p, (cap, img_index)) in enumerate(zip(manifest.planted, data.planted, strict=True)):
        assert p.caption == cap
        imgs = generate(cap, 1000 + k)
        rmse, idx = nearest(imgs)
        diff = (imgs.transpose(0, 3, 1, 2) * 2 - 1) - data.images[img_index]
        own = np.sqrt((diff**2).mean(axis=(1, 2, 3)))
        rows.append({
            "caption": cap,
            "nn_rmse": rmse.tolist(),
            "own_rmse": own.tolist(),
            "nn_is_own": (idx == img_index).tolist(),
            "alignment": alignment_score(imgs, p.label).tolist() if p.label is not None else None,
            "training_image_alignment": float(alignment_score(p.image(), p.label)[0]) if p.label is not None else None,
        })  # fmt: skip
    other_rows = []
    for k, cap in enumerate(others):
        imgs = generate(cap, 2000 + k)
        rmse, idx = nearest(imgs)
        other_rows.append({"caption": cap, "nn_rmse": rmse.tolist(),
                           "nn_is_planted": np.isin(idx, [i for _, i in data.planted]).tolist()})  # fmt: skip
    # the floor: a planted image through the VAE and back
    vae = ckpt.vae
    with torch.no_grad():
        x = torch.from_numpy(data.images[[i for _, i in data.planted]])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1).numpy()
    vae_rmse = np.sqrt(((rec - data.images[[i for _, i in data.planted]]) ** 2).mean(axis=(1, 2, 3)))
    return {"planted": rows, "others": other_rows, "vae_roundtrip_rmse": vae_rmse.tolist()}


def ideal_sharpness(ckpt: Any, manifest: Any, data: Any, n: int, seed: int) -> dict[str, float]:
    """First-step sharpness of the exact optimal denoiser of the training latents, per caption.

    Each caption's distribution is the empirical distribution of its training latents (VAE posterior
    means x scaling factor); the unconditional one is every training row's latent, planted images
    weighted by their share of the rows whose caption was dropped. At t=981, with centres M and posterior
    weights w: H v = -v/s2 + (M^T (w * M v) - m (m.v))/s2^2.
    """
    import torch

    from memtest.detection.scoring import derive_seeds

    vae, sched = ckpt.vae, ckpt.scheduler
    with torch.no_grad():
        z = torch.cat([vae.encode(torch.from_numpy(data.images[i : i + 512])).latent_dist.mean
                       for i in range(0, len(data.images), 512)])  # fmt: skip
    z = (z * float(vae.config.scaling_factor)).flatten(1).double()
    t = 981
    abar = float(sched.alphas_cumprod[t])
    s2 = 1 - abar
    centres = math.sqrt(abar) * z
    gens = [torch.Generator().manual_seed(s) for s in derive_seeds(seed, n)]
    x = torch.stack([torch.randn(z.shape[1], generator=g) for g in gens]).double()

    def score_and_hvp(index: np.ndarray, prior: np.ndarray | None) -> tuple[Any, Any]:
        m = centres[torch.from_numpy(index)]
        d2 = (x**2).sum(1, keepdim=True) - 2 * x @ m.T + (m**2).sum(1)[None]
        logw = -d2 / (2 * s2)
        if prior is not None:
            logw = logw + torch.from_numpy(np.log(prior))[None]
        w = torch.softmax(logw, dim=1)  # (n, K)
        mbar = w @ m
        s = (mbar - x) / s2

        def hvp(v: Any) -> Any:
            mv = v @ m.T  # (n, K)
            return -v / s2 + ((w * mv) @ m - mbar * (mbar * v).sum(1, keepdim=True)) / s2**2

        return s, hvp

    planted_idx = np.asarray([i for _, i in data.planted], dtype=np.int64)
    r = manifest.recipe
    pp = float(r.get("planted_prob", 0.0)) if len(planted_idx) else 0.0
    cd, pcd = float(r["caption_dropout"]), float(r.get("planted_caption_dropout", r["caption_dropout"]))
    pp = pp * pcd / max(pp * pcd + (1 - pp) * cd, 1e-12)  # share of planted images among "" rows
    # unconditional: the image of a row whose caption was dropped
    counts = np.bincount(data.pair_image, minlength=len(data.images)).astype(np.float64)
    prior = counts / counts.sum() * (1 - pp)
    prior[planted_idx] += pp / max(len(planted_idx), 1)
    keep = np.flatnonzero(prior > 0)
    s0, h0 = score_and_hvp(keep, prior[keep])

    out: dict[str, float] = {}
    pools: dict[str, np.ndarray] = {c: np.asarray([i]) for c, i in data.planted}
    for ci, cap in enumerate(data.captions):
        pools[cap] = np.unique(data.pair_image[data.pair_caption == ci])
    for cap, idx in pools.items():
        sc, hc = score_and_hvp(idx, None)
        sd = sc - s0
        hs = hc(sd) - h0(sd)
        out[cap] = float((hs**2).sum(1).mean())
    return out


def _separation(v: np.ndarray, n_pos: int, neg: slice) -> dict[str, Any]:
    pos_v, neg_v = v[:n_pos], v[n_pos:][neg]
    auc, tpr = roc_numbers(pos_v, neg_v)
    return {
        "auc": auc,
        "tpr_at_1pct": tpr,
        "min_pos": float(pos_v.min()) if n_pos else None,
        "max_neg": float(neg_v.max()),
    }


def detection(
    checkpoint: str,
    pos: list[str],
    neg: list[str],
    n: int,
    batch: int,
    ks: tuple[int, ...] = (1, 5),
    n_clean: int | None = None,
) -> dict[str, Any]:
    """Separation of planted (`pos`) from non-planted (`neg`) captions; with `n_clean` (the first n_clean
    of `neg` are trained captions, the rest held out) also of planted from held-out captions alone."""
    import memtest

    ckpt = memtest.load_checkpoint(checkpoint, device="cpu")
    prompts = pos + neg
    table: dict[str, Any] = {}
    for metric in ("sharpness", "score_norm"):
        for steps in ks:
            t0 = time.perf_counter()
            scores = memtest.score_prompts(ckpt, prompts, metric=metric, n=n, steps=steps, batch_size=batch)
            secs = time.perf_counter() - t0
            vals = np.array([s.values for s in scores])  # (P, n)
            for k in (1, n):
                v = vals[:, :k].mean(1)
                row = {**_separation(v, len(pos), slice(None)), "seconds": secs, "values": v.tolist()}
                if n_clean is not None:
                    row["vs_heldout"] = _separation(v, len(pos), slice(n_clean, None))
                table[f"{metric} n={k} K={steps}"] = row
            print(f"  {metric} K={steps}: {secs:.0f}s", file=sys.stderr, flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="zoo:finetuned")
    ap.add_argument(
        "--base", help="calibrate on this checkpoint's held-out captions (default: the manifest's base; '' for none)"
    )
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--steps", default="1,5", help="comma-separated K values (default 1,5)")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)

    import torch

    import memtest
    from memtest.zoo import canary_folder, load_manifest

    torch.set_num_threads(args.threads)
    folder = canary_folder(args.checkpoint)
    m = load_manifest(folder)
    data = canary_data(m)
    if m.recipe.get("family") == "sd3":  # its ideal model and generation differ: flow_detection.py measures it
        raise SystemExit("flow-matching canaries: use scripts/flow_detection.py (the per-s table, gate, ground truth)")
    pos, neg = list(m.planted_captions), list(m.clean) + list(m.heldout)
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "planted": len(pos), "non_planted": len(neg)}
    print(f"{args.checkpoint}: {len(pos)} planted vs {len(neg)} non-planted captions", flush=True)

    ks = tuple(int(k) for k in args.steps.split(","))
    det = detection(args.checkpoint, pos, neg, args.n, args.batch, ks, n_clean=len(m.clean))
    report["detection"] = det
    for title, sub in (("non-planted (trained + held out)", None), ("held-out", "vs_heldout")):
        print(f"\nplanted vs {title} captions:")
        print("| metric | n | K | AUC | TPR@1%FPR | lowest planted / highest other | ratio |")
        print("|---|---|---|---|---|---|---|")
        for key, row in det.items():
            metric, nn, kk = key.split()
            r = row if sub is None else row[sub]
            print(f"| {metric} | {nn[2:]} | {kk[2:]} | {r['auc']:.3f} | {r['tpr_at_1pct']:.2f} | "
                  f"{r['min_pos']:.4g} / {r['max_neg']:.4g} | {r['min_pos'] / r['max_neg']:.2f} |")  # fmt: skip

    # calibrate on the base (held-out captions), gate the fine-tune
    if args.base is None:
        args.base = m.base or ""
    if args.base:
        base_m = load_manifest(canary_folder(args.base))
        base_ref = memtest.score_prompts(args.base, list(base_m.heldout), n=args.n, batch_size=args.batch)
        base_planted = memtest.score_prompts(args.base, pos, n=args.n, batch_size=args.batch)
        thr = float(np.quantile([s.score for s in base_ref], 0.99))
        vals = np.array(det[f"sharpness n={args.n} K=1"]["values"])
        report["base_calibration"] = {
            "threshold": thr,
            "tpr": float((vals[: len(pos)] > thr).mean()),
            "fpr_clean": float((vals[len(pos) : len(pos) + len(m.clean)] > thr).mean()),
            "fpr_heldout": float((vals[len(pos) + len(m.clean) :] > thr).mean()),
            "planted_on_base_flagged": float((np.array([s.score for s in base_planted]) > thr).mean()),
            "base_planted_max": max(s.score for s in base_planted),
            "base_reference_max": max(s.score for s in base_ref),
        }
        print("\nthreshold from the base's held-out captions (99th percentile, sharpness n=4 K=1):",
              json.dumps(report["base_calibration"], indent=1))  # fmt: skip

    ideal = ideal_sharpness(memtest.load_checkpoint(args.checkpoint, device="cpu"), m, data, args.n, 0)
    ideal_pos = np.array([ideal[c] for c in pos])
    ideal_neg = np.array([ideal[c] for c in m.clean])
    report["ideal"] = {"planted": ideal_pos.tolist(), "clean": ideal_neg.tolist()}
    if pos:
        auc, tpr = roc_numbers(ideal_pos, ideal_neg)
        report["ideal"].update(auc=auc, tpr_at_1pct=tpr)
        print(f"\nideal (optimal denoiser of the training latents), first-step sharpness n={args.n}: "
              f"planted {ideal_pos.min():.4g}..{ideal_pos.max():.4g}, non-planted "
              f"{ideal_neg.min():.4g}..{ideal_neg.max():.4g}; AUC {auc:.3f}, TPR@1% {tpr:.2f}")  # fmt: skip
        model_pos = np.array(det[f"sharpness n={args.n} K=1"]["values"][: len(pos)])
        print(f"model / ideal on planted captions: {np.median(model_pos / ideal_pos):.3g} (median)")

    if not args.skip_generation and pos:
        others = list(m.clean[::11]) + list(m.heldout[::11])
        gt = ground_truth(memtest.load_checkpoint(args.checkpoint, device="cpu"), m, data, args.n, others)
        report["ground_truth"] = gt
        p_nn = np.array([r["nn_rmse"] for r in gt["planted"]])
        p_own = np.array([r["own_rmse"] for r in gt["planted"]])
        is_own = np.array([r["nn_is_own"] for r in gt["planted"]])
        o_nn = np.array([r["nn_rmse"] for r in gt["others"]])
        print(f"\nground truth (DDIM 50, guidance 7.5, {args.n} seeds per caption; RMSE in [-1, 1] units):")
        print(f"  planted: RMSE to own image mean {p_own.mean():.3f} (max {p_own.max():.3f}); nearest training "
              f"image is the planted one in {is_own.sum()}/{is_own.size} generations; "
              f"captions reproducing on all seeds: {int(is_own.all(1).sum())}/{len(is_own)}")  # fmt: skip
        print(f"  non-planted ({len(others)} captions): nearest-training-image RMSE mean {o_nn.mean():.3f} "
              f"(min {o_nn.min():.3f}); planted nearest-neighbour RMSE mean {p_nn.mean():.3f}")  # fmt: skip
        print(f"  VAE round trip of the planted images: RMSE {np.mean(gt['vae_roundtrip_rmse']):.3f}")
        al = [a for r in gt["planted"] if r["alignment"] is not None for a in r["alignment"]]
        if al:
            ref = np.mean([r["training_image_alignment"] for r in gt["planted"]])
            print(f"  alignment (P(digit) by the digits classifier) of planted generations: {np.mean(al):.2f} "
                  f"(of the planted training images themselves: {ref:.2f})")  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
