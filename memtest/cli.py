"""The `memtest` command: audit, calibrate, evaluate, merge, report, suite, zoo.

`memtest audit` is the main job without pytest: it scores the suite on the checkpoint (default: the
embedded canary), judges every case against the calibrated threshold, and writes the results file and
the HTML report. Its flags are the option table's names (memtest.audit.options) as `--NAME`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memtest.errors import MemtestError

if TYPE_CHECKING:
    from memtest.audit import AuditConfig, CaseRecord, Engine
    from memtest.progress import Progress


def flag(name: str) -> str:
    """The command line's spelling of option `name`: `--NAME` (dashes for underscores)."""
    return "--" + name.replace("_", "-")


def spell(name: str, value: str | None) -> str:
    """How `memtest` names an option in a message (memtest.errors.render_options)."""
    from memtest.audit import OPTION_NAMES, OPTIONS

    if name == "calibrate":  # a subcommand here, not a flag
        return "`memtest calibrate`"
    if name in SUITE_FLAGS or name in EVALUATE_FLAGS:  # subcommands' own flags (the library's keywords)
        return flag(name) if value is None else f"{flag(name)}={value}"
    if name not in OPTION_NAMES:
        return f"`{name}`" if value is None else f"`{name}={value}`"
    kinds = {o.name: o.kind for o in OPTIONS}
    if value is None or kinds[name] == "flag":  # an on/off option takes no value on a command line
        return flag(name)
    return f"{flag(name)}={value}"


#: The flags of `memtest suite from-dataset`, by the keyword of memtest.datasets.suite_from_dataset they set.
SUITE_FLAGS = ("format", "caption_column", "image_column", "caption_extension", "root", "folder_captions")
#: `memtest evaluate`'s flags that are not options of the option table (memtest.evaluate's keywords).
EVALUATE_FLAGS = ("positive", "negative", "out")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    from memtest.audit import OPTIONS

    for opt in OPTIONS:
        if not opt.cli:
            continue
        if opt.kind == "flag":
            parser.add_argument(flag(opt.name), action="store_true", dest=opt.name, default=None, help=opt.help)
        elif opt.kind == "list":
            parser.add_argument(flag(opt.name), action="append", dest=opt.name, default=None, help=opt.help)
        else:
            parser.add_argument(flag(opt.name), dest=opt.name, type=opt.type, default=None, help=opt.help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _config(ns: argparse.Namespace, calibrate: bool = False) -> AuditConfig:
    from memtest.audit import OPTIONS, config_from_values

    values = {opt.name: getattr(ns, opt.name, None) for opt in OPTIONS if opt.cli}
    values["calibrate"] = calibrate
    return config_from_values(values)


def _progress(ns: argparse.Namespace, what: str) -> Progress:
    """Scoring progress on stderr: a live bar on a terminal, a plain line every few seconds in a log."""
    from memtest.progress import Progress

    return Progress(f"memtest: {what}", unit="prompts", stream=None if ns.quiet else sys.stderr, every=5.0)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def cmd_audit(ns: argparse.Namespace) -> int:
    import memtest.audit as audit

    cfg = _config(ns)
    subject = audit.Subject(cfg)
    cases = audit.select_cases(
        audit.resolve_suites(cfg.suites, subject.folder, subject.name), calibrate=False, shard=cfg.shard
    )
    if not cases:
        raise MemtestError("The selected suites have no clean or memorized cases to audit.")
    engine = audit.Engine(cfg)
    started = time.perf_counter()
    records = audit.run_cases(engine, cases, progress=_progress(ns, "scoring"))
    cal, _ = engine.calibration()
    spectra = _spectra(engine, records, ns.spectrum) if ns.spectrum else []
    ctx = engine.context()
    doc = audit.results_document(
        ctx,
        records,
        command=shlex.join(["memtest", *sys.argv[1:]]) if sys.argv else "memtest audit",
        calibration=ctx["calibration"],
        shard=cfg.shard,
        spectra=spectra,
    )
    audit.write_outputs(doc, json_path=Path(ns.json), report_path=Path(ns.report))
    s = doc["summary"]
    budget = audit.run_budget(records, ctx["calibration"])
    verdict = "PASS" if s["failed"] == 0 and s["errors"] == 0 and not (budget and budget.exceeded) else "FAIL"
    print(
        f"memtest audit {verdict}: {s['passed']} passed, {s['failed']} failed, {s['errors']} errors, "
        f"{s['flagged']} flagged of {s['total']} cases on {subject.name} "
        f"(threshold {cal.threshold:.6g}, {time.perf_counter() - started:.1f}s, {_threads()} torch threads)"
    )
    for rec in records:
        if rec["outcome"] != "passed":
            print(f"  FAILED {rec['id']}: {rec['message']}")
    if budget is not None:
        print(f"  flag budget {'EXCEEDED' if budget.exceeded else 'kept'}: {budget.describe()}")
    print(f"results: {ns.json}\nreport:  {ns.report}")
    return 0 if verdict == "PASS" else 1


def _spectra(engine: Engine, records: list[CaseRecord], k: int) -> list[dict[str, Any]]:
    """Hessian spectra of the most-flagged prompts (small models only: it costs ~2k products each)."""
    from memtest.detection.eigen import prompt_spectrum

    top = sorted(records, key=lambda r: -float(r["score"] or 0.0))[:3]  # the most-flagged prompts
    return [
        {"id": r["id"], "prompt": r["prompt"], **prompt_spectrum(engine.scorer, r["prompt"], k=k).to_dict()}
        for r in top
    ]


def cmd_calibrate(ns: argparse.Namespace) -> int:
    import memtest.audit as audit

    cfg = _config(ns, calibrate=True)
    subject = audit.Subject(cfg)
    cases = audit.select_cases(
        audit.resolve_suites(cfg.suites, subject.folder, subject.name), calibrate=True, shard=None
    )
    engine = audit.Engine(cfg)
    records = audit.run_cases(engine, cases, progress=_progress(ns, "calibrating"))
    cal = audit.calibration_from_records(records, cfg.fpr, engine.identity(), cfg.checkpoint)
    out = audit.save_calibration(cal, ns.output)
    print(f"calibration written: {out}\n  {audit.describe_calibration(cal)}")
    return 0


def cmd_merge(ns: argparse.Namespace) -> int:
    from memtest.audit.results import load_results, merge_results, write_results

    docs = [load_results(p) for p in ns.inputs]
    merged = merge_results(docs, [str(p) for p in ns.inputs])
    write_results(merged, ns.output)
    print(f"merged {len(docs)} result files ({len(merged['cases'])} cases) into {ns.output}")
    return 0


def cmd_suite_from_dataset(ns: argparse.Namespace) -> int:
    from memtest.datasets import DEFAULT_DISTANCE, suite_from_dataset

    made = suite_from_dataset(
        ns.path,
        ns.output,
        format=ns.format,
        caption_column=ns.caption_column,
        image_column=ns.image_column,
        caption_extension=ns.caption_extension,
        root=ns.root,
        name=ns.name,
        top_risk=ns.top_risk,
        distance=DEFAULT_DISTANCE if ns.hash_distance is None else ns.hash_distance,
        copy_images=ns.copy_images,
        folder_captions=ns.folder_captions,
    )
    print(
        f"suite written: {ns.output} ({len(made.suite.cases)} cases of {made.captions} distinct captions; "
        f"{made.pairs} pairs, {made.images} distinct images, {made.format}; {made.at_risk} at risk; "
        f"{made.stored} images stored beside the suite)"
    )
    for cluster in made.clusters[:5]:
        names = "; ".join(repr(c[:60]) for c in cluster.captions[:3]) + (" ..." if len(cluster.captions) > 3 else "")
        print(f"  duplicate cluster: {cluster.rows} rows, {cluster.images} images, seen {cluster.exposure}x: {names}")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from memtest.defaults import DEFAULT_CHECKPOINT, DEFAULT_FPR
    from memtest.evaluate import evaluate, summary_lines, write_outputs
    from memtest.threads import apply_threads

    apply_threads(ns.threads)
    result = evaluate(
        ns.checkpoint or DEFAULT_CHECKPOINT,
        positives=ns.positive or (),
        negatives=ns.negative or (),
        metrics=ns.metric or "all",
        ns=ns.n,
        steps=ns.steps,
        method=ns.method,
        seed=ns.seed,
        batch_size=ns.batch_size,
        target_fpr=DEFAULT_FPR if ns.fpr is None else ns.fpr,
        share=not ns.no_share,
        device=ns.device,
        dtype=ns.dtype,
        progress=lambda label: _progress(ns, f"evaluate {label}"),
    )
    paths = write_outputs(result, ns.out)
    print(
        f"memtest evaluate: {result.positives} positive vs {result.negatives} negative prompts on "
        f"{result.checkpoint} ({_threads()} torch threads)"
    )
    for line in summary_lines(result):
        print("  " + line)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="compare detectors on labelled prompts: AUC, TPR at 1%% FPR, cost (docs/evaluate.md)",
    )
    ev.add_argument("--checkpoint", help="checkpoint folder, zoo:<name> or cached hub id (default zoo:finetuned)")
    ev.add_argument("--positive", action="append", metavar="SUITE", help="suite whose memorized cases are positives; "
                    "repeatable (default: the checkpoint's own suite)")  # fmt: skip
    ev.add_argument("--negative", action="append", metavar="SUITE", help="suite whose clean and reference cases are "
                    "negatives; repeatable (default: the checkpoint's own suite)")  # fmt: skip
    ev.add_argument("--metric", action="append", help="'all' (default) or detector names, comma-separated or repeated")
    ev.add_argument("--n", default="1,4", help="generations per prompt, comma-separated (default %(default)s)")
    ev.add_argument("--steps", default="1", help="sampling steps the metric averages over (default %(default)s)")
    ev.add_argument("--method", default="fd", help="Hessian-vector product: fd (default), fd-forward or jvp")
    ev.add_argument("--seed", type=int, default=0, help="base seed of the initial noises (default 0)")
    ev.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    ev.add_argument("--fpr", type=float, help="target FPR of the TPR column (default 0.01)")
    ev.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    ev.add_argument("--dtype", help="model dtype: float32 (default), float16, bfloat16")
    ev.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS, else the usable cores)")
    ev.add_argument("--no-share", action="store_true", help="score every n separately (default: prefixes of max n)")
    ev.add_argument("--out", default="memtest-evaluation", type=Path, help="output folder (default %(default)s)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    ev.set_defaults(func=cmd_evaluate)


def _add_suite(sub: Any) -> None:
    suite = sub.add_parser("suite", help="write prompt suites (from a training set)")
    verbs = suite.add_subparsers(dest="suite_command", required=True)
    fd = verbs.add_parser(
        "from-dataset",
        help="a suite of a training set's captions, with their images and duplication-risk tags (docs/datasets.md)",
    )
    fd.add_argument("path", type=Path, help="the training set: a folder, a kohya .toml, a .tar shard or a .parquet")
    fd.add_argument("-o", "--output", required=True, type=Path, help="the suite file to write (SUITE.yaml)")
    fd.add_argument("--format", default="auto", help="auto, imagefolder, kohya, webdataset or parquet")
    fd.add_argument("--caption-column", help="caption column or JSON key (default: text, else caption)")
    fd.add_argument("--image-column", help="Parquet image column (default: image, else the one bytes column)")
    fd.add_argument("--caption-extension", help="kohya caption files' extension (default: .txt, else .caption)")
    fd.add_argument("--root", type=Path, help="the folder no path may leave (default: the dataset's folder)")
    fd.add_argument("--name", help="the suite's name (default: the output file's stem)")
    fd.add_argument("--top-risk", type=int, metavar="K", help="keep only the K riskiest captions")
    fd.add_argument("--hash-distance", type=int, metavar="BITS", help="near-duplicate phash distance (default 8)")
    fd.add_argument("--copy-images", action="store_true", help="store every image beside the suite, not only archived")
    fd.add_argument("--folder-captions", action="store_true", help="kohya: class tokens caption images without a file")
    fd.set_defaults(func=cmd_suite_from_dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memtest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="audit a checkpoint and write results + HTML report")
    _add_settings(audit)
    audit.add_argument("--json", default="memtest-results.json", help="results file (default %(default)s)")
    audit.add_argument("--report", default="memtest-report.html", help="HTML report (default %(default)s)")
    audit.add_argument(
        "--spectrum",
        type=int,
        default=0,
        metavar="K",
        help="add the top-K Hessian eigenvalues of the 3 highest-scoring prompts (small models)",
    )
    audit.set_defaults(func=cmd_audit)
    cal = sub.add_parser("calibrate", help="score reference prompts and write a calibration file")
    _add_settings(cal)
    cal.add_argument("-o", "--output", default="memtest-calibration.json", help="default %(default)s")
    cal.set_defaults(func=cmd_calibrate)
    _add_evaluate(sub)
    merge = sub.add_parser("merge", help="combine results files of shards into one")
    merge.add_argument("inputs", nargs="+", type=Path)
    merge.add_argument("-o", "--output", required=True, type=Path)
    merge.set_defaults(func=cmd_merge)
    _add_suite(sub)
    sub.add_parser("report", help="render results JSON as a self-contained HTML report", add_help=False)
    sub.add_parser("zoo", help="train, list and inspect canary checkpoints", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `report` and `zoo` own their argument parsing.
    if args and args[0] == "report":
        from memtest.report import report_main

        return report_main(args[1:], spell=spell)
    if args and args[0] == "zoo":
        from memtest.zoo import zoo_main

        return zoo_main(args[1:])
    ns = build_parser().parse_args(args)
    from memtest.threads import passive_waits

    passive_waits()  # before anything imports torch
    try:
        return int(ns.func(ns))
    except MemtestError as exc:
        print(f"memtest: error: {exc.render(spell)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
