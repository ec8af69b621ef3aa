"""Proof that SAIL removes the copy on a canary (docs/mitigation.md quotes its output).

    .venv/bin/python scripts/mitigation_proof.py [--checkpoint zoo:finetuned] [--n 4] [--write docs/mitigation.md]

For every planted (memorised) caption of the canary:

1. SAIL (`memtest.mitigation.mitigate_sail`) with the checkpoint's calibrated threshold, starting from the
   detector's seeds; DDIM-50 generations (guidance 7.5) from the original seeds (before) and from the
   accepted x_T (after), through the checkpoint's own pipeline.
2. Copy distance: RMSE (pixels in [0, 1]) of each generated image to the caption's memorised training image as
   the checkpoint's VAE reproduces it (decode(encode(image)): the planted images carry a noise texture that the
   tiny VAE cannot represent, so even a perfect copy lies about 0.15 from the raw pixels; the raw distance is
   in the JSON). The memorised range is set by non-memorised generations: held-out and training captions
   generated from the same seeds, whose nearest-neighbour distance to the training set says how close an
   ordinary generation comes to some training image. An image is a copy when it lies closer to the memorised
   image than the 5th percentile of those distances.
3. Alignment: the digit classifier (`memtest.zoo.alignment`) must still recognise the digit the caption asks
   for (accuracy of its argmax; mean probability of the digit).
4. Cost: SAIL's time per prompt over one full generation of the same n images, in the same run.

`--acceptance detection` (default) accepts below the checkpoint's calibrated detection threshold; `median`
below the median of its calibration's reference scores (`memtest.mitigation.reference_threshold`), as flat as
a typical non-memorised prompt; a number is taken as the threshold. With `--write`, the table replaces the
block between `<!-- proof-TAG:begin -->` and `<!-- proof-TAG:end -->` (TAG = the acceptance).
Minutes on 2 CPU cores for 10 captions at n = 4 (tens of minutes with `median`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
COPY_PERCENTILE = 5.0
#: zoo:mixture's research copy boundary, measured by `memorised_range` when it was trained (RMSE to the memorised
#: image as the VAE reproduces it): the copy rule of the proofs and surveys in docs/mitigation.md. The product
#: counts copies by the gate's own rule (memtest.evidence, the calibration's copy threshold) instead.
RESEARCH_BOUNDARY = ROOT / "docs" / "runs" / "mixture-copy-boundary.json"


def research_boundary() -> float:
    """zoo:mixture's research copy boundary (`RESEARCH_BOUNDARY`)."""
    return float(json.loads(RESEARCH_BOUNDARY.read_text(encoding="utf-8"))["boundary"])


@dataclass
class Canary:
    """A loaded canary: scorer, threshold, manifest, training images (N, H, W, 3) in [0, 1]."""

    name: str
    scorer: Any
    threshold: float
    threshold_source: str
    manifest: Any
    train: np.ndarray
    planted_index: dict[str, int] = field(default_factory=dict)
    reconstructed: dict[str, np.ndarray] = field(default_factory=dict)  # memorised images through the VAE


def load_canary(checkpoint: str, n: int, acceptance: str = "detection") -> Canary:
    from memtest.audit.calibration import CALIBRATION_FILENAME
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo import load_manifest
    from memtest.zoo.data import digits_data

    ckpt = load_checkpoint(checkpoint, device="cpu")
    manifest = load_manifest(ckpt.path)
    d = manifest.data
    if d.get("kind") != "sklearn-digits":
        raise SystemExit("mitigation_proof.py measures digits canaries only")
    data = digits_data(
        int(d["seed"]),
        n_planted=int(d["n_planted"]),
        colourings=int(d["colourings"]),
        mixture=d.get("mixture", 0.0),
        mixture_planted_prob=float(d.get("mixture_planted_prob", 0.4)),
    )
    train = (np.transpose(data.images, (0, 2, 3, 1)) + 1.0) / 2.0
    index = {c: i for c, i in data.planted}
    for p in manifest.planted:  # the rebuilt data must be the data the canary was trained on
        err = float(np.abs(train[index[p.caption]] - p.image()).max())
        if err > 1.5 / 255:
            raise SystemExit(f"rebuilt training image of {p.caption!r} differs from the manifest's by {err:.3f}")
    scorer = Scorer(ckpt, ScoreSettings(n=n))
    own = Path(ckpt.path) / CALIBRATION_FILENAME
    if acceptance not in ("detection", "median"):
        threshold, source = float(acceptance), "given"
    elif own.is_file():
        from memtest.audit.calibration import load_calibration

        cal = load_calibration(own)  # made at n = 4; thresholds are per-prompt means, used per generation here
        if acceptance == "detection":
            threshold, source = cal.threshold, f"the checkpoint's calibrated detection threshold at fpr {cal.fpr:g}"
        else:
            threshold = float(np.median(cal.reference_scores))
            source = f"the median of the checkpoint's {cal.n_reference} calibration reference scores"
    else:
        threshold, source = calibrate_on_heldout(scorer, manifest, median=acceptance == "median")
    from memtest.mitigation import vae_roundtrip

    recs = {p.caption: vae_roundtrip(ckpt, p.image()) for p in manifest.planted}
    return Canary(checkpoint, scorer, float(threshold), source, manifest, train.astype(np.float32), index, recs)


def calibrate_on_heldout(scorer: Any, manifest: Any, fpr: float = 0.01, median: bool = False) -> tuple[float, str]:
    """The (1 - fpr) quantile (or the median) of the held-out captions' scores, when the checkpoint ships no
    calibration."""
    from memtest.audit.calibration import calibrate, required_references

    refs = list(manifest.heldout)
    if len(refs) < required_references(fpr):
        fpr = 1.0 / len(refs)
    scores = [r.score for r in scorer.score(refs)]
    if median:
        return float(np.median(scores)), f"the median of {len(refs)} held-out captions' scores, computed here"
    cal = calibrate(
        scores, fpr, scorer.identity(), reference_suite="heldout", reference_version="1", checkpoint=scorer.ckpt.name
    )
    return cal.threshold, f"calibrated here on {len(refs)} held-out captions at fpr {fpr:g}"


def digit_of(caption: str) -> int:
    return int(caption.rsplit(" ", 1)[-1])


def generations(canary: Canary, captions: list[str], seeds: int = 4) -> tuple[np.ndarray, float]:
    """DDIM-50 images of each caption from seeds 0..seeds-1: (len(captions), seeds, H, W, 3); seconds per caption."""
    from memtest.mitigation import generate_images

    sc = canary.scorer
    out, started = [], time.perf_counter()
    for c in captions:
        out.append(generate_images(sc.ckpt, sc.noise(list(range(seeds))), prompt=c))
    return np.stack(out), (time.perf_counter() - started) / max(len(captions), 1)


def memorised_range(canary: Canary, captions: list[str]) -> dict[str, Any]:
    """Nearest-neighbour distances of non-memorised generations (4 seeds each, whatever n) to the training set,
    and the copy boundary."""
    from memtest.mitigation import nearest_distances

    imgs, _ = generations(canary, captions)
    flat = imgs.reshape(-1, *imgs.shape[2:])
    dist = nearest_distances(flat, canary.train)
    return {
        "captions": len(captions),
        "images": len(flat),
        "min": float(dist.min()),
        "p5": float(np.percentile(dist, COPY_PERCENTILE)),
        "median": float(np.median(dist)),
        "boundary": float(np.percentile(dist, COPY_PERCENTILE)),
    }


def copy_stats(canary: Canary, caption: str, images: np.ndarray, boundary: float) -> dict[str, Any]:
    from memtest.mitigation import image_distances
    from memtest.zoo.alignment import predict_proba

    target = canary.planted_index[caption]
    dist = image_distances(images, canary.train)  # (n, N)
    to_copy = image_distances(images, canary.reconstructed[caption][None])[:, 0]
    proba = predict_proba(images)
    digit = digit_of(caption)
    return {
        "to_copy": float(to_copy.mean()),
        "to_copy_min": float(to_copy.min()),
        "to_planted": float(dist[:, target].mean()),
        "nearest": float(dist.min(axis=1).mean()),
        "copies": int((to_copy < boundary).sum()),
        "aligned": float((proba.argmax(axis=1) == digit).mean()),
        "p_digit": float(proba[:, digit].mean()),
    }


def seed_survey(canary: Canary, caption: str, seeds: int, boundary: float, batch: int = 32) -> dict[str, Any]:
    """Does the copy depend on x_T? For `seeds` x_T of `caption` (the detector's seeds first, then more from
    the same derivation): each seed's first-step sharpness (as the detector measures it) and whether its
    DDIM-50 image is a copy; the copy rate, and the AUC of per-seed sharpness for copy vs non-copy seeds."""
    from memtest.detection.scoring import derive_seeds
    from memtest.mitigation import generate_images, image_distances, measure_sharpness
    from memtest.zoo.alignment import predict_proba

    sc = canary.scorer
    ids = derive_seeds(sc.settings.seed, seeds, caption if sc.settings.per_prompt_seeds else None)
    x = sc.noise(ids)
    t = sc.timesteps[0]
    s_fn = sc.s_delta_fn(t, sc.embed([caption]), sc.null())
    sharp = np.concatenate(
        [measure_sharpness(s_fn, x[i : i + batch], sc.settings.method, sc.fd_h).numpy() for i in range(0, seeds, batch)]
    )
    images = np.concatenate(
        [generate_images(sc.ckpt, x[i : i + batch], prompt=caption) for i in range(0, seeds, batch)]
    )
    to_copy = image_distances(images, canary.reconstructed[caption][None])[:, 0]
    copy = to_copy < boundary
    aligned = predict_proba(images).argmax(axis=1) == digit_of(caption)
    auc = None
    if 0 < copy.sum() < len(copy):
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(copy, sharp))
    return {
        "caption": caption,
        "seeds": seeds,
        "copy_rate": float(copy.mean()),
        "auc": auc,
        "sharpness_copy": float(sharp[copy].mean()) if copy.any() else None,
        "sharpness_other": float(sharp[~copy].mean()) if (~copy).any() else None,
        "to_copy_median": float(np.median(to_copy)),
        "aligned": float(aligned.mean()),
        "aligned_other": float(aligned[~copy].mean()) if (~copy).any() else None,
        "per_seed": {"sharpness": sharp.tolist(), "to_copy": to_copy.tolist()},
    }


def prove(canary: Canary, captions: list[str], boundary: float, **sail_options: Any) -> list[dict[str, Any]]:
    """SAIL on each caption; a caption whose budget runs out keeps the latents it did accept (maybe none)."""
    from memtest.mitigation import mitigate_sail

    rows = []
    for c in captions:
        m = mitigate_sail(canary.scorer, c, threshold=canary.threshold, **sail_options)
        assert m.images_before is not None and m.sail is not None
        before = copy_stats(canary, c, m.images_before, boundary)
        after = copy_stats(canary, c, m.images_after, boundary) if m.images_after is not None else None
        accepted = m.sail.accepted
        rows.append(
            {
                "caption": c,
                "digit": digit_of(c),
                "succeeded": m.succeeded,
                "reason": m.reason,
                "accepted": len(accepted),
                "steps": m.steps,
                "seeds_tried": len(m.sail.seeds_tried),
                "sharpness_before": float(np.mean(m.sharpness_before)),
                "sharpness_after": float(np.mean(m.sharpness_after)) if accepted else None,
                "before": before,
                "after": after,
                "sail_seconds": m.seconds,
                "generation_seconds": m.generation_seconds,
                "cost_ratio": m.cost_ratio,
                "norm_ratio": float(
                    np.mean([float(a.latent.norm()) for a in accepted])
                    / np.mean([float(x.norm()) for x in m.latents_before])
                )
                if accepted
                else None,
            }
        )
        print(f"{c!r}: {json.dumps(rows[-1], default=float)}", file=sys.stderr, flush=True)
    return rows


def _after(r: dict[str, Any], key: str, fmt: str) -> str:
    return "none accepted" if r["after"] is None else format(r["after"][key], fmt)


def markdown(canary: Canary, rows: list[dict[str, Any]], rng: dict[str, Any], n: int, options: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
    lines = [
        f"Checkpoint `{canary.name}` ({len(rows)} planted captions, n = {n} generations each, DDIM-50, guidance 7.5); "
        f"acceptance threshold {canary.threshold:.4g} ({canary.threshold_source}); SAIL options: {shown}.",
        "",
        f"Memorised range: non-memorised generations ({rng['captions']} captions x 4 seeds = {rng['images']} images) "
        f"lie at nearest-training-image RMSE min {rng['min']:.3f}, 5th percentile {rng['p5']:.3f}, median "
        f"{rng['median']:.3f}. An image counts as a copy when it "
        f"is closer than {rng['boundary']:.3f} to the memorised image (as the VAE reproduces it).",
        "",
        "| caption | sharpness before -> after | steps | accepted | RMSE to memorised image before -> after "
        "| copies before -> after | digit recognised before -> after | SAIL s (x generation) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["before"]
        sharp_after = "-" if r["sharpness_after"] is None else f"{r['sharpness_after']:.4g}"
        copies_after = "-" if r["after"] is None else f"{r['after']['copies']}/{r['accepted']}"
        lines.append(
            f"| {r['caption']} | {r['sharpness_before']:.4g} -> {sharp_after} | {r['steps']} | {r['accepted']}/{n} | "
            f"{b['to_copy']:.3f} -> {_after(r, 'to_copy', '.3f')} | {b['copies']}/{n} -> {copies_after} | "
            f"{b['aligned']:.2f} -> {_after(r, 'aligned', '.2f')} | {r['sail_seconds']:.2f} (x{r['cost_ratio']:.2f}) |"
        )
    done = [r for r in rows if r["after"] is not None]
    copied = [r for r in done if r["before"]["copies"] > 0]

    def mean(rs: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
        return float(np.mean([r[key][sub] if sub else r[key] for r in rs])) if rs else float("nan")

    lines += [
        "",
        f"- Accepted all {n} latents for {sum(1 for r in rows if r['succeeded'])} of {len(rows)} captions "
        f"({sum(r['accepted'] for r in rows)} of {n * len(rows)} latents); mean sharpness "
        f"{mean(rows, 'sharpness_before'):.4g} -> {mean(done, 'sharpness_after'):.4g} over the accepted ones.",
        f"- Captions whose unmitigated generations are copies: {len(copied)}. On those, copies "
        f"{sum(r['before']['copies'] for r in copied)}/{n * len(copied)} before -> "
        f"{sum(r['after']['copies'] for r in copied)}/{sum(r['accepted'] for r in copied)} after; RMSE to the "
        f"memorised image {mean(copied, 'before', 'to_copy'):.3f} -> {mean(copied, 'after', 'to_copy'):.3f}; "
        f"digit recognised {mean(copied, 'before', 'aligned'):.2f} -> {mean(copied, 'after', 'aligned'):.2f}.",
        f"- Cost: one full generation (50 DDIM steps, {n} images) took {mean(rows, 'generation_seconds'):.2f} s on "
        f"average in this run; SAIL took {mean(rows, 'sail_seconds'):.2f} s per prompt: "
        f"**{mean(rows, 'sail_seconds') / mean(rows, 'generation_seconds'):.1f}x a generation** (total over total; "
        f"per prompt, median x{float(np.median([r['cost_ratio'] for r in rows])):.1f}, measured in the same run on "
        f"2 CPU cores; one ratio per prompt is noisy). Accepted x_T norm / original norm: "
        f"{mean(done, 'norm_ratio'):.3f}.",
    ]
    return "\n".join(lines)


def write_block(path: Path, tag: str, text: str) -> None:
    """Replace the block between `<!-- tag:begin -->` and `<!-- tag:end -->` in `path` (append if absent)."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    doc = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
    path.write_text(doc, encoding="utf-8")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options this script shares with mitigation_baselines.py."""
    ap.add_argument("--checkpoint", default="zoo:finetuned")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--captions", type=int, default=None, help="only the first K planted captions")
    ap.add_argument("--caption", action="append", default=None, help="only this planted caption (repeatable)")
    ap.add_argument("--clean", type=int, default=20, help="non-memorised captions that set the memorised range")
    ap.add_argument("--acceptance", default="detection", help="detection, median, or a threshold value")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--restart-after", type=int, default=None)
    ap.add_argument("--renormalize", action="store_true")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--screen", type=float, default=None, help="SAIL: exact checks only below this x threshold")
    ap.add_argument("--warm-start", type=int, default=None, help="SAIL: screen this many extra seeds first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="markdown file to update (docs/mitigation.md)")
    ap.add_argument("--json", type=Path, default=None)


@dataclass
class Run:
    """What both scripts set up from their shared options."""

    canary: Canary
    planted: list[str]  # the planted captions to mitigate
    range: dict[str, Any]  # memorised_range of the non-memorised captions drawn from the manifest
    sail_options: dict[str, Any]  # the SAIL options given on the command line
    tag: str  # the docs block suffix: the acceptance, or "given" for a threshold value


def prepare(args: argparse.Namespace) -> Run:
    import torch

    torch.set_num_threads(args.threads)
    canary = load_canary(args.checkpoint, args.n, args.acceptance)
    planted = list(canary.manifest.planted_captions)[: args.captions]
    if args.caption:
        unknown = sorted(set(args.caption) - set(planted))
        if unknown:
            raise SystemExit(f"not planted captions of {args.checkpoint}: {unknown}")
        planted = [c for c in planted if c in args.caption]
    pool = list(canary.manifest.heldout) + list(canary.manifest.clean)
    pick = np.random.default_rng(0).choice(len(pool), size=min(args.clean, len(pool)), replace=False)
    rng = memorised_range(canary, [pool[i] for i in pick])
    print(f"memorised range: {rng}", file=sys.stderr)
    options: dict[str, Any] = {"renormalize": args.renormalize}
    for key in ("max_steps", "restart_after", "lr", "screen", "warm_start"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    tag = args.acceptance if args.acceptance in ("detection", "median") else "given"
    return Run(canary, planted, rng, options, tag)


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path:
        path.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")


def survey_markdown(canary: Canary, rows: list[dict[str, Any]], rng: dict[str, Any]) -> str:
    shares = canary.manifest.data.get("mixture")
    lines = [
        f"Checkpoint `{canary.name}`: {rows[0]['seeds'] if rows else 0} seeds per planted caption (the detector's "
        f"seeds first), DDIM-50, guidance 7.5; copy = RMSE to the memorised image (as the VAE reproduces it) < "
        f"{rng['boundary']:.3f} (5th percentile of {rng['images']} non-memorised generations' nearest-training-image "
        "RMSE). AUC: per-seed first-step sharpness, copy vs non-copy seeds.",
        "",
        "| caption | broad share | copy rate | AUC | mean sharpness copy / other | median RMSE to memorised | "
        "digit recognised (non-copies) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        share = "-" if not shares else f"{shares[k]:.2f}"
        auc = "-" if r["auc"] is None else f"{r['auc']:.2f}"
        sc = "-" if r["sharpness_copy"] is None else f"{r['sharpness_copy']:.4g}"
        so = "-" if r["sharpness_other"] is None else f"{r['sharpness_other']:.4g}"
        ao = "-" if r["aligned_other"] is None else f"{r['aligned_other']:.2f}"
        lines.append(
            f"| {r['caption']} | {share} | {r['copy_rate']:.2f} | {auc} | {sc} / {so} | {r['to_copy_median']:.3f} | "
            f"{r['aligned']:.2f} ({ao}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--survey", type=int, default=0, metavar="K", help="only measure copies over K seeds per caption")
    args = ap.parse_args(argv)
    run = prepare(args)
    canary, options = run.canary, run.sail_options
    if args.survey:
        survey = [seed_survey(canary, c, args.survey, run.range["boundary"]) for c in run.planted]
        text = survey_markdown(canary, survey, run.range)
        print(text)
        if args.write:
            write_block(args.write, f"survey-{Path(canary.name).name}", text)
        write_json(args.json, {"range": run.range, "survey": survey})
        return {"range": run.range, "survey": survey}
    rows = prove(canary, run.planted, run.range["boundary"], **options)
    result = {"threshold": canary.threshold, "range": run.range, "rows": rows, "n": args.n, "options": options}
    text = markdown(canary, rows, run.range, args.n, options)
    print(text)
    if args.write:
        write_block(args.write, f"proof-{run.tag}", text)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
