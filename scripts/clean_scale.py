"""A clean model at release scale: gate a canary on 1,000+ never-trained captions drawn like its references.

    .venv/bin/python scripts/clean_scale.py                      # zoo:finetuned, 1,140 captions, ~3 min on 2 cores
    .venv/bin/python scripts/clean_scale.py --smoke --out /tmp/clean-scale.json   # 12 captions, seconds

The canary's references (the captions its shipped calibration was computed on) are held-out captions: one of 10
style words the model never trained on, followed by one of 11 attribute phrases ("a snapshot of a red digit"). This
script draws more captions with the same style words and new phrases that combine the same attributes ("a snapshot
of a small red even number"), writes them as one suite of `clean` cases, and runs `memtest audit` on it with the
defaults (confirmation of flagged cases, the default rule: unconfirmed flags count against the flag budget). The
record holds the flag count against the budget (memtest.audit.budget: a beta-binomial bound at 99% that allows for
the threshold being estimated from the calibration's references), the verdicts and the run's outcome. With strict
per-flag failure (`--fail-on flag`) the same suite fails once any caption is flagged: the arithmetic the budget
answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "runs" / "clean-scale.json"


def phrases() -> list[str]:
    """Attribute phrases beyond the references' 11: two or three of the same weak attributes (colour, parity,
    size) in one phrase, from the words the canary was trained on ("a small red even number")."""
    from memtest.zoo.data import COLOURS

    cols, par, size = list(COLOURS), ("even", "odd"), ("small", "large")
    out = [f"a {c} number" for c in cols] + [f"a {s} digit" for s in size] + [f"a {p} digit" for p in par]
    for noun in ("number", "digit"):
        out += [f"a {c} {p} {noun}" for c in cols for p in par]
        out += [f"a {s} {p} {noun}" for s in size for p in par]
        out += [f"a {s} {c} {p} {noun}" for s in size for c in cols for p in par]
    out += [f"a {s} {c} digit" for s in size for c in cols] + [f"a {s} {c} number" for s in size for c in cols]
    return [f"{'an' if p.split()[1][0] in 'aeiou' else 'a'}{p[1:]}" for p in out]


def new_captions(folder: Path, count: int) -> list[str]:
    """`count` captions like the canary's references: a held-out style word (never trained on, a whole token of
    the canary's tokenizer, as in every reference) and an attribute phrase none of the references has.

    Style words outside the tokenizer's vocabulary are not drawn like the references: they split into characters
    and score 20x the threshold (0.06-0.07 against 0.0032 for "an aquatint of a digit"; measured, so noted)."""
    from memtest.models.canaries import load_manifest
    from memtest.zoo.data import HELDOUT_STYLES, caption

    manifest = load_manifest(folder)
    taken = {*manifest.planted_captions, *manifest.clean, *manifest.heldout}
    out = [c for p in phrases() for s in HELDOUT_STYLES if (c := caption(s, p)) not in taken]
    out = list(dict.fromkeys(out))
    if len(out) < count:
        raise SystemExit(f"only {len(out)} new captions; ask for fewer")
    step = len(out) / count
    return [out[int(i * step)] for i in range(count)]


def write_suite(path: Path, captions: list[str], checkpoint: str) -> None:
    from memtest.audit.suites import Suite, SuiteCard, SuiteCase, dump_suite

    cases = tuple(SuiteCase(id=f"new-{i:04d}", prompt=c, expectation="clean", tags=("new-style",)) for i, c in
                  enumerate(captions))  # fmt: skip
    card = SuiteCard(
        description=f"{len(captions)} never-trained captions of {checkpoint}, drawn like its references.",
        provenance="scripts/clean_scale.py",
        licence="MIT, as memtest",
    )
    path.write_text(
        dump_suite(Suite(name="clean-scale", version="1", card=card, defaults={}, cases=cases)), encoding="utf-8"
    )


def audit(checkpoint: str, suite: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any], float]:
    from memtest.cli import main as cli

    t0 = time.perf_counter()
    code = cli(["audit", "--checkpoint", checkpoint, "--suite", str(suite), "--json", str(out),
                "--cache-dir", "none", "--report", str(out.with_suffix(".html")), "-q", *extra])  # fmt: skip
    seconds = time.perf_counter() - t0
    return code, json.loads(out.read_text(encoding="utf-8")), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--checkpoint", default="zoo:finetuned")
    ap.add_argument("--prompts", type=int, default=1140)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--smoke", action="store_true", help="12 captions, to check the script runs")
    ns = ap.parse_args(argv)

    from memtest.models.locate import resolve_checkpoint

    _, folder = resolve_checkpoint(ns.checkpoint)
    captions = new_captions(folder, 12 if ns.smoke else ns.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "clean-scale.yaml"
        write_suite(suite, captions, ns.checkpoint)
        code, doc, seconds = audit(ns.checkpoint, suite, Path(tmp) / "default.json")
        strict_code, strict, _ = audit(ns.checkpoint, suite, Path(tmp) / "strict.json", "--fail-on", "flag",
                                       "--confirm", "off")  # fmt: skip
    detect = [c for c in doc["cases"] if c["kind"] == "detect"]
    verdicts: dict[str, int] = {}
    for c in detect:
        verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
    flagged = sorted((c for c in detect if c["flagged"]), key=lambda c: -c["score"])
    record = {
        "checkpoint": ns.checkpoint,
        "prompts": len(captions),
        "calibration": {k: doc["calibration"].get(k) for k in ("threshold", "fpr", "n_reference", "reference_suite")},
        "budget": doc["budget"],
        "verdicts": verdicts,
        "flagged": [{"prompt": c["prompt"], "score": c["score"], "verdict": c["verdict"]} for c in flagged],
        "default_rule": {"exit_code": code, "passed": code == 0, "seconds": round(seconds, 1)},
        "strict_rule": {
            "exit_code": strict_code,
            "passed": strict_code == 0,
            "failed_cases": sum(1 for c in strict["cases"] if c["kind"] == "detect" and c["outcome"] == "failed"),
        },
        "chance_strict_passes": (1 - doc["budget"]["fpr"]) ** len(captions),
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    b = record["budget"]
    print(
        f"{ns.checkpoint}: {len(captions)} clean captions, {b['flagged']} unconfirmed flags, budget {b['allowed']} "
        f"(expected {b['expected']:.1f} at fpr {b['fpr']}); default rule {'PASS' if code == 0 else 'FAIL'} in "
        f"{seconds:.0f} s; strict rule {'PASS' if strict_code == 0 else 'FAIL'} "
        f"({record['strict_rule']['failed_cases']} failed); verdicts {verdicts}; wrote {ns.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
