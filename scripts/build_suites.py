"""Regenerate memtest's built-in prompt suites (suites/*.yaml) from the prompt lists in
/work/shared/data/prompts (see its PROVENANCE.md). The generated files are committed; this script
only exists to regenerate them, and /work/shared only exists on dev machines.

    python scripts/build_suites.py [--source DIR] [--out DIR] [--check]

Parsing rules (also stated in every card):
- CSVs use ';' separators with standard CSV quoting; the first column is a row number. A prompt is the
  ``Caption`` field after one level of CSV decoding, i.e. exactly what the list authors' own code
  (pandas ``read_csv(sep=';')``) feeds to the model. Some LAION captions carry their own extra,
  CSV-style quotes (the Passion Pit caption starts and ends with a double quote); they are kept as is.
- TXT lists hold one prompt per line; only the line break is removed (files may lack a final newline).
- Nothing is stripped, lowercased or deduplicated. Case ``<prefix>-0001`` is source row 0.

Canary suites (suites/canary-*.yaml) are generated elsewhere, from the canary checkpoints; this script
leaves them alone.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memtest.audit.suites import Suite, SuiteCard, SuiteCase, dump_suite, load_suite  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data/prompts")
SUITE_VERSION = "1.0"

NEMO = "ml-research/localizing_memorization_in_diffusion_models"
NEMO_COMMIT = "f952eded64fca0bcf42e0bb3be9a01d64653cfdb"
MEMATTN = "renjie3/MemAttn"
MEMATTN_COMMIT = "c66efd22d8ffd4b1c6b87835708fa1437a2e076b"

CSV_RULE = (
    "Prompts are the Caption column of the source CSV (';'-separated) after one level of CSV decoding, "
    "exactly as the list authors' code reads it; nothing is stripped, lowercased or deduplicated. Some "
    "LAION captions carry their own extra double quotes; they are part of the prompt."
)
TXT_RULE = (
    "Prompts are the lines of the source file with only the line break removed; nothing is stripped, "
    "lowercased or deduplicated. Some captions carry their own double quotes; they are part of the prompt."
)
DUPLICATES = "<duplicate captions, filled in by with_duplicates>"
MODEL_SPECIFIC = (
    "The labels are specific to the model the list was extracted from ({model}). On any other "
    "checkpoint these are candidate prompts, not ground truth: a fine-tune or another model may "
    "memorize none, some or other prompts."
)
NOISY = (
    "The memorized labels are noisy: reported re-measurements find only about 100-120 of the 500 SD v1.4 "
    "prompts above 0.7 SSCD similarity over 10 seeds. The VM rows are the reliable positives "
    "(verbatim copies of one training image); TM rows (templates) reproduce a layout with varying details."
)


@dataclass(frozen=True)
class Spec:
    name: str
    file: str
    prefix: str
    expectation: str
    description: str
    repo: str
    commit: str
    repo_path: str
    caveats: tuple[str, ...]
    digits: int = 4


def specs() -> list[Spec]:
    sd1 = MODEL_SPECIFIC.format(model="Stable Diffusion v1.x, measured on v1.4")
    sd2 = MODEL_SPECIFIC.format(model="Stable Diffusion v2.x")
    return [
        Spec(
            name="sd1-memorized",
            file="nemo_sd1_memorized_500.csv",
            prefix="sd1-mem",
            expectation="memorized",
            description=(
                "500 LAION captions that Stable Diffusion v1.4 reproduces from its training data (Webster "
                "2023 extraction), as compiled by the NeMo authors. Tags give the memorization type from "
                "the list: VM (verbatim copy of one training image) or TM (template: fixed layout, varying "
                "details)."
            ),
            repo=NEMO,
            commit=NEMO_COMMIT,
            repo_path="prompts/memorized_laion_prompts.csv",
            caveats=(sd1, NOISY, CSV_RULE),
        ),
        Spec(
            name="sd1-unmemorized",
            file="nemo_sd1_unmemorized_500.csv",
            prefix="sd1-unmem",
            expectation="clean",
            description=(
                "500 LAION captions that Stable Diffusion v1.4 does not reproduce, as compiled by the NeMo "
                "authors: the negatives matching sd1-memorized."
            ),
            repo=NEMO,
            commit=NEMO_COMMIT,
            repo_path="prompts/unmemorized_laion_prompts.csv",
            caveats=(sd1, CSV_RULE),
        ),
        Spec(
            name="sd2-memorized",
            file="memattn_sd2_memorized_219.txt",
            prefix="sd2-mem",
            expectation="memorized",
            description=("219 prompts memorized by Stable Diffusion v2 (Webster 2023), as compiled by MemAttn."),
            repo=MEMATTN,
            commit=MEMATTN_COMMIT,
            repo_path="prompt/sd2_mem219.txt",
            caveats=(
                sd2,
                "The memorized labels are noisy (the same extraction's SD v1.4 list re-measures at about "
                "100-120 of 500 above 0.7 SSCD); treat a clean result on a few of these as expected.",
                TXT_RULE,
            ),
        ),
        Spec(
            name="sd1-memorized-345",
            file="memattn_sd1_memorized_345.txt",
            prefix="sd1-mem345",
            expectation="memorized",
            description=(
                "A 345-prompt subset of the SD v1.4 memorized prompts, as compiled by MemAttn. Every prompt "
                "is also in sd1-memorized; its VM/TM tag is copied from there."
            ),
            repo=MEMATTN,
            commit=MEMATTN_COMMIT,
            repo_path="prompt/sd1_mem345.txt",
            caveats=(sd1, NOISY, TXT_RULE),
        ),
        Spec(
            name="generic-nonmemorized",
            file="memattn_generic_nonmemorized_500.txt",
            prefix="generic",
            expectation="clean",
            description="500 generic, non-memorized scene prompts (e.g. 'A serene beach at sunrise'), as "
            "compiled by MemAttn.",
            repo=MEMATTN,
            commit=MEMATTN_COMMIT,
            repo_path="prompt/group_nomem500.txt",
            caveats=(
                "The 'clean' label was established for Stable Diffusion v1.x / v2.x; on other checkpoints "
                "these are candidate negatives, not ground truth.",
                TXT_RULE,
            ),
        ),
        Spec(
            name="coco-10k",
            file="nemo_coco2014_val_10000.csv",
            prefix="coco",
            expectation="reference",
            description=(
                "10,000 COCO 2014 validation captions, a calibration (reference) set: prompts that are "
                "assumed not memorized, used to set score thresholds at a target false-positive rate."
            ),
            repo=NEMO,
            commit=NEMO_COMMIT,
            repo_path="prompts/coco2014_val_10000.csv",
            caveats=(
                "Reference prompts are assumed, not measured, to be non-memorized; a checkpoint fine-tuned "
                "on COCO breaks that assumption.",
                DUPLICATES,
                CSV_RULE,
            ),
            digits=5,
        ),
    ]


def read_csv(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    header = rows[0]
    if header[:2] != ["", "Caption"]:
        raise SystemExit(f"{path}: unexpected header {header!r}")
    body = [row for row in rows[1:] if row]
    for number, row in enumerate(body):
        if len(row) != len(header) or row[0] != str(number):
            raise SystemExit(f"{path}: row {number} is malformed: {row!r}")
    return body


def read_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if any("\r" in line or not line.strip() for line in lines):
        raise SystemExit(f"{path}: blank lines or CR line endings; update the parser")
    return lines


def licences(provenance_md: str) -> dict[str, str]:
    """The full licence texts from PROVENANCE.md, keyed by repository."""
    found = dict(re.findall(r"^## Licence: (\S+)\n\n```\n(.*?)\n```", provenance_md, flags=re.M | re.S))
    for repo in (NEMO, MEMATTN):
        if repo not in found:
            raise SystemExit(f"PROVENANCE.md has no licence section for {repo}")
    return found


def build(spec: Spec, source: Path, licence_texts: dict[str, str], vm_tm: dict[str, str]) -> Suite:
    path = source / spec.file
    tags: list[tuple[str, ...]]
    if path.suffix == ".csv":
        rows = read_csv(path)
        prompts = [row[1] for row in rows]
        tags = [(row[3],) for row in rows] if spec.name == "sd1-memorized" else [()] * len(rows)
    else:
        prompts = read_lines(path)
        tags = [(vm_tm[p],) for p in prompts] if spec.name == "sd1-memorized-345" else [()] * len(prompts)
    licence = f"MIT License ({spec.repo}, full text below).\n\n{licence_texts[spec.repo]}\n"
    if spec.name == "coco-10k":
        licence = (
            "The captions are COCO annotations, licensed CC BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/; COCO Consortium, cocodataset.org). " + licence
        )
    card = SuiteCard(
        description=spec.description,
        provenance=(
            f"{spec.repo} @ {spec.commit}, {spec.repo_path} (copied byte for byte as "
            f"{spec.file}; see PROVENANCE.md next to this file). Case {spec.prefix}-{1:0{spec.digits}d} "
            "is source row 0. Generated by scripts/build_suites.py."
        ),
        licence=licence,
        caveats=with_duplicates(spec.caveats, prompts),
    )
    cases = tuple(
        SuiteCase(
            id=f"{spec.prefix}-{number:0{spec.digits}d}",
            prompt=prompt,
            expectation=spec.expectation,  # type: ignore[arg-type]
            tags=tag,
        )
        for number, (prompt, tag) in enumerate(zip(prompts, tags, strict=True), start=1)
    )
    return Suite(name=spec.name, version=SUITE_VERSION, card=card, defaults={}, cases=cases)


def with_duplicates(caveats: tuple[str, ...], prompts: list[str]) -> tuple[str, ...]:
    counts = Counter(prompts)
    repeated = sum(1 for count in counts.values() if count > 1)
    text = (
        f"{repeated} captions occur more than once ({len(prompts) - len(counts)} repeats; COCO has identical "
        "captions for different images). They are kept, each with its own id."
    )
    return tuple(text if caveat == DUPLICATES else caveat for caveat in caveats)


EXPECTED_COUNTS = {
    "sd1-memorized": 500,
    "sd1-unmemorized": 500,
    "sd2-memorized": 219,
    "sd1-memorized-345": 345,
    "generic-nonmemorized": 500,
    "coco-10k": 10000,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the prompt lists")
    parser.add_argument("--out", type=Path, default=REPO / "suites", help="folder to write the suites to")
    parser.add_argument("--check", action="store_true", help="only check that the committed files are current")
    args = parser.parse_args(argv)
    provenance_md = (args.source / "PROVENANCE.md").read_text(encoding="utf-8")
    licence_texts = licences(provenance_md)
    vm_tm = {row[1]: row[3] for row in read_csv(args.source / "nemo_sd1_memorized_500.csv")}
    stale = []
    for spec in specs():
        suite = build(spec, args.source, licence_texts, vm_tm)
        if len(suite.cases) != EXPECTED_COUNTS[spec.name]:
            raise SystemExit(f"{spec.name}: {len(suite.cases)} cases, expected {EXPECTED_COUNTS[spec.name]}")
        text = (
            f"# Built-in memtest suite, generated by scripts/build_suites.py from {spec.file}.\n"
            "# Do not edit by hand: change the script and regenerate.\n" + dump_suite(suite)
        )
        target = args.out / f"{spec.name}.yaml"
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(target)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", newline="\n")
        if load_suite(target) != suite:
            raise SystemExit(f"{target}: does not read back as the suite that was written")
        print(f"wrote {target} ({len(suite.cases)} cases)")
    target = args.out / "PROVENANCE.md"
    if args.check:
        if not target.is_file() or target.read_bytes() != (args.source / "PROVENANCE.md").read_bytes():
            stale.append(target)
        if stale:
            print("stale: " + ", ".join(map(str, stale)) + "; run scripts/build_suites.py", file=sys.stderr)
            return 1
        print("built-in suites are up to date")
        return 0
    shutil.copyfile(args.source / "PROVENANCE.md", target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
