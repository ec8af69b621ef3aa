"""Reproduce the shipped canaries and their suites (docs/canaries.md): the SD, SDXL and flow (SD3) pairs.

    .venv/bin/python scripts/train_canaries.py                   # all four, then every suite
    .venv/bin/python scripts/train_canaries.py --only finetuned  # re-run the fine-tune on the shipped base
    .venv/bin/python scripts/train_canaries.py --only sdxl       # sdxl-base, then sdxl-finetuned
    .venv/bin/python scripts/train_canaries.py --only flow       # flow-base, then flow-finetuned (SD3)
    .venv/bin/python scripts/train_canaries.py --suites-only     # regenerate suites/canary-*.yaml

Equivalent CLI:

    memtest zoo train memtest/zoo/canaries/base --planted 0 --name base
    memtest zoo train memtest/zoo/canaries/finetuned --base zoo:base --name finetuned
    memtest zoo train memtest/zoo/canaries/sdxl-base --family sdxl --vae-from zoo:base --planted 0 --name sdxl-base
    memtest zoo train memtest/zoo/canaries/sdxl-finetuned --base zoo:sdxl-base --name sdxl-finetuned
    memtest zoo train memtest/zoo/canaries/flow-base --family sd3 --planted 0 --name flow-base
    memtest zoo train memtest/zoo/canaries/flow-finetuned --base zoo:flow-base --name flow-finetuned
    memtest zoo suite zoo:finetuned -o suites/canary-finetuned.yaml
    memtest zoo suite zoo:base --clean-from zoo:finetuned -o suites/canary-base.yaml
    memtest zoo suite zoo:sdxl-finetuned -o suites/canary-sdxl-finetuned.yaml
    memtest zoo suite zoo:sdxl-base --clean-from zoo:sdxl-finetuned -o suites/canary-sdxl-base.yaml
    memtest zoo suite zoo:flow-finetuned -o suites/canary-flow-finetuned.yaml
    memtest zoo suite zoo:flow-base --clean-from zoo:flow-finetuned -o suites/canary-flow-base.yaml

The SDXL base skips the VAE phase: it takes the SD base's trained tokenizer and VAE (`vae_from`), frozen.
The flow base (SD3 architecture, flow-matching loss) trains its own 16-channel VAE in phase 1.
Every run is seeded (seed 0) and uses 2 torch threads; each takes 5-15 minutes on 2 quiet CPU cores.
The calibrations beside the weights come from `memtest calibrate` (docs/canaries.md), not from this script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # yield cores to other processes on shared machines

ROOT = Path(__file__).resolve().parent.parent
ALL = ("base", "finetuned", "sdxl-base", "sdxl-finetuned", "flow-base", "flow-finetuned")


# The planted captions of zoo:finetuned whose suite cases get `mitigate: true`. Each costs a SAIL run of
# 20-35 s on 2 CPU cores when gating; these two reach the calibrated threshold for all n = 4 latents within
# the default budget of 100 steps (53 and 83 steps, docs/mitigation.md), the other eight need more. The
# default `pytest --memtest` stays about a minute of SAIL; scripts/mitigation_proof.py covers all ten.
SHIPPED_MITIGATE = ("aurora poster of 0", "dune poster of 3")
# The SDXL pair (base, fine-tune, the fine-tune's `mitigate: true` captions): the same two, for the same reason.
SDXL_PAIR = (("sdxl-base", "sdxl-finetuned", SHIPPED_MITIGATE),)
# The flow pair: the same two captions (docs/canaries.md, "The flow canaries", has SAIL's numbers on all ten).
FLOW_PAIR = (("flow-base", "flow-finetuned", SHIPPED_MITIGATE),)


def write_suites(canaries: Path, suites: Path) -> None:
    from memtest.zoo import load_manifest
    from memtest.zoo.suitegen import write_suite

    for base_name, fine_name, mitigate in (("base", "finetuned", SHIPPED_MITIGATE), *SDXL_PAIR, *FLOW_PAIR):
        if not (canaries / base_name).is_dir() or not (canaries / fine_name).is_dir():
            continue
        base, fine = load_manifest(canaries / base_name), load_manifest(canaries / fine_name)
        out = write_suite(fine, suites / f"{fine.suite}.yaml", checkpoint=f"zoo:{fine_name}", mitigate=mitigate)
        print(f"wrote {out}")
        # The base suite also holds the fine-tune's planted captions as clean cases: they pass on the base.
        path = suites / f"{base.suite}.yaml"
        write_suite(base, path, checkpoint=f"zoo:{base_name}", extra_clean=fine.planted_captions,
                    extra_clean_source=f"zoo:{fine_name}")  # fmt: skip
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "memtest" / "zoo" / "canaries")
    ap.add_argument("--suites", type=Path, default=ROOT / "suites")
    ap.add_argument("--only", choices=(*ALL, "sd", "sdxl", "flow"))
    ap.add_argument("--suites-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from memtest.zoo.data import digits_data
    from memtest.zoo.train import DEFAULT_RECIPE, FINETUNE_RECIPE, train_canary

    pairs = {"sd": ("base", "finetuned"), "sdxl": ("sdxl-base", "sdxl-finetuned"), "flow": ALL[4:], None: ALL}
    only = pairs.get(args.only, (args.only,))
    if not args.suites_only:
        if "base" in only:
            shutil.rmtree(args.out / "base", ignore_errors=True)
            # The shipped base was trained before the VAE's extra generic images existed: vae_extra=0
            # reproduces it. `memtest zoo train` keeps the default of 5,000 (a more general VAE).
            train_canary(args.out / "base", digits_data(DEFAULT_RECIPE.seed, n_planted=0, vae_extra=0),
                         DEFAULT_RECIPE, name="base", threads=args.threads)  # fmt: skip
        if "finetuned" in only:
            shutil.rmtree(args.out / "finetuned", ignore_errors=True)
            # Fine-tune the base beside it; the manifest names it zoo:base, as it ships.
            train_canary(args.out / "finetuned", digits_data(FINETUNE_RECIPE.seed, n_planted=10), FINETUNE_RECIPE,
                         base=args.out / "base", base_label="zoo:base", name="finetuned",
                         threads=args.threads)  # fmt: skip
        if "sdxl-base" in only:
            shutil.rmtree(args.out / "sdxl-base", ignore_errors=True)
            # An SDXL UNet and two text encoders from scratch on the base's data, with the SD base's trained
            # tokenizer and VAE frozen (no VAE phase; vae_extra would only feed that phase).
            train_canary(args.out / "sdxl-base", digits_data(DEFAULT_RECIPE.seed, n_planted=0, vae_extra=0),
                         DEFAULT_RECIPE, family="sdxl", vae_from=args.out / "base", vae_label="zoo:base",
                         name="sdxl-base", threads=args.threads)  # fmt: skip
        if "sdxl-finetuned" in only:
            shutil.rmtree(args.out / "sdxl-finetuned", ignore_errors=True)
            train_canary(args.out / "sdxl-finetuned", digits_data(FINETUNE_RECIPE.seed, n_planted=10),
                         FINETUNE_RECIPE, base=args.out / "sdxl-base", base_label="zoo:sdxl-base",
                         name="sdxl-finetuned", threads=args.threads)  # fmt: skip
        if "flow-base" in only:
            shutil.rmtree(args.out / "flow-base", ignore_errors=True)
            # An SD3-architecture canary (memtest.zoo.tiny_flow.FLOW_CANARY_CONFIG) trained with the
            # flow-matching loss on the base's data, with its own 16-channel VAE (phase 1).
            train_canary(args.out / "flow-base", digits_data(DEFAULT_RECIPE.seed, n_planted=0, vae_extra=0),
                         DEFAULT_RECIPE, family="sd3", name="flow-base", threads=args.threads)  # fmt: skip
        if "flow-finetuned" in only:
            shutil.rmtree(args.out / "flow-finetuned", ignore_errors=True)
            train_canary(args.out / "flow-finetuned", digits_data(FINETUNE_RECIPE.seed, n_planted=10),
                         FINETUNE_RECIPE, base=args.out / "flow-base", base_label="zoo:flow-base",
                         name="flow-finetuned", threads=args.threads)  # fmt: skip
    if args.out.resolve() == (ROOT / "memtest/zoo/canaries").resolve():
        write_suites(args.out, args.suites)
    return 0


if __name__ == "__main__":
    sys.exit(main())
