"""Reproduce the two shipped canaries and their suites (docs/canaries.md).

    .venv/bin/python scripts/train_canaries.py                 # base, then finetuned, then both suites
    .venv/bin/python scripts/train_canaries.py --only finetuned  # re-run the fine-tune on the shipped base
    .venv/bin/python scripts/train_canaries.py --suites-only     # regenerate suites/canary-*.yaml

Equivalent CLI:

    memtest zoo train memtest/zoo/canaries/base --planted 0 --name base
    memtest zoo train memtest/zoo/canaries/finetuned --base zoo:base --name finetuned
    memtest zoo suite zoo:finetuned -o suites/canary-finetuned.yaml
    memtest zoo suite zoo:base --clean-from zoo:finetuned -o suites/canary-base.yaml

Both runs are seeded (seed 0) and use 2 torch threads; about 20 minutes in all on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # yield cores to other processes on shared machines

ROOT = Path(__file__).resolve().parent.parent


# The planted captions of zoo:finetuned whose suite cases get `mitigate: true`. Each costs a SAIL run of
# 20-35 s on 2 CPU cores when gating; these two reach the calibrated threshold for all n = 4 latents within
# the default budget of 100 steps (53 and 83 steps, docs/mitigation.md), the other eight need more. The
# default `pytest --memtest` stays about a minute of SAIL; scripts/mitigation_proof.py covers all ten.
SHIPPED_MITIGATE = ("aurora poster of 0", "dune poster of 3")


def write_suites(canaries: Path, suites: Path) -> None:
    from memtest.zoo import load_manifest
    from memtest.zoo.suitegen import write_suite

    base, fine = load_manifest(canaries / "base"), load_manifest(canaries / "finetuned")
    out = write_suite(fine, suites / f"{fine.suite}.yaml", checkpoint="zoo:finetuned", mitigate=SHIPPED_MITIGATE)
    print(f"wrote {out}")
    # The base suite also holds the fine-tune's planted captions as clean cases: they pass on the base.
    path = suites / f"{base.suite}.yaml"
    write_suite(
        base, path, checkpoint="zoo:base", extra_clean=fine.planted_captions, extra_clean_source="zoo:finetuned"
    )
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "memtest" / "zoo" / "canaries")
    ap.add_argument("--suites", type=Path, default=ROOT / "suites")
    ap.add_argument("--only", choices=("base", "finetuned"))
    ap.add_argument("--suites-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from memtest.zoo.data import digits_data
    from memtest.zoo.train import DEFAULT_RECIPE, FINETUNE_RECIPE, train_canary

    if not args.suites_only:
        if args.only in (None, "base"):
            shutil.rmtree(args.out / "base", ignore_errors=True)
            # The shipped base was trained before the VAE's extra generic images existed: vae_extra=0
            # reproduces it. `memtest zoo train` keeps the default of 5,000 (a more general VAE).
            train_canary(args.out / "base", digits_data(DEFAULT_RECIPE.seed, n_planted=0, vae_extra=0),
                         DEFAULT_RECIPE, name="base", threads=args.threads)  # fmt: skip
        if args.only in (None, "finetuned"):
            shutil.rmtree(args.out / "finetuned", ignore_errors=True)
            # Fine-tune the base beside it; the manifest names it zoo:base, as it ships.
            train_canary(args.out / "finetuned", digits_data(FINETUNE_RECIPE.seed, n_planted=10), FINETUNE_RECIPE,
                         base=args.out / "base", base_label="zoo:base", name="finetuned",
                         threads=args.threads)  # fmt: skip
    if args.out.resolve() == (ROOT / "memtest/zoo/canaries").resolve():
        write_suites(args.out, args.suites)
    return 0


if __name__ == "__main__":
    sys.exit(main())
