"""Repository promises: the README's commands are the ones CI runs, and a plain install ships the data."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln and not ln.startswith(("#", "set ", "cd ", "export "))
    ]
    # Lint, format and type checks first (the pinned tools of the install script), then the README's command.
    assert ci == [
        "bash scripts/install.sh --lint",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
        commands[1],
    ]
    assert "pytest" in commands[1] and "memtest audit" in commands[0]


@pytest.mark.slow
def test_wheel_ships_plugin_suites_templates_and_canaries(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("memtest-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "pytest_memtest/plugin.py",
        "memtest/_data/suites/sd1-memorized.yaml",
        "memtest/_data/suites/coco-10k.yaml",
        "memtest/_data/suites/PROVENANCE.md",
        "memtest/_data/reports/report.html.j2",
        "memtest/py.typed",
    ):
        assert required in names, required
    canaries = ROOT / "memtest" / "zoo" / "canaries"
    shipped = [p.relative_to(ROOT).as_posix() for p in canaries.rglob("*") if p.is_file()] if canaries.is_dir() else []
    missing = [p for p in shipped if p not in names]
    assert not missing, f"canary files left out of the wheel (fix package-data in pyproject.toml): {missing}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]\nmemtest = pytest_memtest.plugin" in text
    assert "memtest = memtest.cli:main" in text


def test_every_memtest_subpackage_is_installed() -> None:
    """pyproject lists packages explicitly; a subpackage missing there is absent from a plain install, and
    every xdist worker or subprocess that imports the installed memtest fails (it happened once)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "memtest").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
