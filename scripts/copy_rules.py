"""Count the copies of zoo:mixture's mitigations by the product's copy rule and by the research boundary.

    .venv/bin/python scripts/copy_rules.py                              # ~5 min on 2 cores
    .venv/bin/python scripts/copy_rules.py --smoke --out /tmp/rules.json  # seconds: one caption, one method

The product counts a copy as the gate's confirmation does (`memtest.evidence`: the pixel descriptor, the planted
images as stored or as the checkpoint's VAE reproduces them, whichever is closer, and the calibration's copy
threshold); `mitigate()`, the `[mitigate]` items and `mitigate: copy` all count with it
(`memtest.mitigation.CopyReference`). The proofs and surveys in docs/mitigation.md were measured with the research
boundary instead: RMSE to the memorised image as the VAE reproduces it below 0.115
(`mitigation_proof.RESEARCH_BOUNDARY`). This runs the mitigations docs/mitigation.md quotes at n = 4 (the detector's
seeds) on basalt and ember, counts every image before and after by both rules, and says on how many images the two
agree. One torch thread; the record goes to docs/runs/copy-rules-mixture.json.
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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "runs" / "copy-rules-mixture.json"
CAPTIONS = ("basalt poster of 1", "ember poster of 4")
#: (label, method, options): the mitigations docs/mitigation.md quotes at n = 4.
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sail at the detection threshold 0.0094", "sail", {"threshold": 0.0094}),
    ("sail at 0.002", "sail", {"threshold": 0.002}),
    ("resample (the calibration's references)", "resample", {}),
    ("attention (Ren et al.)", "attention", {}),
    ("rta", "rta", {}),
    ("rna", "rna", {}),
    ("embedding at 0.002", "embedding", {"threshold": 0.002}),
)


def counts(ref: Any, boundary: float, images: Any) -> dict[str, Any] | None:
    """Per image: a copy by the product's rule, and by the research boundary."""
    import numpy as np

    from memtest.mitigation import image_distances

    if images is None or len(images) == 0:
        return None
    product = [int(ref.stats(images[i : i + 1])["copies"]) for i in range(len(images))]
    research = [int(d < boundary) for d in image_distances(images, ref.image[None])[:, 0]]
    return {
        "images": len(images),
        "product": int(np.sum(product)),
        "research": int(np.sum(research)),
        "agree": int(sum(p == r for p, r in zip(product, research, strict=True))),
    }


def run(captions: tuple[str, ...], runs: tuple[tuple[str, str, dict[str, Any]], ...]) -> dict[str, Any]:
    from mitigation_proof import research_boundary

    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.mitigation import copy_reference, mitigate
    from memtest.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint("zoo:mixture", device="cpu")
    scorer = Scorer(ckpt, ScoreSettings(n=4))
    boundary = research_boundary()
    rows = []
    threshold = None
    for caption in captions:
        ref = copy_reference(ckpt, caption)
        assert ref is not None and ref.threshold is not None, caption
        threshold = ref.threshold.value
        for label, method, options in runs:
            started = time.perf_counter()
            m = mitigate(scorer, caption, method, **options)
            row = {
                "caption": caption,
                "run": label,
                "method": method,
                "options": options,
                "succeeded": bool(m.succeeded),
                "before": counts(ref, boundary, m.images_before),
                "after": counts(ref, boundary, m.images_after),
                "seconds": round(time.perf_counter() - started, 1),
            }
            b, a = row["before"], row["after"]
            print(
                f"{caption!r:22} {label:42} product {b and b['product']}/{b and b['images']} -> "
                f"{a and a['product']}/{a and a['images']}, research {b and b['research']} -> {a and a['research']}, "
                f"agree {(b['agree'] if b else 0) + (a['agree'] if a else 0)}/"
                f"{(b['images'] if b else 0) + (a['images'] if a else 0)} ({row['seconds']} s)",
                flush=True,
            )
            rows.append(row)
    images = sum(r[k]["images"] for r in rows for k in ("before", "after") if r[k])
    agree = sum(r[k]["agree"] for r in rows for k in ("before", "after") if r[k])
    return {
        "checkpoint": "zoo:mixture",
        "n": 4,
        "product_rule": {
            "descriptor": "pixel",
            "copy_threshold": threshold,
            "training_images": "as stored or as the checkpoint's VAE reproduces them, whichever is closer",
        },
        "research_boundary": boundary,
        "rows": rows,
        "images": images,
        "agree": agree,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--smoke", action="store_true", help="basalt, SAIL accepting every x_T as it is (seconds)")
    ns = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    if ns.smoke:
        record = run(CAPTIONS[:1], (("sail accepting everything", "sail", {"threshold": 1.0}),))
    else:
        record = run(CAPTIONS, RUNS)
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["command"] = "scripts/copy_rules.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"the two rules agree on {record['agree']} of {record['images']} images; wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
