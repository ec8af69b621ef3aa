"""scripts/dataset_e2e.py: a fine-tune gated on its own training data (issue 20). The smoke run builds the kohya set
with its planted duplicates and imports it (no training): the import must find exactly the risk the set was built
with, and the shipped record of the full run must agree with that import and with itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("imagehash")

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "runs" / "dataset-e2e.json"


def test_the_e2e_smoke_run_and_its_record(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    e2e = load_script("dataset_e2e")
    built = e2e.build_set(tmp_path / "set")
    got = e2e.import_suite(tmp_path / "set", tmp_path / "suite.yaml")
    assert e2e.check_import(built, got) == []
    # the four duplicated planted captions are at risk, the fifth (seen once) is not
    planted = set(e2e.PLANTED)
    assert planted - set(got["at_risk"]) == {"onyx poster of 9"}
    assert (
        got["captions"] == len(planted) + 110 and got["pairs"] == 110 + 7 + 3 + 1
    )  # ordinary, planted (lagoon thrice), near copies, repeat
    meadow = next(c for c in got["clusters"] if "meadow poster of 5" in c["captions"])
    assert meadow["rows"] == meadow["images"] == 3  # the image, its JPEG and its resized copy
    assert "repeats:10" in got["tags"]["kestrel poster of 0"]
    assert "dup-caption:3" in got["tags"]["lagoon poster of 3"]
    # the script's own smoke mode runs the same checks and, with the shipped record, checks the record
    assert e2e.main(["--smoke", "--work", str(tmp_path), "--out", str(RECORD)]) == 0
    record = json.loads(RECORD.read_text(encoding="utf-8"))
    assert e2e.check_record(record, got) == []
    assert record["training"]["steps"] == e2e.STEPS and record["training"]["seconds"] > 0
    assert record["calibration"]["n_reference"] == 110 and record["calibration"]["copy_thresholds"]["pixel"] > 0
    for row in record["planted"].values():
        assert row["closest_image"] and row["similarity"] is not None
