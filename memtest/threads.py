"""How many torch threads a memtest process uses.

Small models run many tiny parallel regions, and an OpenMP pool with more threads than free cores spends
its time waiting on barriers instead of working: with two xdist workers of two threads each, or beside
another torch job on the same cores, a run was 30x slower than quiet. So each process takes its share of
the cores it may run on, not every core of the machine, and an explicit OMP_NUM_THREADS/MKL_NUM_THREADS
(the usual way a CI runner says how many cores a job has) wins over that guess.
"""

from __future__ import annotations

import os

from .errors import MemtestError

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _positive_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    # OpenMP allows a list ("4,2") for nested levels; the first entry is the outer pool's size.
    head = raw.split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) > 0 else None


def xdist_workers() -> int:
    """The number of xdist workers sharing the machine, as xdist tells its workers (1 outside xdist)."""
    raw = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def default_threads(*, workers: int | None = None) -> int:
    """OMP_NUM_THREADS (or MKL_NUM_THREADS) when set, else the usable cores divided among the xdist
    workers (`workers`, default: what xdist tells this process), at least 1."""
    for name in _THREAD_ENV:
        value = _positive_env(name)
        if value is not None:
            return value
    return max(1, usable_cores() // max(1, workers if workers is not None else xdist_workers()))


def describe_threads(n: int | None = None, *, workers: int | None = None) -> str:
    """`threads=N (where N comes from)`, for headers and logs; `n` is the configured value (None: default)."""
    if n is not None:
        return f"threads={n} (set)"
    for name in _THREAD_ENV:
        if _positive_env(name) is not None:
            return f"threads={_positive_env(name)} (from {name})"
    count = max(1, workers if workers is not None else xdist_workers())
    share = f" / {count} xdist workers" if count > 1 else ""
    return f"threads={default_threads(workers=count)} (default: {usable_cores()} usable cores{share})"


def apply_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (None: `default_threads()`) and return what torch now uses.

    The inter-op pool can only be sized before torch first uses it; later calls leave it as it is (it is
    idle in memtest's work, which runs no parallel graph sections).
    """
    if n is not None and n < 1:
        raise MemtestError(f"threads must be at least 1, got {n}. Pass --memtest-threads=1 or more, or leave it unset.")
    import torch

    threads = default_threads() if n is None else n
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        if torch.get_num_interop_threads() != threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError:  # the inter-op pool has started already: it can no longer be resized
        pass
    return int(torch.get_num_threads())


__all__ = ["apply_threads", "default_threads", "describe_threads", "usable_cores", "xdist_workers"]
