"""memtest's settings as one table: the pytest options (`--memtest-*` + ini) and the CLI flags
(`memtest audit --*`) are both generated from it. Importing this module costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memtest.defaults import DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT, DEFAULT_MITIGATION_STEPS


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
    Option(
        "--memtest-flow-steps",
        "flow-matching checkpoints (SD3, Flux): guided Euler steps from pure noise before measuring (default 1)",
        int,
    ),
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
    Option(
        "--memtest-mitigation-steps",
        f"step budget of SAIL for each `mitigate: true` case (default {DEFAULT_MITIGATION_STEPS})",
        int,
    ),
    Option(
        "--memtest-mitigation-method",
        "how `mitigate: true|copy` cases choose x_T: sail (default, moves it to flat noise) or resample (keeps "
        "ordinary draws whose trajectory is no more text-driven than the calibration's reference captions')",
    ),
    Option(
        "--memtest-lora",
        "LoRA adapter PATH[:SCALE] applied on the checkpoint (safetensors); repeatable, in order",
        action="append",
    ),
    Option(
        "--memtest-threads",
        "torch threads per process (default: usable cores / xdist workers, or OMP_NUM_THREADS if set)",
        int,
    ),
    Option("--memtest-cache-dir", f"results cache folder (default {DEFAULT_CACHE_DIR}; 'none' disables)"),
    Option("--memtest-cache-clear", "drop the results cache before the run", None, ini=False, action="store_true"),
)


def config_from_values(values: dict[str, Any]) -> Any:
    """An `AuditConfig` from option values keyed by `Option.dest` (None = not given)."""
    from memtest.audit import AuditConfig, parse_shard

    v = {opt.dest: values.get(opt.dest) for opt in OPTIONS}
    d = AuditConfig()

    def pick(key: str, default: Any) -> Any:
        return v[key] if v[key] is not None else default

    cache = v["memtest_cache_dir"]
    return AuditConfig(
        checkpoint=v["memtest_checkpoint"] or d.checkpoint,
        suites=tuple(v["memtest_suite"] or ()),
        metric=v["memtest_metric"] or d.metric,
        method=v["memtest_method"] or d.method,
        n=pick("memtest_n", d.n),
        seed=pick("memtest_seed", d.seed),
        steps=pick("memtest_steps", d.steps),
        flow_steps=v["memtest_flow_steps"],
        batch_size=pick("memtest_batch_size", d.batch_size),
        device=v["memtest_device"],
        dtype=v["memtest_dtype"],
        calibration=v["memtest_calibration"],
        calibrate=bool(v["memtest_calibrate"]),
        fpr=pick("memtest_fpr", d.fpr),
        accept_base_calibration=bool(v["memtest_accept_base_calibration"]),
        allow_pickle=bool(v["memtest_allow_pickle"]),
        cache_dir=None if cache in ("none", "None") else (cache or d.cache_dir),
        shard=parse_shard(v["memtest_shard"]),
        mitigation_steps=pick("memtest_mitigation_steps", d.mitigation_steps),
        mitigation_method=v["memtest_mitigation_method"] or d.mitigation_method,
        loras=tuple(v["memtest_lora"] or ()),
        threads=v["memtest_threads"],
    ).validate()
