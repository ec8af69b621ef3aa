"""memtest's settings as one table with neutral names, and the `AuditConfig` they make.

Each front end spells the names its own way: the pytest plugin prefixes `memtest-` to the flag and `memtest_` to
its ini twin, `memtest audit` takes `--NAME` (underscores become dashes in flags). Messages name options as
`{option:NAME}` (memtest.errors.option) and the front end that shows them spells them. Importing this module
costs nothing (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from memtest.defaults import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CHECKPOINT,
    DEFAULT_FPR,
    DEFAULT_MITIGATION_METHOD,
    DEFAULT_MITIGATION_STEPS,
    MITIGATION_ITEM_METHODS,
)
from memtest.detection.settings import METRICS, ScoreSettings
from memtest.errors import CalibrationError, MemtestError, did_you_mean, option


@dataclass(frozen=True)
class Option:
    """One setting. `name` is neutral (a Python identifier); `kind` is `value`, `flag` (on/off) or `list`
    (repeatable); `ini` says whether a config file may set it (pytest's ini); `cli` whether `memtest audit`
    and `memtest calibrate` take it."""

    name: str
    help: str
    type: type = str
    kind: str = "value"
    ini: bool = True
    cli: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("value", "flag", "list"):
            raise ValueError(f"Option {self.name}: unknown kind {self.kind!r}")


OPTIONS: tuple[Option, ...] = (
    Option(
        "checkpoint",
        f"checkpoint folder, single .safetensors file, zoo:<name> or cached hub id (default {DEFAULT_CHECKPOINT})",
    ),
    Option("config", "local diffusers folder of the base whose configs a single-file checkpoint uses"),
    Option("suite", "suite name or YAML path; repeatable (default: the checkpoint's own suite)", kind="list"),
    Option("metric", f"detection metric: {', '.join(METRICS)} (default {METRICS[0]}; docs/method.md)"),
    Option("method", "Hessian-vector product: fd (default), fd-forward or jvp"),
    Option("variant", "the metric's variant where it has several: attention_entropy le (default) or ae"),
    Option("gamma", "anisotropy's weights G1,G2 of the norm and the cosine (default 1,2: the paper's SD v1.4)"),
    Option("n", "generations per prompt (default 4)", int),
    Option("seed", "base seed of the initial noises (default 0)", int),
    Option("steps", "average the metric over the first K sampling steps (default 1)", int),
    Option(
        "flow_steps",
        "flow-matching checkpoints (SD3, Flux): guided Euler steps from pure noise before measuring (default 1)",
        int,
    ),
    Option("device", "cpu, cuda or cuda:N (default: cuda if available, else cpu)"),
    Option("dtype", "model dtype: float32 (default), float16, bfloat16"),
    Option("batch_size", "prompts per batch (default 8)", int),
    Option("calibration", "calibration JSON (default: the checkpoint's memtest-calibration.json)"),
    Option("calibrate", "score reference cases and write the calibration file", kind="flag", ini=False, cli=False),
    Option("fpr", f"target false-positive rate of the threshold (default {DEFAULT_FPR})", float),
    Option(
        "accept_base_calibration",
        "accept a calibration made on another checkpoint (a fine-tune's base); recorded in the results",
        kind="flag",
    ),
    Option("json", "write the results JSON here", cli=False),
    Option("report", "write the HTML audit report here", cli=False),
    Option("shard", "run shard i/N of the cases (stable partition)", ini=False),
    Option("allow_pickle", "allow loading pickle (.bin/.ckpt) weights: only for trusted checkpoints", kind="flag"),
    Option(
        "mitigation_steps",
        f"step budget of SAIL for each `mitigate: true` case (default {DEFAULT_MITIGATION_STEPS})",
        int,
    ),
    Option(
        "mitigation_method",
        "how `mitigate: true|copy` cases are mitigated: sail (default, moves x_T to flat noise), resample (keeps "
        "ordinary draws whose trajectory is no more text-driven than the calibration's reference captions') or "
        "attention (Ren et al.: the start token's cross-attention logit x1.25, padding masked; SD and SDXL)",
    ),
    Option(
        "lora", "LoRA adapter PATH[:SCALE] applied on the checkpoint (safetensors); repeatable, in order", kind="list"
    ),
    Option(
        "threads",
        "torch threads per process (default: the usable cores in every worker, or OMP_NUM_THREADS if set)",
        int,
    ),
    Option(
        "confirm",
        "confirm flags by generating the images and comparing them with the case's training images: off, flagged "
        "(default) or all",
    ),
    Option("copy_descriptor", "how generations are compared with training images: auto (default), pixel or sscd"),
    Option(
        "fail_on",
        "what fails a clean case: copy (default: a confirmed copy; unconfirmed flags count against the run's flag "
        "budget) or flag (every flag fails, the strict per-case rule)",
    ),
    Option(
        "baseline",
        "results JSON of the base model on the same suites and settings: cases it flags too are inherited and "
        "reported apart",
    ),
    Option("report_images", "images in the report: generated (default), all (with training images) or none"),
    Option(
        "attribution",
        "attribute each flagged case's memorization signal to its prompt's words (per-token gradient "
        "significance, Wen et al.), in the results and the report",
        kind="flag",
    ),
    Option("cache_dir", f"results cache folder (default {DEFAULT_CACHE_DIR}; 'none' disables)"),
    Option("cache_clear", "drop the results cache before the run", kind="flag", ini=False, cli=False),
)

OPTION_NAMES: frozenset[str] = frozenset(o.name for o in OPTIONS)

#: The options whose values are one of a few words (the first is the default).
CHOICES: dict[str, tuple[str, ...]] = {
    "confirm": ("flagged", "off", "all"),
    "copy_descriptor": ("auto", "pixel", "sscd"),
    "fail_on": ("copy", "flag"),
    "report_images": ("generated", "all", "none"),
}


@dataclass(frozen=True)
class AuditConfig:
    """Effective settings of one audit (either front end), after command line > config file > defaults."""

    checkpoint: str = DEFAULT_CHECKPOINT
    #: the local diffusers folder of the base whose configs a single-file checkpoint loads with
    config: str | None = None
    suites: tuple[str, ...] = ()
    score: ScoreSettings = field(default_factory=ScoreSettings)
    device: str | None = None
    dtype: str | None = None
    calibration: str | None = None
    calibrate: bool = False
    fpr: float = DEFAULT_FPR
    accept_base_calibration: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = DEFAULT_CACHE_DIR
    shard: tuple[int, int] | None = None
    mitigation_steps: int = DEFAULT_MITIGATION_STEPS
    #: how `mitigate` items choose x_T: "sail" or "resample" (MITIGATION_ITEM_METHODS)
    mitigation_method: str = DEFAULT_MITIGATION_METHOD
    #: LoRA adapters "PATH[:SCALE]" applied on the checkpoint, in order (memtest.models.adapters).
    loras: tuple[str, ...] = ()
    #: torch threads of this process; None = memtest's default (see memtest.threads).
    threads: int | None = None
    #: which cases are confirmed by generating and comparing: "off", "flagged" or "all"
    confirm: str = "flagged"
    #: the copy descriptor of confirmation: "auto", "pixel" or "sscd" (memtest.evidence)
    copy_descriptor: str = "auto"
    #: "copy": a clean case fails on a confirmed copy, unconfirmed flags count against the run's budget;
    #: "flag": every flag fails its case
    fail_on: str = "copy"
    #: a results file of the base model: what it flags too is inherited
    baseline: str | None = None
    #: which images the report shows: "generated", "all" (training images too) or "none"
    report_images: str = "generated"
    #: attribute flagged cases' memorization signal to their words (memtest.detection.attribution)
    attribution: bool = False
    #: this process's index among parallel workers (pytest-xdist's gw<i>), which picks its GPU; None alone.
    worker_index: int | None = None

    def validate(self) -> AuditConfig:
        self.score.validate()
        if not 0.0 < self.fpr < 1.0:
            raise CalibrationError(f"{option('fpr')} must be in (0, 1), got {self.fpr!r}.")
        steps = self.mitigation_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise MemtestError(f"{option('mitigation_steps')} must be a positive integer, got {steps!r}.")
        if self.mitigation_method not in MITIGATION_ITEM_METHODS:
            raise MemtestError(
                f"Unknown {option('mitigation_method')} {self.mitigation_method!r}."
                f"{did_you_mean(self.mitigation_method, MITIGATION_ITEM_METHODS)} "
                f"Choose one of: {', '.join(MITIGATION_ITEM_METHODS)}."
            )
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise MemtestError(
                    f"Unknown {option(name)} {value!r}.{did_you_mean(str(value), choices)} "
                    f"Choose one of: {', '.join(choices)}."
                )
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise MemtestError(f"{option('threads')} must be at least 1, got {self.threads}.")
        return self


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/N' (1 <= i <= N) -> (i, N)."""
    if text is None or text == "":
        return None
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise MemtestError(f"{option('shard')} must look like i/N (for example 2/4), got {text!r}.") from None
    if not 1 <= i <= n:
        raise MemtestError(f"{option('shard')} {text!r}: the shard index must be between 1 and {n}.")
    return (i, n)


def parse_gamma(text: str | None) -> tuple[float, float] | None:
    """'G1,G2' -> (G1, G2); None or '' -> None (the detector's default)."""
    if text is None or text == "":
        return None
    try:
        g1, g2 = (float(part) for part in text.split(","))
    except ValueError:
        raise MemtestError(f"{option('gamma')} must look like G1,G2 (for example 1,2), got {text!r}.") from None
    return (g1, g2)


def config_from_values(values: Mapping[str, Any], **extra: Any) -> AuditConfig:
    """An `AuditConfig` from option values keyed by `Option.name` (None or missing = not given); `extra`
    sets fields no option names (e.g. `worker_index`)."""
    unknown = set(values) - OPTION_NAMES
    if unknown:
        raise MemtestError(f"Unknown option(s): {', '.join(sorted(unknown))}.")
    v = {name: values.get(name) for name in OPTION_NAMES}
    d = AuditConfig()

    def pick(key: str, default: Any) -> Any:
        return v[key] if v[key] is not None else default

    score = ScoreSettings(
        metric=pick("metric", d.score.metric),
        method=pick("method", d.score.method),
        n=pick("n", d.score.n),
        seed=pick("seed", d.score.seed),
        steps=pick("steps", d.score.steps),
        flow_steps=v["flow_steps"],
        batch_size=pick("batch_size", d.score.batch_size),
        variant=v["variant"] or None,
        gamma=parse_gamma(v["gamma"]),
    )
    cache = v["cache_dir"]
    config = AuditConfig(
        checkpoint=v["checkpoint"] or d.checkpoint,
        config=v["config"],
        suites=tuple(v["suite"] or ()),
        score=score,
        device=v["device"],
        dtype=v["dtype"],
        calibration=v["calibration"],
        calibrate=bool(v["calibrate"]),
        fpr=pick("fpr", d.fpr),
        accept_base_calibration=bool(v["accept_base_calibration"]),
        allow_pickle=bool(v["allow_pickle"]),
        cache_dir=None if cache in ("none", "None") else (cache or d.cache_dir),
        shard=parse_shard(v["shard"]),
        mitigation_steps=pick("mitigation_steps", d.mitigation_steps),
        mitigation_method=v["mitigation_method"] or d.mitigation_method,
        loras=tuple(v["lora"] or ()),
        threads=v["threads"],
        confirm=v["confirm"] or d.confirm,
        copy_descriptor=v["copy_descriptor"] or d.copy_descriptor,
        fail_on=v["fail_on"] or d.fail_on,
        baseline=v["baseline"],
        report_images=v["report_images"] or d.report_images,
        attribution=bool(v["attribution"]),
    )
    return replace(config, **extra).validate() if extra else config.validate()


__all__ = [
    "CHOICES",
    "OPTIONS",
    "OPTION_NAMES",
    "AuditConfig",
    "Option",
    "config_from_values",
    "parse_gamma",
    "parse_shard",
]
