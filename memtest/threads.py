"""How many torch threads a memtest process uses, and how they wait.

The count: OMP_NUM_THREADS/MKL_NUM_THREADS when set (the usual way a CI runner says how many cores a job
has), else the cores this process may run on (its affinity), or the `threads` option. It is deliberately
the same in every xdist worker: CPU kernels split their reductions by thread count, so a prompt's score
changes with it (by 0.16% for a canary prompt between 1 and 2 threads), and scores must not depend on how
a suite is split over workers (`-n 2` gives the same scores as one process, bit for bit). Dividing the
cores among workers would break that; set the threads option to choose a count yourself.

The waits: small models run many tiny parallel regions, and OpenMP's default spins at each barrier,
holding a core that the thread it waits for needs. Beside another torch job on the same cores (or with
more workers than cores) that collapses: scoring 16 canary prompts on the 2-core machine under load took
40-64 s with 2 spinning threads, 7.5-9.7 s with 1 thread and 3.9 s with 2 threads that sleep instead
(OMP_WAIT_POLICY=PASSIVE; 1.3 s of CPU instead of 8-10 s). `passive_waits` sets that unless the user
chose a policy; it works only before torch loads its OpenMP runtime, which reads the variable once.
"""

from __future__ import annotations

import os
import sys

from memtest.errors import MemtestError, option

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


def default_threads() -> int:
    """OMP_NUM_THREADS (or MKL_NUM_THREADS) when set, else the usable cores; the same in every xdist worker."""
    for name in _THREAD_ENV:
        value = _positive_env(name)
        if value is not None:
            return value
    return usable_cores()


def describe_threads(n: int | None = None) -> str:
    """`threads=N (where N comes from)`, for headers and logs; `n` is the configured value (None: default)."""
    if n is not None:
        return f"threads={n} (set)"
    for name in _THREAD_ENV:
        value = _positive_env(name)
        if value is not None:
            return f"threads={value} (from {name})"
    return f"threads={usable_cores()} (default: the usable cores)"


def passive_waits() -> bool:
    """Let OpenMP threads sleep, not spin, while they wait (see the module docstring), unless
    OMP_WAIT_POLICY is set already; returns whether this process's waits are passive."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def describe_waits() -> str:
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip()
    return f"OpenMP waits {policy.lower()}" if policy else "OpenMP waits active (torch was loaded before memtest)"


def apply_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (None: `default_threads()`) and return what torch now uses.

    The inter-op pool can only be sized before torch first uses it; later calls leave it as it is (it is
    idle in memtest's work, which runs no parallel graph sections).
    """
    if n is not None and n < 1:
        raise MemtestError(
            f"{option('threads')} must be at least 1, got {n}. Pass {option('threads', 1)} or more, or leave it unset."
        )
    passive_waits()  # when this is the first import of torch
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


__all__ = [
    "apply_threads",
    "default_threads",
    "describe_threads",
    "describe_waits",
    "passive_waits",
    "usable_cores",
]
