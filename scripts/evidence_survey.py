"""Confirm every shipped canary's planted captions and a sample of its ordinary captions, and record the table.

    .venv/bin/python scripts/evidence_survey.py                # every canary, ~30 min on 2 cores
    .venv/bin/python scripts/evidence_survey.py --smoke --out /tmp/survey.json   # 2 prompts of zoo:finetuned

For each canary (zoo:finetuned, zoo:sdxl-finetuned, zoo:flow-finetuned, zoo:mixture, and zoo:base with the zoo:lora
adapter) every caption is generated once from the detector's initial noises (`memtest.evidence.generate`: default
scoring settings, n = 4, DDIM-50, guidance 7.5) and compared with all the canary's planted images by each copy
descriptor (`pixel`, and `sscd` when installed):

- planted captions: the largest similarity of their generations to their own planted image, whether every
  generation's closest planted image is their own, and the agreement among the generations;
- references (the manifest's held-out captions, never trained on: the prompts the canary's suite calibrates the
  detector on, `expectation: reference`; all 110 by default): each one's largest similarity to any planted image,
  from which the copy threshold at `--fpr` (0.01) is calibrated (`memtest.evidence.calibrate_copy_threshold`), as
  the detector's threshold is calibrated on them;
- clean captions (trained, not planted: the suite's `expectation: clean` cases; `--clean` of them, spread over the
  list): checked against that threshold. They are not the references, so the check is not circular (against its
  own 110 references a threshold at 1% lets the largest through by construction).

A planted caption is confirmed as a copy when one of its generations is above the threshold and closest to the
caption's own planted image. The cost of confirming is timed against one plain generation of the same n images in
the same run (median of three). `sscd_sizes` records the measurement behind `auto`'s minimum image side for SSCD
(`memtest.evidence.descriptors.SSCD_MIN_SIDE`). One torch thread throughout.

`--training-images` says what the generations are compared with: `either` (default, the gate's rule): each planted
image as stored or as the checkpoint's VAE reproduces it (`Family.reproduce`: the closest image the checkpoint can
output), whichever is closer; `stored`: the images only; `round-trip`: the round trips only. On zoo:mixture each
planted row also counts the generations the retired research boundary calls copies (RMSE to the caption's own
round-tripped image below docs/runs/mixture-copy-boundary.json's 0.115, the rule of the mitigation proofs in
docs/mitigation.md), so the rules can be compared generation by generation:

    .venv/bin/python scripts/evidence_survey.py --no-sscd --out docs/runs/evidence-survey-either.json
    .venv/bin/python scripts/evidence_survey.py --training-images stored --out docs/runs/evidence-survey.json
    .venv/bin/python scripts/evidence_survey.py --no-sscd --training-images round-trip \
        --out docs/runs/evidence-survey-vae.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # its sibling mitigation_proof
DEFAULT_OUT = ROOT / "docs" / "runs" / "evidence-survey-either.json"
#: What `--training-images` names, as the record states it.
TRAINING_IMAGES = {
    "either": "as stored or as the checkpoint's VAE reproduces them, whichever is closer",
    "stored": "as planted",
    "round-trip": "as the checkpoint's VAE reproduces them",
}

#: Each canary with planted captions, and the LoRA adapter it is loaded through (zoo:lora rides on zoo:base).
CANARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "finetuned": ("zoo:finetuned", ()),
    "sdxl-finetuned": ("zoo:sdxl-finetuned", ()),
    "flow-finetuned": ("zoo:flow-finetuned", ()),
    "mixture": ("zoo:mixture", ()),
    "lora": ("zoo:base", ("zoo:lora",)),
}


def descriptors(use_sscd: bool) -> dict[str, Any]:
    from memtest.evidence import PixelDescriptor, SSCDDescriptor, sscd_available

    out: dict[str, Any] = {"pixel": PixelDescriptor()}
    if use_sscd and sscd_available():
        out["sscd"] = SSCDDescriptor(threads=1)
    return out


def spread(captions: list[str], k: int | None) -> list[str]:
    """`k` captions spread evenly over the list (all of them for None or k >= len)."""
    if k is None or k >= len(captions):
        return list(captions)
    step = len(captions) / k
    return [captions[int(i * step)] for i in range(k)]


def caption_row(confirmation: Any, own: int | None) -> dict[str, Any]:
    sims = confirmation.similarities
    row: dict[str, Any] = {
        "similarity": confirmation.similarity,
        "closest": list(confirmation.closest),
        "best": [round(b, 6) for b in confirmation.best],
        "agreement_mean": confirmation.agreement_mean,
        "agreement_max": confirmation.agreement_max,
    }
    if own is not None:
        row["own_similarity"] = float(sims[:, own].max())
        row["closest_own"] = all(c == own for c in confirmation.closest)
        row["closest_own_share"] = sum(c == own for c in confirmation.closest) / len(confirmation.closest)
    return row


def survey_canary(
    name: str,
    *,
    clean: int | None,
    references: int | None,
    fpr: float,
    use_sscd: bool,
    n: int | None = None,
    smoke: bool = False,
    training_images: str = "either",
) -> dict[str, Any]:
    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.evidence import canary_manifests, canary_planted, compare_generations, copy_threshold, generate
    from memtest.models.checkpoint import load_checkpoint

    checkpoint, loras = CANARIES[name]
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint, device="cpu", loras=list(loras))
    scorer = Scorer(ckpt) if n is None else Scorer(ckpt, ScoreSettings(n=n))
    manifest = next(m for m in canary_manifests(ckpt) if m.planted)
    captions, planted = canary_planted(ckpt)
    from mitigation_proof import research_boundary

    from memtest.mitigation import image_distances

    boundary = research_boundary() if name == "mixture" else None
    round_trips = ckpt.family.reproduce(ckpt, planted) if training_images != "stored" or boundary else None
    reproduced = round_trips if training_images == "either" else None
    compared = round_trips if training_images == "round-trip" else planted
    descs = descriptors(use_sscd)
    planted_set = set(captions)
    groups: list[tuple[str, str]] = [(c, "planted") for c in captions]
    groups += [(c, "reference") for c in spread([c for c in manifest.heldout if c not in planted_set], references)]
    groups += [(c, "clean") for c in spread([c for c in manifest.clean if c not in planted_set], clean)]
    if smoke:
        groups = [groups[0], next(g for g in groups if g[1] == "clean")]
    rows: list[dict[str, Any]] = []
    settings: dict[str, dict[str, Any]] = {}
    for caption, group in groups:
        gens = generate(scorer, caption)
        own = captions.index(caption) if group == "planted" else None
        row: dict[str, Any] = {"caption": caption, "group": group, "own": own, "seconds": round(gens.seconds, 3)}
        for key, d in descs.items():
            found = compare_generations(gens, compared, descriptor=d, reproduced=reproduced)
            row[key] = caption_row(found, own)
            settings[key] = found.settings
        if boundary is not None and round_trips is not None and own is not None:
            near = image_distances(gens.images, round_trips[own][None])[:, 0]
            row["boundary_copies"] = int((near < boundary).sum())
        rows.append(row)
    out: dict[str, Any] = {
        "checkpoint": checkpoint,
        "loras": list(loras),
        "scoring": {
            k: v
            for k, v in scorer.identity().items()
            if k in ("n", "seed", "per_prompt_seeds", "num_inference_steps", "guidance_scale")
        },
        "generation": {"guidance_scale": scorer.settings.guidance_scale, "steps": scorer.settings.num_inference_steps},
        "planted": len(captions),
        "image_side": int(planted.shape[1]) if len(planted) else None,
        "training_images": TRAINING_IMAGES[training_images],
        "copy_boundary": boundary,
        "descriptors": {k: settings.get(k, d.settings()) for k, d in descs.items()},
        "thresholds": {},
        "verdicts": {},
        "captions": rows,
    }
    for key, d in descs.items():
        refs = [r[key]["similarity"] for r in rows if r["group"] == "reference"]
        threshold = None
        if refs and not smoke:
            cal = copy_threshold(refs, fpr, settings[key], source="held-out captions vs planted images")
            threshold = cal.value
            out["thresholds"][key] = {**cal.to_dict(), "reference_max": max(refs)}
        out["verdicts"][key] = verdicts(rows, key, threshold, d.convention)
    # confirm() as the gate runs it: against the planted images as stored and as the VAE reproduces them
    out["cost"] = cost(
        scorer, captions[0] if captions else rows[0]["caption"], planted, descs, repeats=1 if smoke else 3
    )
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def verdicts(rows: list[dict[str, Any]], key: str, threshold: float | None, convention: float | None) -> dict[str, Any]:
    """Per threshold (calibrated, and the descriptor's convention if it has one): planted captions confirmed (a
    generation above it whose closest planted image is the caption's own) and ordinary captions above it."""

    def at(value: float | None) -> dict[str, Any] | None:
        if value is None:
            return None
        planted = [r for r in rows if r["group"] == "planted"]
        clean = [r for r in rows if r["group"] == "clean"]
        refs = [r for r in rows if r["group"] == "reference"]

        def own_copies(r: dict[str, Any]) -> int:
            own = r["own"]
            return sum(b > value and c == own for b, c in zip(r[key]["best"], r[key]["closest"], strict=True))

        return {
            "threshold": value,
            "planted_copies": sum(own_copies(r) > 0 for r in planted),
            "planted_copy_generations": sum(own_copies(r) for r in planted),
            "planted_above": sum(r[key]["similarity"] > value for r in planted),
            "planted_closest_own": sum(r[key]["closest_own"] for r in planted),
            "planted": len(planted),
            "clean_above": sum(r[key]["similarity"] > value for r in clean),
            "clean": len(clean),
            "references_above": sum(r[key]["similarity"] > value for r in refs),
            "references": len(refs),
            "planted_min": min((r[key]["own_similarity"] for r in planted), default=None),
            "clean_max": max((r[key]["similarity"] for r in clean), default=None),
            "agreement_planted_median": median([r[key]["agreement_mean"] for r in planted]),
            "agreement_ordinary_median": median([r[key]["agreement_mean"] for r in clean + refs]),
        }

    return {"calibrated": at(threshold), "convention": at(convention)}


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def cost(scorer: Any, caption: str, planted: Any, descs: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Seconds of one plain generation of the detector's n images, and of confirming the same caption with each
    descriptor (generation + comparison), medians of `repeats`; the ratios are confirmation / plain generation."""
    from memtest.evidence import confirm
    from memtest.evidence.generation import generate_images

    def plain() -> float:
        t = time.perf_counter()
        generate_images(
            scorer.ckpt,
            scorer.noise(scorer.seeds_for(caption)),
            prompt=caption,
            guidance_scale=scorer.settings.guidance_scale,
            num_inference_steps=scorer.settings.num_inference_steps,
        )
        return time.perf_counter() - t

    def confirmed(d: Any) -> float:
        t = time.perf_counter()
        confirm(scorer, caption, planted, descriptor=d)
        return time.perf_counter() - t

    base = statistics.median(plain() for _ in range(repeats))
    out: dict[str, Any] = {"caption": caption, "n": scorer.settings.n, "repeats": repeats, "plain_generation_s": base}
    for key, d in descs.items():
        s = statistics.median(confirmed(d) for _ in range(repeats))
        out[f"confirm_{key}_s"] = s
        out[f"ratio_{key}"] = s / base
    return out


def sscd_sizes(sides: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128)) -> dict[str, Any] | None:
    """SSCD on natural photos shrunk to each side: crops (128 px, textured: std > 20) of scikit-learn's two sample
    photos against copies of themselves (shifted by 2-3 px, JPEG quality 75) and against the other photo's crops;
    and uniform-noise images against each other. What `auto`'s minimum side for SSCD rests on."""
    import numpy as np
    import sklearn.datasets
    from PIL import Image

    from memtest.evidence import SSCDDescriptor, sscd_available

    if not sscd_available():
        return None
    folder = Path(sklearn.datasets.__file__).parent / "images"
    photos = [np.asarray(Image.open(folder / f).convert("RGB")) for f in ("china.jpg", "flower.jpg")]
    crops = [
        (k, i * 128 + 20, j * 128)
        for k, photo in enumerate(photos)
        for i in range(3)
        for j in range(5)
        if photo[i * 128 + 20 : i * 128 + 148, j * 128 : j * 128 + 128].std() > 20
    ]

    def shrink(k: int, y: int, x: int, side: int, copy: bool) -> np.ndarray:
        im = Image.fromarray(
            photos[k][y : y + 128, x : x + 128] if not copy else photos[k][y + 2 : y + 130, x + 3 : x + 131]
        )
        im = im.resize((side, side), Image.Resampling.LANCZOS)
        if copy:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=75)
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return np.asarray(im, dtype=np.float32) / 255.0

    d = SSCDDescriptor(threads=1)
    which = np.array([k for k, _, _ in crops])
    cross = which[:, None] != which[None, :]
    rng = np.random.default_rng(0)
    rows = []
    for side in sides:
        train = [shrink(k, y, x, side, False) for k, y, x in crops]
        copies = [shrink(k, y, x, side, True) for k, y, x in crops]
        s = d.similarity(copies, train)
        pos = np.diag(s)
        noise = [rng.random((side, side, 3)).astype(np.float32) for _ in range(6)]
        ns = d.similarity(noise, noise)[~np.eye(6, dtype=bool)]
        rows.append(
            {
                "side": side,
                "copy_min": float(pos.min()),
                "copy_median": float(np.median(pos)),
                "copies_above_0.5": float(np.mean(pos > 0.5)),
                "unrelated_max": float(s[cross].max()),
                "unrelated_median": float(np.median(s[cross])),
                "margin": float(pos.min() - s[cross].max()),
                "noise_pairs_mean": float(ns.mean()),
            }
        )
    return {"crops": len(crops), "descriptor": d.settings(), "rows": rows}


def table(record: dict[str, Any]) -> str:
    lines = []
    for name, rec in record["canaries"].items():
        for key, v in rec["verdicts"].items():
            for kind in ("calibrated", "convention"):
                r = v.get(kind)
                if r is None:
                    continue
                lines.append(
                    f"{name:15s} {key:5s} {kind:10s} thr {r['threshold']:.4f}: planted copies {r['planted_copies']}/"
                    f"{r['planted']} ({r['planted_copy_generations']} generations; above {r['planted_above']}, all "
                    f"closest own {r['planted_closest_own']}, own min {r['planted_min']:.4f}); clean above "
                    f"{r['clean_above']}/{r['clean']} (max {r['clean_max']:.4f}); references above "
                    f"{r['references_above']}/{r['references']}"
                )
        c = rec["cost"]
        lines.append(
            f"{name:15s} cost: plain generation {c['plain_generation_s']:.2f} s; "
            + ", ".join(f"{k[6:]} {v:.2f}x" for k, v in c.items() if k.startswith("ratio_"))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON record")
    ap.add_argument("--canary", action="append", choices=sorted(CANARIES), help="only these canaries (repeatable)")
    ap.add_argument("--clean", type=int, default=40, help="clean captions checked per canary (default 40)")
    ap.add_argument("--references", type=int, default=None, help="held-out captions calibrated on (default: all)")
    ap.add_argument("--fpr", type=float, default=0.01, help="the copy threshold's false-positive rate")
    ap.add_argument("--no-sscd", action="store_true", help="the pixel descriptor only")
    ap.add_argument("--n", type=int, default=None, help="generations per caption (default: the detector's, 4)")
    ap.add_argument("--smoke", action="store_true", help="2 prompts of zoo:finetuned, n = 2, no threshold (seconds)")
    ap.add_argument(
        "--training-images",
        choices=sorted(TRAINING_IMAGES),
        default="either",
        help="compare with the planted images as stored, as the VAE round-trips them, or either (default, the gate's)",
    )
    ns = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    names = ["finetuned"] if ns.smoke else (ns.canary or list(CANARIES))
    started = time.perf_counter()
    record: dict[str, Any] = {
        "fpr": ns.fpr,
        "torch_threads": 1,
        "training_images": TRAINING_IMAGES[ns.training_images],
        "command": "scripts/evidence_survey.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "canaries": {
            name: survey_canary(
                name,
                clean=ns.clean,
                references=ns.references,
                fpr=ns.fpr,
                use_sscd=not ns.no_sscd,
                n=2 if ns.smoke else ns.n,
                smoke=ns.smoke,
                training_images=ns.training_images,
            )
            for name in names
        },
    }
    if not ns.smoke and not ns.no_sscd:
        record["sscd_sizes"] = sscd_sizes()
    record["seconds"] = round(time.perf_counter() - started, 1)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(table(record))
    print(f"wrote {ns.out} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
