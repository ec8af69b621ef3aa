"""The training-set import at scale: time and peak memory of `memtest.datasets.suite_from_dataset` on a synthetic set
of 100,000 image-caption pairs, and at 10,000 to show how memory grows with the set.

    .venv/bin/python scripts/dataset_scale.py --audit-cost                     # 10,000 and 100,000 pairs, ~8 min
    .venv/bin/python scripts/dataset_scale.py --smoke --out /tmp/scale.json   # 300 pairs, seconds

The set is built once per size, row by row, in three layouts holding the same pairs: Hugging Face imagefolder
(``metadata.jsonl`` + PNG files), WebDataset (tar shards of 10,000 samples, ``key.png`` + ``key.txt``) and Parquet
(files of 10,000 rows, row groups of 1,000, an ``image`` column of ``{bytes, path}`` structs as datasets' ``Image()``
writes it). Images are 32x32 PNGs: a random 8x8 colour field, bicubic-upscaled (distinct fields are 12+ bits apart
under phash, see docs/datasets.md). Every block of 100 rows holds, by construction:

- rows 0-89 and 98-99: a new image and a new caption each;
- rows 90-91: one image (the same bytes) under two captions: an exact-duplicate cluster of 2 rows;
- rows 92-94: one field and two edits of it (+-6 noise, +10 brightness; distinct bytes, within 4 bits of phash):
  a near-duplicate cluster of 3 rows, 3 distinct images, 3 captions;
- rows 95-97: one caption on three new images (``dup-caption:3``, ``images:3``).

So per 100 rows: 99 distinct images, 98 distinct captions, 6 at-risk captions (the 2 + 3 sharing a cluster and the
repeated one; the floor is 2, every row's repeats being 1), 2 duplicate clusters. The record holds these constructed
numbers beside the measured ones; at 100,000 random fields a pair of unrelated fields can come within the hash
distance by chance, which the measured cluster count would show.

Each import runs in a fresh subprocess (``--child``), so the set's construction does not count: it reports the wall
time of `suite_from_dataset`, the process's own peak resident set (``VmHWM``) before and after the import, and, in a
second run of the same import up to ``--trace-up-to`` pairs, the peak of Python allocations under ``tracemalloc``
(slower, so not timed). ``--side 256 --append`` adds runs with larger images to the same record.
The record is docs/runs/dataset-scale.json. ``--audit-cost`` also times ``memtest audit`` of the canary
zoo:finetuned on its 120-prompt suite on this machine's CPU (seconds per prompt, for docs/datasets.md's arithmetic).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "runs" / "dataset-scale.json"
FORMATS = ("imagefolder", "webdataset", "parquet")
BLOCK = 100
SHARD_ROWS = 10_000
ROW_GROUP = 1_000
WORDS = ("red", "blue", "misty", "quiet", "golden", "small", "old", "bright", "wooden", "distant", "green", "stone")
NOUNS = ("harbour", "street", "forest", "kitchen", "portrait", "bridge", "garden", "market", "tower", "field")


def expected(pairs: int) -> dict[str, int]:
    """What the set holds by construction (see the module docstring)."""
    blocks = pairs // BLOCK
    return {
        "pairs": pairs,
        "images": 99 * blocks,
        "captions": 98 * blocks,
        "at_risk": 6 * blocks,
        "clusters": 2 * blocks,
        "dup_caption_captions": blocks,
    }


def _caption(i: int) -> str:
    a, b, c = WORDS[i % 12], WORDS[(i // 12) % 12], NOUNS[(i // 144) % 10]
    return f"a photograph of a {a} {c}, {b} light, plate {i:06d}"


def rows(pairs: int, seed: int = 0, side: int = 32) -> Iterator[tuple[str, bytes]]:
    """The set's (caption, PNG bytes) pairs, in order, generated as they are written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    shared, base = b"", np.zeros((side, side, 3), dtype=np.int16)

    def field() -> Any:
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        return np.asarray(small.resize((side, side), Image.Resampling.BICUBIC)).astype(np.int16)

    def png(pixels: Any) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "PNG", compress_level=1)
        return out.getvalue()

    for start in range(0, pairs, BLOCK):
        for j in range(BLOCK):
            i = start + j
            if j == 91:
                yield _caption(i), shared
            elif j in (93, 94):
                edit = base + rng.integers(-6, 7, base.shape) if j == 93 else base + 10
                yield _caption(i), png(edit)
            else:
                pixels = field()
                data = png(pixels)
                if j == 90:
                    shared = data
                elif j == 92:
                    base = pixels
                yield _caption(start + 95 if j in (96, 97) else i), data


def build(folder: Path, pairs: int, formats: tuple[str, ...], side: int = 32) -> dict[str, int]:
    """Write the set under ``folder/<format>/`` in each layout; returns the bytes of images written per layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for fmt in formats:
        (folder / fmt).mkdir(parents=True, exist_ok=True)
    meta = (folder / "imagefolder" / "metadata.jsonl").open("w", encoding="utf-8") if "imagefolder" in formats else None
    if meta is not None:
        (folder / "imagefolder" / "images").mkdir(exist_ok=True)
    tar: tarfile.TarFile | None = None
    batch: list[tuple[str, bytes, str]] = []
    writer: Any = None
    image_bytes = 0

    def flush_parquet() -> None:
        nonlocal batch
        if writer is not None and batch:
            table = pa.table(
                {
                    "image": [{"bytes": b, "path": name} for _, b, name in batch],
                    "text": [c for c, _, _ in batch],
                }
            )
            writer.write_table(table, row_group_size=ROW_GROUP)
        batch = []

    for i, (caption, data) in enumerate(rows(pairs, side=side)):
        shard, key = divmod(i, SHARD_ROWS)
        name = f"{i:07d}.png"
        image_bytes += len(data)
        if key == 0:
            if tar is not None:
                tar.close()
            if "webdataset" in formats:
                tar = tarfile.open(folder / "webdataset" / f"shard-{shard:05d}.tar", "w")  # noqa: SIM115
            if "parquet" in formats:
                flush_parquet()
                if writer is not None:
                    writer.close()
                schema = pa.schema(
                    [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())]
                )
                writer = pq.ParquetWriter(folder / "parquet" / f"train-{shard:05d}.parquet", schema)
        if meta is not None:
            (folder / "imagefolder" / "images" / name).write_bytes(data)
            meta.write(json.dumps({"file_name": f"images/{name}", "text": caption}) + "\n")
        if tar is not None:
            for member, blob in ((name, data), (f"{i:07d}.txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        if writer is not None:
            batch.append((caption, data, name))
            if len(batch) >= ROW_GROUP:
                flush_parquet()
    if meta is not None:
        meta.close()
    if tar is not None:
        tar.close()
    flush_parquet()
    if writer is not None:
        writer.close()
    return {"image_bytes": image_bytes}


def child(fmt: str, source: Path, suite: Path, trace: bool) -> dict[str, Any]:
    """One import in this (fresh) process: time, peak RSS before/after, optionally the tracemalloc peak."""
    import tracemalloc

    import memtest.datasets as md

    def rss_mib() -> float:
        # VmHWM: this process's own peak. Linux's ru_maxrss carries the parent's peak across fork and exec, so a
        # child of a parent that held more would report the parent's.
        try:
            status = Path("/proc/self/status").read_text(encoding="ascii")
            return int(status.split("VmHWM:")[1].split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # Import what the readers import lazily, so the baseline holds the libraries and the import only the data.
    import imagehash  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from PIL import Image  # noqa: F401

    before = rss_mib()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = md.suite_from_dataset(source, suite, format=fmt)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    tracemalloc.stop()
    sizes = sorted((c.rows for c in result.clusters), reverse=True)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_before_mib": before,
        "peak_rss_mib": rss_mib(),
        "tracemalloc_peak_mib": traced / 2**20 if traced is not None else None,
        "pairs": result.pairs,
        "captions": result.captions,
        "images": result.images,
        "at_risk": result.at_risk,
        "clusters": len(result.clusters),
        "cluster_rows": {str(k): sizes.count(k) for k in sorted(set(sizes))},
        "dup_caption_captions": sum(1 for r in result.risks.values() if r.rows > 1),
        "cases": len(result.suite.cases),
        "stored_images": result.stored,
        "suite_bytes": suite.stat().st_size,
    }


def measure(fmt: str, source: Path, suite: Path, trace: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", fmt, str(source), str(suite)]
    proc = subprocess.run([*cmd, *(["--trace"] if trace else [])], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"import of {source} ({fmt}) failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def audit_cost(checkpoint: str, suite: str, work: Path) -> dict[str, Any]:
    """``memtest audit`` of ``checkpoint`` on ``suite`` with no cache and no confirmation: seconds per prompt."""
    out = work / "audit.json"
    cmd = [sys.executable, "-m", "memtest.cli", "audit", "--checkpoint", checkpoint, "--suite", suite,
           "--cache-dir", "none", "--confirm", "off", "-q", "--report", str(work / "audit.html"),
           "--json", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    doc = json.loads(out.read_text(encoding="utf-8"))
    prompts = sum(1 for c in doc["cases"] if c.get("kind") == "detect")
    return {
        "checkpoint": checkpoint,
        "suite": suite,
        "command": "memtest " + " ".join(cmd[3:-4]) + " --report /tmp/x.html --json /tmp/x.json",
        "exit_code": proc.returncode,
        "prompts": prompts,
        "seconds": round(seconds, 1),
        "seconds_per_prompt": round(seconds / prompts, 3),
        "settings": {k: doc.get("settings", {}).get(k) for k in ("method", "n", "metric", "device", "dtype")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pairs", default="10000,100000", help="set sizes, comma-separated multiples of 100")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work", type=Path, default=None, help="where the sets are written (default: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="300 pairs, no tracemalloc run: checks the script runs")
    ap.add_argument("--side", type=int, default=32, help="image side in pixels (default 32)")
    ap.add_argument("--append", action="store_true", help="add the runs to the record at --out, not replace it")
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--trace-up-to", type=int, default=10_000, help="tracemalloc runs up to this size (slow)")
    ap.add_argument("--audit-cost", action="store_true", help="also time memtest audit of zoo:finetuned (torch)")
    ap.add_argument("--child", nargs=3, metavar=("FORMAT", "SOURCE", "SUITE"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)

    if ns.child:
        fmt, source, suite = ns.child
        print(json.dumps(child(fmt, Path(source), Path(suite), ns.trace)))
        return 0

    sizes = [300] if ns.smoke else [int(s) for s in ns.pairs.split(",")]
    formats = tuple(f for f in ns.formats.split(",") if f)
    if any(n < BLOCK or n % BLOCK for n in sizes) or not set(formats) <= set(FORMATS) or not formats:
        raise SystemExit(f"--pairs: multiples of {BLOCK}; --formats: some of {', '.join(FORMATS)}")
    trace = not (ns.smoke or ns.no_trace)
    work = Path(tempfile.mkdtemp(prefix="memtest-dataset-scale-", dir=ns.work))
    record: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "image": "PNG of an 8x8 random colour field, bicubic-upscaled to the run's side, compress_level 1",
        "runs": [],
    }
    try:
        for n in sizes:
            folder = work / f"set-{n}"
            t0 = time.perf_counter()
            built = build(folder, n, formats, ns.side)
            build_seconds = time.perf_counter() - t0
            print(f"built {n:,} pairs in {formats} in {build_seconds:.0f} s", flush=True)
            for fmt in formats:
                run: dict[str, Any] = {"format": fmt, "side": ns.side, "expected": expected(n)}
                run["build_seconds"] = round(build_seconds, 1)
                run["image_bytes"] = built["image_bytes"]
                suite = work / f"suite-{fmt}-{n}" / "suite.yaml"
                run["measured"] = measure(fmt, folder / fmt, suite, trace=False)
                if trace and n <= ns.trace_up_to:
                    shutil.rmtree(suite.parent)
                    run["tracemalloc_peak_mib"] = measure(fmt, folder / fmt, suite, trace=True)["tracemalloc_peak_mib"]
                shutil.rmtree(suite.parent, ignore_errors=True)
                m = run["measured"]
                print(
                    f"{fmt:12} {n:>7,} pairs: {m['seconds']:.1f} s, peak RSS {m['peak_rss_mib']:.0f} MiB "
                    f"(+{m['peak_rss_mib'] - m['rss_before_mib']:.0f} over the libraries), tracemalloc peak "
                    f"{run.get('tracemalloc_peak_mib') or 0:.0f} MiB; {m['captions']:,} captions, {m['images']:,} "
                    f"images, {m['at_risk']:,} at risk, {m['clusters']:,} clusters",
                    flush=True,
                )
                record["runs"].append(run)
            shutil.rmtree(folder)
        if ns.audit_cost:
            record["audit_cost"] = audit_cost("zoo:finetuned", "canary-finetuned", work)
            print(f"audit cost: {record['audit_cost']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ns.append and ns.out.is_file():
        old = json.loads(ns.out.read_text(encoding="utf-8"))
        record["runs"] = old["runs"] + record["runs"]
        record["machine"] = {"first": old["machine"], "appended": record["machine"]}
        if "audit_cost" in old and "audit_cost" not in record:
            record["audit_cost"] = old["audit_cost"]
    record["growth"] = _growth(record["runs"])
    record["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {ns.out}")
    return 0


def _growth(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per layout, between its smallest and largest set: memory per added pair (RSS and tracemalloc), in bytes."""
    out: dict[str, Any] = {}
    for fmt in FORMATS:
        mine = sorted(
            (r for r in runs if r["format"] == fmt and r.get("side", 32) == 32), key=lambda r: r["expected"]["pairs"]
        )
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        dn = hi["expected"]["pairs"] - lo["expected"]["pairs"]
        rss = (hi["measured"]["peak_rss_mib"] - lo["measured"]["peak_rss_mib"]) * 2**20 / dn
        entry = {
            "from_pairs": lo["expected"]["pairs"],
            "to_pairs": hi["expected"]["pairs"],
            "rss_bytes_per_pair": round(rss),
            "image_bytes_per_pair": round((hi["image_bytes"] - lo["image_bytes"]) / dn),
            "seconds_per_pair": round((hi["measured"]["seconds"] - lo["measured"]["seconds"]) / dn, 6),
        }
        if hi.get("tracemalloc_peak_mib") is not None and lo.get("tracemalloc_peak_mib") is not None:
            traced = (hi["tracemalloc_peak_mib"] - lo["tracemalloc_peak_mib"]) * 2**20 / dn
            entry["tracemalloc_bytes_per_pair"] = round(traced)
        out[fmt] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
