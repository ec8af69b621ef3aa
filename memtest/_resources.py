"""Locate data shipped with memtest (suites, report templates) in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder of shipped data `name` ("suites" or "reports").

    In a wheel the folders live at `memtest/_data/<name>` (see pyproject's package-dir); in a source
    checkout or an editable install they are the top-level folders of the repository.
    """
    for candidate in (_HERE / "_data" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"memtest's '{name}' data folder is missing (looked in {_HERE / '_data' / name} and "
        f"{_HERE.parent / name}); reinstall memtest with `pip install --force-reinstall memtest`."
    )
