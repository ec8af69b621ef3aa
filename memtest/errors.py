"""memtest's error types. Every user-facing failure is a MemtestError whose message says what was
wrong and how to fix it; the pytest plugin turns them into test errors, never skips or passes."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

#: How a message names one of memtest's options: `{option:fpr}`. The library speaks no front end, so the
#: front end that shows the message spells it (`--memtest-fpr` in pytest, `--fpr` in `memtest audit`).
OPTION_REF = re.compile(r"\{option:([a-z_]+)(?:=([^}]*))?\}")


def option(name: str, value: object = None) -> str:
    """The reference to option `name` (with an example `value`) in a message, for the front end to spell."""
    return f"{{option:{name}}}" if value is None else f"{{option:{name}={value}}}"


def neutral_spelling(name: str, value: str | None) -> str:
    """How a message names an option when no front end spells it (the library's own keyword)."""
    return f"`{name}`" if value is None else f"`{name}={value}`"


def did_you_mean(word: str, choices: Iterable[object]) -> str:
    """ " Did you mean 'x'?" for the closest of `choices`, or "" when none is close."""
    matches = difflib.get_close_matches(word, [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


class MemtestError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatched settings).

    Its message may name options as `{option:NAME}` (see `option`); `str()` gives the library's spelling and
    `render(spell)` the caller's."""

    def render(self, spell: Callable[[str, str | None], str] = neutral_spelling) -> str:
        return render_options(super().__str__(), spell)

    def __str__(self) -> str:
        return self.render()


def render_options(text: str, spell: Callable[[str, str | None], str] = neutral_spelling) -> str:
    """`text` with each option reference spelled by `spell(name, value)`."""
    return OPTION_REF.sub(lambda m: spell(m.group(1), m.group(2)), text)


class CheckpointError(MemtestError):
    """A checkpoint could not be found, read or trusted."""


class ScoringError(MemtestError):
    """Scoring inputs were invalid, or the model produced a non-finite value."""


class SuiteError(MemtestError):
    """A prompt suite could not be found or parsed."""


class CalibrationError(MemtestError):
    """A calibration is missing, malformed, or does not match the checkpoint and settings."""


class ZooError(MemtestError):
    """Training data or a canary manifest is invalid."""


class ResultsError(MemtestError):
    """A results file is unreadable or results cannot be merged."""


class MitigationError(MemtestError):
    """A mitigation could not run: bad settings, no threshold, or nothing to generate with."""
