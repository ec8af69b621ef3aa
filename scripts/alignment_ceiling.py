"""How often the digit classifier reads the caption's digit in generations that do not copy (docs/mitigation.md).

    .venv/bin/python scripts/alignment_ceiling.py [--checkpoint zoo:mixture] [--seeds 32] [--json out.json]

SAIL's accepted x_T on `zoo:mixture` give images in which the digit classifier (`memtest.zoo.alignment`) reads
the caption's digit in 0.25-0.75 of cases, against 1.00 for the unmitigated copies. This measures what a
non-copying generation of the same tiny model reaches, with the proof's generation settings (DDIM-50, guidance
7.5, the checkpoint's own pipeline), `--seeds` x_T per caption drawn as the detector draws them (its seeds
first, then more from the same derivation):

- the planted captions' own generations, split into copies and the others (the broad component: the caption
  trained on ordinary images of its digit), "copy" meaning closer than the canary's copy boundary to the
  memorised image as the VAE reproduces it;
- captions of the planted grammar ("{codename} poster of {digit}") with codenames this canary does not plant
  (the ordinary captions of the digits grammar name a colour, parity or size, never one digit), and "a photo
  of {digit}", which no training caption resembles;
- the classifier on the training images of the digit themselves, through the checkpoint's VAE (what the
  classifier reads when the image is an ordinary digit, the model aside).

Minutes on one CPU thread for the default 8 captions x 32 seeds.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling mitigation_proof (the research boundary)

import numpy as np

#: Default captions: the two x_T-dependent planted captions of zoo:mixture, two unplanted codenames and one plain
#: caption for each of their digits.
CAPTIONS: tuple[str, ...] = (
    "basalt poster of 1",
    "glacier poster of 1",
    "harbor poster of 1",
    "ember poster of 4",
    "iris poster of 4",
    "juniper poster of 4",
    "a photo of 1",
    "a photo of 4",
)


def digit_of(caption: str) -> int:
    return int(caption.rsplit(" ", 1)[-1])


def caption_row(scorer: Any, caption: str, seeds: int, batch: int, planted: dict[str, np.ndarray],
                boundary: float | None, below: tuple[float, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """Alignment of `seeds` DDIM-50 generations of `caption`, split into copies / others where it is planted;
    for an unplanted caption, its distance to the memorised image of the planted caption with the same digit.
    With `below`, also each seed's first-step sharpness (as the detector measures it) and the alignment of the
    seeds below each of those thresholds (the x_T a SAIL run at that acceptance would take as they are)."""
    from memtest.detection.scoring import derive_seeds
    from memtest.mitigation import generate_images, image_distances, measure_sharpness
    from memtest.zoo.alignment import predict_proba

    s = scorer.settings
    ids = derive_seeds(s.seed, seeds, caption if s.per_prompt_seeds else None)
    x = scorer.noise(ids)
    sharp = None
    if below:
        s_fn = scorer.s_delta_fn(scorer.timesteps[0], scorer.embed([caption]), scorer.null())
        sharp = np.concatenate(
            [measure_sharpness(s_fn, x[i : i + batch], s.method, scorer.fd_h).numpy() for i in range(0, seeds, batch)]
        )
    started = time.perf_counter()
    images = np.concatenate(
        [generate_images(scorer.ckpt, x[i : i + batch], prompt=caption) for i in range(0, seeds, batch)]
    )
    seconds = time.perf_counter() - started
    digit = digit_of(caption)
    proba = predict_proba(images)
    read = proba.argmax(axis=1)
    aligned = read == digit
    row: dict[str, Any] = {
        "caption": caption,
        "digit": digit,
        "planted": caption in planted,
        "seeds": seeds,
        "aligned": float(aligned.mean()),
        "p_digit": float(proba[:, digit].mean()),
        "read": {int(k): int((read == k).sum()) for k in np.unique(read)},
        "read_per_seed": read.tolist(),
        "seconds": seconds,
    }
    same_digit = [c for c in planted if digit_of(c) == digit]
    if same_digit and boundary is not None:
        ref = planted[caption] if caption in planted else planted[same_digit[0]]
        d = image_distances(images, ref[None])[:, 0]
        copy = d < boundary
        row["reference"] = caption if caption in planted else same_digit[0]
        row["copies"] = int(copy.sum())
        row["aligned_copy"] = float(aligned[copy].mean()) if copy.any() else None
        row["aligned_other"] = float(aligned[~copy].mean()) if (~copy).any() else None
        row["others"] = int((~copy).sum())
        row["to_copy_median"] = float(np.median(d))
        row["to_copy"] = d.tolist()
    if sharp is not None:
        row["sharpness"] = sharp.tolist()
        row["below"] = {}
        for thr in below:
            sel = sharp < thr
            entry: dict[str, Any] = {"seeds": int(sel.sum())}
            if sel.any():
                entry["aligned"] = float(aligned[sel].mean())
                if "copies" in row:
                    entry["copies"] = int(copy[sel].sum())
                    other = sel & ~copy
                    entry["aligned_other"] = float(aligned[other].mean()) if other.any() else None
            row["below"][repr(thr)] = entry
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def sail_row(scorer: Any, caption: str, n: int, threshold: float, boundary: float | None,
             planted: dict[str, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """SAIL (`mitigate_sail`, default options) on `caption` with n candidates from the detector's seeds at an
    acceptance `threshold`: copies and the digit recognised among the unmitigated and the accepted latents' images."""
    from memtest.mitigation import image_distances, mitigate_sail
    from memtest.zoo.alignment import predict_proba

    m = mitigate_sail(scorer, caption, threshold=threshold, n=n)
    digit = digit_of(caption)
    row: dict[str, Any] = {"caption": caption, "threshold": threshold, "n": n, "succeeded": m.succeeded,
                           "steps": m.steps, "accepted": len(m.sharpness_after), "seconds": m.seconds}  # fmt: skip
    for when, images in (("before", m.images_before), ("after", m.images_after)):
        if images is None or not len(images):
            continue
        aligned = predict_proba(images).argmax(axis=1) == digit
        stats: dict[str, Any] = {"images": len(images), "aligned": float(aligned.mean())}
        if caption in planted and boundary is not None:
            copy = image_distances(images, planted[caption][None])[:, 0] < boundary
            stats["copies"] = int(copy.sum())
            stats["aligned_other"] = float(aligned[~copy].mean()) if (~copy).any() else None
        row[when] = stats
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def training_digits(ckpt: Any, digits: list[int], per_digit: int, seed: int = 0) -> dict[int, dict[str, float]]:
    """The classifier on `per_digit` of the canary's own training images of each digit, through its VAE."""
    from memtest.mitigation import vae_roundtrip
    from memtest.zoo import load_manifest
    from memtest.zoo.alignment import predict_proba
    from memtest.zoo.data import digits_16, digits_data

    d = load_manifest(ckpt.path).data
    data = digits_data(int(d["seed"]), n_planted=int(d["n_planted"]), colourings=int(d["colourings"]))
    _, labels = digits_16()
    colourings = int(d["colourings"])
    n_ordinary = len(labels) * colourings  # images[m] is a colouring of digits_16()[m // colourings]
    label = labels[np.arange(n_ordinary) // colourings]
    rng = np.random.default_rng(seed)
    out = {}
    for digit in digits:
        pick = rng.choice(np.flatnonzero(label == digit), size=per_digit, replace=False)
        raw = (np.transpose(data.images[pick], (0, 2, 3, 1)) + 1.0) / 2.0
        rec = np.stack([vae_roundtrip(ckpt, img) for img in raw])
        out[digit] = {
            "images": per_digit,
            "aligned_raw": float((predict_proba(raw).argmax(axis=1) == digit).mean()),
            "aligned_vae": float((predict_proba(rec).argmax(axis=1) == digit).mean()),
        }
    return out


def measure(
    checkpoint: str,
    captions: list[str],
    seeds: int,
    batch: int = 32,
    per_digit: int = 64,
    below: tuple[float, ...] = (),
    sail: tuple[float, int] | None = None,
) -> dict[str, Any]:
    from mitigation_proof import RESEARCH_BOUNDARY, research_boundary

    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.mitigation import vae_roundtrip
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo import load_manifest

    ckpt = load_checkpoint(checkpoint, device="cpu")
    scorer = Scorer(ckpt, ScoreSettings(n=4))
    planted = {p.caption: vae_roundtrip(ckpt, p.image()) for p in load_manifest(ckpt.path).planted}
    # the research boundary belongs to zoo:mixture (the folder it was measured on)
    boundary = (
        research_boundary() if planted and Path(ckpt.path).name == "mixture" and RESEARCH_BOUNDARY.is_file() else None
    )
    rows = [caption_row(scorer, c, seeds, batch, planted, boundary, below) for c in captions]
    digits = sorted({digit_of(c) for c in captions})
    return {
        "checkpoint": checkpoint,
        "boundary": boundary,
        "rows": rows,
        "training": training_digits(ckpt, digits, per_digit) if per_digit else {},
        "sail": [sail_row(scorer, c, sail[1], sail[0], boundary, planted) for c in captions] if sail else [],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| caption | planted | seeds | copies | digit recognised: all / non-copies | digits read |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        copies = "-" if "copies" not in r else f"{r['copies']}/{r['seeds']}"
        other = r.get("aligned_other")
        other_s = "-" if other is None else f"{other:.2f} ({r['others']})"
        read = ", ".join(f"{d}: {k}" for d, k in sorted(r["read"].items(), key=lambda t: -t[1]))
        lines.append(
            f"| {r['caption']} | {'yes' if r['planted'] else 'no'} | {r['seeds']} | {copies} | "
            f"{r['aligned']:.2f} / {other_s} | {read} |"
        )
    below = [(r["caption"], thr, e) for r in result["rows"] for thr, e in r.get("below", {}).items()]
    if below:
        lines += [
            "",
            "| caption | seeds with sharpness below | count | copies | digit recognised: all / non-copies |",
            "|---|---|---|---|---|",
        ]
        for caption, thr, e in below:
            aligned = "-" if "aligned" not in e else f"{e['aligned']:.2f}"
            other = e.get("aligned_other")
            aligned += "" if other is None else f" / {other:.2f}"
            lines.append(f"| {caption} | {float(thr):g} | {e['seeds']} | {e.get('copies', '-')} | {aligned} |")
    if result.get("sail"):
        lines += [
            "",
            "| SAIL on | acceptance | accepted | steps | copies before -> after | digit recognised before -> after |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["sail"]:
            b, a = r.get("before", {}), r.get("after", {})
            copies = f"{b.get('copies', '-')}/{b.get('images', '-')} -> {a.get('copies', '-')}/{a.get('images', '-')}"
            aligned = f"{b.get('aligned', float('nan')):.2f} -> {a.get('aligned', float('nan')):.2f}"
            head = f"| {r['caption']} | {r['threshold']:g} | {r['accepted']}/{r['n']} | {r['steps']}"
            lines.append(f"{head} | {copies} | {aligned} |")
    for digit, t in sorted(result["training"].items()):
        lines.append(
            f"| training images of {digit} (through the VAE) | - | {t['images']} | - | "
            f"{t['aligned_vae']:.2f} (raw {t['aligned_raw']:.2f}) | - |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="zoo:mixture")
    ap.add_argument("--caption", action="append", help="caption ending in its digit (repeatable; default: 6)")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--training", type=int, default=64, help="training images per digit (0: skip)")
    ap.add_argument(
        "--below", type=float, action="append", default=[], help="per-seed sharpness: alignment below this threshold"
    )
    ap.add_argument("--sail", type=float, metavar="THRESHOLD", help="also run SAIL at this acceptance on each caption")
    ap.add_argument("--sail-n", type=int, default=16, help="SAIL's candidates (the detector's seeds first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    captions = args.caption or list(CAPTIONS)
    sail = None if args.sail is None else (args.sail, args.sail_n)
    result = measure(args.checkpoint, captions, args.seeds, args.batch, args.training, tuple(args.below), sail)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
