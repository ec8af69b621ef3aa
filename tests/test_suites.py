"""Prompt suites: the YAML format, its error messages, the built-in suites, and fuzzing of the loader."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import memtest.audit.suites as suites_module
from memtest.audit.suites import (
    EXPECTATIONS,
    MITIGATE_COPY,
    Mitigate,
    Suite,
    SuiteCard,
    SuiteCase,
    builtin_suites,
    dump_suite,
    is_suite_file,
    load_suite,
    resolve_suite,
    suite_from_dict,
)
from memtest.errors import SuiteError

REPO = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = Path("/work/shared/data/prompts")
MITIGATES: tuple[Mitigate, ...] = (False, True, MITIGATE_COPY)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BUILTIN = {
    # name: (cases, expectation)
    "sd1-memorized": (500, "memorized"),
    "sd1-unmemorized": (500, "clean"),
    "sd2-memorized": (219, "memorized"),
    "sd1-memorized-345": (345, "memorized"),
    "generic-nonmemorized": (500, "clean"),
    "coco-10k": (10000, "reference"),
}

VALID = """\
memtest_suite: 1
name: tiny
version: "1.0"
card:
  description: A tiny suite for tests.
  provenance: written by hand
  licence: CC0
  caveats: [none]
cases:
  - id: a
    prompt: "a photo of a cat"
    expectation: clean
  - id: b
    prompt: "The No Limits Business Woman Podcast"
    expectation: memorized
    tags: [VM]
    mitigate: true
"""


def valid_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALID)
    return data


def write(tmp_path: Path, text: str | bytes, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of `text` that contains `needle`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def error_of(tmp_path: Path, text: str | bytes) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------------------------------
# Built-in suites
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_builtins() -> dict[str, Suite]:
    return {name: load_suite(path) for name, path in builtin_suites().items() if name in BUILTIN}


def test_builtin_suites_are_all_there() -> None:
    found = builtin_suites()
    assert set(BUILTIN) <= set(found)
    for name, path in found.items():
        assert path.name == f"{name}.yaml"
        assert path.parent == REPO / "suites"
    assert (REPO / "suites" / "PROVENANCE.md").is_file()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_suite_counts_and_card(name: str, loaded_builtins: dict[str, Suite]) -> None:
    suite = loaded_builtins[name]
    count, expectation = BUILTIN[name]
    assert suite.name == name
    assert suite.version == "1.0"
    assert len(suite.cases) == count
    assert len(suite.by_expectation(expectation)) == count
    assert len({case.id for case in suite.cases}) == count
    assert all(case.prompt and case.prompt == case.prompt.strip() for case in suite.cases)
    card = suite.card
    assert "@ " in card.provenance and len(card.provenance.split("@ ")[1].split(",")[0]) == 40  # commit
    assert "Permission is hereby granted, free of charge" in card.licence
    assert card.caveats
    if expectation == "memorized":
        text = " ".join(card.caveats)
        assert "candidate prompts, not ground truth" in text
        assert "noisy" in text
    if expectation == "reference":
        assert suite.references() == suite.cases
        assert "CC BY 4.0" in card.licence


def test_builtin_tags_and_ids(loaded_builtins: dict[str, Suite]) -> None:
    mem = loaded_builtins["sd1-memorized"]
    assert mem.cases[0].id == "sd1-mem-0001"
    assert mem.cases[-1].id == "sd1-mem-0500"
    tags = [case.tags for case in mem.cases]
    assert tags.count(("VM",)) == 112 and tags.count(("TM",)) == 388
    assert "VM rows are the reliable positives" in " ".join(mem.card.caveats)
    # The 345 subset carries the VM/TM tag of the same prompt in the 500 list.
    by_prompt = {case.prompt: case.tags for case in mem.cases}
    subset = loaded_builtins["sd1-memorized-345"]
    assert all(by_prompt[case.prompt] == case.tags for case in subset.cases)
    assert loaded_builtins["coco-10k"].cases[-1].id == "coco-10000"
    assert all(not case.mitigate for suite in loaded_builtins.values() for case in suite.cases)


def test_builtin_prompts_survive_exactly(loaded_builtins: dict[str, Suite]) -> None:
    mem = loaded_builtins["sd1-memorized"]
    # A caption with its own CSV-style quotes, decoded once (as the list authors' code reads it).
    assert mem.cases[3].prompt == '"Watch: Passion Pit\'s New Video, ""Lifted Up (1985)"""'
    assert loaded_builtins["sd1-memorized-345"].cases[3].prompt == mem.cases[3].prompt
    assert any(not case.prompt.isascii() for case in mem.cases)
    assert any('"' in case.prompt for case in loaded_builtins["coco-10k"].cases)
    assert loaded_builtins["generic-nonmemorized"].cases[0].prompt == "A serene beach at sunrise"


def test_builtin_case_lines_point_at_the_case(loaded_builtins: dict[str, Suite]) -> None:
    suite = loaded_builtins["sd2-memorized"]
    assert suite.path is not None
    lines = suite.path.read_text(encoding="utf-8").splitlines()
    for case in (suite.cases[0], suite.cases[100], suite.cases[-1]):
        assert lines[case.line - 1] == f"  - id: {case.id}"


@pytest.mark.skipif(not SHARED_PROMPTS.is_dir(), reason="the source prompt lists exist on dev machines only")
def test_committed_suites_match_the_source_lists(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_suites.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_builtin_suites_pick_up_any_yaml_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = VALID.replace("name: tiny", "name: canary-tiny")
    write(tmp_path, "# generated elsewhere\n" + canary, "canary-tiny.yaml")
    # No `name:` line near the top: found by parsing the whole file.
    late_name = valid_dict()
    late_name["name"] = "late"
    text = yaml.safe_dump({"memtest_suite": 1, **{k: v for k, v in late_name.items() if k != "name"}})
    write(tmp_path, text + "name: late\n", "late.yaml")
    write(tmp_path, "not a suite", "notes.md")
    monkeypatch.setattr(suites_module, "data_dir", lambda name: tmp_path)
    found = builtin_suites()
    assert found == {"canary-tiny": tmp_path / "canary-tiny.yaml", "late": tmp_path / "late.yaml"}
    assert resolve_suite("canary-tiny").name == "canary-tiny"

    write(tmp_path, canary, "another.yaml")
    with pytest.raises(SuiteError, match="both named 'canary-tiny'"):
        builtin_suites()


def test_suites_module_imports_neither_torch_nor_pytest() -> None:
    code = (
        "import sys, memtest.audit.suites\n"
        "memtest.audit.suites.builtin_suites()\n"
        "print(sorted(m for m in ('torch', 'pytest', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_uses_the_c_loader_when_available() -> None:
    if getattr(yaml, "__with_libyaml__", False):
        assert suites_module._Loader is yaml.CSafeLoader
    assert suites_module._Loader in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", None))


def test_pure_python_loader_gives_the_same_suite_and_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, VALID)
    fast = load_suite(path)
    bad = VALID.replace('    prompt: "a photo', '    promt: "a photo')
    fast_error = error_of(tmp_path, bad)
    monkeypatch.setattr(suites_module, "_Loader", yaml.SafeLoader)
    write(tmp_path, VALID)
    slow = load_suite(path)
    assert slow == fast
    assert [case.line for case in slow.cases] == [case.line for case in fast.cases]
    assert error_of(tmp_path, bad) == fast_error


# --------------------------------------------------------------------------------------------------
# Model and round trip
# --------------------------------------------------------------------------------------------------


def test_valid_suite_fields(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, VALID))
    assert suite.name == "tiny" and suite.version == "1.0"
    assert suite.card == SuiteCard("A tiny suite for tests.", "written by hand", "CC0", ("none",))
    assert suite.defaults == {}
    assert suite.cases == (
        SuiteCase("a", "a photo of a cat", "clean"),
        SuiteCase("b", "The No Limits Business Woman Podcast", "memorized", ("VM",), True),
    )
    assert [case.line for case in suite.cases] == [line_of(VALID, "id: a"), line_of(VALID, "id: b")]
    assert suite.path == tmp_path / "suite.yaml"
    assert [case.id for case in suite.by_expectation("memorized")] == ["b"]
    assert suite.references() == ()
    with pytest.raises(SuiteError, match="Did you mean 'memorized'"):
        suite.by_expectation("memorised")


@pytest.mark.parametrize("written", ["copy", '"copy"', "'copy'"])
def test_mitigate_copy_parses_and_round_trips(tmp_path: Path, written: str) -> None:
    """`mitigate: copy` (the copy must leave, docs/mitigation.md) is kept as the string "copy", distinct from
    true, and the writer emits it back."""
    text = VALID.replace("mitigate: true", f"mitigate: {written}")
    suite = load_suite(write(tmp_path, text))
    assert suite.cases[1].mitigate == MITIGATE_COPY == "copy"
    assert suite.cases[0].mitigate is False
    assert suite != load_suite(write(tmp_path, VALID, "true.yaml"))  # copy is not true
    dumped = dump_suite(suite)
    assert "    mitigate: copy\n" in dumped and "mitigate: true" not in dumped
    again = load_suite(write(tmp_path, dumped, "again.yaml"))
    assert again == suite and dump_suite(again) == dumped
    data = valid_dict()
    data["cases"][1]["mitigate"] = "copy"
    assert suite_from_dict(data) == suite
    data["cases"][1]["mitigate"] = "yes please"
    with pytest.raises(SuiteError) as info:
        suite_from_dict(data, source="my-generator")
    assert str(info.value) == "my-generator: 'mitigate' in case 'b' must be true, false or copy, got 'yes please'."


def test_unquoted_scalars_in_text_fields_are_taken_as_written(tmp_path: Path) -> None:
    text = VALID.replace('version: "1.0"', "version: 1.10").replace("id: a", "id: 0001")
    text = text.replace('prompt: "a photo of a cat"', "prompt: no").replace("tags: [VM]", "tags: [2023, on]")
    suite = load_suite(write(tmp_path, text))
    assert suite.version == "1.10"
    assert suite.cases[0].id == "0001"
    assert suite.cases[0].prompt == "no"
    assert suite.cases[1].tags == ("2023", "on")


def test_defaults_are_validated_and_kept(tmp_path: Path) -> None:
    text = VALID.replace(
        "cases:", "defaults:\n  metric: sharpness\n  n: 4\n  seed: 0\n  fpr: 0.01\n  method: x\ncases:", 1
    )
    suite = load_suite(write(tmp_path, text))
    assert suite.defaults == {"metric": "sharpness", "method": "x", "n": 4, "seed": 0, "fpr": 0.01}
    assert load_suite(write(tmp_path, dump_suite(suite))) == suite


@pytest.mark.parametrize("name", ["sd1-memorized", "sd2-memorized", "generic-nonmemorized"])
def test_builtin_round_trip(name: str, loaded_builtins: dict[str, Suite], tmp_path: Path) -> None:
    suite = loaded_builtins[name]
    text = dump_suite(suite)
    again = load_suite(write(tmp_path, text))
    assert again == suite
    assert again.card.licence == suite.card.licence
    assert "  licence: |" in text  # the licence stays readable
    assert dump_suite(again) == text


def test_round_trip_of_awkward_strings(tmp_path: Path) -> None:
    awkward = [
        "  leading and trailing spaces  ",
        "quotes ' and \" and \\ backslash",
        "yes",
        "null",
        "- looks like a list",
        "key: value # not a comment",
        "tab\tand newline\nand CR\r and NEL\x85 and LS\u2028 and BOM\ufeff",
        "unicode 小红花 🎨 é",
        "&anchor *alias !tag %directive @at `tick`",
        "\x00\x07\x1b control",
    ]
    cases = tuple(SuiteCase(f"c{i}", text, "clean", (text, "plain-tag")) for i, text in enumerate(awkward))
    card = SuiteCard(
        description="line one\nline two\n",
        provenance="no final newline\nsecond",
        licence="  starts with spaces\nand ends with two newlines\n\n",
        caveats=("multi\nline", "trailing space \nhere"),
    )
    suite = Suite("awkward", "0.1-beta", card, {"fpr": 1e-05, "n": 3, "metric": "yes"}, cases)
    again = load_suite(write(tmp_path, dump_suite(suite)))
    assert again == suite
    assert again.defaults["fpr"] == 1e-05 and isinstance(again.defaults["fpr"], float)
    assert [case.prompt for case in again.cases] == awkward


# --------------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------------


def test_error_nonexistent_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(SuiteError, match="does not exist") as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_error_directory_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="is a directory"):
        load_suite(tmp_path)
    blocker = write(tmp_path, "x", "file")
    with pytest.raises(SuiteError, match="Cannot read suite file") as info:
        load_suite(blocker / "suite.yaml")  # a path through a regular file
    assert str(blocker / "suite.yaml") in str(info.value)


def test_error_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = VALID.replace("    expectation: clean", "    expectation: [clean")
    message = error_of(tmp_path, text)
    start = line_of(text, "expectation: [clean")
    assert f"line {start + 1}: Invalid YAML (while parsing a flow sequence that starts on line {start};" in message
    text = VALID.replace('prompt: "a photo of a cat"', "prompt: a cat: sitting")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'a cat: sitting')}: Invalid YAML (mapping values are not allowed" in message
    assert "quote prompts that contain ': '" in message
    message = error_of(tmp_path, 'memtest_suite: 1\nname: "unterminated\n')
    assert "Invalid YAML" in message and "starts on line 2" in message


def test_error_non_utf8(tmp_path: Path) -> None:
    data = VALID.replace("a photo of a cat", "caf\x00").encode("utf-8").replace(b"caf\x00", b"caf\xe9")
    message = error_of(tmp_path, data)
    assert "not valid UTF-8" in message
    assert f"line {line_of(VALID, 'a photo of a cat')}" in message
    assert "0xe9" in message and "Save the file with UTF-8" in message


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    assert load_suite(write(tmp_path, b"\xef\xbb\xbf" + VALID.encode())).name == "tiny"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "The file is empty"),
        ("# only a comment\n", "The file is empty"),
        ("- a\n- b\n", "The top level must be a mapping"),
        ("just text\n", "The top level must be a mapping"),
        ("name: x\ncases: []\n", "Missing the key 'memtest_suite'"),
        ("--- {memtest_suite: 1}\n--- {}\n", "Invalid YAML"),
    ],
)
def test_error_top_level_shape(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_error_unsupported_format_version(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID.replace("memtest_suite: 1", "memtest_suite: 2"))
    assert "line 1:" in message
    assert "Unsupported suite format memtest_suite: 2" in message
    assert "reads format versions 1" in message and "memtest_suite: 1" in message
    message = error_of(tmp_path, VALID.replace("memtest_suite: 1", "memtest_suite: true"))
    assert "memtest_suite: true" in message


def test_error_unknown_and_missing_top_level_keys(tmp_path: Path) -> None:
    text = VALID.replace("name: tiny", "nmae: tiny")
    message = error_of(tmp_path, text)
    assert "line 2:" in message
    assert "Unknown key 'nmae' at the top level. Did you mean 'name'?" in message
    assert "Allowed: memtest_suite, name, version, card, defaults, cases" in message
    message = error_of(tmp_path, VALID.replace('version: "1.0"\n', ""))
    assert "Missing top-level key 'version'" in message


@pytest.mark.parametrize(("bad", "suggestion"), [("SD1 Memorized", "sd1-memorized"), ("-x", "x"), ("Ä", "my-suite")])
def test_error_bad_name(tmp_path: Path, bad: str, suggestion: str) -> None:
    message = error_of(tmp_path, VALID.replace("name: tiny", f'name: "{bad}"'))
    assert "line 2:" in message and "Invalid suite name" in message
    assert f"Did you mean '{suggestion}'?" in message


def test_error_unknown_key_in_case_names_its_line(tmp_path: Path) -> None:
    text = VALID.replace('    prompt: "The No Limits', '    promt: "The No Limits')
    message = error_of(tmp_path, text)
    line = line_of(text, "promt:")
    assert f"line {line}: Unknown key 'promt' in case 'b'. Did you mean 'prompt'?" in message
    assert "Allowed: id, prompt, expectation, tags, mitigate, images." in message


def test_error_duplicate_case_ids(tmp_path: Path) -> None:
    text = VALID.replace("id: b", "id: a")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'The No Limits') - 1}: Duplicate case id 'a'" in message
    assert f"first used on line {line_of(VALID, 'id: a')}" in message
    assert "must be unique" in message


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ('prompt: ""', "The prompt of case 'a' is empty"),
        ('prompt: "   "', "The prompt of case 'a' is empty"),
        ("prompt:", "The prompt of case 'a' must be a string, got nothing"),
        ("prompt: [a, b]", "The prompt of case 'a' must be a string, got a list"),
        ("prompt: {a: b}", "The prompt of case 'a' must be a string, got a mapping"),
    ],
)
def test_error_bad_prompt(tmp_path: Path, replacement: str, expected: str) -> None:
    text = VALID.replace('prompt: "a photo of a cat"', replacement)
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, replacement)}: {expected}" in message


def test_error_missing_prompt(tmp_path: Path) -> None:
    text = VALID.replace('    prompt: "a photo of a cat"\n', "")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'id: a')}: Case 'a' has no 'prompt'" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("memorised", "Did you mean 'memorized'?"),
        ("Clean", "Did you mean 'clean'?"),
        ("refrence", "Did you mean 'reference'?"),
        ("42", "Unknown expectation '42'"),
        ("[clean]", "Unknown expectation ['clean']"),
    ],
)
def test_error_unknown_expectation(tmp_path: Path, value: str, expected: str) -> None:
    text = VALID.replace("expectation: clean", f"expectation: {value}")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'expectation: ' + value)}:" in message
    assert expected in message and "Allowed: clean, memorized, reference" in message


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        (
            "tags: VM",
            "Tags in case 'b' must be a list of strings, got the string 'VM'. Write e.g. tags: [VM]",
        ),
        ("tags: [[VM]]", "Item 1 of tags in case 'b' must be a string, got a list"),
        ("tags: [VM, '']", "Item 2 of tags in case 'b' is empty"),
        ("tags: [VM, ~]", "Item 2 of tags in case 'b' must be a string, got nothing"),
        ("mitigate: 'yes'", "'mitigate' in case 'b' must be true, false or copy, got 'yes'"),
        ("mitigate: 1", "'mitigate' in case 'b' must be true, false or copy, got 1"),
        ("mitigate: yes please", "'mitigate' in case 'b' must be true, false or copy, got 'yes please'."),
        ("mitigate: Copy", "'mitigate' in case 'b' must be true, false or copy, got 'Copy'. Did you mean 'copy'?"),
        ("mitigate: [copy]", "'mitigate' in case 'b' must be true, false or copy, got ['copy']"),
    ],
)
def test_error_bad_tags_and_mitigate(tmp_path: Path, replacement: str, expected: str) -> None:
    key = replacement.split(":")[0]
    original = "tags: [VM]" if key == "tags" else "mitigate: true"
    text = VALID.replace(original, replacement)
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, replacement)}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("cases: []", "The suite has no cases. Add at least one"),
        ("cases:", "'cases' must be a list of cases, got nothing"),
        ("cases: {a: 1}", "'cases' must be a list of cases, got a mapping"),
    ],
)
def test_error_no_cases(tmp_path: Path, replacement: str, expected: str) -> None:
    text = VALID.split("cases:")[0] + replacement + "\n"
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, replacement)}: {expected}" in message


def test_error_case_not_a_mapping_and_bad_id(tmp_path: Path) -> None:
    text = VALID.replace("cases:\n", "cases:\n  - just a prompt\n")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'just a prompt')}: Case #1 must be a mapping" in message
    text = VALID.replace("id: b", 'id: "b c"')
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'id: ')}" not in message  # the line of the bad id, not of case a
    assert f"line {line_of(text, 'b c')}: Invalid case id 'b c' in case #2" in message


def test_error_duplicate_yaml_key(tmp_path: Path) -> None:
    text = VALID.replace("    expectation: clean\n", "    expectation: clean\n    expectation: memorized\n")
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'expectation: memorized')}: Duplicate key 'expectation'" in message
    assert f"first on line {line_of(text, 'expectation: clean')}" in message


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ("{metrc: x}", "Unknown key 'metrc' in defaults. Did you mean 'metric'?"),
        ("{n: 0}", "The setting defaults.n must be a whole number >= 1, got 0"),
        ("{n: true}", "The setting defaults.n must be a whole number >= 1, got True"),
        ("{seed: -1}", "The setting defaults.seed must be a whole number >= 0"),
        ("{fpr: 1.5}", "The setting defaults.fpr must be a number between 0 and 1"),
        ("{fpr: .nan}", "The setting defaults.fpr must be a number between 0 and 1"),
        ("{metric: ''}", "The setting defaults.metric must be a non-empty string"),
        ("[n, 4]", "'defaults' must be a mapping of scoring settings"),
    ],
)
def test_error_bad_defaults(tmp_path: Path, defaults: str, expected: str) -> None:
    text = VALID.replace("cases:", f"defaults: {defaults}\ncases:", 1)
    message = error_of(tmp_path, text)
    assert f"line {line_of(text, 'defaults:')}: {expected}" in message


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ("card: x", "'card' must be a mapping"),
        ("card:\n  licence: MIT", "The card has no 'description'"),
        (
            "card: {description: x, license: MIT}",
            "Unknown key 'license' in the card. Did you mean 'licence'?",
        ),
        ("card: {description: x, caveats: oops}", "Caveats in the card must be a list of strings"),
        ("card: {description: ''}", "The card description is empty"),
    ],
)
def test_error_bad_card(tmp_path: Path, card: str, expected: str) -> None:
    head, _, tail = VALID.partition("card:")
    text = head + card + "\ncases:" + tail.split("cases:", 1)[1]
    assert expected in error_of(tmp_path, text)


def test_error_yaml_tricks_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    assert "line 1" in error_of(tmp_path, text)
    assert not marker.exists()
    message = error_of(tmp_path, VALID.replace("mitigate: true", "mitigate: !!python/name:os.system"))
    assert "Quote it or remove the YAML tag" in message
    assert "collection that contains it" in error_of(tmp_path, VALID.split("cases:")[0] + "cases: &c [*c]\n")
    assert "nested more than" in error_of(tmp_path, VALID.split("cases:")[0] + "cases: " + "[" * 80 + "]" * 80)
    assert "A mapping key must be plain text" in error_of(tmp_path, "? [a, b]\n: c\n")
    assert "Cannot read the value" in error_of(tmp_path, "memtest_suite: " + "9" * 5000 + "\n")


def test_alias_bomb_stays_cheap(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 leaves
    text = "\n".join(lines) + "\n" + VALID.replace("memtest_suite: 1\n", "")
    message = error_of(tmp_path, "memtest_suite: 1\n" + text)
    assert "Unknown key 'a0' at the top level" in message


def test_suite_from_dict_validates_the_same_way() -> None:
    assert suite_from_dict(valid_dict()).cases[1].tags == ("VM",)
    data = valid_dict()
    data["cases"][0]["promt"] = data["cases"][0].pop("prompt")
    with pytest.raises(SuiteError) as info:
        suite_from_dict(data, source="my-generator")
    assert str(info.value).startswith("my-generator: Unknown key 'promt' in case 'a'. Did you mean 'prompt'?")
    data = valid_dict()
    data["version"] = 1.0  # no source text to keep, so a real string is needed
    with pytest.raises(SuiteError, match=r"must be a string, got the number 1\.0"):
        suite_from_dict(data)
    data = valid_dict()
    data["cases"][1]["id"] = "a"
    with pytest.raises(SuiteError, match="first used by case #1"):
        suite_from_dict(data)
    with pytest.raises(SuiteError, match="Unknown key '3'"):
        suite_from_dict({**valid_dict(), 3: "x"})
    with pytest.raises(SuiteError, match="The top level must be a mapping"):
        suite_from_dict(["not", "a", "mapping"])


# --------------------------------------------------------------------------------------------------
# resolve_suite and is_suite_file
# --------------------------------------------------------------------------------------------------


def test_resolve_suite_by_name_path_and_did_you_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = resolve_suite("sd2-memorized")
    assert suite.name == "sd2-memorized" and suite.path == builtin_suites()["sd2-memorized"]
    with pytest.raises(SuiteError) as info:
        resolve_suite("sd1-memorised")
    message = str(info.value)
    assert message.startswith("Unknown suite 'sd1-memorised'. Did you mean 'sd1-memorized'? Available: ")
    assert "coco-10k" in message and message.endswith("Or pass a path to a suite YAML file.")
    with pytest.raises(SuiteError, match=r"Unknown suite 'zzzz'\. Available: "):
        resolve_suite("zzzz")
    path = write(tmp_path, VALID, "mine.yml")
    assert resolve_suite(path).name == "tiny"
    assert resolve_suite(str(path)).name == "tiny"
    with pytest.raises(SuiteError, match=r"Suite file '.*nope\.yaml' does not exist"):
        resolve_suite(tmp_path / "nope.yaml")
    # An existing file wins over a built-in name; a directory of that name does not.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco-10k").mkdir()
    write(tmp_path, VALID, "sd2-memorized")
    assert resolve_suite("sd2-memorized").name == "tiny"
    with pytest.raises(SuiteError, match="is a directory"):
        resolve_suite(tmp_path)


def test_is_suite_file(tmp_path: Path) -> None:
    assert all(is_suite_file(path) for path in builtin_suites().values())
    assert is_suite_file(write(tmp_path, VALID, "a.yml"))
    assert is_suite_file(write(tmp_path, "# comment\n---\n'memtest_suite' : 1\n", "b.YAML"))
    assert not is_suite_file(write(tmp_path, VALID, "a.txt"))
    assert not is_suite_file(write(tmp_path, "config:\n  memtest_suite: 1\n", "nested.yaml"))
    assert not is_suite_file(write(tmp_path, "#\n" * 30 + VALID, "late.yaml"))
    assert not is_suite_file(write(tmp_path, b"\xff\xfe\x00garbage", "bin.yaml"))
    assert not is_suite_file(tmp_path / "missing.yaml")
    (tmp_path / "dir.yaml").mkdir()
    assert not is_suite_file(tmp_path / "dir.yaml")


# --------------------------------------------------------------------------------------------------
# Property tests: the loader raises SuiteError and nothing else; dump/load round-trips
# --------------------------------------------------------------------------------------------------


def load_or_suite_error(path: Path) -> Suite | None:
    try:
        return load_suite(path)
    except SuiteError as exc:
        assert str(exc).strip()
        assert str(path) in str(exc)
        return None


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    assert load_or_suite_error(write(tmp_path, data)) is None


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), st.binary(max_size=3)), max_size=4))
def test_fuzz_byte_edits_of_a_valid_suite(tmp_path: Path, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(VALID.encode())
    for position, length, insert in edits:
        data[position : position + length] = insert
    suite = load_or_suite_error(write(tmp_path, bytes(data)))
    if suite is not None:
        assert suite.cases and all(case.expectation in EXPECTATIONS for case in suite.cases)


KEYS = st.sampled_from(
    [
        *("memtest_suite", "name", "version", "card", "defaults", "cases", "id", "prompt", "expectation"),
        *("tags", "mitigate", "description", "provenance", "licence", "caveats", "metric", "n", "fpr"),
        *("seed", "promt"),
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["clean", "memorized", "reference", "tiny", "1.0", "a-b", "yes", ""]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8), st.integers()), children, max_size=5),
    ),
    max_leaves=25,
)


@FUZZ
@given(document=DOCUMENTS)
def test_fuzz_yaml_documents(tmp_path: Path, document: object) -> None:
    load_or_suite_error(write(tmp_path, yaml.safe_dump(document, allow_unicode=True)))
    try:
        suite_from_dict(document)
    except SuiteError as exc:
        assert str(exc).startswith("<memory>")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@FUZZ
@given(
    choice=st.integers(0, 10_000),
    action=st.sampled_from(["replace", "delete", "add"]),
    value=DOCUMENTS,
    key=st.one_of(KEYS, st.text(max_size=6)),
)
def test_fuzz_mutations_of_a_valid_suite_dict(tmp_path: Path, choice: int, action: str, value: Any, key: str) -> None:
    data = valid_dict()
    paths = _paths(data)[1:]
    path = paths[choice % len(paths)]
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    if action == "replace":
        parent[path[-1]] = value
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[key] = value
    else:
        parent.append(value)
    snapshot = copy.deepcopy(data)
    results = []
    for attempt in ("dict", "yaml"):
        try:
            if attempt == "dict":
                results.append(suite_from_dict(data))
            else:
                results.append(load_suite(write(tmp_path, yaml.safe_dump(data, allow_unicode=True))))
        except SuiteError as exc:
            assert str(exc)
            results.append(None)
    assert data == snapshot or data != data  # validation never mutates its input (NaN != NaN)
    if results[0] is not None:  # what is valid as Python data is valid, and the same, as YAML
        assert results[1] == results[0]


SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(str.strip)
IDS = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)


@FUZZ
@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True),
    version=SAFE_TEXT,
    card_texts=st.lists(SAFE_TEXT, min_size=3, max_size=3),
    caveats=st.lists(SAFE_TEXT, max_size=3),
    cases=st.lists(
        st.tuples(
            SAFE_TEXT, st.sampled_from(EXPECTATIONS), st.lists(SAFE_TEXT, max_size=3), st.sampled_from(MITIGATES)
        ),
        min_size=1,
        max_size=6,
    ),
    ids=st.lists(IDS, min_size=6, max_size=6, unique=True),
    fpr=st.floats(min_value=1e-300, max_value=0.999999),
)
def test_fuzz_round_trip(
    tmp_path: Path,
    name: str,
    version: str,
    card_texts: list[str],
    caveats: list[str],
    cases: list[tuple[str, Any, list[str], Mitigate]],
    ids: list[str],
    fpr: float,
) -> None:
    assume(0 < fpr < 1)
    suite = Suite(
        name=name,
        version=version,
        card=SuiteCard(card_texts[0], card_texts[1], card_texts[2], tuple(caveats)),
        defaults={"fpr": fpr, "n": 2},
        cases=tuple(
            SuiteCase(case_id, prompt, expectation, tuple(tags), mitigate)
            for case_id, (prompt, expectation, tags, mitigate) in zip(ids, cases, strict=False)
        ),
    )
    text = dump_suite(suite)
    again = load_suite(write(tmp_path, text))
    assert again == suite
    assert dump_suite(again) == text


IMAGES_SUITE = """memtest_suite: 1
name: with-images
version: "1"
card: {description: cases that carry their training images}
cases:
  - id: c1
    prompt: "a cat"
    expectation: clean
    images: [train/a.png, IMAGE_B]
  - id: c2
    prompt: "a dog"
    expectation: memorized
"""


def test_case_images_resolve_against_the_suite_file_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"png")
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(b"png")
    path = write(tmp_path, IMAGES_SUITE.replace("IMAGE_B", str(absolute)))
    suite = load_suite(path)
    c1, c2 = suite.cases
    assert c1.images == ("train/a.png", str(absolute)) and c2.images == ()
    assert c1.image_paths(suite.path) == (tmp_path / "train" / "a.png", absolute)
    again = write(tmp_path, dump_suite(suite), name="again.yaml")
    assert load_suite(again).cases == suite.cases

    from memtest.audit import suite_cases

    (case,) = [c for c in suite_cases(suite, calibrate=False) if c.case_id == "c1"]
    assert case.images == (str(tmp_path / "train" / "a.png"), str(absolute))


def test_a_missing_case_image_names_the_case_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, IMAGES_SUITE.replace("IMAGE_B", "train/missing.png"))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"png")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert "case 'c1'" in message and "train/missing.png" in message and str(path) in message
    assert "relative to the suite file" in message


def test_case_images_must_be_a_list_of_paths_and_relative_ones_need_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, IMAGES_SUITE.replace("images: [train/a.png, IMAGE_B]", "images: train/a.png"))
    with pytest.raises(SuiteError, match=r"Images in case 'c1' must be a list of strings"):
        load_suite(path)
    data = yaml.safe_load(IMAGES_SUITE.replace("IMAGE_B", "b.png"))
    with pytest.raises(SuiteError, match="relative path, but this suite has no file"):
        suite_from_dict(data)
