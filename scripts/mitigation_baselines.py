"""SAIL against the baselines on a canary's memorised captions (docs/mitigation.md quotes its output).

    .venv/bin/python scripts/mitigation_baselines.py [--checkpoint zoo:finetuned] [--n 4] [--write docs/mitigation.md]

Methods, all through `memtest.mitigation.mitigate` (one interface, one acceptance threshold):

- `sail`: sharpness-aware initial noise (the prompt and the weights unchanged);
- `rta`: random token addition, 2 random vocabulary words inserted into the prompt (Somepalli et al., 2023);
- `rna`: random number addition, 2 random integers below 1000 inserted into the prompt;
- `embedding`: Adam on the prompt embedding to shrink ||eps_c - eps_0||^2 at the first step (Wen et al., ICLR
  2024), stopped once the sharpness at every original x_T is below the threshold or after 50 steps;
- `none`: the unmitigated generations, for reference.

For each: the mean RMSE of the generated images to the caption's memorised training image, how many images are
copies (nearest training image is the memorised one, closer than the 5th percentile of non-memorised
generations' nearest-neighbour distances, as in `mitigation_proof.py`), the digit classifier's accuracy on the
digit the caption asks for, the mean first-step sharpness after the method, and the method's time per prompt
(without generation) next to one full generation of the same n images, measured in the same run.
With `--write`, the table replaces the block between `<!-- baselines:begin -->` and `<!-- baselines:end -->`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mitigation_proof import (  # a sibling script
    Canary,
    add_arguments,
    copy_stats,
    prepare,
    write_block,
    write_json,
)

METHODS = ("none", "sail", "rta", "rna", "embedding")
NOTE = (
    "`none` is the unmitigated generations; the prompt methods take microseconds (the time column is the "
    "method alone, without generating); sharpness after is measured at the x_T each method generates from."
)


def compare(
    canary: Canary, captions: list[str], boundary: float, methods: tuple[str, ...], sail_options: dict[str, Any]
) -> list[dict[str, Any]]:
    from memtest.mitigation import mitigate

    rows = []
    for c in captions:
        for method in methods:
            if method == "none":  # the unmitigated generations (SAIL with no budget only measures "before")
                m = mitigate(canary.scorer, c, "sail", threshold=canary.threshold, max_steps=0)
            else:
                options = sail_options if method == "sail" else {}
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
                    **stats,
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    run = prepare(args)
    canary, sail_options, boundary = run.canary, run.sail_options, run.range["boundary"]
    rows = compare(canary, run.planted, boundary, methods, sail_options)
    text = markdown(canary, rows, methods, args.n, boundary)
    text += f"\n\nAcceptance threshold: {canary.threshold_source}; SAIL options: {sail_options}. " + NOTE
    print(text)
    if args.write:
        write_block(args.write, f"baselines-{run.tag}", text)
    result = {
        "checkpoint": canary.name, "threshold": canary.threshold, "threshold_source": canary.threshold_source,
        "range": run.range, "rows": rows, "n": args.n, "methods": list(methods), "sail_options": sail_options,
    }  # fmt: skip
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
