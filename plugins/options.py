"""memtest's command-line options and ini settings, and how they combine (CLI > ini > default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from memtest.audit.options import OPTIONS, Option, config_from_values

if TYPE_CHECKING:
    from memtest.audit import AuditConfig


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("memtest", "memorization audit of diffusion checkpoints")
    group.addoption(
        "--memtest",
        action="store_true",
        dest="memtest",
        default=False,
        help="run the memtest audit (prompt suites as tests)",
    )
    # Not in optspec: it shapes pytest's failure output, so `memtest audit` has no use for it.
    group.addoption(
        "--memtest-traceback",
        action="store_true",
        dest="memtest_traceback",
        default=False,
        help="show the full traceback (with diffusers'/torch's frames) of memtest errors, not just their message "
        "and fix (pytest's --full-trace does too)",
    )
    for opt in OPTIONS:
        if opt.action == "store_true":
            group.addoption(opt.flag, action="store_true", dest=opt.dest, default=None, help=opt.help)
        elif opt.action == "append":
            group.addoption(opt.flag, action="append", dest=opt.dest, default=None, help=opt.help)
        else:
            group.addoption(opt.flag, action="store", dest=opt.dest, default=None, type=opt.type, help=opt.help)
        if opt.ini:
            if opt.action == "store_true":
                parser.addini(opt.dest, opt.help, type="bool", default=None)
            elif opt.action == "append":
                parser.addini(opt.dest, opt.help, type="linelist", default=None)
            else:
                parser.addini(opt.dest, opt.help, type="string", default=None)


def _value(config: pytest.Config, opt: Option) -> Any:
    """CLI first, then ini, else None."""
    cli = config.getoption(opt.dest, None)
    if cli is not None:
        return cli
    if not opt.ini:
        return None
    raw = config.getini(opt.dest)
    if raw is None or raw == "" or raw == []:
        return None
    if opt.action == "store_true":
        return bool(raw)
    if opt.action == "append":
        return list(raw)
    assert opt.type is not None
    try:
        return opt.type(str(raw).strip())
    except ValueError:
        raise pytest.UsageError(
            f"ini setting {opt.dest} = {raw!r} is not a valid {opt.type.__name__}; fix it in your ini file."
        ) from None


def read_config(config: pytest.Config) -> AuditConfig:
    """The effective AuditConfig of this run; bad values are usage errors naming the option."""
    from memtest.errors import MemtestError

    try:
        return config_from_values({opt.dest: _value(config, opt) for opt in OPTIONS})  # type: ignore[no-any-return]
    except MemtestError as exc:
        raise pytest.UsageError(str(exc)) from None


def output_paths(config: pytest.Config) -> tuple[str | None, str | None]:
    json_path = _value(config, next(o for o in OPTIONS if o.dest == "memtest_json"))
    report_path = _value(config, next(o for o in OPTIONS if o.dest == "memtest_report"))
    return json_path, report_path
