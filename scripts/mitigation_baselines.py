"""SAIL against the baselines on a canary's memorised captions (docs/mitigation.md quotes its output).

    .venv/bin/python scripts/mitigation_baselines.py [--checkpoint zoo:finetuned] [--n 4] [--write docs/mitigation.md]

Methods, all through `memtest.mitigation.mitigate` (one interface, one acceptance threshold):

- `sail`: sharpness-aware initial noise (the prompt and the weights unchanged);
- `resample`: trajectory resampling, ordinary x_T draws kept when ‖s_Δ‖² after 6 guided sampler steps is below
  the 0.99 quantile of the canary's held-out (reference) captions' draws (`memtest.mitigation.resample`); the
  level is computed once per run, and its time is printed, not counted per prompt;
- `rta`: random token addition, 2 random vocabulary words inserted into the prompt (Somepalli et al., 2023);
- `rna`: random number addition, 2 random integers below 1000 inserted into the prompt;
- `embedding`: Adam on the prompt embedding to shrink ||eps_c - eps_0||^2 at the first step (Wen et al., ICLR
  2024), stopped once the sharpness at every original x_T is below the threshold or after 50 steps;
- `attention`: Ren et al. (ECCV 2024): in every cross-attention layer at every step the start token's logit times
  1.25 in the conditional branch and the padding after the prompt's end token masked (their released setting);
- `none`: the unmitigated generations, for reference.

For each: the mean RMSE of the generated images to the caption's memorised training image, how many images are
copies (nearest training image is the memorised one, closer than the 5th percentile of non-memorised
generations' nearest-neighbour distances, as in `mitigation_proof.py`), the digit classifier's accuracy on the
digit the caption asks for, the mean first-step sharpness after the method, and the method's time per prompt
(without generation) next to one full generation of the same n images, measured in the same run.
With `--write`, the table replaces the block between `<!-- baselines:begin -->` and `<!-- baselines:end -->`.

SAIL settings side by side: `--sail-variant NAME:key=value,...` (repeatable) adds a method `sail[NAME]`, SAIL
with the command line's options updated by these (`renormalize`, `warm_start`, `lr`, `alpha`, `max_steps`,
`restart_after`, `screen`), and a second table per caption: copies and alignment before -> after, alignment
among the non-copies, the accepted x_T's norm over the original seeds' (as `mitigation_proof.py`) and their
distance from the seed they started from, the latents accepted as drawn (0 steps), and SAIL's time over one
generation in the same call. `--alpha` sets SAIL's norm-term weight for every SAIL method.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mitigation_proof import (  # a sibling script
    Canary,
    add_arguments,
    copy_stats,
    digit_of,
    prepare,
    write_block,
    write_json,
)

METHODS = ("none", "sail", "resample", "rta", "rna", "embedding", "attention")
NOTE = (
    "`none` is the unmitigated generations; the prompt methods take microseconds (the time column is the "
    "method alone, without generating); sharpness after is measured at the x_T each method generates from. "
    "For resample, 'below threshold' counts runs that accepted n draws: it accepts on ‖s_Δ‖² a few steps in, "
    "not on sharpness."
)


SAIL_KEYS = {"renormalize": bool, "warm_start": int, "lr": float, "alpha": float, "max_steps": int,
             "restart_after": int, "screen": float}  # fmt: skip


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:key=value,...` -> (NAME, options); an empty option list is SAIL as given on the command line."""
    name, _, spec = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        key, _, value = item.partition("=")
        if key not in SAIL_KEYS:
            raise SystemExit(f"--sail-variant {text!r}: unknown SAIL option {key!r}; choose from {sorted(SAIL_KEYS)}")
        kind = SAIL_KEYS[key]
        options[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    if not name.strip():
        raise SystemExit(f"--sail-variant {text!r}: give it a name, NAME:key=value,...")
    return name.strip(), options


def latent_stats(canary: Canary, caption: str, m: Any, images: np.ndarray, boundary: float) -> dict[str, Any]:
    """Per image: copy and digit read; for SAIL, where the accepted x_T lie (norm, distance from their seed)."""
    from memtest.mitigation import image_distances
    from memtest.zoo.alignment import predict_proba

    copy = image_distances(images, canary.reconstructed[caption][None])[:, 0] < boundary
    aligned = predict_proba(images).argmax(axis=1) == digit_of(caption)
    out: dict[str, Any] = {
        "others": int((~copy).sum()),
        "aligned_other": float(aligned[~copy].mean()) if (~copy).any() else None,
    }
    accepted = m.sail.accepted if m.sail is not None and m.images_after is not None and images is m.images_after else ()
    if accepted:
        sc = canary.scorer
        starts = sc.noise([a.seed for a in accepted])
        norms = np.array([float(a.latent.norm()) for a in accepted])
        moved = np.array([float((a.latent - x0).norm() / x0.norm()) for a, x0 in zip(accepted, starts, strict=True)])
        as_drawn = np.array([a.steps == 0 for a in accepted])
        out.update(
            {
                "norm_ratio": float(norms.mean() / np.mean([float(x.norm()) for x in m.latents_before])),
                "norm_to_shell": float(norms.mean() / (np.sqrt(starts[0].numel()) * sc.process.init_noise_sigma)),
                "moved": float(moved.mean()),
                "as_drawn": int(as_drawn.sum()),
                "fresh_seeds": int(sum(a.seed not in m.seeds for a in accepted)),
                "latent_steps": [int(a.steps) for a in accepted],
                "latent_copy": copy.tolist(),
                "latent_aligned": aligned.tolist(),
                "alpha": m.details.get("alpha"),
            }
        )
    return out


def compare(
    canary: Canary,
    captions: list[str],
    boundary: float,
    methods: tuple[str, ...],
    sail_options: dict[str, Any],
    variants: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    from memtest.mitigation import mitigate, reference_level

    level = None
    if "resample" in methods:
        started = time.perf_counter()
        level = reference_level(canary.scorer, list(canary.manifest.heldout))
        print(f"resample level {level:.6g} from {len(canary.manifest.heldout)} held-out captions in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for c in captions:
        for method in methods:
            if method == "none":  # the unmitigated generations (SAIL with no budget only measures "before")
                m = mitigate(canary.scorer, c, "sail", threshold=canary.threshold, max_steps=0)
            elif method.startswith("sail["):  # a SAIL variant
                options = {**sail_options, **(variants or {})[method[5:-1]]}
                m = mitigate(canary.scorer, c, "sail", threshold=canary.threshold, **options)
            else:
                options = sail_options if method == "sail" else {"level": level} if method == "resample" else {}
                m = mitigate(canary.scorer, c, method, threshold=canary.threshold, **options)
            if m.images_before is None:
                raise SystemExit(f"{method} produced no images for {c!r}")
            images = m.images_before if method == "none" else m.images_after
            if images is None:  # SAIL ran out of budget without accepting a latent: nothing to generate
                print(f"{method:>9} {c!r}: {m.reason}", file=sys.stderr, flush=True)
                rows.append({"caption": c, "method": method, "succeeded": False, "failed": True,
                             "seconds": m.seconds, "generation_seconds": m.generation_seconds})  # fmt: skip
                continue
            stats = copy_stats(canary, c, images, boundary)
            rows.append(
                {
                    "caption": c,
                    "method": method,
                    "succeeded": True if method == "none" else m.succeeded,
                    "prompt_after": m.prompt_after,
                    "sharpness": float(np.mean(m.sharpness_before if method == "none" else m.sharpness_after)),
                    "seconds": 0.0 if method == "none" else m.seconds,
                    "generation_seconds": m.generation_seconds,
                    "images": len(images),
                    "steps": m.steps,
                    **stats,
                    **latent_stats(canary, c, m, images, boundary),
                }
            )
            r = rows[-1]
            print(
                f"{method:>9} {c!r}: to memorised {r['to_copy']:.3f}, copies {r['copies']}, aligned "
                f"{r['aligned']:.2f}, sharpness {r['sharpness']:.4g}, {r['seconds']:.2f}s"
                + (f" ({m.prompt_after!r})" if m.prompt_after else ""),
                file=sys.stderr,
                flush=True,
            )
    return rows


def markdown(canary: Canary, rows: list[dict[str, Any]], methods: tuple[str, ...], n: int, boundary: float) -> str:
    captions = sorted({r["caption"] for r in rows})
    gen = float(np.mean([r["generation_seconds"] for r in rows]))
    lines = [
        f"Checkpoint `{canary.name}`, {len(captions)} planted captions x n = {n} generations, threshold "
        f"{canary.threshold:.4g}; copy = RMSE to the memorised image (as the VAE reproduces it) < {boundary:.3f}. "
        f"One full generation of {n} images (DDIM-50) took {gen:.2f} s in this run.",
        "",
        "| method | RMSE to memorised image | copies | digit recognised | P(digit) | sharpness after | below threshold "
        "| time per prompt (x generation) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        every = [r for r in rows if r["method"] == method]
        rs = [r for r in every if not r.get("failed")]
        secs = float(np.mean([r["seconds"] for r in every]))
        if not rs:
            lines.append(f"| {method} | - | - | - | - | - | 0/{len(every)} | {secs:.2f} s (x{secs / gen:.2f}) |")
            continue
        copies = f"{sum(r['copies'] for r in rs)}/{sum(r['images'] for r in rs)}"
        below = "-" if method == "none" else f"{sum(1 for r in rs if r['succeeded'])}/{len(every)}"
        timing = "-" if method == "none" else f"{secs:.2f} s (x{secs / gen:.2f})"
        lines.append(
            f"| {method} | {np.mean([r['to_copy'] for r in rs]):.3f} | {copies} | "
            f"{np.mean([r['aligned'] for r in rs]):.2f} | {np.mean([r['p_digit'] for r in rs]):.2f} | "
            f"{np.mean([r['sharpness'] for r in rs]):.4g} | {below} | {timing} |"
        )
    return "\n".join(lines)


def variant_markdown(rows: list[dict[str, Any]], methods: tuple[str, ...], variants: dict[str, dict[str, Any]]) -> str:
    """Per caption and SAIL setting: what `--sail-variant` compares (see the module docstring)."""
    lines = [
        "| SAIL setting | caption | copies before -> after | digit recognised before -> after | among non-copies after "
        "| RMSE to memorised after | x_T norm / original | moved from its seed | accepted as drawn | from fresh seeds "
        "| steps | SAIL time (x generation) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    none = {r["caption"]: r for r in rows if r["method"] == "none"}
    for method in methods:
        if method == "none" or not method.startswith("sail"):
            continue
        label = "default" if method == "sail" else f"{method[5:-1]} ({variants[method[5:-1]]})"
        for r in (r for r in rows if r["method"] == method):
            b = none.get(r["caption"], {})
            cb = f"{b['copies']}/{b['images']}" if b else "-"
            ab = f"{b['aligned']:.2f}" if b else "-"
            ratio = r["seconds"] / r["generation_seconds"] if r.get("generation_seconds") else float("nan")
            if r.get("failed"):
                lines.append(f"| {label} | {r['caption']} | {cb} -> none accepted | - | - | - | - | - | - | - | - "
                             f"| {r['seconds']:.2f} s (x{ratio:.2f}) |")  # fmt: skip
                continue
            other = "-" if r["aligned_other"] is None else f"{r['aligned_other']:.2f} ({r['others']})"
            lines.append(
                f"| {label} | {r['caption']} | {cb} -> {r['copies']}/{r['images']} | {ab} -> {r['aligned']:.2f} | "
                f"{other} | {r['to_copy']:.3f} | {r.get('norm_ratio', float('nan')):.3f} | "
                f"{r.get('moved', float('nan')):.3f} | {r.get('as_drawn', '-')}/{r['images']} | "
                f"{r.get('fresh_seeds', '-')}/{r['images']} | {r['steps']} | "
                f"{r['seconds']:.2f} s (x{ratio:.2f}) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--alpha", type=float, default=None, help="SAIL's norm-term weight (default: scaled)")
    ap.add_argument("--sail-variant", action="append", default=[], metavar="NAME:key=value,...",
                    help="also run SAIL with these options as method sail[NAME] (repeatable)")  # fmt: skip
    args = ap.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    variants = dict(parse_variant(v) for v in args.sail_variant)
    methods += tuple(f"sail[{name}]" for name in variants)
    run = prepare(args)
    canary, sail_options, boundary = run.canary, run.sail_options, run.range["boundary"]
    if args.alpha is not None:
        sail_options["alpha"] = args.alpha
    rows = compare(canary, run.planted, boundary, methods, sail_options, variants)
    text = markdown(canary, rows, methods, args.n, boundary)
    text += f"\n\nAcceptance threshold: {canary.threshold_source}; SAIL options: {sail_options}. " + NOTE
    if variants:
        text += "\n\n" + variant_markdown(rows, methods, variants)
    print(text)
    if args.write:
        write_block(args.write, f"baselines-{run.tag}", text)
    result = {
        "checkpoint": canary.name, "threshold": canary.threshold, "threshold_source": canary.threshold_source,
        "range": run.range, "rows": rows, "n": args.n, "methods": list(methods), "sail_options": sail_options,
        "variants": variants,
    }  # fmt: skip
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
