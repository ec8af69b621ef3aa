"""MemtestSession: all of memtest's state in a pytest run, registered as a plugin object.

On every process (controller and xdist workers) it collects suite cases as items. On a process that
runs items it owns one `memtest.audit.Engine` (the checkpoint loads once per process), scores the
process's pending cases in batches when the first one runs, and attaches each case's result to its
test report as plain JSON types. On the controller it gathers those results and writes the results
file, the report and (when calibrating) the calibration, once, complete.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from memtest.errors import CheckpointError, MemtestError

from .items import GateFailure, MemtestItem, MitigationItem, SuiteCollector, SuiteFile
from .options import output_paths, read_config

SESSION_KEY = pytest.StashKey["MemtestSession"]()


class MemtestSession:
    def __init__(self, config: pytest.Config) -> None:
        from memtest.models.locate import resolve_checkpoint

        self.config = config
        self.audit = read_config(config)
        self.json_path, self.report_path = output_paths(config)
        self.is_worker = hasattr(config, "workerinput")
        if self.audit.threads is not None and self.audit.threads < 1:
            raise pytest.UsageError(f"--memtest-threads must be at least 1, got {self.audit.threads}.")
        from memtest.threads import passive_waits

        passive_waits()  # before torch loads (here, or in xdist workers, which inherit the environment)
        try:
            self.checkpoint_name, self.checkpoint_folder = resolve_checkpoint(self.audit.checkpoint)
        except MemtestError as exc:
            raise pytest.UsageError(str(exc)) from None
        from memtest.models.adapters import parse_lora

        try:  # a missing adapter stops the run at start-up, as a missing checkpoint does
            self.loras = [parse_lora(text) for text in self.audit.loras]
        except MemtestError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.suites = self._resolve_suites()
        self._engine: Any = None
        self._fingerprint: str | None = None
        self._seen_suites: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.mitigation: list[dict[str, Any]] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self.written: list[tuple[str, str]] = []
        self.finish_error: str | None = None
        self._load_error: tuple[type[MemtestError], str] | None = None
        if config.getoption("memtest_cache_clear") and not self.is_worker and self.audit.cache_dir:
            shutil.rmtree(self._resolve(self.audit.cache_dir), ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------------
    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from dataclasses import replace

            from memtest.audit import Engine

            cache = str(self._resolve(self.audit.cache_dir)) if self.audit.cache_dir else None
            calibration = str(self._resolve(self.audit.calibration)) if self.audit.calibration else None
            self._engine = Engine(replace(self.audit, cache_dir=cache, calibration=calibration))
        return self._engine

    def fingerprint(self) -> str:
        """The base checkpoint folder's fingerprint (without adapters)."""
        if self._fingerprint is None:
            from memtest.models.locate import fingerprint

            self._fingerprint = fingerprint(self.checkpoint_folder)
        return self._fingerprint

    def subject_fingerprint(self) -> str:
        """The fingerprint of what is audited, base + adapters: the one the audit's identity (calibrations,
        the results cache, the results file) uses."""
        from memtest.models.adapters import adapters_fingerprint

        return adapters_fingerprint(self.fingerprint(), self.loras)

    def calibration_output(self) -> Path:
        return self._resolve(self.audit.calibration or "memtest-calibration.json")

    # -- header -------------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        a = self.audit
        lines = [
            f"memtest: checkpoint {self.checkpoint_name} ({self.checkpoint_folder}), "
            f"fingerprint {self.fingerprint()[:16]}"
        ]
        if self.loras:
            from memtest.models.locate import file_sha256

            for i, (text, spec) in enumerate(zip(a.loras, self.loras, strict=True), 1):
                lines.append(
                    f"memtest: lora {i}/{len(self.loras)} {text} ({spec.path}) scale {spec.scale:g}, "
                    f"sha256 {file_sha256(spec.path)[:16]}"
                )
            lines.append(
                f"memtest: base + {len(self.loras)} adapter{'s' if len(self.loras) > 1 else ''}: "
                f"fingerprint {self.subject_fingerprint()[:16]} (the audit's identity)"
            )
        if a.calibrate:
            lines.append(f"memtest: calibrating at fpr={a.fpr:g} -> {self.calibration_output()}")
        else:
            path = (
                self._resolve(a.calibration) if a.calibration else self.checkpoint_folder / "memtest-calibration.json"
            )
            lines.append(f"memtest: calibration {self._describe_calibration(path)}")
        lines.append(
            f"memtest: metric={a.metric} method={a.method} n={a.n} seed={a.seed} steps={a.steps} "
            f"batch_size={a.batch_size} device={a.device or 'auto'} dtype={a.dtype or 'float32'} "
            f"suites={','.join(a.suites) or '(checkpoint suite)'}"
            + (f" shard={a.shard[0]}/{a.shard[1]}" if a.shard else "")
            + (" accept-base-calibration" if a.accept_base_calibration else "")
        )
        if a.mitigation_method == "resample":
            lines.append("memtest: mitigation=resample (ordinary x_T below the reference captions' level, 6 steps in)")
        else:
            lines.append(f"memtest: mitigation=sail steps={a.mitigation_steps}")
        from memtest.threads import describe_threads, describe_waits

        lines.append(f"memtest: torch {describe_threads(a.threads)} in each process, {describe_waits()}")
        return lines

    def _describe_calibration(self, path: Path) -> str:
        if not path.is_file():
            return f"none at {path}: the gate will fail closed (calibrate with --memtest-calibrate)"
        from memtest.audit.calibration import load_calibration

        try:
            cal = load_calibration(path)
        except MemtestError as exc:
            return f"unusable ({exc})"
        return (
            f"{path} threshold={cal.threshold:.6g} (95% CI {cal.ci[0]:.4g}..{cal.ci[1]:.4g}) "
            f"fpr={cal.fpr:g} refs={cal.n_reference} ({cal.reference_suite} v{cal.reference_version})"
        )

    # -- collection ---------------------------------------------------------------------------------
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        from memtest.audit.suites import is_suite_file

        if file_path.suffix in (".yaml", ".yml") and is_suite_file(file_path):
            self._seen_suites.add(str(file_path.resolve()))
            node: SuiteFile = SuiteFile.from_parent(parent, path=file_path)
            node.memtest = self
            return node
        return None

    def _resolve_suites(self) -> list[Any]:
        """Named suites (or the checkpoint's own), checked at start-up so that a bad name stops the run
        on the controller too (under xdist only workers collect)."""
        from memtest.audit import resolve_suites, suite_cases

        if not self.audit.suites and self._suite_files_in_args():
            return []
        try:
            suites = resolve_suites(self.audit.suites, self.checkpoint_folder, self.checkpoint_name)
        except MemtestError as exc:
            raise pytest.UsageError(str(exc)) from None
        for suite in suites:
            if not suite_cases(suite, self.audit.calibrate):
                mode = "reference" if self.audit.calibrate else "clean or memorized"
                hint = (
                    "name a suite that has reference cases"
                    if self.audit.calibrate
                    else ("reference cases only calibrate: add --memtest-calibrate")
                )
                raise pytest.UsageError(f"Suite '{suite.name}' has no {mode} cases to run: {hint}.")
        return suites

    def _suite_files_in_args(self) -> bool:
        """Whether the command line names suite YAML files (or folders holding them) to collect."""
        from memtest.audit.suites import is_suite_file

        for arg in self.config.args:
            path = Path(self.config.invocation_params.dir, arg.split("::")[0])
            if path.is_file() and is_suite_file(path):
                return True
            if path.is_dir() and any(is_suite_file(p) for p in path.rglob("*.y*ml")):
                return True
        return False

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if not self.audit.suites and any(isinstance(i, MemtestItem) for i in items):
            return  # suite files in the test paths were collected; don't add the checkpoint's own suite
        for suite in self.suites:
            if suite.path is not None and str(Path(suite.path).resolve()) in self._seen_suites:
                continue
            collector = SuiteCollector.from_parent(
                session, name=suite.name, nodeid=suite.name, suite=suite, memtest=self
            )
            # genitems runs the collect hooks, so the terminal counts and -k/--deselect see these items.
            items.extend(session.genitems(collector))

    # -- running ------------------------------------------------------------------------------------
    def _pending(self, item: MemtestItem) -> list[MemtestItem]:
        """This process's memtest items still to run, starting with `item`."""
        items = item.session.items
        queue = self._xdist_queue()
        if queue is not None:
            order = [items[i] for i in queue]
        else:
            try:
                start = items.index(item)
            except ValueError:
                start = 0
            order = items[start:]
        pending = [i for i in order if isinstance(i, MemtestItem)]
        return [item, *[i for i in pending if i is not item]]

    def _xdist_queue(self) -> list[int] | None:
        """Indices an xdist worker has been given but not run yet (None outside a worker)."""
        if not self.is_worker:
            return None
        for plugin in self.config.pluginmanager.get_plugins():
            torun = getattr(plugin, "torun", None)
            if torun is not None and hasattr(torun, "lock"):
                with torun.lock() as queue:
                    indices = [i for i in queue if isinstance(i, int)]
                nxt = getattr(plugin, "nextitem_index", None)
                return ([nxt] if isinstance(nxt, int) else []) + indices
        return None

    def _progress(self) -> Any:
        """Scoring progress on the terminal: a live bar on a terminal, plain lines in a log; nothing on xdist
        workers (the controller owns the terminal) or with -q; nothing for a single batch."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or self.is_worker or self.config.get_verbosity() < 0:
            return None
        from memtest.progress import Progress

        return Progress(
            "memtest: scoring",
            unit="prompts",
            stream=_TerminalStream(self.config, tr),
            live=bool(getattr(tr, "isatty", False)),
            min_total=self.audit.batch_size,
            width=min(int(self.config.get_terminal_writer().fullwidth), 100),
        )

    def _loaded_engine(self) -> Any:
        """The engine with its checkpoint loaded. A checkpoint that failed to load fails every later case
        at once with the same message, instead of loading (and failing) again for each case."""
        if self._load_error is not None:
            cls, message = self._load_error
            raise cls(message)
        engine = self.engine
        try:
            engine.checkpoint  # noqa: B018 (loads it)
        except CheckpointError as exc:
            self._load_error = (type(exc), str(exc))
            raise
        return engine

    def run_case(self, item: MemtestItem) -> None:
        from memtest.audit import judge, reproduce_command

        case = item.case
        try:
            engine = self._loaded_engine()
            if engine.cache.get(case.prompt) is None:
                prompts = [i.case.prompt for i in self._pending(item)]
                engine.scores(prompts, progress=self._progress())
            scored = engine.scores([case.prompt])[case.prompt]
            threshold = None
            if not self.audit.calibrate:
                cal, _ = engine.calibration()
                threshold = cal.threshold
            record = judge(case, scored["score"], scored["values"], threshold)
        except MemtestError as exc:
            item.memtest_record = self._error_record(item, str(exc))
            raise
        record["seeds"] = list(scored["seeds"])
        record["nodeid"] = item.nodeid
        item.memtest_record = record
        item.user_properties.append(("memtest_score", record["score"]))
        item.user_properties.append(("memtest_threshold", record["threshold"]))
        if record["outcome"] == "failed":
            values = ", ".join(f"{v:.6g}" for v in record["values"])
            raise GateFailure(
                f"{record['message']}\n"
                f"  prompt:     {case.prompt!r}\n"
                f"  score:      {record['score']:.6g} (mean of {len(record['values'])} generations)\n"
                f"  threshold:  {record['threshold']:.6g}   margin: {record['margin']:+.6g}\n"
                f"  per-generation {self.audit.metric}: [{values}]\n"
                f"  seeds:      {record['seeds']}\n"
                f"  reproduce:  {reproduce_command(self.audit, case)}"
            )

    def run_mitigation(self, item: MitigationItem) -> None:
        """SAIL (or --memtest-mitigation-method resample) on the case's prompt, in gate mode. The work and the
        judging live in `memtest.mitigation` (`judge_mitigation`)."""
        case = item.case
        try:
            engine = self._loaded_engine()
            cal, _ = engine.calibration()
            unmitigated = engine.scores([case.prompt])[case.prompt]["score"]
            from memtest.mitigation import judge_mitigation, mitigate_resample, mitigate_sail, reference_captions

            if self.audit.mitigation_method == "resample":
                refs = reference_captions(cal, self.suites)
                result = mitigate_resample(engine.scorer, case.prompt, threshold=cal.threshold, references=refs)
            else:
                result = mitigate_sail(
                    engine.scorer, case.prompt, threshold=cal.threshold, max_steps=self.audit.mitigation_steps
                )
            record, entry = judge_mitigation(case, result, unmitigated, checkpoint=engine.checkpoint)
        except MemtestError as exc:
            item.memtest_record = self._error_record(item, str(exc))
            raise
        record["nodeid"] = item.nodeid
        item.memtest_record = record
        item.memtest_mitigation = entry
        item.user_properties.append(("memtest_mitigation_sharpness", record["score"]))
        for when in ("before", "after"):  # on a canary that plants the prompt: copies and RMSE to its image
            if record.get(f"copy_{when}"):
                item.user_properties.append((f"memtest_copy_{when}", record[f"copy_{when}"]))
        if record["outcome"] == "failed":
            raise GateFailure(
                f"{record['message']}\n"
                f"  prompt:     {case.prompt!r}\n"
                f"  unmitigated sharpness: {unmitigated:.6g}   threshold: {cal.threshold:.6g}\n"
                f"  accepted x_T sharpness: {record['values']}\n"
                f"  seeds tried: {len(entry['seeds_tried'])}   steps: {entry['steps']}"
            )

    def _error_record(self, item: MemtestItem, message: str) -> dict[str, Any]:
        c = item.case
        mitigate = isinstance(item, MitigationItem)
        return {
            "id": f"{c.id}[mitigate]" if mitigate else c.id, "suite": c.suite, "suite_version": c.suite_version,
            "case_id": c.case_id, "kind": "mitigate" if mitigate else "detect", "prompt": c.prompt,
            "expectation": c.expectation, "tags": list(c.tags),
            "score": None, "values": [], "seeds": [], "threshold": None, "margin": None, "flagged": None,
            "outcome": "error", "message": message, "nodeid": item.nodeid,
        }  # fmt: skip

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        record = getattr(item, "memtest_record", None)
        if report.when == "call" and record is not None:
            # Plain JSON types only: xdist serialises the report to send it to the controller.
            report.memtest_case = record  # type: ignore[attr-defined]
            entry = getattr(item, "memtest_mitigation", None)
            if entry is not None:
                report.memtest_mitigation = entry  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "memtest_case", None)
        if record is not None and report.when == "call" and not self.is_worker:
            self.records.append(record)
            entry = getattr(report, "memtest_mitigation", None)
            if entry is not None:
                self.mitigation.append(entry)

    # -- end of run ---------------------------------------------------------------------------------
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        out = getattr(node, "workeroutput", {}).get("memtest")
        if out:
            self.workers[str(node.workerinput.get("workerid", len(self.workers)))] = out

    def context(self) -> dict[str, Any] | None:
        """What this process knows of the checkpoint and settings (None if it scored nothing)."""
        if self._engine is None or self._engine._checkpoint is None:
            return None
        engine = self._engine
        ctx = engine.context()
        ctx.update(loads=engine.loads, scored=engine.scored, cache_hits=engine.cache_hits)
        return dict(ctx)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            ctx = self.context()
            if ctx is not None:
                self.config.workeroutput["memtest"] = ctx  # type: ignore[attr-defined]
            return
        try:
            self._write_outputs()
        except MemtestError as exc:
            self.finish_error = str(exc)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _shared_context(self) -> dict[str, Any] | None:
        local = self.context()
        if local is not None:
            return local
        return next(iter(self.workers.values()), None)

    def _write_outputs(self) -> None:
        if not self.records:
            return
        ctx = self._shared_context()
        if ctx is None:
            return
        if self.audit.calibrate:
            self._write_calibration(ctx)
            return
        if not (self.json_path or self.report_path):
            return
        from memtest.audit import results_document
        from memtest.audit.results import write_results

        calibration = None
        detect = [r for r in self.records if r.get("outcome") != "error" or r.get("threshold") is not None]
        if detect and ctx.get("calibration") is not None:
            calibration = ctx["calibration"]
        doc = results_document(
            ctx,
            self.records,
            command=shlex.join(["pytest", *self.config.invocation_params.args]),
            calibration=calibration,
            shard=self.audit.shard,
            mitigation=sorted(self.mitigation, key=lambda e: str(e["id"])),
        )
        if self.json_path:
            path = self._resolve(self.json_path)
            write_results(doc, path)
            self.written.append(("results", str(path)))
        if self.report_path:
            from memtest.report import write_report

            path = self._resolve(self.report_path)
            write_report(doc, path)
            self.written.append(("report", str(path)))

    def _write_calibration(self, ctx: dict[str, Any]) -> None:
        from memtest.audit.calibration import calibrate, save_calibration

        refs = [r for r in self.records if r["expectation"] == "reference" and r["outcome"] == "passed"]
        failed = [r for r in self.records if r["outcome"] != "passed"]
        if failed:
            raise MemtestError(
                f"{len(failed)} reference case(s) did not score, so no calibration was written. Fix them and rerun."
            )
        suites = sorted({(r["suite"], r["suite_version"]) for r in refs})
        cal = calibrate(
            [r["score"] for r in sorted(refs, key=lambda r: r["id"])],
            self.audit.fpr,
            ctx["identity"],
            reference_suite="+".join(s for s, _ in suites),
            reference_version="+".join(v for _, v in suites),
            checkpoint=self.audit.checkpoint,
        )
        path = save_calibration(cal, self.calibration_output())
        self.written.append(("calibration", str(path)))
        self.calibration_summary = (
            f"threshold {cal.threshold:.6g} (95% CI {cal.ci[0]:.4g}..{cal.ci[1]:.4g}) at fpr {cal.fpr:g} "
            f"from {cal.n_reference} reference prompts"
        )

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        tr.section("memtest")
        recs = self.records
        counts = {k: sum(1 for r in recs if r["outcome"] == k) for k in ("passed", "failed", "error")}
        flagged = sum(1 for r in recs if r.get("flagged"))
        tr.write_line(
            f"checkpoint {self.checkpoint_name} · {self.audit.metric}/{self.audit.method} n={self.audit.n} · "
            f"{len(recs)} cases: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors; "
            f"{flagged} flagged"
        )
        detect = [r for r in recs if r.get("kind", "detect") == "detect"]
        judged = [r for r in detect if r.get("margin") is not None and r["expectation"] == "clean"]
        if judged:
            tr.write_line("closest clean cases to the threshold (margin = score - threshold):")
            for r in sorted(judged, key=lambda r: -r["margin"])[:5]:
                tr.write_line(f"  {r['id']:<48} score {r['score']:.6g}  margin {r['margin']:+.4g}  {r['outcome']}")
        errors: dict[str, int] = {}
        for r in recs:
            if r["outcome"] == "error":
                errors[str(r.get("message"))] = errors.get(str(r.get("message")), 0) + 1
        for message, count in errors.items():  # one line per distinct cause, however many cases it stopped
            tr.write_line(f"{count} case(s) errored: {message}", red=True)
        memorized = [r for r in detect if r.get("margin") is not None and r["expectation"] == "memorized"]
        if memorized:
            weakest = min(memorized, key=lambda r: r["margin"])
            tr.write_line(f"weakest memorized case: {weakest['id']} margin {weakest['margin']:+.4g}")
        mitigated = [r for r in recs if r.get("kind") == "mitigate"]
        if mitigated:
            ok = sum(1 for r in mitigated if r["outcome"] == "passed")
            if self.audit.mitigation_method == "resample":
                tr.write_line(f"mitigation (resample): {ok} of {len(mitigated)} cases passed")
            else:
                tr.write_line(f"mitigation (SAIL): {ok} of {len(mitigated)} cases found flat initial noise")
            for r in sorted(mitigated, key=lambda r: r["id"]):
                if r.get("score") is not None:
                    tr.write_line(
                        f"  {r['id']:<48} sharpness {r['unmitigated']:.4g} -> {r['score']:.4g}  {r['outcome']}"
                    )
        contexts = [c for c in [self.context(), *self.workers.values()] if c]
        if contexts:
            scored = sum(int(c.get("scored", 0)) for c in contexts)
            hits = sum(int(c.get("cache_hits", 0)) for c in contexts)
            tr.write_line(f"scored {scored} prompts, {hits} from the cache")
        if self.workers:
            loads = {w: o.get("loads") for w, o in sorted(self.workers.items())}
            tr.write_line(f"xdist workers (checkpoint loads): {loads}")
        if getattr(self, "calibration_summary", None):
            tr.write_line(f"calibration: {self.calibration_summary}")
        for kind, path in self.written:
            tr.write_line(f"{kind} written: {path}")
        if self.finish_error:
            tr.write_line(f"memtest error: {self.finish_error}", red=True)


class _TerminalStream:
    """pytest's terminal as a stream for memtest.progress: writes bypass output capturing (scoring runs
    inside a test) and start on a fresh line when pytest is mid-line."""

    def __init__(self, config: pytest.Config, tr: Any) -> None:
        self.config, self.tr = config, tr

    def write(self, text: str) -> None:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            self.tr.ensure_newline()
            self.tr.write(text, flush=True)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return bool(getattr(self.tr, "isatty", False))


__all__ = ["SESSION_KEY", "MemtestSession"]
