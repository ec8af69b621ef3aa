"""memtest's command-line options and ini settings, and how they combine (CLI > ini > default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from memtest.defaults import DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT

if TYPE_CHECKING:
    from memtest.audit import AuditConfig


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    type: type | None = str
    ini: bool = True
    action: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "--memtest-checkpoint",
        f"checkpoint folder, zoo:<name> or cached hub id (default {DEFAULT_CHECKPOINT})",
    ),
    Option(
        "--memtest-suite",
        "suite name or YAML path; repeatable (default: the checkpoint's own suite)",
        action="append",
    ),
    Option("--memtest-metric", "sharpness (default) or score_norm"),
    Option("--memtest-method", "Hessian-vector product: fd (default), fd-forward or jvp"),
    Option("--memtest-n", "generations per prompt (default 4)", int),
    Option("--memtest-seed", "base seed of the initial noises (default 0)", int),
    Option("--memtest-steps", "average the metric over the first K sampling steps (default 1)", int),
    Option("--memtest-device", "cpu, cuda or cuda:N (default: cuda if available, else cpu)"),
    Option("--memtest-dtype", "model dtype: float32 (default), float16, bfloat16"),
    Option("--memtest-batch-size", "prompts per batch (default 8)", int),
    Option("--memtest-calibration", "calibration JSON (default: the checkpoint's memtest-calibration.json)"),
    Option(
        "--memtest-calibrate",
        "score reference cases and write the calibration file",
        None,
        ini=False,
        action="store_true",
    ),
    Option("--memtest-fpr", "target false-positive rate of the threshold (default 0.01)", float),
    Option(
        "--memtest-accept-base-calibration",
        "accept a calibration made on another checkpoint (a fine-tune's base); recorded in the results",
        None,
        action="store_true",
    ),
    Option("--memtest-json", "write the results JSON here"),
    Option("--memtest-report", "write the HTML audit report here"),
    Option("--memtest-shard", "run shard i/N of the cases (stable partition)", ini=False),
    Option(
        "--memtest-allow-pickle",
        "allow loading pickle (.bin/.ckpt) weights: only for trusted checkpoints",
        None,
        action="store_true",
    ),
    Option("--memtest-cache-dir", f"results cache folder (default {DEFAULT_CACHE_DIR}; 'none' disables)"),
    Option(
        "--memtest-cache-clear", "drop the results cache before the run", None, ini=False, action="store_true"
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("memtest", "memorization audit of diffusion checkpoints")
    group.addoption(
        "--memtest",
        action="store_true",
        dest="memtest",
        default=False,
        help="run the memtest audit (prompt suites as tests)",
    )
    for opt in OPTIONS:
        if opt.action == "store_true":
            group.addoption(opt.flag, action="store_true", dest=opt.dest, default=None, help=opt.help)
        elif opt.action == "append":
            group.addoption(opt.flag, action="append", dest=opt.dest, default=None, help=opt.help)
        else:
            group.addoption(
                opt.flag, action="store", dest=opt.dest, default=None, type=opt.type, help=opt.help
            )
        if opt.ini:
            ini_type = (
                "bool" if opt.action == "store_true" else "linelist" if opt.action == "append" else "string"
            )
            parser.addini(opt.dest, opt.help, type=ini_type, default=None)


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
    from memtest.audit import AuditConfig, parse_shard
    from memtest.errors import MemtestError

    v = {opt.dest: _value(config, opt) for opt in OPTIONS}
    defaults = AuditConfig()
    cache = v["memtest_cache_dir"]
    try:
        return AuditConfig(
            checkpoint=v["memtest_checkpoint"] or defaults.checkpoint,
            suites=tuple(v["memtest_suite"] or ()),
            metric=v["memtest_metric"] or defaults.metric,
            method=v["memtest_method"] or defaults.method,
            n=v["memtest_n"] if v["memtest_n"] is not None else defaults.n,
            seed=v["memtest_seed"] if v["memtest_seed"] is not None else defaults.seed,
            steps=v["memtest_steps"] if v["memtest_steps"] is not None else defaults.steps,
            batch_size=v["memtest_batch_size"]
            if v["memtest_batch_size"] is not None
            else defaults.batch_size,
            device=v["memtest_device"],
            dtype=v["memtest_dtype"],
            calibration=v["memtest_calibration"],
            calibrate=bool(v["memtest_calibrate"]),
            fpr=v["memtest_fpr"] if v["memtest_fpr"] is not None else defaults.fpr,
            accept_base_calibration=bool(v["memtest_accept_base_calibration"]),
            allow_pickle=bool(v["memtest_allow_pickle"]),
            cache_dir=None if cache in ("none", "None") else (cache or defaults.cache_dir),
            shard=parse_shard(v["memtest_shard"]),
        ).validate()
    except MemtestError as exc:
        raise pytest.UsageError(str(exc)) from None


def output_paths(config: pytest.Config) -> tuple[str | None, str | None]:
    json_path = _value(config, next(o for o in OPTIONS if o.dest == "memtest_json"))
    report_path = _value(config, next(o for o in OPTIONS if o.dest == "memtest_report"))
    return json_path, report_path
