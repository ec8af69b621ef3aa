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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import memtest.audit as audit
from memtest.errors import CheckpointError, MemtestError, render_options
from memtest.progress import Progress

from .items import GateFailure, MemtestItem, MitigationItem, SuiteCollector, SuiteFile
from .options import message, output_paths, read_config, reproduce_command, spell, usage_error

SESSION_KEY = pytest.StashKey["MemtestSession"]()


class MemtestSession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.audit = read_config(config)
        self.json_path, self.report_path = output_paths(config)
        self.is_worker = hasattr(config, "workerinput")
        audit.passive_waits()  # before torch loads (here, or in xdist workers, which inherit the environment)
        try:  # a missing checkpoint or adapter stops the run at start-up
            self.subject = audit.Subject(self.audit)
        except MemtestError as exc:
            raise usage_error(exc) from None
        self.checkpoint_name, self.checkpoint_folder = self.subject.name, self.subject.folder
        self.suites = self._resolve_suites()
        self._engine: audit.Engine | None = None
        self._seen_suites: set[str] = set()
        self.records: list[audit.CaseRecord] = []
        self.mitigation: list[audit.MitigationEntry] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self.written: list[tuple[str, str]] = []
        self.finish_error: str | None = None
        self.calibration_summary: str | None = None
        self.budget: audit.FlagBudget | None = None
        self._load_error: tuple[type[MemtestError], str] | None = None
        if config.getoption("memtest_cache_clear") and not self.is_worker and self.audit.cache_dir:
            shutil.rmtree(self._resolve(self.audit.cache_dir), ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------------
    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    @property
    def engine(self) -> audit.Engine:
        if self._engine is None:
            cache = str(self._resolve(self.audit.cache_dir)) if self.audit.cache_dir else None
            calibration = str(self._resolve(self.audit.calibration)) if self.audit.calibration else None
            self._engine = audit.Engine(replace(self.audit, cache_dir=cache, calibration=calibration))
        return self._engine

    def calibration_output(self) -> Path:
        return self._resolve(self.audit.calibration or audit.CALIBRATION_FILENAME)

    # -- header -------------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        a, subject = self.audit, self.subject
        lines = [f"memtest: checkpoint {subject.name} ({subject.folder}), fingerprint {subject.fingerprint()[:16]}"]
        adapters = subject.adapters()
        for i, info in enumerate(adapters, 1):
            lines.append(
                f"memtest: lora {i}/{len(adapters)} {info.text} ({info.path}) scale {info.scale:g}, "
                f"sha256 {info.sha256[:16]}"
            )
        if adapters:
            lines.append(
                f"memtest: base + {len(adapters)} adapter{'s' if len(adapters) > 1 else ''}: "
                f"fingerprint {subject.subject_fingerprint()[:16]} (the audit's identity)"
            )
        if a.calibrate:
            lines.append(f"memtest: calibrating at fpr={a.fpr:g} -> {self.calibration_output()}")
        else:
            path = self._resolve(a.calibration) if a.calibration else subject.folder / audit.CALIBRATION_FILENAME
            lines.append(f"memtest: calibration {render_options(audit.describe_calibration_file(path), spell)}")
        s = a.score
        lines.append(
            f"memtest: metric={s.metric} method={s.method} n={s.n} seed={s.seed} steps={s.steps} "
            f"batch_size={s.batch_size} device={a.device or 'auto'} dtype={a.dtype or 'float32'} "
            f"suites={','.join(a.suites) or '(checkpoint suite)'}"
            + (f" shard={a.shard[0]}/{a.shard[1]}" if a.shard else "")
            + (" accept-base-calibration" if a.accept_base_calibration else "")
        )
        if a.mitigation_method == "resample":
            lines.append("memtest: mitigation=resample (ordinary x_T below the reference captions' level, 6 steps in)")
        elif a.mitigation_method == "attention":
            lines.append("memtest: mitigation=attention (Ren et al.: start-token logit x1.25, padding masked)")
        else:
            lines.append(f"memtest: mitigation=sail steps={a.mitigation_steps}")
        lines.append(f"memtest: torch {audit.describe_threads(a.threads)} in each process, {audit.describe_waits()}")
        return lines

    # -- collection ---------------------------------------------------------------------------------
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.suffix in (".yaml", ".yml") and audit.is_suite_file(file_path):
            self._seen_suites.add(str(file_path.resolve()))
            node: SuiteFile = SuiteFile.from_parent(parent, path=file_path)
            node.memtest = self
            return node
        return None

    def _resolve_suites(self) -> list[audit.Suite]:
        """Named suites (or the checkpoint's own), checked at start-up so that a bad name stops the run
        on the controller too (under xdist only workers collect)."""
        if not self.audit.suites and self._suite_files_in_args():
            return []
        try:
            suites = audit.resolve_suites(self.audit.suites, self.checkpoint_folder, self.checkpoint_name)
            audit.check_runnable(suites, self.audit.calibrate)
        except MemtestError as exc:
            raise usage_error(exc) from None
        return suites

    def _suite_files_in_args(self) -> bool:
        """Whether the command line names suite YAML files (or folders holding them) to collect."""
        is_suite_file = audit.is_suite_file
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

    def _progress(self) -> Progress | None:
        """Scoring progress on the terminal: a live bar on a terminal, plain lines in a log; nothing on xdist
        workers (the controller owns the terminal) or with -q; nothing for a single batch."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None or self.is_worker or self.config.get_verbosity() < 0:
            return None
        return Progress(
            "memtest: scoring",
            unit="prompts",
            stream=_TerminalStream(self.config, tr),
            live=bool(getattr(tr, "isatty", False)),
            min_total=self.audit.score.batch_size,
            width=min(int(self.config.get_terminal_writer().fullwidth), 100),
        )

    def _loaded_engine(self) -> audit.Engine:
        """The engine with its checkpoint loaded. A checkpoint that failed to load fails every later case
        at once with the same message, instead of loading (and failing) again for each case."""
        if self._load_error is not None:
            cls, text = self._load_error
            raise cls(text)
        engine = self.engine
        try:
            engine.checkpoint  # noqa: B018 (loads it)
        except CheckpointError as exc:
            self._load_error = (type(exc), Exception.__str__(exc))  # the message with its option references
            raise
        return engine

    def run_case(self, item: MemtestItem) -> None:
        case = item.case
        try:
            engine = self._loaded_engine()
            batch = [i.case.prompt for i in self._pending(item)]
            record = audit.run_case(engine, case, batch=batch, progress=self._progress())
        except MemtestError as exc:
            item.memtest_record = self._error_record(item, exc)
            raise
        record["nodeid"] = item.nodeid
        item.memtest_record = record
        item.user_properties.append(("memtest_score", record["score"]))
        item.user_properties.append(("memtest_threshold", record["threshold"]))
        if record.get("verdict"):
            item.user_properties.append(("memtest_verdict", record.get("verdict")))
        if record["outcome"] == "failed":
            values = ", ".join(f"{v:.6g}" for v in record["values"])
            raise GateFailure(
                f"{record['message']}\n"
                f"  prompt:     {case.prompt!r}\n"
                f"  score:      {record['score']:.6g} (mean of {len(record['values'])} generations)\n"
                f"  threshold:  {record['threshold']:.6g}   margin: {record['margin']:+.6g}\n"
                f"  per-generation {self.audit.score.metric}: [{values}]\n"
                f"  seeds:      {record.get('seeds')}\n"
                f"  reproduce:  {reproduce_command(self.audit, case)}"
            )

    def run_mitigation(self, item: MitigationItem) -> None:
        """SAIL (or --memtest-mitigation-method resample) on the case's prompt, in gate mode: the work and the
        judging are memtest.audit's (`run_mitigation`)."""
        case = item.case
        try:
            record, entry = audit.run_mitigation(self._loaded_engine(), case, self.suites)
        except MemtestError as exc:
            item.memtest_record = self._error_record(item, exc)
            raise
        record["nodeid"] = item.nodeid
        item.memtest_record = record
        item.memtest_mitigation = entry
        item.user_properties.append(("memtest_mitigation_sharpness", record["score"]))
        for when in ("before", "after"):  # on a canary that plants the prompt: copies and RMSE to its image
            if record.get(f"copy_{when}"):
                item.user_properties.append((f"memtest_copy_{when}", record.get(f"copy_{when}")))
        if record["outcome"] == "failed":
            raise GateFailure(
                f"{record['message']}\n"
                f"  prompt:     {case.prompt!r}\n"
                f"  unmitigated sharpness: {record.get('unmitigated', float('nan')):.6g}   "
                f"threshold: {record['threshold']:.6g}\n"
                f"  accepted x_T sharpness: {record['values']}\n"
                f"  seeds tried: {len(entry['seeds_tried'])}   steps: {entry['steps']}"
            )

    def _error_record(self, item: MemtestItem, exc: MemtestError) -> audit.CaseRecord:
        record = audit.error_record(item.case, message(exc), mitigate=isinstance(item, MitigationItem))
        record["nodeid"] = item.nodeid
        return record

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
        engine = self._engine
        if engine is None or not engine.loaded():
            return None
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
            ctx = self._shared_context()
            if ctx is not None and not self.audit.calibrate:
                self.budget = audit.run_budget(self.records, ctx.get("calibration"))
            if self.budget is not None and self.budget.exceeded:
                # Each flagged case passed alone (unconfirmed); together they are more than a clean model gives.
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self._write_outputs()
        except MemtestError as exc:
            self.finish_error = message(exc)
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
            cal = audit.calibration_from_records(self.records, self.audit.fpr, ctx["identity"], self.audit.checkpoint)
            path = audit.save_calibration(cal, self.calibration_output())
            self.written.append(("calibration", str(path)))
            self.calibration_summary = audit.describe_calibration(cal)
            return
        if not (self.json_path or self.report_path):
            return
        calibration = None
        detect = [r for r in self.records if r["outcome"] != "error" or r["threshold"] is not None]
        if detect and ctx.get("calibration") is not None:
            calibration = ctx["calibration"]
        doc = audit.results_document(
            ctx,
            self.records,
            command=shlex.join(["pytest", *self.config.invocation_params.args]),
            calibration=calibration,
            shard=self.audit.shard,
            mitigation=sorted(self.mitigation, key=lambda e: str(e["id"])),
        )
        self.written += audit.write_outputs(
            doc,
            json_path=self._resolve(self.json_path) if self.json_path else None,
            report_path=self._resolve(self.report_path) if self.report_path else None,
        )

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        tr.section("memtest")
        sc = self.audit.score
        for line in audit.summary_lines(
            self.records,
            checkpoint=self.checkpoint_name,
            metric=sc.metric,
            method=sc.method,
            n=sc.n,
            mitigation_method=self.audit.mitigation_method,
            budget=self.budget,
        ):
            tr.write_line(line.text, red=line.error)
        contexts = [c for c in [self.context(), *self.workers.values()] if c]
        if contexts:
            scored = sum(int(c.get("scored", 0)) for c in contexts)
            hits = sum(int(c.get("cache_hits", 0)) for c in contexts)
            tr.write_line(f"scored {scored} prompts, {hits} from the cache")
        if self.workers:
            loads = {w: o.get("loads") for w, o in sorted(self.workers.items())}
            tr.write_line(f"xdist workers (checkpoint loads): {loads}")
        if self.calibration_summary:
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
