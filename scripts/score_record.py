"""Score every case of every shipped canary's own suite and write (or check) a record of the scores.

Scores are a contract (shipped calibrations store them): a refactor must leave each one bit for bit. Take a
record before a change and check it after:

    .venv/bin/python scripts/score_record.py --write docs/runs/score-record.json
    .venv/bin/python scripts/score_record.py --check          # against every record in RECORDS

Floats are stored as `float.hex`, so equality is exact. `--canary NAME` limits the run (repeatable);
`--smoke` scores the first three cases of zoo:finetuned only (seconds; used by the test suite).

Bit for bit holds on one kind of CPU, not across kinds: the CPU kernels sum in an order that depends on the
processor (torch 2.13's MKL and oneDNN pick their code paths per vendor and cache, not only per instruction
set), so the same code gives other last bits on an Intel Xeon with AVX-512 than on an AMD EPYC with AVX-512.
Each record in `RECORDS` was taken with the code before the layered package (commit 4b9a06c^) on one kind of
machine; `--check` without a file passes when every canary's scores equal one record's, all prompts alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The records of the flat-layout code's scores, one per kernel summation order met so far (the machine it was
#: taken on): docs/runs/score-record.json on an Intel Xeon (AVX-512, 2026-12-05), score-record.amd-epyc.json
#: on an AMD EPYC (Zen 4, AVX-512, 2026-12-07), whose order is also the one of the first machine (AVX2).
RECORDS: tuple[Path, ...] = (
    ROOT / "docs" / "runs" / "score-record.json",
    ROOT / "docs" / "runs" / "score-record.amd-epyc.json",
)

#: Each shipped canary, with the LoRA adapter it is audited through (zoo:lora rides on zoo:base).
CANARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "base": ("zoo:base", ()),
    "finetuned": ("zoo:finetuned", ()),
    "sdxl-base": ("zoo:sdxl-base", ()),
    "sdxl-finetuned": ("zoo:sdxl-finetuned", ()),
    "flow-base": ("zoo:flow-base", ()),
    "flow-finetuned": ("zoo:flow-finetuned", ()),
    "mixture": ("zoo:mixture", ()),
    "lora": ("zoo:base", ("zoo:lora",)),
}


def score_canary(name: str, limit: int | None = None) -> dict[str, Any]:
    from memtest.audit import AuditConfig, Engine
    from memtest.audit.suites import resolve_suite

    checkpoint, loras = CANARIES[name]
    suite = resolve_suite(f"canary-{name}")
    prompts = list(dict.fromkeys(c.prompt for c in suite.cases))[:limit]
    engine = Engine(AuditConfig(checkpoint=checkpoint, loras=loras, cache_dir=None))
    started = time.perf_counter()
    scores = engine.scores(prompts)
    return {
        "checkpoint": checkpoint,
        "loras": list(loras),
        "suite": suite.name,
        "suite_version": suite.version,
        "seconds": round(time.perf_counter() - started, 1),
        "scores": {p: [float(s["score"]).hex(), [float(v).hex() for v in s["values"]]] for p, s in scores.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="score and write the record here")
    mode.add_argument(
        "--check",
        type=Path,
        nargs="*",
        help="score and compare, bit for bit, with these records (default: RECORDS, one per kind of CPU); "
        "a canary passes when all its prompts equal one record's",
    )
    ap.add_argument("--canary", action="append", choices=sorted(CANARIES), help="only these canaries")
    ap.add_argument("--smoke", action="store_true", help="three cases of zoo:finetuned")
    ns = ap.parse_args(argv)
    names = ["finetuned"] if ns.smoke else (ns.canary or list(CANARIES))
    limit = 3 if ns.smoke else None
    record = {name: score_canary(name, limit) for name in names}
    if ns.write:
        ns.write.parent.mkdir(parents=True, exist_ok=True)
        ns.write.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {ns.write}: " + ", ".join(f"{n} {len(r['scores'])} prompts" for n, r in record.items()))
        return 0
    wants = {path: json.loads(path.read_text(encoding="utf-8")) for path in (ns.check or RECORDS)}
    bad = 0
    for name, got in record.items():
        found = {path: mismatches(got["scores"], want[name]["scores"]) for path, want in wants.items() if name in want}
        if not found:
            print(f"{name}: in none of the records")
            bad += 1
            continue
        path, diff = min(found.items(), key=lambda item: len(item[1]))
        bad += len(diff)
        n = len(got["scores"])
        print(f"{name}: {n - len(diff)}/{n} prompts bit-identical to {path.name}")
        for p in diff[:5]:
            print(f"  differs: {p!r}: {got['scores'][p][0]} vs {wants[path][name]['scores'].get(p, ['missing'])[0]}")
    return 1 if bad else 0


def mismatches(got: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """The prompts whose score or per-seed values differ from the record, by a bit or more."""
    return [p for p, s in got.items() if ref.get(p) != s]


if __name__ == "__main__":
    sys.exit(main())
