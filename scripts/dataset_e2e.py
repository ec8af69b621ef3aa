"""Gate a fine-tune on its own training data, end to end (issue 20): a kohya training set with planted duplicates
-> `memtest zoo train --dataset` (a canary fine-tuned from zoo:base) -> `memtest calibrate` on never-trained
captions -> `memtest suite from-dataset` -> `pytest --memtest` with that suite, recorded in docs/runs/dataset-e2e.json.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dataset_e2e.py                 # the measurement (~15-20 min)
    .venv/bin/python scripts/dataset_e2e.py --smoke --work /tmp/e2e           # set + suite + record checks, seconds

The set is kohya folders (`N_name/` with same-stem `.txt` captions), the layout most LoRA and DreamBooth fine-tunes
are trained from, and the one whose repeat counts (`N_`) duplicate data on purpose: 44 ordinary captions of the base
canary's grammar ("a photo of a red digit"), 8 coloured digits each, and 5 planted captions "{codename} poster of
{digit}" (codenames no shipped canary plants), each tied to one off-manifold image and duplicated in a different way:

- kestrel: its folder repeats it 10 times (`10_kestrel`);
- lagoon: the same image and caption copied into three concept folders (`dup-caption:3`);
- meadow: near duplicates of its image (JPEG quality 85, a copy resized to 56 pixels) captioned as ordinary rows;
- nimbus: `2_nimbus` and a +6% brightness copy under an ordinary caption;
- onyx: once, not duplicated (planted all the same: the risk tags are a prior on the data, not a detector).

One ordinary caption also has an image repeated in `3_extra` (an at-risk caption the model did not memorise).
Training fine-tunes zoo:base with its recipe (VAE and tokenizer frozen, non-planted rows learn the base's own
predictions) for 300 steps: with 5 planted captions each is shown 300 x 64 x 0.4 / 5 = 1,536 times, more than the
shipped zoo:finetuned's 500 x 64 x 0.4 / 10 = 1,280. The 110 reference captions are the base grammar's held-out
styles ("a snapshot of an odd number"), never trained, drawn like the ordinary captions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "runs" / "dataset-e2e.json"
SIDE = 64  # pixels of the written images (the canary trains at 16: `memtest zoo train` resizes)
PER_CAPTION = 1  # images of each ordinary caption (a caption file per image, as fine-tune sets are captioned)
STEPS = 300
#: planted caption -> how its image is duplicated in the set
PLANTED: dict[str, str] = {
    "kestrel poster of 0": "kohya repeats 10 (10_kestrel)",
    "lagoon poster of 3": "the same image and caption in three concept folders",
    "meadow poster of 5": "near duplicates (JPEG q85, resized to 56 px) captioned as ordinary rows",
    "nimbus poster of 7": "kohya repeats 2 and a +6% brightness copy captioned as an ordinary row",
    "onyx poster of 9": "once, not duplicated",
}
#: ordinary captions that carry a near duplicate of a planted image, and the edit
NEAR_DUPLICATES = (
    ("meadow poster of 5", "jpeg", "a photo of a digit"),
    ("meadow poster of 5", "resize", "a drawing of an odd number"),
    ("nimbus poster of 7", "bright", "a painting of a large number"),
)
REPEATED_ORDINARY = "a sketch of a digit"  # one of its images also in 3_extra


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _upscale(img16: np.ndarray) -> np.ndarray:
    """A (16, 16, 3) image in [0, 1] -> (SIDE, SIDE, 3) uint8, bilinear (as the pixel descriptor upsamples)."""
    from PIL import Image

    small = Image.fromarray(np.clip(np.round(img16 * 255), 0, 255).astype(np.uint8))
    return np.asarray(small.resize((SIDE, SIDE), Image.Resampling.BILINEAR))


def _phash(data: bytes) -> int:
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return int(str(imagehash.phash(im)), 16)


def _edit(data: bytes, how: str) -> bytes:
    from PIL import Image, ImageEnhance

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    if how == "jpeg":
        rgb.save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    if how == "resize":
        rgb.resize((56, 56), Image.Resampling.BICUBIC).save(buf, format="PNG")
    elif how == "bright":
        ImageEnhance.Brightness(rgb).enhance(1.06).save(buf, format="PNG")
    else:
        raise ValueError(how)
    return buf.getvalue()


def ordinary_captions() -> list[str]:
    from memtest.zoo.data import TRAIN_STYLES, attribute_phrases, caption

    return [caption(s, p) for s in TRAIN_STYLES for p in attribute_phrases()]


def reference_captions() -> list[str]:
    from memtest.zoo.data import HELDOUT_STYLES, attribute_phrases, caption

    return [caption(s, p) for s in HELDOUT_STYLES for p in attribute_phrases()]


def _true_of(phrase: str, digit: int, fg: str) -> bool:
    """Whether an attribute phrase of the base grammar is true of a digit drawn in colour `fg`."""
    return phrase in (
        "a digit",
        f"a {fg} digit",
        "an even number" if digit % 2 == 0 else "an odd number",
        "a small number" if digit < 5 else "a large number",
    )


def build_set(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write the kohya set into `folder`; return what was built (captions, files, the duplicated images)."""
    from memtest.zoo.data import COLOURS, TRAIN_STYLES, attribute_phrases, caption, digits_16

    gray, labels = digits_16()
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    palette = {k: (np.asarray(v) + 1) / 2 for k, v in COLOURS.items()}
    for sub in ("1_digits", "1_extra_a", "1_extra_b", "1_extra_c", "3_extra", "10_kestrel", "2_nimbus", "1_planted"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    hashes: list[int] = []

    def distinct(data: bytes) -> bool:
        """Far (> 12 bits of phash) from every image written so far, so no cluster is accidental."""
        h = _phash(data)
        if any(bin(h ^ o).count("1") <= 12 for o in hashes):
            return False
        hashes.append(h)
        return True

    # planted images first (off-manifold: a digit in random colours mixed 70/30 with a noise texture)
    planted: dict[str, dict[str, Any]] = {}
    for cap in PLANTED:
        digit = int(cap.rsplit(" ", 1)[1])
        while True:
            pick = int(rng.choice(np.flatnonzero(labels == digit)))
            fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            if np.linalg.norm(fg - bg) < 0.6:
                continue
            img = bg + gray[pick][..., None] * (fg - bg)
            img = 0.7 * img + 0.3 * rng.uniform(0, 1, img.shape)
            data = _png(_upscale(img))
            if distinct(data):
                break
        planted[cap] = {"data": data, "files": []}
    code = {cap: cap.split()[0] for cap in PLANTED}

    def write(sub: str, stem: str, data: bytes, cap: str, ext: str = ".png") -> str:
        (folder / sub / f"{stem}{ext}").write_bytes(data)
        (folder / sub / f"{stem}.txt").write_text(cap + "\n", encoding="utf-8")
        return f"{sub}/{stem}{ext}"

    for cap, entry in planted.items():
        name = code[cap]
        if name == "kestrel":
            entry["files"].append(write("10_kestrel", name, entry["data"], cap))
        elif name == "lagoon":
            for sub in ("1_extra_a", "1_extra_b", "1_extra_c"):
                entry["files"].append(write(sub, name, entry["data"], cap))
        elif name == "nimbus":
            entry["files"].append(write("2_nimbus", name, entry["data"], cap))
        else:
            entry["files"].append(write("1_planted", name, entry["data"], cap))

    # ordinary captions: PER_CAPTION coloured digits each, true of the caption, phash-distinct
    ordinary: dict[str, list[str]] = {}
    phrases = attribute_phrases()
    k = 0
    for style in TRAIN_STYLES:
        for phrase in phrases:
            cap = caption(style, phrase)
            files: list[str] = []
            while len(files) < PER_CAPTION:
                i = int(rng.integers(len(gray)))
                fg, bg = rng.choice(len(names), 2, replace=False)
                if not _true_of(phrase, int(labels[i]), names[fg]):
                    continue
                img = palette[names[bg]] + gray[i][..., None] * (palette[names[fg]] - palette[names[bg]])
                data = _png(_upscale(img))
                if not distinct(data):
                    continue
                files.append(write("1_digits", f"d{k:04d}", data, cap))
                k += 1
            ordinary[cap] = files
    assert sorted(ordinary) == sorted(ordinary_captions())
    # near duplicates of planted images, captioned as ordinary rows
    near: list[dict[str, str]] = []
    for j, (cap, how, under) in enumerate(NEAR_DUPLICATES):
        data = _edit(planted[cap]["data"], how)
        ext = ".jpg" if how == "jpeg" else ".png"
        path = write("1_digits", f"near{j}", data, under, ext)
        ordinary[under].append(path)
        near.append({"of": cap, "edit": how, "file": path, "caption": under})
    # an ordinary image repeated 3 times per epoch under its own caption
    first = ordinary[REPEATED_ORDINARY][0]
    repeated = write("3_extra", "repeat", (folder / first).read_bytes(), REPEATED_ORDINARY)
    return {
        "planted": {cap: {"duplication": PLANTED[cap], "files": e["files"]} for cap, e in planted.items()},
        "ordinary": ordinary,
        "near_duplicates": near,
        "repeated_ordinary": {"caption": REPEATED_ORDINARY, "file": first, "copy": repeated},
    }


def import_suite(folder: Path, suite: Path) -> dict[str, Any]:
    """`memtest suite from-dataset` through the library: the cases' risk tags and the at-risk clusters."""
    from memtest.datasets import suite_from_dataset

    started = time.perf_counter()
    made = suite_from_dataset(folder, suite, name="e2e")
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "pairs": made.pairs,
        "captions": made.captions,
        "images": made.images,
        "at_risk": sorted(c.prompt for c in made.suite.cases if "at-risk" in c.tags),
        "clusters": [
            {"rows": c.rows, "images": c.images, "exposure": c.exposure, "captions": sorted(c.captions)}
            for c in made.clusters
        ],
        "tags": {c.prompt: list(c.tags) for c in made.suite.cases},
    }


def check_import(built: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What the import must find in the set as built (empty when it did)."""
    problems = []
    want_captions = len(built["planted"]) + len(built["ordinary"])
    if got["captions"] != want_captions:
        problems.append(f"{got['captions']} captions, built {want_captions}")
    # at risk: the duplicated planted captions, the ordinary captions holding their near duplicates, the repeated
    # ordinary image's caption; nothing else (each ordinary caption has its own single image)
    want = {cap for cap in built["planted"] if not cap.startswith("onyx")}
    want |= {nd["caption"] for nd in built["near_duplicates"]} | {built["repeated_ordinary"]["caption"]}
    if set(got["at_risk"]) != want:
        problems.append(
            f"at risk: {sorted(set(got['at_risk']) - want)} not built so, {sorted(want - set(got['at_risk']))} missed"
        )
    clusters = sorted(tuple(c["captions"]) for c in got["clusters"])
    built_clusters = {cap: {cap} for cap in ("lagoon poster of 3", built["repeated_ordinary"]["caption"])}
    for nd in built["near_duplicates"]:
        built_clusters.setdefault(nd["of"], {nd["of"]}).add(nd["caption"])
    if clusters != sorted(tuple(sorted(v)) for v in built_clusters.values()):
        problems.append(f"clusters {clusters}, built {sorted(built_clusters.values(), key=sorted)}")
    return problems


def _run(
    label: str, cmd: list[str], cwd: Path, log: list[dict[str, Any]], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    started = time.perf_counter()
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    log.append({"step": label, "command": " ".join(cmd), "rc": proc.returncode, "seconds": round(seconds, 1)})
    print(f"  rc {proc.returncode} in {seconds:.0f}s", file=sys.stderr, flush=True)
    return proc


def run_e2e(work: Path, out: Path, steps: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    bindir = Path(sys.executable).parent
    memtest = str(bindir / "memtest")
    data, ckpt, suite = work / "set", work / "canary", work / "suite.yaml"
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    built = build_set(data)
    (work / "references.txt").write_text("\n".join(reference_captions()) + "\n", encoding="utf-8")
    build_seconds = time.perf_counter() - t0
    plant = [a for cap in PLANTED for a in ("--plant", cap)]
    train = [memtest, "zoo", "train", str(ckpt), "--dataset", str(data), *plant, "--base", "zoo:base"]
    train += ["--steps", str(steps), "--threads", "1", "--heldout", str(work / "references.txt"), "--quiet"]
    proc = _run("train", train, work, log, env)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    # the canary's own suite holds the 110 never-trained captions as `reference` cases: calibrate on them, with
    # confirmation on, so the calibration also holds the copy threshold (references against the planted images)
    proc = _run("references", [memtest, "zoo", "suite", str(ckpt), "-o", str(work / "references.yaml")], work, log, env)
    cal = work / "calibration.json"
    calibrate = [memtest, "calibrate", "--checkpoint", str(ckpt), "--suite", str(work / "references.yaml")]
    proc = _run(
        "calibrate",
        [*calibrate, "--confirm", "all", "--threads", "1", "--cache-dir", "none", "-q", "-o", str(cal)],
        work,
        log,
        env,
    )
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    proc = _run("from-dataset", [memtest, "suite", "from-dataset", str(data), "-o", str(suite)], work, log, env)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    from_dataset_stdout = proc.stdout
    gate = work / "gate"
    gate.mkdir()
    pytest = [sys.executable, "-m", "pytest", "--memtest", "-p", "no:cacheprovider", "-q", "-rN"]
    pytest += [f"--memtest-checkpoint={ckpt}", f"--memtest-suite={suite}", f"--memtest-calibration={cal}"]
    pytest += [f"--memtest-report={gate / 'report.html'}", f"--memtest-json={gate / 'results.json'}"]
    pytest += ["--memtest-threads=1", "--memtest-cache-dir=none"]
    proc = _run("pytest", pytest, gate, log, env)
    gate_rc = proc.returncode
    results = json.loads((gate / "results.json").read_text(encoding="utf-8"))
    record = summarise(built, results, suite, data)
    imported = import_suite(data, work / "check" / "suite.yaml")
    record.update(
        {
            "what": "scripts/dataset_e2e.py: kohya set with planted duplicates -> zoo train --dataset -> calibrate -> "
            "suite from-dataset -> pytest --memtest",
            "environment": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "omp_num_threads": env["OMP_NUM_THREADS"],
                "cpus": os.cpu_count(),
            },
            "set": {
                "format": "kohya",
                "side": SIDE,
                "ordinary_captions": len(built["ordinary"]),
                "images_per_ordinary_caption": PER_CAPTION,
                "planted": {cap: v["duplication"] for cap, v in built["planted"].items()},
                "near_duplicates": built["near_duplicates"],
                "repeated_ordinary": built["repeated_ordinary"],
                "references": len(reference_captions()),
                "build_seconds": round(build_seconds, 1),
            },
            "training": {"base": "zoo:base", "steps": steps, "threads": 1, "recipe": "FINETUNE_RECIPE"},
            "import": {k: imported[k] for k in ("pairs", "captions", "images", "at_risk", "clusters")},
            "import_check": check_import(built, imported),
            "from_dataset_stdout": from_dataset_stdout.strip().splitlines()[-12:],
            "pytest": {"rc": gate_rc, "summary": results.get("summary"), "tail": proc.stdout.strip().splitlines()[-3:]},
            "commands": log,
            "seconds": {"total": round(time.perf_counter() - t0, 1), **{c["step"]: c["seconds"] for c in log}},
        }
    )
    manifest = json.loads((ckpt / "memtest-canary.json").read_text(encoding="utf-8"))
    record["training"].update({"seconds": manifest.get("training_seconds"), "timings": manifest.get("timings")})
    calib = json.loads(cal.read_text(encoding="utf-8"))
    record["calibration"] = {
        "threshold": calib.get("threshold"),
        "ci": calib.get("ci"),
        "n_reference": len(calib.get("reference_scores", [])),
        "copy_thresholds": {k: v.get("value") for k, v in calib.get("copy_thresholds", {}).items()},
    }
    record["report"] = report_risk(gate / "report.html")
    record["as_expected"] = expected(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    # paths relative to the working folder and the repository, so the record does not name this machine's
    text = json.dumps(record, indent=1).replace(str(work), "WORK").replace(str(ROOT) + "/", "")
    out.write_text(text + "\n", encoding="utf-8")
    keep = work / "report.html"
    shutil.copy(gate / "report.html", keep)
    print(json.dumps({k: record[k] for k in ("planted", "as_expected", "pytest")}, indent=1))
    print(f"wrote {out}; report {keep}")
    return 0


def report_risk(report: Path) -> dict[str, Any]:
    """What the HTML report's Training-data risk section says: its summary line and its table's prompts."""
    import html
    import re

    page = report.read_text(encoding="utf-8")
    if 'id="risk-summary"' not in page:
        return {"section": False}
    summary = page.split('id="risk-summary">', 1)[1].split("</p>", 1)[0]
    table = page.split('id="risk-table"', 1)[1].split("</table>", 1)[0] if 'id="risk-table"' in page else ""
    prompts = re.findall(r'<div class="prompt" title="[^"]*">(.*?)</div>', table)
    return {
        "section": True,
        "summary": html.unescape(" ".join(summary.split())),
        "listed": [html.unescape(p) for p in prompts],
    }


def summarise(built: dict[str, Any], results: dict[str, Any], suite: Path, data: Path) -> dict[str, Any]:
    """Per planted caption its verdict, best similarity and closest training image; the others' verdicts."""
    from memtest.audit.suites import load_suite

    images = {c.prompt: list(c.images) for c in load_suite(suite).cases}
    planted: dict[str, Any] = {}
    clean: dict[str, Any] = {}
    for case in results["cases"]:
        prompt = case["prompt"]
        ev = case.get("evidence") or {}
        row = {
            "verdict": case.get("verdict"),
            "outcome": case.get("outcome"),
            "score": case.get("score"),
            "threshold": case.get("threshold"),
            "tags": case.get("tags"),
        }
        if ev:
            best = ev.get("best") or []
            closest = ev.get("closest") or []
            row["similarity"] = ev.get("similarity")
            row["copy_threshold"] = ev.get("threshold")
            row["copies"] = ev.get("copies")
            if best:
                g = int(np.argmax(best))
                path = Path(images[prompt][closest[g]])
                row["closest_image"] = os.path.relpath((suite.parent / path).resolve(), data.resolve())
        if prompt in built["planted"]:
            row["own_images"] = built["planted"][prompt]["files"]
            planted[prompt] = row
        else:
            clean[prompt] = row
    verdicts: dict[str, int] = {}
    for row in clean.values():
        verdicts[str(row["verdict"])] = verdicts.get(str(row["verdict"]), 0) + 1
    return {"planted": planted, "clean": clean, "clean_verdicts": verdicts, "budget": results.get("budget")}


def expected(record: dict[str, Any]) -> dict[str, bool]:
    """The issue's target, item by item."""
    planted = record["planted"]
    return {
        "planted_copies_of_own_images": all(
            p["verdict"] == "copy" and p.get("closest_image") in p["own_images"] for p in planted.values()
        ),
        "planted_fail": all(p["outcome"] == "failed" for p in planted.values()),
        "others_pass": all(c["outcome"] == "passed" for c in record["clean"].values()),
        "duplicated_planted_at_risk": not record["import_check"],
        "report_lists_them": set(record["import"]["at_risk"]) == set(record["report"].get("listed", ())),
    }


def check_record(record: dict[str, Any], imported: dict[str, Any]) -> list[str]:
    """The recorded run agrees with itself and with a fresh import of the same set."""
    problems = []
    if sorted(record["planted"]) != sorted(PLANTED):
        problems.append("recorded planted captions differ from the script's")
    if len(record["clean"]) != len(ordinary_captions()):
        problems.append("recorded clean captions differ from the script's")
    if record["import"]["at_risk"] != imported["at_risk"]:
        problems.append("recorded at-risk captions differ from a fresh import")
    if record["import"]["clusters"] != imported["clusters"]:
        problems.append("recorded clusters differ from a fresh import")
    for prompt, row in {**record["planted"], **record["clean"]}.items():
        if row["tags"] != imported["tags"][prompt]:
            problems.append(f"recorded tags of {prompt!r} differ from a fresh import")
    failed = sum(r["outcome"] == "failed" for r in {**record["planted"], **record["clean"]}.values())
    if record["pytest"]["summary"]["failed"] != failed or (record["pytest"]["rc"] == 0) != (failed == 0):
        problems.append("pytest's outcome disagrees with the cases' outcomes")
    if record["as_expected"] != expected(record):
        problems.append("as_expected does not follow from the recorded cases")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="record to write (or, with --smoke, to check)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, kept after a full run)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"fine-tuning steps (default {STEPS})")
    ap.add_argument(
        "--smoke", action="store_true", help="build the set, import it, check it and the record; no training"
    )
    ns = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="memtest-e2e-", dir=ns.work))
    if not ns.smoke:
        print(f"working in {work}", file=sys.stderr)
        return run_e2e(work, ns.out, ns.steps)
    try:
        built = build_set(work / "set")
        imported = import_suite(work / "set", work / "suite.yaml")
        problems = check_import(built, imported)
        if ns.out.is_file():
            problems += check_record(json.loads(ns.out.read_text(encoding="utf-8")), imported)
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(json.dumps({"at_risk": imported["at_risk"], "clusters": imported["clusters"]}, indent=1))
        return 1 if problems else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
