"""Release-grade behaviour of the gate: short failures, threads, progress output (issue 13)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memtest.progress import Progress, clock

MAX_FAILURE_LINES = 4  # a memtest error's failure section: its message, and a hint when it has a cause


def failure_sections(output: str) -> dict[str, list[str]]:
    """The lines of each failure in pytest's FAILURES section, by test id."""
    body = output.split("= FAILURES =", 1)[1] if "= FAILURES =" in output else ""
    body = re.split(r"\n=+ (short test summary|memtest|warnings summary)", body)[0]
    sections: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        head = re.match(r"^_{3,} (.+?) _{3,}$", line)
        if head:
            current = head.group(1)
            sections[current] = []
        elif current is not None and line.strip():
            sections[current].append(line)
    return sections


def gate_args(env: dict[str, Any], checkpoint: Path | str) -> list[str]:
    return [
        "-p", "no:cacheprovider", "--memtest", f"--memtest-checkpoint={checkpoint}",
        f"--memtest-suite={env['suite']}", f"--memtest-calibration={env['calibration']}", "--memtest-n=1",
        "--memtest-cache-dir=none", "--memtest-fail-on=flag", "--memtest-confirm=off",
    ]  # fmt: skip


# -- one cause, one line ---------------------------------------------------------------------------------
def test_a_broken_checkpoint_fails_each_case_in_a_few_lines(
    pytester: pytest.Pytester, gate_env: dict[str, Any], tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(gate_env["checkpoint"], tmp_path / "broken-index"))
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", ')  # cut short
    result = pytester.runpytest(*gate_args(gate_env, broken))
    result.assert_outcomes(failed=4)
    out = result.stdout.str()
    sections = failure_sections(out)
    assert len(sections) == 4
    for lines in sections.values():
        assert len(lines) <= MAX_FAILURE_LINES, lines
        assert lines[0].startswith("CheckpointError: ") and "model_index.json' is not valid JSON" in lines[0]
    assert "Traceback" not in out and "site-packages" not in out and "json/decoder.py" not in out
    # The cause is stated once in the summary, not once per case.
    assert out.count("4 case(s) errored: ") == 1

    full = pytester.runpytest(*gate_args(gate_env, broken), "--memtest-traceback")
    full.assert_outcomes(failed=4)
    assert "JSONDecodeError" in full.stdout.str() and "direct cause" in full.stdout.str()


def test_a_checkpoint_missing_tensors_fails_short_and_names_them(
    pytester: pytest.Pytester, gate_env: dict[str, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(gate_env["checkpoint"], tmp_path / "missing-tensors"))
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    for key in ("conv_in.bias", "conv_in.weight", "conv_norm_out.bias"):
        del state[key]
    save_file(state, str(weights), metadata={"format": "pt"})
    result = pytester.runpytest(*gate_args(gate_env, broken))
    result.assert_outcomes(failed=4)
    sections = failure_sections(result.stdout.str())
    assert len(sections) == 4
    for lines in sections.values():
        assert len(lines) <= MAX_FAILURE_LINES, lines
        assert "Component 'unet'" in lines[0]
        assert (
            "lack 3 tensor(s) UNet2DConditionModel needs (conv_in.bias, conv_in.weight, conv_norm_out.bias)"
            in (lines[0])
        )


def test_memtest_errors_in_custom_tests_and_collection_are_short(
    pytester: pytest.Pytester, gate_env: dict[str, Any], tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(gate_env["checkpoint"], tmp_path / "broken"))
    (broken / "model_index.json").write_text("[]")
    pytester.makepyfile(
        """
        def test_uses_the_checkpoint(memtest_checkpoint):
            memtest_checkpoint.checkpoint
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", f"--memtest-checkpoint={broken}")  # without --memtest
    custom = failure_sections(result.stdout.str())["test_uses_the_checkpoint"]
    assert custom == [
        f"CheckpointError: '{broken / 'model_index.json'}' must hold a JSON object. Re-save the pipeline."
    ]

    pytester.makefile(".yaml", bad_suite="memtest_suite: 1\nname: bad\ncases: 7\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--memtest", f"--memtest-checkpoint={broken}", "bad_suite.yaml"
    )
    out = result.stdout.str()
    collect = out.split("ERROR collecting bad_suite.yaml", 1)[1].strip().splitlines()
    assert collect[1].startswith("SuiteError: ") and "Missing top-level keys" in collect[1]
    assert "Traceback" not in out and "site-packages" not in out


# -- threads ---------------------------------------------------------------------------------------------
def test_default_threads_are_the_usable_cores_in_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from memtest import threads

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.default_threads() == 8
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    assert threads.default_threads() == 8  # not divided: scores must not depend on -n
    assert threads.describe_threads() == "threads=8 (default: the usable cores)"
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    assert threads.default_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")  # nested levels: the outer pool's size counts
    assert threads.default_threads() == 3 and threads.describe_threads() == "threads=3 (from OMP_NUM_THREADS)"
    assert threads.describe_threads(4) == "threads=4 (set)"
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert threads.default_threads() == 5


def test_apply_threads_sets_torch() -> None:
    import torch

    from memtest.errors import MemtestError
    from memtest.threads import apply_threads, usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 == torch.get_num_threads()
        with pytest.raises(MemtestError, match="at least 1"):
            apply_threads(0)
    finally:
        torch.set_num_threads(before)


def test_openmp_waits_are_passive_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    from memtest.threads import passive_waits

    code = (
        "import os, memtest.threads as t; p = t.passive_waits(); import torch; print(p, os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ["True", "PASSIVE"]
    chosen = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "active"}, capture_output=True, text=True
    )
    assert chosen.stdout.split() == ["False", "active"]  # the user's choice stands
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "torch" in sys.modules and passive_waits() is False  # too late to matter: left alone
    assert "OMP_WAIT_POLICY" not in os.environ


def test_memtest_threads_reaches_torch_in_xdist_workers(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    # 3: not torch's default on the 2-core machines this runs on
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_threads(memtest_checkpoint, i):
            import torch

            memtest_checkpoint.checkpoint  # loading applies the thread setting
            assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "2"
            assert torch.get_num_threads() == 3
        """
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", f"--memtest-checkpoint={gate_env['checkpoint']}", "--memtest-threads=3"
    )
    result.assert_outcomes(passed=4)


def test_header_shows_the_threads(pytester: pytest.Pytester, gate_env: dict[str, Any]) -> None:
    result = pytester.runpytest(*gate_args(gate_env, gate_env["checkpoint"]), "--memtest-threads=1", "--co")
    result.stdout.fnmatch_lines(["memtest: torch threads=1 (set) in each process, OpenMP waits *"])
    bad = pytester.runpytest(*gate_args(gate_env, gate_env["checkpoint"]), "--memtest-threads=0", "--co")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--memtest-threads must be at least 1, got 0*"])


# -- progress --------------------------------------------------------------------------------------------
def test_progress_in_a_log_is_plain_lines() -> None:
    log = io.StringIO()  # not a terminal
    progress = Progress("memtest: scoring", unit="prompts", stream=log, every=0.0)
    for done in range(1, 5):
        progress(done * 8, 32)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("memtest: scoring 8/32 prompts (25%)  elapsed 0:00  eta ")
    assert lines[-1].startswith("memtest: scoring 32/32 prompts (100%)")

    sparse = io.StringIO()
    progress = Progress("x", stream=sparse, every=3600.0)
    for done in range(1, 101):
        progress(done, 100)
    assert [line.split("  ")[0] for line in sparse.getvalue().splitlines()] == ["x 1/100 (1%)", "x 100/100 (100%)"]


def test_progress_on_a_terminal_is_a_live_bar_and_silent_when_quiet() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    progress = Progress("scoring", unit="prompts", stream=tty, width=80)
    for done in range(1, 5):
        progress(done, 4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()  # tqdm redraws one line

    progress = Progress("scoring", stream=None)
    progress(1, 2)  # nothing to write to, nothing raised
    small = io.StringIO()
    Progress("scoring", stream=small, min_total=8)(4, 4)
    assert small.getvalue() == ""
    assert clock(75) == "1:15" and clock(3725) == "1:02:05" and clock(float("inf")) == "?"


def test_progress_times_a_new_task_from_the_end_of_the_last() -> None:
    log = io.StringIO()
    progress = Progress("x", stream=log, every=0.0)
    progress(2, 2)
    progress(1, 3)  # a second scoring call
    assert progress.total == 3 and progress.done == 1
    assert log.getvalue().splitlines()[-1].startswith("x 1/3 (33%)")


@pytest.mark.parametrize("xdist", [False, True])
def test_plugin_progress_lines_and_quiet(pytester: pytest.Pytester, gate_env: dict[str, Any], xdist: bool) -> None:
    args = [*gate_args(gate_env, gate_env["checkpoint"]), "--memtest-batch-size=1"]
    if xdist:
        result = pytester.runpytest_subprocess("-n", "2", *args)
        assert "memtest: scoring" not in result.stdout.str()  # workers never write to the terminal
        result.assert_outcomes(passed=2, failed=2)
        return
    result = pytester.runpytest(*args)
    out = result.stdout.str()
    assert "\r" not in out
    result.stdout.fnmatch_lines(["memtest: scoring 1/4 prompts (25%)  elapsed *  eta *"])
    result.assert_outcomes(passed=2, failed=2)
    quiet = pytester.runpytest(*args, "-q")
    assert "memtest: scoring" not in quiet.stdout.str()


def test_cli_progress_in_a_log(gate_env: dict[str, Any], tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-c", "import sys; from memtest.cli import main; sys.exit(main())", "audit",
        f"--checkpoint={gate_env['checkpoint']}",
        f"--suite={gate_env['suite']}", f"--calibration={gate_env['calibration']}", "--n=1", "--batch-size=1",
        "--cache-dir=none", "--threads=1", f"--json={tmp_path / 'r.json'}", f"--report={tmp_path / 'r.html'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 1, done.stderr  # the gate_env suite has two failing cases
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("memtest: scoring")]
    assert lines[0].startswith("memtest: scoring 1/4 prompts") and lines[-1].startswith("memtest: scoring 4/4")
    assert "1 torch threads" in done.stdout
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["total"] == 4
