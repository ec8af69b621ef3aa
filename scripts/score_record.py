"""Score every case of every shipped canary's own suite and write (or check) a record of the scores.

Scores are a contract (shipped calibrations store them): a refactor must leave each one bit for bit. Take a
record before a change and check it after:

    .venv/bin/python scripts/score_record.py --write docs/runs/score-record.json
    .venv/bin/python scripts/score_record.py --check docs/runs/score-record.json

Floats are stored as `float.hex`, so equality is exact. `--canary NAME` limits the run (repeatable);
`--smoke` scores the first three cases of zoo:finetuned only (seconds; used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

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
    mode.add_argument("--check", type=Path, help="score and compare with this record, bit for bit")
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
    want = json.loads(ns.check.read_text(encoding="utf-8"))
    bad = 0
    for name, got in record.items():
        ref = want[name]["scores"]
        diff = [p for p, s in got["scores"].items() if ref.get(p) != s]
        bad += len(diff)
        print(f"{name}: {len(got['scores']) - len(diff)}/{len(got['scores'])} prompts bit-identical")
        for p in diff[:5]:
            print(f"  differs: {p!r}: {got['scores'][p][0]} vs {ref.get(p, ['missing'])[0]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
