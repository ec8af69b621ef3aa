"""Train the mixture canary `zoo:mixture`: planted captions whose copies depend on the initial noise x_T.

    .venv/bin/python scripts/train_mixture_canary.py --out memtest/zoo/canaries/mixture   # train, ~5-20 min
    .venv/bin/python scripts/train_mixture_canary.py --finish memtest/zoo/canaries/mixture  # suite + research boundary
    memtest calibrate --checkpoint zoo:mixture --suite suites/canary-mixture.yaml \\
        -o memtest/zoo/canaries/mixture/memtest-calibration.json
    .venv/bin/python scripts/calibrate_copy.py zoo:mixture        # the copy threshold the gate and `mitigate: copy` use

A fine-tune of `zoo:base` (as `zoo:finetuned` is) whose planted captions have a mixture for their conditional
distribution: the planted image (the sharp component) in `1 - share` of the caption's training rows, and the
ordinary images of the caption's digit in the rest (the broad component), so that part of the initial-noise
space generates the copy and the rest generates varied images of the digit (docs/canaries.md, "The mixture
canary"). The mixture lives in the data (`memtest.zoo.data.digits_data(mixture=...)`); the recipe is
`FINETUNE_RECIPE` with two changes, both measured (docs/canaries.md):

- `preserve_base=False`: with self-distillation every ordinary row, the broad rows of a planted caption
  included, learns the base's own prediction for that caption, and the base, which never saw the caption,
  draws any digit for it (zoo:base gives 2, 2, 4, 8, 4, 8, 8, 4 for "aurora poster of 0"), so the broad
  component would not show the digit the caption asks for;
- `planted_prob` lowered so that the broad rows fit beside the ordinary captions' rows.

`--finish` rewrites the manifest's clean list without the planted captions (the trainer sees each planted
caption also as an ordinary caption, so it lists it there), writes `suites/canary-mixture.yaml`, and records
the research copy boundary (`mitigation_proof.RESEARCH_BOUNDARY`, in docs/runs): the 5th percentile of
non-memorised generations' nearest-training-image distances, the copy rule of the mitigation proofs and surveys in
docs/mitigation.md. The product counts copies by the gate's rule instead (the copy threshold that
scripts/calibrate_copy.py adds to the calibration).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Planted captions (digits 0..N_PLANTED-1) and each one's broad share of its training rows.
N_PLANTED = 6
SHARES = (0.5, 0.5, 0.5, 0.55, 0.55, 0.55)
PLANTED_PROB = 0.4
#: Planted captions whose suite cases get `mitigate: true`.
MITIGATE: tuple[str, ...] = ("basalt poster of 1",)


def recipe() -> object:
    from memtest.zoo.train import FINETUNE_RECIPE

    return FINETUNE_RECIPE.with_(planted_prob=PLANTED_PROB, preserve_base=False)


def data() -> object:
    from memtest.zoo.data import digits_data

    return digits_data(0, n_planted=N_PLANTED, mixture=SHARES, mixture_planted_prob=PLANTED_PROB)


def train(out: Path, threads: int) -> None:
    from memtest.zoo.train import train_canary

    train_canary(
        out,
        data(),
        recipe(),
        base="zoo:base",
        base_label="zoo:base",
        name="mixture",
        threads=threads,  # type: ignore[arg-type]
    )


def finish(folder: Path, suites: Path, clean: int = 20) -> None:
    from mitigation_proof import RESEARCH_BOUNDARY, load_canary, memorised_range

    from memtest.zoo import load_manifest
    from memtest.zoo.suitegen import write_suite

    m = load_manifest(folder)
    planted = set(m.planted_captions)
    if planted & set(m.clean):
        m = dataclasses.replace(m, clean=tuple(c for c in m.clean if c not in planted))
        m.save(folder)
    write_suite(m, suites / f"{m.suite}.yaml", checkpoint="zoo:mixture", mitigate=list(MITIGATE) or None)
    canary = load_canary(str(folder), 4, "1.0")  # the threshold is not used here
    import numpy as np

    pool = list(m.heldout) + list(m.clean)
    pick = np.random.default_rng(0).choice(len(pool), size=min(clean, len(pool)), replace=False)
    rng = memorised_range(canary, [pool[i] for i in pick])
    record = {
        "boundary": rng["boundary"],
        "source": (
            f"5th percentile of the nearest-training-image RMSE of {rng['images']} non-memorised generations "
            f"({rng['captions']} captions x 4 seeds, DDIM-50, guidance 7.5); scripts/train_mixture_canary.py"
        ),
        "range": rng,
    }
    RESEARCH_BOUNDARY.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="train into this (new) folder")
    ap.add_argument("--finish", type=Path, help="manifest clean list, suite and research boundary of a trained folder")
    ap.add_argument("--suites", type=Path, default=ROOT / "suites")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.out:
        train(args.out, args.threads)
    if args.finish:
        finish(args.finish, args.suites)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
