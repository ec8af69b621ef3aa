"""Which words carry the memorization signal: token attribution measured on the SD canaries' planted captions.

    .venv/bin/python scripts/attribution_survey.py                                 # ~1 min on one core
    .venv/bin/python scripts/attribution_survey.py --smoke --out /tmp/attr.json   # 2 captions, seconds

For zoo:finetuned and zoo:base + zoo:lora, every planted caption ("aurora poster of 0": a code word, "poster of",
a numeral) is attributed with `memtest.detection.attribution.attribute` (the gradient norm at the token-embedding
lookups) under both signals (Wen et al.'s ‖s_Δ‖², and the sharpness), and, as the reference an attribution should
agree with, with exact Shapley values over the caption's words: each word's average rise of the detector's score when
it joins a subset of the other words (2^k scored prompts; k = 4 here). The record says how often each method puts the
code word first, how often it puts one of the two words that occur in no other training caption (the code word
and the numeral) first, and, on clean captions, how spread the weights are (the largest word share).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "runs" / "attribution-survey.json"
CANARIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "finetuned": ("zoo:finetuned", (), "canary-finetuned"),
    "lora": ("zoo:base", ("zoo:lora",), "canary-lora"),
}


def shapley(scorer: Any, words: list[str]) -> list[float]:
    """Exact Shapley values of the words for the scorer's score (the empty prompt is the baseline)."""
    k = len(words)
    subsets = [s for r in range(k + 1) for s in itertools.combinations(range(k), r)]
    scores = scorer.score([" ".join(words[i] for i in s) for s in subsets])
    value = {s: r.score for s, r in zip(subsets, scores, strict=True)}
    phi = []
    for i in range(k):
        total = 0.0
        for s in subsets:
            if i not in s:
                weight = math.factorial(len(s)) * math.factorial(k - len(s) - 1) / math.factorial(k)
                total += weight * (value[tuple(sorted((*s, i)))] - value[s])
        phi.append(total)
    return phi


def survey(name: str, planted_limit: int | None, clean_count: int) -> dict[str, Any]:
    from memtest.audit.suites import resolve_suite
    from memtest.detection.attribution import SIGNALS, attribute
    from memtest.detection.scoring import Scorer
    from memtest.detection.settings import ScoreSettings
    from memtest.models.checkpoint import load_checkpoint

    checkpoint, loras, suite_name = CANARIES[name]
    ckpt = load_checkpoint(checkpoint, device="cpu", loras=list(loras))
    suite = resolve_suite(suite_name)
    planted = [c.prompt for c in suite.cases if c.expectation == "memorized"][:planted_limit]
    clean = [c.prompt for c in suite.cases if c.expectation == "clean"][:clean_count]
    scorer = Scorer(ckpt, ScoreSettings(n=4))
    rows = []
    seconds = dict.fromkeys(SIGNALS, 0.0)
    for prompt in planted:
        words = prompt.split()
        row: dict[str, Any] = {"prompt": prompt, "code_word": words[0], "unique": [words[0], words[-1]]}
        for signal in SIGNALS:
            found = attribute(scorer, prompt, signal=signal)
            seconds[signal] += found.seconds
            row[signal] = {
                "weights": list(found.weights),
                "top": found.top,
                "special": found.special,
                "padding": found.padding,
            }
        phi = shapley(scorer, words)
        row["shapley"] = {"weights": phi, "top": words[max(range(len(words)), key=lambda i: phi[i])]}
        rows.append(row)
    spread = []
    for prompt in clean:
        found = attribute(scorer, prompt, signal="score_norm")
        spread.append({"prompt": prompt, "top": found.top, "max_share": max(found.weights) / sum(found.weights)})
    methods = [*SIGNALS, "shapley"]
    return {
        "checkpoint": checkpoint,
        "loras": list(loras),
        "n": 4,
        "planted": len(rows),
        "code_word_first": {m: sum(r[m]["top"] == r["code_word"] for r in rows) for m in methods},
        "unique_word_first": {m: sum(r[m]["top"] in r["unique"] for r in rows) for m in methods},
        "agrees_with_shapley": {m: sum(r[m]["top"] == r["shapley"]["top"] for r in rows) for m in SIGNALS},
        "seconds_per_prompt": {s: seconds[s] / max(len(rows), 1) for s in SIGNALS},
        "clean": {
            "captions": len(spread),
            "max_share_min": min((c["max_share"] for c in spread), default=None),
            "max_share_median": sorted(c["max_share"] for c in spread)[len(spread) // 2] if spread else None,
            "max_share_max": max((c["max_share"] for c in spread), default=None),
            "rows": spread,
        },
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--smoke", action="store_true", help="zoo:finetuned, 2 planted and 2 clean captions")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    names = ["finetuned"] if args.smoke else list(CANARIES)
    record = {
        "command": "scripts/attribution_survey.py" + (" --smoke" if args.smoke else ""),
        "method": "gradient norm at the token-embedding lookups, shares per encoder (memtest.detection.attribution)",
        "canaries": {n: survey(n, 2 if args.smoke else None, 2 if args.smoke else 20) for n in names},
    }
    record["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for n, c in record["canaries"].items():
        print(
            f"{n}: code word first {c['code_word_first']}, a unique word first {c['unique_word_first']} "
            f"of {c['planted']}; clean max share median {c['clean']['max_share_median']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
