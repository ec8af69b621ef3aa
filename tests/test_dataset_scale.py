"""scripts/dataset_scale.py: the training-set import measured at scale (issue 20, step 3). The smoke run builds 300
pairs in three layouts and imports each in a subprocess; the shipped record is the 100,000-pair run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def test_the_dataset_scale_smoke_run(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """Every layout of the same 300 synthetic pairs gives the constructed counts, with time and memory recorded."""
    scale = load_script("dataset_scale")
    out = tmp_path / "dataset-scale.json"
    assert scale.main(["--smoke", "--out", str(out), "--work", str(tmp_path)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    assert [run["format"] for run in record["runs"]] == ["imagefolder", "webdataset", "parquet"]
    for run in record["runs"]:
        built, got = run["expected"], run["measured"]
        # Per 100 rows: 99 distinct images, 98 captions, 6 at risk (an exact pair, a near-duplicate triple, one
        # caption on three images), 2 duplicate clusters (2 and 3 rows), 1 repeated caption.
        assert built == {"pairs": 300, "images": 297, "captions": 294, "at_risk": 18, "clusters": 6,
                         "dup_caption_captions": 3}  # fmt: skip
        assert {k: got[k] for k in built} == built, run["format"]
        assert got["cluster_rows"] == {"2": 3, "3": 3} and got["cases"] == 294
        assert got["stored_images"] == (0 if run["format"] == "imagefolder" else 297)
        assert got["seconds"] > 0 and got["cpu_seconds"] > 0
        assert got["peak_rss_mib"] >= got["rss_before_mib"] > 0
    assert not list(tmp_path.glob("memtest-dataset-scale-*"))  # the sets and suites are removed
    # (torch-free imports are checked in a fresh process by tests/test_datasets.py::test_no_torch_is_imported:
    # this process may have imported torch for another test under xdist.)

    # The shipped record: 100,000 pairs in each layout, at two sizes so memory per pair is visible.
    shipped = json.loads((ROOT / "docs" / "runs" / "dataset-scale.json").read_text(encoding="utf-8"))
    assert max(run["measured"]["pairs"] for run in shipped["runs"]) >= 100_000
    for run in shipped["runs"]:
        assert run["measured"]["pairs"] == run["expected"]["pairs"]
        assert run["measured"]["captions"] == run["expected"]["captions"]
        assert run["measured"]["seconds"] > 0 and run["measured"]["peak_rss_mib"] > 0
    assert set(shipped["growth"]) == {"imagefolder", "webdataset", "parquet"}
