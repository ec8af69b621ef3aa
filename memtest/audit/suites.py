"""Prompt suites: short declarative YAML files that list the prompts to audit and what to expect.

A suite file looks like this (the format is versioned by ``memtest_suite``)::

    memtest_suite: 1
    name: sd1-memorized
    version: "1.0"
    card:
      description: Prompts that Stable Diffusion v1.4 reproduces from its training data.
      provenance: owner/repo @ commit, path
      licence: MIT (full text or a pointer)
      caveats: [Labels are specific to SD v1.x.]
    defaults: {metric: sharpness, n: 4}     # optional, informational: not applied (see below)
    cases:
      - id: sd1-mem-0001
        prompt: "The No Limits Business Woman Podcast"
        expectation: memorized             # clean | memorized | reference
        tags: [VM]                         # optional
        mitigate: false                    # optional: false | true | copy
        images: [train/0001.png]           # optional: the caption's training images

``mitigate: true`` gives the case a ``<suite>::<case-id>[mitigate]`` item when gating: SAIL must find initial
noise below the threshold (docs/mitigation.md). ``mitigate: copy`` asks for that and, in addition, that the copy
leaves: the checkpoint must plant the prompt (a canary whose manifest names its memorised image) and have a
copy threshold (the calibration's, the gate's own copy rule), at least one of the unmitigated generations must
be a copy, and the
copy rate among the generations from the accepted x_T must be at most half the rate before
(``memtest.mitigation.judge_copy``); anything else fails the item, never skips it.

``images`` lists the training images of the caption (paths relative to the suite file, or absolute): a
flagged case is confirmed by generating and comparing with them (memtest.evidence). A listed file that does
not exist is an error naming the case and the file; a suite given as a dict (no file) takes absolute paths.

``defaults`` is informational: the scoring settings the suite's labels were made with (metric, method, n,
seed, fpr). It is validated, kept on :attr:`Suite.defaults` and written back by :func:`dump_suite`, but it
never changes how a run scores: the run's options (or memtest's own defaults) decide. A suite cannot set
them, because one run audits several suites against one calibration, and the calibration's identity fixes
the settings for all of them.

Every problem is reported as a :class:`memtest.errors.SuiteError` whose message names the file, the
line and the fix. In YAML files, unquoted numbers and booleans in text fields are taken as written
(``version: 1.10`` is the string ``"1.10"``, ``prompt: no`` is ``"no"``); ``suite_from_dict`` wants
real strings there. This module must not import torch or pytest.
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, cast, get_args

import yaml

from memtest._resources import data_dir
from memtest.errors import SuiteError, did_you_mean

__all__ = [
    "EXPECTATIONS",
    "FORMAT_VERSIONS",
    "MITIGATE_COPY",
    "Expectation",
    "Mitigate",
    "Suite",
    "SuiteCard",
    "SuiteCase",
    "builtin_suites",
    "dump_suite",
    "is_suite_file",
    "load_suite",
    "resolve_suite",
    "suite_from_dict",
]

Expectation = Literal["clean", "memorized", "reference"]
EXPECTATIONS: Final[tuple[Expectation, ...]] = get_args(Expectation)
FORMAT_VERSIONS: Final[tuple[int, ...]] = (1,)
#: A case's `mitigate`: false, true (SAIL must find flat noise) or "copy" (and the copy must leave).
Mitigate = bool | Literal["copy"]
MITIGATE_COPY: Final = "copy"
_MITIGATE_WORDS: Final = ("true", "false", MITIGATE_COPY)

_TOP_REQUIRED: Final = ("memtest_suite", "name", "version", "card", "cases")
_TOP_KEYS: Final = ("memtest_suite", "name", "version", "card", "defaults", "cases")
_CARD_KEYS: Final = ("description", "provenance", "licence", "caveats")
_CASE_KEYS: Final = ("id", "prompt", "expectation", "tags", "mitigate", "images")
_DEFAULT_KEYS: Final = ("metric", "method", "n", "seed", "steps", "batch_size", "fpr")

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
# A top-level `memtest_suite:` key near the top of a file marks it as a suite (see is_suite_file).
_MARKER_RE: Final = re.compile(r"""^\ufeff?["']?memtest_suite["']?[ \t]*:""")
_NAME_LINE_RE: Final = re.compile(r"""^name[ \t]*:[ \t]*(["']?)([a-z0-9][a-z0-9._-]*)\1[ \t]*(?:#.*)?$""")
_HEAD_LINES: Final = 20
_HEAD_BYTES: Final = 4096
_MAX_DEPTH: Final = 64

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG: Final = "tag:yaml.org,2002:str"
_NULL_TAG: Final = "tag:yaml.org,2002:null"


# --------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteCase:
    """One prompt of a suite. ``line`` is where the case starts in its file (0 when not from a file);
    it is not part of equality, so a suite equals itself after a dump/load round trip."""

    id: str
    prompt: str
    expectation: Expectation
    tags: tuple[str, ...] = ()
    mitigate: Mitigate = False
    #: training images of the caption, as written in the suite (relative to its file, or absolute)
    images: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)

    def image_paths(self, suite_path: Path | None) -> tuple[Path, ...]:
        """The training images as paths: relative ones are taken from the suite file's folder."""
        base = suite_path.parent if suite_path is not None else None
        return tuple(Path(t) if Path(t).is_absolute() or base is None else base / t for t in self.images)


@dataclass(frozen=True)
class SuiteCard:
    """What the suite is, where its prompts come from, under which licence, and what to watch for."""

    description: str
    provenance: str = ""
    licence: str = ""
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A parsed, validated prompt suite. ``path`` (the file it came from, if any) is not part of
    equality."""

    name: str
    version: str
    card: SuiteCard
    #: Informational scoring settings (see the module docstring): validated and kept, never applied to a run.
    defaults: dict[str, str | int | float] = field(hash=False)
    cases: tuple[SuiteCase, ...]
    path: Path | None = field(default=None, compare=False)

    def by_expectation(self, expectation: str) -> tuple[SuiteCase, ...]:
        """The cases whose expectation is ``expectation`` ("clean", "memorized" or "reference")."""
        if expectation not in EXPECTATIONS:
            raise SuiteError(
                f"Unknown expectation {expectation!r}.{did_you_mean(expectation, EXPECTATIONS)} "
                f"Allowed: {', '.join(EXPECTATIONS)}."
            )
        return tuple(case for case in self.cases if case.expectation == expectation)

    def references(self) -> tuple[SuiteCase, ...]:
        """The calibration cases (expectation "reference")."""
        return self.by_expectation("reference")


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Parse and validate the suite file at ``path``. Raises SuiteError for every kind of problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SuiteError(
            f"Suite file '{p}' does not exist. Check the path (relative paths start at {Path.cwd()})."
        ) from None
    except IsADirectoryError:
        raise SuiteError(f"'{p}' is a directory, not a suite file. Pass the path of a suite YAML file.") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SuiteError(
            f"Cannot read suite file '{p}': {reason}. Check that the file exists and is readable."
        ) from None
    return _parse_bytes(data, source=str(p), path=p)


def suite_from_dict(data: object, source: str = "<memory>") -> Suite:
    """Validate a suite given as plain Python data (the structure of a suite file)."""
    return _Validator(source, None).suite(data)


def dump_suite(suite: Suite) -> str:
    """Render ``suite`` as suite YAML; ``load_suite`` of the text gives an equal Suite."""
    out = [f"memtest_suite: {FORMAT_VERSIONS[-1]}", f"name: {_scalar(suite.name)}"]
    out.append(f"version: {_dq(suite.version)}")
    card = suite.card
    out.append("card:")
    out.append(f"  description: {_text_block(card.description, 4)}")
    if card.provenance:
        out.append(f"  provenance: {_text_block(card.provenance, 4)}")
    if card.licence:
        out.append(f"  licence: {_text_block(card.licence, 4)}")
    if card.caveats:
        out.append("  caveats:")
        out.extend(f"    - {_text_block(caveat, 6)}" for caveat in card.caveats)
    if suite.defaults:
        out.append("defaults:")
        order = {key: index for index, key in enumerate(_DEFAULT_KEYS)}
        keys = sorted(suite.defaults, key=lambda key: order.get(key, len(order)))
        out.extend(f"  {key}: {_value(suite.defaults[key])}" for key in keys)
    out.append("cases:")
    for case in suite.cases:
        out.append(f"  - id: {_scalar(case.id)}")
        out.append(f"    prompt: {_dq(case.prompt)}")
        out.append(f"    expectation: {case.expectation}")
        if case.tags:
            out.append(f"    tags: [{', '.join(_scalar(tag) for tag in case.tags)}]")
        if case.mitigate == MITIGATE_COPY:
            out.append(f"    mitigate: {MITIGATE_COPY}")
        elif case.mitigate:
            out.append("    mitigate: true")
        if case.images:
            out.append("    images:")
            out.extend(f"      - {_dq(image)}" for image in case.images)
    return "\n".join(out) + "\n"


def builtin_suites() -> dict[str, Path]:
    """Every ``*.yaml`` suite shipped with memtest, keyed by the suite's ``name``."""
    try:
        folder = data_dir("suites")
    except FileNotFoundError as exc:
        raise SuiteError(str(exc)) from None
    found: dict[str, Path] = {}
    for file in sorted(folder.glob("*.yaml")):
        name = _peek_name(file) or load_suite(file).name
        if name in found:
            raise SuiteError(
                f"Two built-in suites are both named '{name}': {found[name]} and {file}. "
                "Rename one of them (the 'name:' key) or remove the stale file."
            )
        found[name] = file
    return dict(sorted(found.items()))


def resolve_suite(name_or_path: str | os.PathLike[str]) -> Suite:
    """Load a suite given as the path of an existing file or as the name of a built-in suite."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.is_file():
        return load_suite(path)
    available = builtin_suites()
    if text in available:
        return load_suite(available[text])
    names = ", ".join(available) or "(none installed)"
    if path.is_dir():
        raise SuiteError(
            f"'{text}' is a directory, not a suite file or a built-in suite name. Pass the path of a "
            f"suite YAML file, or one of the built-in suites: {names}."
        )
    if isinstance(name_or_path, os.PathLike) or "/" in text or os.sep in text or path.suffix in (".yaml", ".yml"):
        raise SuiteError(
            f"Suite file '{text}' does not exist (looked at {path.absolute()}). Check the path, or use "
            f"a built-in suite name: {names}."
        )
    raise SuiteError(
        f"Unknown suite '{text}'.{did_you_mean(text, list(available))} Available: {names}. "
        "Or pass a path to a suite YAML file."
    )


def is_suite_file(path: str | os.PathLike[str]) -> bool:
    """Cheap check: a ``.yaml``/``.yml`` file with a top-level ``memtest_suite:`` key in its first
    lines. Does not parse or validate the file (load_suite does that)."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml"):
        return False
    try:
        with p.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except (OSError, ValueError):
        return False
    lines = head.decode("utf-8", errors="replace").splitlines()[:_HEAD_LINES]
    return any(_MARKER_RE.match(line) for line in lines)


# --------------------------------------------------------------------------------------------------
# Parsing: bytes -> YAML nodes -> plain data that remembers its line numbers
# --------------------------------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A mapping read from YAML, with the line of the mapping, of each key, and the source text of
    plain (unquoted) non-string scalar values."""

    __slots__ = ("key_lines", "line", "raw")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        self.raw: dict[str, str] = {}


class _Seq(list[Any]):
    """A sequence read from YAML, with the line of the sequence and of each item."""

    __slots__ = ("item_lines", "line", "raw")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []
        self.raw: dict[int, str] = {}


_IN_PROGRESS: Final = object()


def _parse_bytes(data: bytes, source: str, path: Path | None) -> Suite:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise SuiteError(
            f"{source}, line {bad_line}: the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}). Save the file with UTF-8 encoding."
        ) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        yaml_line = mark.line + 1 if mark is not None else None
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark.line + 1 != yaml_line:
            context += f" that starts on line {exc.context_mark.line + 1}"
        what = "; ".join(part for part in (context, exc.problem) if part) or "syntax error"
        raise SuiteError(
            _located(
                source,
                yaml_line,
                f"invalid YAML ({what}). Fix the syntax there; quote prompts that contain ': ' or ' #', "
                "or that start with a character such as * & ! [ { > | ' \" % @ or `",
            )
        ) from None
    except yaml.YAMLError as exc:
        raise SuiteError(
            _located(source, None, f"invalid YAML ({_one_line(str(exc))}). Fix the file's syntax")
        ) from None
    except Exception as exc:  # the YAML library is a black box; no other exception type may escape
        what = f"{type(exc).__name__}: {_one_line(str(exc))}"
        raise SuiteError(
            _located(source, None, f"the file could not be parsed as YAML ({what}). Fix the file's syntax")
        ) from None
    if node is None:
        raise SuiteError(
            _located(
                source,
                None,
                "the file is empty. A suite file is a YAML mapping with the keys "
                f"{', '.join(_TOP_REQUIRED)} (the format is described in the memtest.audit.suites docstring)",
            )
        )
    data_tree = _Converter(source).convert(node, 0)
    return _Validator(source, path).suite(data_tree)


class _Converter:
    """Turns a composed YAML node tree into _Map/_Seq/scalars, sharing aliased collections (so alias
    bombs stay small) and rejecting recursive aliases, non-scalar keys, duplicate keys and nesting
    deeper than a suite can use."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.memo: dict[int, Any] = {}
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, message: str) -> NoReturn:
        raise SuiteError(_located(self.source, node.start_mark.line + 1, message))

    def convert(self, node: yaml.Node, depth: int) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        key = id(node)
        if key in self.memo:
            value = self.memo[key]
            if value is _IN_PROGRESS:
                self.fail(node, "a YAML alias refers to a collection that contains it. Remove the recursion")
            return value
        if depth >= _MAX_DEPTH:
            self.fail(node, f"the data is nested more than {_MAX_DEPTH} levels deep; a suite needs four")
        self.memo[key] = _IN_PROGRESS
        result: _Map | _Seq
        if isinstance(node, yaml.MappingNode):
            result = self.mapping(node, depth)
        elif isinstance(node, yaml.SequenceNode):
            result = self.sequence(node, depth)
        else:  # pragma: no cover - compose only makes the three node kinds
            self.fail(node, f"unexpected YAML node {type(node).__name__}")
        self.memo[key] = result
        return result

    def mapping(self, node: yaml.MappingNode, depth: int) -> _Map:
        result = _Map(node.start_mark.line + 1)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, "a mapping key must be plain text, not a list or a mapping")
            key = str(key_node.value)
            if key in result:
                self.fail(
                    key_node,
                    f"duplicate key '{key}' (first on line {result.key_lines[key]}). Keep one of them",
                )
            value = self.convert(value_node, depth + 1)
            result[key] = value
            result.key_lines[key] = key_node.start_mark.line + 1
            if _is_plain_nonstring(value_node, value):
                result.raw[key] = value_node.value
        return result

    def sequence(self, node: yaml.SequenceNode, depth: int) -> _Seq:
        result = _Seq(node.start_mark.line + 1)
        for item_node in node.value:
            value = self.convert(item_node, depth + 1)
            if _is_plain_nonstring(item_node, value):
                result.raw[len(result)] = item_node.value
            result.append(value)
            result.item_lines.append(item_node.start_mark.line + 1)
        return result

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        if node.tag == _NULL_TAG:
            return None
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # huge ints, bad timestamps, unknown or unsafe tags
            self.fail(
                node,
                f"cannot read the value {_short(node.value)} ({_one_line(str(exc))}). Quote it or remove the YAML tag",
            )


def _is_plain_nonstring(node: yaml.Node, value: object) -> bool:
    return (
        isinstance(node, yaml.ScalarNode)
        and not node.style  # None (pure-Python parser) or "" (libyaml) for plain scalars
        and value is not None
        and not isinstance(value, str)
    )


# --------------------------------------------------------------------------------------------------
# Validation of plain data (from YAML or from Python)
# --------------------------------------------------------------------------------------------------


class _Validator:
    def __init__(self, source: str, path: Path | None) -> None:
        self.source = source
        self.path = path

    def fail(self, line: int | None, message: str) -> NoReturn:
        raise SuiteError(_located(self.source, line, message))

    def suite(self, data: object) -> Suite:
        if not isinstance(data, Mapping):
            self.fail(
                _line(data),
                f"the top level must be a mapping with the keys {', '.join(_TOP_REQUIRED)}; got "
                f"{_describe(data)}. Start the file with 'memtest_suite: 1'",
            )
        if "memtest_suite" not in data:
            self.fail(
                _line(data),
                "missing the key 'memtest_suite' (the format version), so this is not a memtest suite. "
                f"Add 'memtest_suite: {FORMAT_VERSIONS[-1]}' as the first line",
            )
        fmt = data["memtest_suite"]
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt not in FORMAT_VERSIONS:
            shown = _raw(data, "memtest_suite") or _short(fmt)
            self.fail(
                _key_line(data, "memtest_suite"),
                f"unsupported suite format memtest_suite: {shown}. This memtest reads format versions "
                f"{', '.join(map(str, FORMAT_VERSIONS))}; write 'memtest_suite: {FORMAT_VERSIONS[-1]}' "
                "(or upgrade memtest for a newer format)",
            )
        self.check_keys(data, _TOP_KEYS, "at the top level")
        missing = [key for key in _TOP_REQUIRED if key not in data]
        if missing:
            self.fail(
                _line(data),
                f"missing top-level key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}. "
                f"A suite needs {', '.join(_TOP_REQUIRED)} (and optionally defaults)",
            )
        name = self.text(data, "name", "the suite name")
        if not _NAME_RE.fullmatch(name):
            suggestion = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "my-suite"
            self.fail(
                _key_line(data, "name"),
                f"invalid suite name {name!r}: use lowercase letters, digits, '.', '_' and '-', starting "
                f"with a letter or digit. Did you mean '{suggestion}'?",
            )
        version = self.text(data, "version", "the suite version")
        if not version.strip():
            self.fail(_key_line(data, "version"), 'the suite version is empty. Write e.g. version: "1.0"')
        card = self.card(data)
        defaults = self.defaults(data)
        cases = self.cases(data)
        return Suite(name=name, version=version, card=card, defaults=defaults, cases=cases, path=self.path)

    def check_keys(self, mapping: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                shown = key if isinstance(key, str) else repr(key)
                self.fail(
                    _key_line(mapping, key) if isinstance(key, str) else _line(mapping),
                    f"Unknown key '{shown}' {where}.{did_you_mean(str(key), allowed)} Allowed: {', '.join(allowed)}",
                )

    def text(self, mapping: Mapping[Any, Any], key: str, what: str, where: str = "") -> str:
        value = mapping[key]
        if isinstance(value, str):
            return value
        raw = _raw(mapping, key)
        if raw is not None:
            return raw
        self.fail(
            _key_line(mapping, key),
            f"{what} ('{key}'{where}) must be a string, got {_describe(value)}. Write it as quoted text",
        )

    def optional_text(self, mapping: Mapping[Any, Any], key: str, what: str) -> str:
        return "" if mapping.get(key) is None else self.text(mapping, key, what)

    def card(self, data: Mapping[Any, Any]) -> SuiteCard:
        card = data["card"]
        if not isinstance(card, Mapping):
            self.fail(
                _key_line(data, "card"),
                f"'card' must be a mapping with the keys {', '.join(_CARD_KEYS)}; got {_describe(card)}",
            )
        self.check_keys(card, _CARD_KEYS, "in the card")
        if "description" not in card:
            self.fail(_line(card), "the card has no 'description'. Add one line saying what the suite is")
        description = self.text(card, "description", "the card description")
        if not description.strip():
            self.fail(_key_line(card, "description"), "the card description is empty. Say what the suite is")
        provenance = self.optional_text(card, "provenance", "the card provenance")
        licence = self.optional_text(card, "licence", "the card licence")
        caveats = self.strings(card, "caveats", "caveats", "in the card", "caveats: [Labels are noisy.]")
        return SuiteCard(description=description, provenance=provenance, licence=licence, caveats=caveats)

    def strings(self, mapping: Mapping[Any, Any], key: str, what: str, where: str, example: str) -> tuple[str, ...]:
        value = mapping.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(
                _key_line(mapping, key),
                f"{what} {where} must be a list of strings, got {_describe(value)}. Write e.g. {example}",
            )
        items: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raw = value.raw.get(index) if isinstance(value, _Seq) else None
                if raw is None:
                    self.fail(
                        _item_line(value, index) or _key_line(mapping, key),
                        f"item {index + 1} of {what} {where} must be a string, got {_describe(item)}. "
                        f"Write e.g. {example}",
                    )
                item = raw
            if not item.strip():
                self.fail(
                    _item_line(value, index) or _key_line(mapping, key),
                    f"item {index + 1} of {what} {where} is empty. Remove it or fill it in",
                )
            items.append(item)
        return tuple(items)

    def defaults(self, data: Mapping[Any, Any]) -> dict[str, str | int | float]:
        defaults = data.get("defaults")
        if defaults is None:
            return {}
        if not isinstance(defaults, Mapping):
            self.fail(
                _key_line(data, "defaults"),
                f"'defaults' must be a mapping of scoring settings ({', '.join(_DEFAULT_KEYS)}); got "
                f"{_describe(defaults)}",
            )
        self.check_keys(defaults, _DEFAULT_KEYS, "in defaults")
        result: dict[str, str | int | float] = {}
        for key in _DEFAULT_KEYS:
            if key not in defaults:
                continue
            value = defaults[key]
            line = _key_line(defaults, key)
            if key in ("metric", "method"):
                if not isinstance(value, str) or not value.strip():
                    self.fail(line, f"the setting defaults.{key} must be a non-empty string, got {_describe(value)}")
                result[key] = value
            elif key == "fpr":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or not 0 < value < 1
                ):
                    self.fail(
                        line,
                        f"the setting defaults.fpr must be a number between 0 and 1 (e.g. 0.01), got {_short(value)}",
                    )
                result[key] = float(value)
            else:
                low = 0 if key == "seed" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    self.fail(
                        line,
                        f"the setting defaults.{key} must be a whole number >= {low}, got {_short(value)}. "
                        f"Write e.g. {key}: {4 if low else 0}",
                    )
                result[key] = value
        return result

    def cases(self, data: Mapping[Any, Any]) -> tuple[SuiteCase, ...]:
        cases = data["cases"]
        example = "cases:\n  - id: case-1\n    prompt: a photo of a cat\n    expectation: clean"
        if not isinstance(cases, list):
            self.fail(
                _key_line(data, "cases"),
                f"'cases' must be a list of cases, got {_describe(cases)}. Write e.g.\n{example}",
            )
        if not cases:
            self.fail(_key_line(data, "cases"), f"the suite has no cases. Add at least one, e.g.\n{example}")
        seen: dict[str, int] = {}
        result: list[SuiteCase] = []
        for index, item in enumerate(cases):
            case = self.case(item, index, _item_line(cases, index))
            if case.id in seen:
                first = cases[seen[case.id]]
                first_line = _line(first) or _item_line(cases, seen[case.id])
                where = (
                    f" (first used on line {first_line})"
                    if first_line
                    else f" (first used by case #{seen[case.id] + 1})"
                )
                self.fail(
                    case.line or None,
                    f"duplicate case id '{case.id}'{where}. Case ids must be unique within a suite; rename one",
                )
            seen[case.id] = index
            result.append(case)
        return tuple(result)

    def case(self, item: object, index: int, item_line: int | None) -> SuiteCase:
        label = f"case #{index + 1}"
        if not isinstance(item, Mapping):
            self.fail(
                item_line,
                f"{label} must be a mapping with the keys id, prompt, expectation; got {_describe(item)}",
            )
        line = _line(item) or item_line
        case_id: str | None = None
        if "id" in item:
            case_id = self.text(item, "id", "the case id", f" in {label}")
            if _ID_RE.fullmatch(case_id):
                label = f"case '{case_id}'"
            else:
                self.fail(
                    _key_line(item, "id") or line,
                    f"invalid case id {case_id!r} in {label}: use letters, digits, '.', '_' and '-' only",
                )
        self.check_keys(item, _CASE_KEYS, f"in {label}")
        for key in ("id", "prompt", "expectation"):
            if key not in item:
                self.fail(
                    line,
                    f"{label} has no '{key}'. Each case needs id, prompt and expectation ({' | '.join(EXPECTATIONS)})",
                )
        assert case_id is not None
        prompt = item["prompt"]
        if not isinstance(prompt, str):
            raw = _raw(item, "prompt")
            if raw is None:
                self.fail(
                    _key_line(item, "prompt") or line,
                    f"the prompt of {label} must be a string, got {_describe(prompt)}. Write it as quoted text",
                )
            prompt = raw
        if not prompt.strip():
            self.fail(_key_line(item, "prompt") or line, f"the prompt of {label} is empty. Fill it in")
        expectation = item["expectation"]
        if expectation not in EXPECTATIONS:
            shown = expectation if isinstance(expectation, str) else _raw(item, "expectation") or expectation
            hint = did_you_mean(str(shown).lower(), EXPECTATIONS) if isinstance(shown, str) else ""
            self.fail(
                _key_line(item, "expectation") or line,
                f"unknown expectation {_short(shown)} in {label}.{hint} Allowed: {', '.join(EXPECTATIONS)}",
            )
        tags = self.strings(item, "tags", "tags", f"in {label}", "tags: [VM]")
        mitigate = item.get("mitigate", False)
        if mitigate is None:
            mitigate = False
        if not isinstance(mitigate, bool) and mitigate != MITIGATE_COPY:
            hint = did_you_mean(mitigate.strip().lower(), _MITIGATE_WORDS) if isinstance(mitigate, str) else ""
            self.fail(
                _key_line(item, "mitigate") or line,
                f"'mitigate' in {label} must be true, false or copy, got {_short(mitigate)}.{hint}",
            )
        images = self.strings(item, "images", "images", f"in {label}", "images: [train/0001.png]")
        for text in images:
            path = Path(text)
            if not path.is_absolute():
                if self.path is None:
                    self.fail(
                        _key_line(item, "images") or line,
                        f"image {text!r} of {label} is a relative path, but this suite has no file to be relative "
                        "to. Give absolute paths, or load the suite from a file",
                    )
                path = self.path.parent / path
            if not path.is_file():
                self.fail(
                    _key_line(item, "images") or line,
                    f"image {text!r} of {label} is not a file ({path}). Paths are relative to the suite file's "
                    "folder, or absolute; fix the path or remove the entry",
                )
        return SuiteCase(
            id=case_id,
            prompt=prompt,
            expectation=cast(Expectation, expectation),
            tags=tags,
            mitigate=cast(Mitigate, mitigate),
            images=images,
            line=line or 0,
        )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _located(source: str, line: int | None, message: str) -> str:
    message = message[:1].upper() + message[1:]
    if not message.endswith((".", "?", "!")):
        message += "."
    return f"{source}, line {line}: {message}" if line else f"{source}: {message}"


def _line(value: object) -> int | None:
    return value.line if isinstance(value, (_Map, _Seq)) else None


def _key_line(mapping: object, key: str) -> int | None:
    return mapping.key_lines.get(key) if isinstance(mapping, _Map) else None


def _item_line(seq: object, index: int) -> int | None:
    return seq.item_lines[index] if isinstance(seq, _Seq) and index < len(seq.item_lines) else None


def _raw(mapping: object, key: str) -> str | None:
    return mapping.raw.get(key) if isinstance(mapping, _Map) else None


def _describe(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _short(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ from suite_from_dict input
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _peek_name(file: Path) -> str | None:
    """The suite name from a top-level `name:` line near the top of the file, without parsing it all."""
    try:
        with file.open("rb") as handle:
            head = handle.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in head.splitlines()[:_HEAD_LINES]:
        match = _NAME_LINE_RE.match(line)
        if match:
            return match.group(2)
    return None


# --- YAML output ---------------------------------------------------------------------------------

_PLAIN_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_YAML_KEYWORDS: Final = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
# Characters that a double-quoted YAML scalar must escape: the quote and backslash, anything outside
# YAML's printable set, YAML line breaks, the byte-order mark and surrogates.
_ESCAPE_RE: Final = re.compile('[\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]')
_NAMED_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\x00": "\\0"}
_BLOCK_UNSAFE_RE: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _dq(text: str) -> str:
    """A double-quoted YAML scalar for any string."""
    return '"' + _ESCAPE_RE.sub(_escape, text) + '"'


def _scalar(text: str) -> str:
    """Plain when that reads back as the same string, else double-quoted."""
    if _PLAIN_RE.fullmatch(text) and text.lower() not in _YAML_KEYWORDS:
        return text
    return _dq(text)


def _text_block(text: str, indent: int) -> str:
    """Multi-line text as a literal block (readable licences), when that reads back exactly."""
    lines = text.split("\n")
    if (
        len(lines) < 2
        or text[0] in " \n"
        or text.endswith("\n\n")
        or _BLOCK_UNSAFE_RE.search(text)
        or any(line != line.rstrip(" ") for line in lines)
    ):
        return _dq(text)
    chomp = "" if text.endswith("\n") else "-"
    body = lines[:-1] if text.endswith("\n") else lines
    pad = " " * indent
    return f"|{chomp}\n" + "\n".join(pad + line if line else "" for line in body)


def _value(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, sep, exponent = text.partition("e")
        if sep and "." not in mantissa:  # PyYAML (YAML 1.1) only reads 1.0e-05 as a float, not 1e-05
            text = f"{mantissa}.0e{exponent}"
        return text
    return _scalar(value)
