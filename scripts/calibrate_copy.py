"""Add copy thresholds (memtest.evidence) to a checkpoint's calibration without touching anything else in it.

A calibrating run with `--memtest-confirm=all` (or `memtest calibrate --confirm all`) writes copy thresholds
with a fresh calibration. A shipped canary's calibration must keep its detection threshold and reference scores
bit for bit, so this script confirms the calibration's reference prompts (their generations from the detector's
initial noises against the checkpoint's training images: a canary's planted images) and adds only
`copy_thresholds` to the file:

    .venv/bin/python scripts/calibrate_copy.py zoo:finetuned --descriptor pixel
    .venv/bin/python scripts/calibrate_copy.py zoo:finetuned --smoke        # 3 references, nothing written

Each reference is one prompt's largest similarity (its n generations against every training image, as stored or
as the checkpoint's VAE reproduces them), as in the gate's confirmation (`Engine.confirm`); the threshold is their
(1 - fpr) quantile at the calibration's fpr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("checkpoint", help="checkpoint folder or zoo:NAME whose memtest-calibration.json gets them")
    ap.add_argument("--lora", action="append", default=[], help="LoRA adapter on the checkpoint (repeatable)")
    ap.add_argument("--descriptor", action="append", choices=["pixel", "sscd"], help="default: pixel")
    ap.add_argument("--calibration", type=Path, help="calibration file (default: the checkpoint's own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="3 references, print the result, write nothing")
    ns = ap.parse_args(argv)

    import memtest.audit as audit
    from memtest.evidence import calibrate_copy_threshold, compare_generations, generate, make_descriptor

    config = audit.AuditConfig(checkpoint=ns.checkpoint, loras=tuple(ns.lora), cache_dir=None, threads=ns.threads)
    subject = audit.Subject(config)
    path = ns.calibration or subject.folder / audit.CALIBRATION_FILENAME
    engine = audit.Engine(
        audit.config_from_values({"checkpoint": ns.checkpoint, "lora": ns.lora, "calibration": str(path)})
    )
    cal, _ = engine.calibration()
    suites = [audit.resolve_suite(name) for name in cal.reference_suite.split("+")]
    prompts = [c.prompt for s in suites for c in s.cases if c.expectation == "reference"]
    if ns.smoke:
        prompts = prompts[:3]
    probe = audit.AuditCase("refs", "", "ref", prompts[0], "reference")
    training = engine.training_images(probe)
    if training is None:
        print(f"{ns.checkpoint} has no training images to compare with (no planted images); nothing to calibrate.")
        return 1
    descriptors = [make_descriptor(name) for name in (ns.descriptor or ["pixel"])]
    similarities: dict[str, list[float]] = {d.name: [] for d in descriptors}
    settings: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    for prompt in prompts:
        gens = generate(engine.scorer, prompt)
        reproduced = engine.reproduced_images(probe, training, gens.images)  # as the gate's confirmation compares
        for d in descriptors:
            found = compare_generations(gens, training, descriptor=d, reproduced=reproduced)
            assert found.similarity is not None
            similarities[d.name].append(found.similarity)
            settings[d.name] = found.settings
    seconds = time.perf_counter() - started
    thresholds = {}
    for d in descriptors:
        values = similarities[d.name]
        value = calibrate_copy_threshold(values, cal.fpr) if not ns.smoke else max(values)
        thresholds[d.name] = {
            "value": value,
            "fpr": cal.fpr,
            "references": len(values),
            "descriptor": settings[d.name],
            "source": "calibrated",
        }
        print(
            f"{ns.checkpoint} {d.name}: copy threshold {value:.4f} at fpr {cal.fpr:g} from {len(values)} "
            f"references (similarities {min(values):.4f}..{max(values):.4f}); {seconds:.1f}s"
        )
    if ns.smoke:
        return 0
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("copy_thresholds", {}).update(thresholds)
    from memtest._io import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
