"""The plugin's spelling of memtest's options (`--memtest-NAME`, ini `memtest_NAME`), how they combine
(command line > ini > default), and the command that reruns one case."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Literal

import pytest

from memtest.audit import OPTIONS, AuditConfig, Option, config_from_values  # light: no numpy, yaml or torch
from memtest.errors import MemtestError

if TYPE_CHECKING:
    from memtest.audit import AuditCase

PREFIX = "memtest"
_OPTION_NAMES = {o.name for o in OPTIONS}
_KINDS = {o.name: o.kind for o in OPTIONS}


def flag(name: str) -> str:
    """The pytest flag of option `name`: `--memtest-NAME` (dashes for underscores)."""
    return f"--{PREFIX}-{name.replace('_', '-')}"


def dest(name: str) -> str:
    """The option's pytest dest and ini key: `memtest_NAME`."""
    return f"{PREFIX}_{name}"


def spell(name: str, value: str | None) -> str:
    """How the plugin names an option in a message (memtest.errors.render_options)."""
    if name not in _OPTION_NAMES:
        return f"`{name}`" if value is None else f"`{name}={value}`"
    if value is None or _KINDS[name] == "flag":  # an on/off option takes no value on a command line
        return flag(name)
    return f"{flag(name)}={value}"


def message(exc: MemtestError) -> str:
    """A memtest error's message with the options spelled as the plugin's flags."""
    return exc.render(spell)


def usage_error(exc: MemtestError) -> pytest.UsageError:
    return pytest.UsageError(message(exc))


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("memtest", "memorization audit of diffusion checkpoints")
    group.addoption(
        "--memtest",
        action="store_true",
        dest="memtest",
        default=False,
        help="run the memtest audit (prompt suites as tests)",
    )
    # Not in the option table: it shapes pytest's failure output, so `memtest audit` has no use for it.
    group.addoption(
        "--memtest-traceback",
        action="store_true",
        dest="memtest_traceback",
        default=False,
        help="show the full traceback (with diffusers'/torch's frames) of memtest errors, not just their message "
        "and fix (pytest's --full-trace does too)",
    )
    for opt in OPTIONS:
        if opt.kind == "flag":
            group.addoption(flag(opt.name), action="store_true", dest=dest(opt.name), default=None, help=opt.help)
        elif opt.kind == "list":
            group.addoption(flag(opt.name), action="append", dest=dest(opt.name), default=None, help=opt.help)
        else:
            group.addoption(
                flag(opt.name), action="store", dest=dest(opt.name), default=None, type=opt.type, help=opt.help
            )
        if opt.ini:
            ini_type: Literal["bool", "linelist", "string"] = (
                "bool" if opt.kind == "flag" else "linelist" if opt.kind == "list" else "string"
            )
            parser.addini(dest(opt.name), opt.help, type=ini_type, default=None)


def value(config: pytest.Config, opt: Option) -> Any:
    """CLI first, then ini, else None."""
    cli = config.getoption(dest(opt.name), None)
    if cli is not None:
        return cli
    if not opt.ini:
        return None
    raw = config.getini(dest(opt.name))
    if raw is None or raw == "" or raw == []:
        return None
    if opt.kind == "flag":
        return bool(raw)
    if opt.kind == "list":
        return list(raw)
    try:
        return opt.type(str(raw).strip())
    except ValueError:
        raise pytest.UsageError(
            f"ini setting {dest(opt.name)} = {raw!r} is not a valid {opt.type.__name__}; fix it in your ini file."
        ) from None


def read_config(config: pytest.Config) -> AuditConfig:
    """The effective AuditConfig of this run; bad values are usage errors naming the option's flag."""
    worker = str(getattr(config, "workerinput", {}).get("workerid", ""))
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None
    try:
        return config_from_values({opt.name: value(config, opt) for opt in OPTIONS}, worker_index=index)
    except MemtestError as exc:
        raise usage_error(exc) from None


def output_paths(config: pytest.Config) -> tuple[str | None, str | None]:
    by_name = {o.name: o for o in OPTIONS}
    return value(config, by_name["json"]), value(config, by_name["report"])


def reproduce_command(config: AuditConfig, case: AuditCase) -> str:
    """A pytest command that re-runs exactly this case with the same settings.

    It names every setting that changes the case's score or verdict: the checkpoint (and the config folder a
    single-file checkpoint loads with) and each LoRA
    adapter (PATH[:SCALE], in order) with allow_pickle when it was needed to load them, the
    case's suite, metric, method, n and seed (always, so an ini file cannot change them), steps,
    flow steps, the metric's variant and gamma, dtype, device and torch threads where not the default
    (threads and device can change a score's last bits), the calibration and accept_base_calibration
    (the verdict), fpr where not the default, calibrate when calibrating and the mitigation step budget (the `-k`
    selection also runs the case's `[mitigate]` item). Left out: batch_size (never changes a score, see
    `ScoreSettings`), the results cache (keyed by every setting that does), the shard (the `-k` selection
    replaces it) and output files. `per_prompt_seeds` has no option, so it cannot be named.
    """
    d = AuditConfig()
    s = config.score

    def opt(name: str, v: object = None) -> str:
        return flag(name) if v is None else f"{flag(name)}={v}"

    parts = ["pytest", "--memtest", opt("checkpoint", config.checkpoint)]
    if config.config:
        parts.append(opt("config", config.config))
    parts += [opt("lora", lora) for lora in config.loras]
    if config.allow_pickle:
        parts.append(opt("allow_pickle"))
    parts.append(opt("suite", case.source or case.suite))
    parts += [opt("metric", s.metric), opt("method", s.method), opt("n", s.n), opt("seed", s.seed)]
    if s.steps != d.score.steps:
        parts.append(opt("steps", s.steps))
    if s.flow_steps is not None:
        parts.append(opt("flow_steps", s.flow_steps))
    if s.variant is not None:
        parts.append(opt("variant", s.variant))
    if s.gamma is not None:
        parts.append(opt("gamma", ",".join(repr(float(g)) for g in s.gamma)))
    if config.dtype:
        parts.append(opt("dtype", config.dtype))
    if config.device:
        parts.append(opt("device", config.device))
    if config.threads is not None:
        parts.append(opt("threads", config.threads))
    if config.calibrate:
        parts.append(opt("calibrate"))
    if config.calibration:
        parts.append(opt("calibration", config.calibration))
    if config.accept_base_calibration:
        parts.append(opt("accept_base_calibration"))
    if config.fpr != d.fpr:
        parts.append(opt("fpr", repr(config.fpr)))
    if config.mitigation_steps != d.mitigation_steps:
        parts.append(opt("mitigation_steps", config.mitigation_steps))
    if config.mitigation_method != d.mitigation_method:
        parts.append(opt("mitigation_method", config.mitigation_method))
    parts += ["-k", case.case_id]
    return shlex.join(parts)
