"""Which initial noises copy, and what the sampler's trajectory says about it (docs/mitigation.md, "Trajectory
resampling").

    .venv/bin/python scripts/resample_survey.py [--checkpoint zoo:mixture] [--draws 256] [--salt design]
        [--caption "basalt poster of 1" ...] [--json out.json]

For each planted caption, `--draws` initial noises drawn from `fresh_seed(salt, k)` (a salt other than the
one `mitigate_resample` uses, so a survey is independent of a mitigation run): per draw the detector's
first-step sharpness, ‖s_Δ‖² after each of `--leads` guided DDIM steps (`trajectory_magnitude`), whether the
DDIM-50 image copies the memorised image (RMSE below zoo:mixture's research copy boundary,
`mitigation_proof.RESEARCH_BOUNDARY`) and whether the digit
classifier reads the caption's digit. Then per caption: the copy rate, the digit rate of the non-copies (what
removing copies can keep at best), the AUC of each measurement for copy vs non-copy draws and for digit vs not
among the non-copies, and for each lead and band (floor, ceiling as factors of the reference level L, the
`--quantile` of the held-out captions' magnitudes, `reference_level`), the draws accepted, their copy rate and
their digit rate. Run it with two salts to choose settings on one and measure them on the other.

Minutes on one CPU thread for 2 captions x 256 draws.
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

CAPTIONS = ("basalt poster of 1", "ember poster of 4")
BANDS = ((0.0, 1.0), (0.0, 2.0), (0.5, 2.0), (0.0, 3.0))


def _auc(labels: np.ndarray, values: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None


def survey(scorer: Any, caption: str, seeds: list[int], leads: tuple[int, ...], batch: int) -> dict[str, Any]:
    """Per-draw measurements and outcomes of `caption` at initial noises `seeds`."""
    from mitigation_proof import research_boundary

    from memtest.detection.scoring import detector_sharpness
    from memtest.mitigation import generate_images, image_distances, planted_image, vae_roundtrip
    from memtest.mitigation.resample import lead_walker, trajectory_magnitude
    from memtest.zoo.alignment import predict_proba

    planted = planted_image(scorer.ckpt.path, caption)
    if planted is None:
        raise SystemExit(f"{caption!r} is not planted in {scorer.ckpt.name}")
    memorised, boundary = vae_roundtrip(scorer.ckpt, planted), research_boundary()
    c_c, c_0 = scorer.embed([caption]), scorer.null()
    chunks = [seeds[i : i + batch] for i in range(0, len(seeds), batch)]
    row: dict[str, Any] = {"caption": caption, "seeds": seeds}
    row["sharpness"] = np.asarray([v for c in chunks for v in detector_sharpness(scorer, c_c, c_0, scorer.noise(c))])
    for lead in leads:
        walker = lead_walker(scorer, lead)
        row[f"magnitude_{lead}"] = np.concatenate(
            [trajectory_magnitude(walker, c_c, c_0, scorer.noise(c)).numpy() for c in chunks]
        )
    images = np.concatenate([generate_images(scorer.ckpt, scorer.noise(c), prompt=caption) for c in chunks])
    row["distance"] = image_distances(images, memorised[None])[:, 0]
    row["copy"] = row["distance"] < boundary
    row["digit"] = predict_proba(images).argmax(axis=1) == int(caption.rsplit(" ", 1)[1])
    return row


def summary(row: dict[str, Any], levels: dict[int, float], bands: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    copy, digit = np.asarray(row["copy"]), np.asarray(row["digit"])
    other = ~copy
    out: dict[str, Any] = {
        "caption": row["caption"],
        "draws": len(copy),
        "copy_rate": float(copy.mean()),
        "digit_rate": float(digit.mean()),
        "non_copies": int(other.sum()),
        "non_copy_digit_rate": float(digit[other].mean()) if other.any() else None,
        "auc_copy": {},
        "auc_digit_among_non_copies": {},
        "bands": [],
    }
    measures = {"sharpness": np.asarray(row["sharpness"])}
    measures.update({f"magnitude_{k}": np.asarray(row[f"magnitude_{k}"]) for k in levels})
    for name, v in measures.items():
        out["auc_copy"][name] = _auc(copy, v)
        out["auc_digit_among_non_copies"][name] = _auc(digit[other], v[other]) if other.any() else None
    for lead, level in levels.items():
        v = measures[f"magnitude_{lead}"]
        for floor, ceiling in bands:
            take = (v > floor * level) & (v < ceiling * level)
            out["bands"].append(
                {
                    "lead": lead,
                    "floor": floor,
                    "ceiling": ceiling,
                    "accepted": int(take.sum()),
                    "copy_rate": float(copy[take].mean()) if take.any() else None,
                    "digit_rate": float(digit[take].mean()) if take.any() else None,
                }
            )
    return out


def markdown(summaries: list[dict[str, Any]], levels: dict[int, float], salt: str) -> str:
    lines = [f"Salt `{salt}`; reference levels L: " + ", ".join(f"lead {k}: {v:.4g}" for k, v in levels.items())]
    for s in summaries:
        lines += [
            "",
            f"{s['caption']}: {s['draws']} draws, copy rate {s['copy_rate']:.2f}, digit rate {s['digit_rate']:.2f}; "
            f"non-copies {s['non_copies']}, their digit rate {s['non_copy_digit_rate']}. AUC copy: "
            + ", ".join(f"{k} {v:.3f}" for k, v in s["auc_copy"].items() if v is not None),
            "",
            "| lead | band (x L) | accepted | copy rate | digit rate |",
            "|---|---|---|---|---|",
        ]
        for b in s["bands"]:
            rate = "-" if b["copy_rate"] is None else f"{b['copy_rate']:.2f}"
            dig = "-" if b["digit_rate"] is None else f"{b['digit_rate']:.2f}"
            lines.append(f"| {b['lead']} | ({b['floor']}, {b['ceiling']}) | {b['accepted']} | {rate} | {dig} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="zoo:mixture")
    ap.add_argument("--caption", action="append", default=None)
    ap.add_argument("--draws", type=int, default=256)
    ap.add_argument("--salt", default="design")
    ap.add_argument("--leads", default="4,6,8", help="comma-separated lead steps")
    ap.add_argument("--references", type=int, default=None, help="use only the first K held-out captions")
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.mitigation import fresh_seed, reference_level
    from memtest.models.checkpoint import load_checkpoint
    from memtest.zoo import load_manifest

    torch.set_num_threads(args.threads)
    scorer = Scorer(load_checkpoint(args.checkpoint, device="cpu"), ScoreSettings(n=4))
    leads = tuple(int(k) for k in args.leads.split(","))
    references = list(load_manifest(scorer.ckpt.path).heldout)[: args.references]
    started = time.perf_counter()
    levels = {k: reference_level(scorer, references, lead=k, quantile=args.quantile) for k in leads}
    print(f"levels {levels} from {len(references)} captions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    seeds = [fresh_seed(args.salt, k) for k in range(args.draws)]
    rows = [survey(scorer, c, seeds, leads, args.batch) for c in (args.caption or CAPTIONS)]
    summaries = [summary(r, levels, BANDS) for r in rows]
    print(markdown(summaries, levels, args.salt))
    result = {
        "checkpoint": args.checkpoint,
        "salt": args.salt,
        "references": len(references),
        "quantile": args.quantile,
        "levels": levels,
        "summaries": summaries,
        "draws": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
