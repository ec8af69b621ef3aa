"""The package's shape holds: imports point down (no circle, counting deferred and TYPE_CHECKING imports), the
plugin talks to the library through memtest.audit only, the library speaks no front end, and the default audit
scores what it scored before the layout changed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The plugin's source folder is installed as the package `pytest_memtest`.
PACKAGES = {"memtest": ROOT / "memtest", "pytest_memtest": ROOT / "plugins"}
PLUGIN_MAY_IMPORT = {"memtest.audit", "memtest.errors", "memtest.progress"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if "canaries" in path.parts:
                continue
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name an import statement in the file names, wherever it sits (top level, inside a
    function, under `if TYPE_CHECKING:`), relative imports resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in mods:
                return candidate
        return None

    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges = {owner(name) for name in imported_names(module, path)}
        graph[module] = {e for e in edges if e is not None and e != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the scan found the package
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle() -> None:
    """The check itself can fail: a two-module loop and a three-module loop are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert circles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_the_plugin_imports_only_the_audit_errors_and_progress() -> None:
    graph = import_graph()
    plugin = {m for m in graph if m.startswith("pytest_memtest")}
    assert plugin >= {"pytest_memtest.plugin", "pytest_memtest.session", "pytest_memtest.items"}
    used = {target for m in plugin for target in graph[m] if target.startswith("memtest")}
    assert used <= PLUGIN_MAY_IMPORT, sorted(used - PLUGIN_MAY_IMPORT)


def test_relative_imports_resolve() -> None:
    path = ROOT / "plugins" / "plugin.py"
    assert "pytest_memtest.session" in set(imported_names("pytest_memtest.plugin", path))


def library_strings() -> Iterator[tuple[Path, int, str]]:
    for module, path in modules().items():
        if not module.startswith("memtest"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield path, node.lineno, node.value


def test_the_library_names_no_front_end() -> None:
    """No string in memtest/ (messages, docstrings, f-string parts) names a pytest flag, reads the xdist worker
    variable or writes a pytest command line: options have neutral names, each front end spells them."""
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}"
        for path, line, text in library_strings()
        if "--memtest" in text or "PYTEST_XDIST" in text or "pytest --" in text
    ]
    assert bad == []


def test_no_private_name_crosses_a_module_boundary() -> None:
    """`from memtest.x import _name` is a private name used outside its module: make it public where it lives."""
    bad = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("memtest"):
                bad += [
                    f"{module} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert bad == []


@pytest.mark.parametrize("front", ["plugin", "cli"])
def test_an_invalid_value_names_the_front_ends_own_flag(front: str, pytester: pytest.Pytester) -> None:
    if front == "plugin":
        result = pytester.runpytest_subprocess("--memtest", "--memtest-fpr=2", "-p", "no:cacheprovider")
        text = result.stderr.str() + result.stdout.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "--memtest-fpr must be in (0, 1), got 2.0" in text
    else:
        out = subprocess.run(
            [sys.executable, "-m", "memtest.cli", "audit", "--fpr", "2"], capture_output=True, text=True, check=False
        )
        assert out.returncode == 2
        assert "memtest: error: --fpr must be in (0, 1), got 2.0" in out.stderr
        assert "--memtest" not in out.stderr


def test_an_unknown_mitigation_method_names_each_front_ends_flag(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--memtest", "--memtest-mitigation-method=sial", "-p", "no:cacheprovider")
    assert "Unknown --memtest-mitigation-method 'sial'. Did you mean 'sail'?" in result.stderr.str()
    out = subprocess.run(
        [sys.executable, "-m", "memtest.cli", "audit", "--mitigation-method", "sial"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown --mitigation-method 'sial'. Did you mean 'sail'?" in out.stderr


def test_the_library_spells_options_neutrally() -> None:
    from memtest.audit import config_from_values
    from memtest.errors import MemtestError

    with pytest.raises(MemtestError) as info:
        config_from_values({"fpr": 2.0})
    assert str(info.value) == "`fpr` must be in (0, 1), got 2.0."
    assert info.value.render(lambda name, value: f"<{name}>") == "<fpr> must be in (0, 1), got 2.0."


@pytest.mark.slow
def test_the_default_audit_scores_equal_the_record_taken_before_the_move(tmp_path: Path, load_script: Any) -> None:
    """Every score of the default `memtest audit` (zoo:finetuned, its own suite), bit for bit, against a record
    that scripts/score_record.py took on the flat layout: the one of this kind of CPU (each record is one
    kernel summation order; all 120 cases must equal the same record)."""
    score_record = load_script("score_record")
    records = [json.loads(path.read_text(encoding="utf-8"))["finetuned"]["scores"] for path in score_record.RECORDS]
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "memtest.cli", "audit", "-q", "--cache-dir", "none", "--json", str(out), "--report",
         str(tmp_path / "report.html")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text(encoding="utf-8"))["cases"]
    assert len(cases) == 120
    got = {c["prompt"]: [float(c["score"]).hex(), [float(v).hex() for v in c["values"]]] for c in cases}
    matching = [r for r in records if not score_record.mismatches(got, r)]
    assert matching, (
        "equal to no record of any kind of CPU: a change moved the scores, or this CPU sums in an order "
        "not recorded yet (docs/CONVENTIONS.md says how to record one)",
        dict(list(got.items())[:3]),
    )


def test_the_score_record_check_passes_on_three_cases(load_script: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """score_record.py --smoke --check: three zoo:finetuned cases bit for bit against this CPU's record (seconds)."""
    assert load_script("score_record").main(["--smoke", "--check"]) == 0
    assert "3/3 prompts bit-identical" in capsys.readouterr().out


def test_the_flat_import_paths_still_work_for_one_release() -> None:
    """Each path README and docs named before the layout (memtest.metrics, memtest.results, ...) imports the
    module at its new place, the same object, with a DeprecationWarning that names the new path; the
    torch-free ones stay torch-free."""
    code = """
import importlib, json, sys, warnings
import memtest
out = {}
light = ["memtest.results", "memtest.suites", "memtest.calibration", "memtest.locate"]
for old in light:  # first, so that no torch-using module was imported before
    importlib.import_module(old)
out["torch after the light ones"] = "torch" in sys.modules
for old, new in sorted(memtest.MOVED.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    if old in light:  # imported above: warn again on a fresh import
        del sys.modules[old]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
    out[old] = [module is importlib.import_module(new), module.__spec__.name, [str(w.message) for w in caught]]
from memtest.metrics import sharpness
out["from"] = sharpness.__module__
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    from memtest import MOVED

    assert len(MOVED) >= 10
    for old, new in MOVED.items():
        same, spec_name, warned = out[old]
        assert same and spec_name == new, old
        assert any(f"{old} moved to {new}" in w for w in warned), (old, warned)
    assert out["torch after the light ones"] is False
    assert out["from"] == "memtest.detection.metrics"
