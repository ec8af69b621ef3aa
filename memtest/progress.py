"""Progress of long work (scoring, calibration, training): a live bar on a terminal, plain lines in a log.

A CI log is not a terminal: a bar redrawn with carriage returns becomes one ever-growing line there. So
`Progress` draws a tqdm bar (with its ETA) only when the stream is a terminal, and otherwise prints a plain
line every `every` seconds and at the end. With no stream it is silent (quiet runs).

A `Progress` is also the `(done, total) -> None` callable that `Scorer.score(progress=...)` and
`Engine.scores(progress=...)` call after each batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

ProgressFn = Callable[[int, int], None]


class Stream(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


def is_terminal(stream: Stream | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


def clock(seconds: float) -> str:
    """m:ss (h:mm:ss past an hour); "?" when unknown."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(round(max(seconds, 0.0)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one or more tasks of `total` units, shown on `stream` (None: silent).

    `live` chooses the display: None follows the stream (a bar on a terminal, lines otherwise); `every`
    is the seconds between plain lines; tasks of at most `min_total` units show nothing. A task starts
    when the object is created or when the previous task finished, so the first batch's time counts in
    the ETA even though the first report comes after it.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: Stream | None = sys.stderr,
        live: bool | None = None,
        every: float = 10.0,
        min_total: int = 0,
        width: int | None = None,
    ) -> None:
        self.desc, self.unit, self.stream, self.every = desc, unit, stream, every
        self.min_total, self.width = min_total, width
        self.live = is_terminal(stream) if live is None else live
        self.total = total
        self.done = 0
        self.extra = ""
        self.lines = 0  # plain lines written (log mode)
        self._t0 = time.perf_counter()
        self._t_free: float | None = None  # when the last task finished: the next one starts there
        self._last_line = -math.inf
        self._bar: Any = None

    # -- the callable shape the scorer uses ---------------------------------------------------------
    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def update(self, done: int, total: int | None = None, extra: str = "") -> None:
        """`done` of `total` units finished (`extra`: a short note after the count, e.g. a loss)."""
        if total is not None and (total != self.total or done < self.done):
            self._restart(total)
        self.done, self.extra = done, extra
        if self.stream is None or (self.total is not None and self.total <= self.min_total):
            return  # silent, or a task too short to be worth a display
        if self.live:
            self._draw_bar()
        else:
            now = time.perf_counter()
            if now - self._last_line >= self.every or self.finished:
                self._last_line = now
                self._write_line()
        if self.finished:
            self.close()
            self._t_free = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def eta(self) -> float:
        if not self.total or self.done <= 0:
            return math.inf
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        """The plain status line: `desc done/total unit (pct%)  extra  elapsed m:ss  eta m:ss`."""
        total = "?" if self.total is None else str(self.total)
        unit = f" {self.unit}" if self.unit else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = f"  {self.extra}" if self.extra else ""
        times = f"elapsed {clock(self.elapsed)}  eta {clock(self.eta())}"
        return f"{self.desc} {self.done}/{total}{unit}{pct}{extra}  {times}"

    def close(self) -> None:
        """End the current task (a live bar keeps its last state on screen)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _restart(self, total: int) -> None:
        self.close()
        if self.total is not None:  # a task ran before this one: time this one from when that one ended
            self._t0 = self._t_free if self._t_free is not None else time.perf_counter()
        self._t_free = None
        self.total, self.done = total, 0
        self._last_line = -math.inf

    def _write_line(self) -> None:
        assert self.stream is not None
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.lines += 1

    def _draw_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.desc,
                unit=f" {self.unit}" if self.unit else "it",
                file=self.stream,
                ncols=self.width,
                dynamic_ncols=self.width is None,
                mininterval=0.2,
                leave=True,
            )
            # The task began before the first report (the first batch ran before it): count that time.
            self._bar.start_t = self._t0
        if self.extra:
            self._bar.set_postfix_str(self.extra, refresh=False)
        self._bar.update(self.done - self._bar.n)


def progress_for(desc: str, *, unit: str = "", quiet: bool = False, stream: Stream | None = None) -> Progress:
    """A Progress on stderr (or `stream`), silent when `quiet`."""
    return Progress(desc, unit=unit, stream=None if quiet else (stream if stream is not None else sys.stderr))


__all__ = ["Progress", "ProgressFn", "Stream", "clock", "is_terminal", "progress_for"]
