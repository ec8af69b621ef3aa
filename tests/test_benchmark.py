"""Smoke run of scripts/benchmark.py --quick: the report has every field, with positive finite numbers.

Nothing here is timed: the machine is shared, so the test checks the report's shape, not the speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
METHODS = ["fd", "fd-forward", "jvp", "score_norm"]


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_benchmark_reports_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "floor" in proc.stdout and "fd-forward" in proc.stdout  # the printed table
    report = json.loads(out.read_text())

    assert report["schema"] == "memtest.benchmark/1"
    machine = report["machine"]
    assert machine["torch_threads"] == 1 and machine["device"] == "cpu"
    assert machine["torch"] and machine["cpu_count"] >= 1 and len(machine["load_average_start"]) == 3
    model = report["model"]
    assert model["name"] == "tiny-quick" and model["dtype"] == "float32" and model["unet_parameters"] > 0
    settings = report["settings"]
    assert settings["methods"] == METHODS and settings["reps"] == 2 and settings["quick"] is True
    assert positive(report["process_first_call_s"]) and positive(report["build_s"])
    memory = report["memory"]
    assert memory["kind"] == "rss_sampled_2ms"
    assert positive(memory["baseline_bytes"]) and memory["process_peak_rss_bytes"] >= memory["baseline_bytes"]

    configs = report["configs"]
    assert [(c["prompts"], c["n"]) for c in configs] == [(p, n) for p in settings["prompts"] for n in settings["n"]]
    for c in configs:
        assert c["unet_rows_per_forward"] == 2 * c["prompts"] * c["n"] and positive(c["embed_s"])
        floor = c["floor"]
        assert floor["evaluations"] == 2 and len(floor["times_s"]) == 2 and positive(c["floor_first_s"])
        for key in ("median_s", "per_prompt_s", "peak_memory_bytes"):
            assert positive(floor[key]), (key, floor)
        assert set(c["methods"]) == set(METHODS)
        for name, m in c["methods"].items():
            assert len(m["times_s"]) == len(m["round_ratios"]) == 2 and all(positive(t) for t in m["times_s"])
            for key in ("median_s", "per_prompt_s", "ratio", "ratio_of_medians", "first_call_s",
                        "first_call_per_prompt_s", "first_call_ratio", "peak_memory_bytes"):  # fmt: skip
                assert positive(m[key]), (name, key, m)
            assert m["per_prompt_s"] == m["median_s"] / c["prompts"]
            assert m["evaluations"] == {"fd": 3, "fd-forward": 2, "jvp": 3, "score_norm": 1}[name]
        # The finite differences approximate the exact JVP on the same generations.
        for name in ("fd", "fd-forward"):
            acc = c["accuracy"][name]
            assert 0 <= acc["median_rel_err_vs_jvp"] <= acc["max_rel_err_vs_jvp"] < 0.05, (name, acc)


def test_without_warm_up_the_timed_calls_still_give_values(load_script: Callable[[str], Any], tmp_path: Path) -> None:
    """The SD-scale mode: no first calls, one round; ratios and accuracy come from the timed calls."""
    bench = load_script("benchmark")
    out = tmp_path / "bench.json"
    args = ["--quick", "--device", "cpu", "--no-first-call", "--reps", "1", "--prompts", "2", "--n", "1"]
    assert bench.main([*args, "--methods", "fd-forward,jvp", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "process_first_call_s" not in report and report["settings"]["first_call"] is False
    (config,) = report["configs"]
    assert "floor_first_s" not in config and set(config["methods"]) == {"fd-forward", "jvp"}
    for m in config["methods"].values():
        assert "first_call_s" not in m and positive(m["ratio"]) and m["round_ratios"] == [m["ratio"]]
    assert 0 <= config["accuracy"]["fd-forward"]["max_rel_err_vs_jvp"] < 0.05


def test_large_models_script_smoke(load_script: Callable[[str], Any]) -> None:
    """scripts/large_models.py on a hundredfold-smaller model of SDXL's layout: it scores through the family."""
    mod = load_script("large_models")
    out = mod.run("sdxl", "float32", "fd", quick=True, threads=None)
    assert out["family"] == "sdxl" and out["latent_shape"] == [4, 16, 16]
    assert set(out["parameters"]) == {"unet", "text_encoder", "text_encoder_2"}
    assert out["parameters"]["unet"] > 1_000_000
    assert math.isfinite(out["score"]) and out["score"] > 0 and out["peak_rss_gib"] > 0
