"""Seeds and initial noise, in one place: the detector's seeds for a prompt (`derive_seeds`), the fresh seeds a
mitigation draws after them (`fresh_seed`, `SeedStream`), the initial noise x_T of a seed (`initial_noise`), and
the random generator of a prompt baseline's edits (`edit_rng`).

Every number here is pinned: shipped calibrations store scores measured at these seeds' noises, and the
salt strings ("{base}\\0{prompt}", "memtest-sail\\0{salt}\\0{k}", "{method}\\0{seed}\\0{prompt}") must not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

NoiseFn = Callable[[Sequence[int]], torch.Tensor]


def derive_seeds(base: int, n: int, prompt: str | None = None) -> list[int]:
    """n seeds from the base seed; with a prompt, seeds specific to that prompt (stable across runs)."""
    if prompt is None:
        return [base + i for i in range(n)]
    digest = hashlib.sha256(f"{base}\0{prompt}".encode()).digest()
    start = int.from_bytes(digest[:6], "big")
    return [start + i for i in range(n)]


def fresh_seed(salt: str, k: int) -> int:
    """The k-th fresh seed of a run: 48 bits of sha256(salt, k), stable across runs and machines."""
    digest = hashlib.sha256(f"memtest-sail\0{salt}\0{k}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


class SeedStream:
    """Seeds in order: `first`, then fresh ones (`fresh_seed(salt, k)`); never the same seed twice."""

    def __init__(self, first: Sequence[int], salt: str) -> None:
        self._first = [int(s) for s in first]
        self._salt = salt
        self._k = 0
        self.used: list[int] = []
        self._seen: set[int] = set()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        while True:
            if self._first:
                seed = self._first.pop(0)
            else:
                seed = fresh_seed(self._salt, self._k)
                self._k += 1
            if seed not in self._seen:
                self._seen.add(seed)
                self.used.append(seed)
                return seed


def edit_rng(method: str, seed: int, prompt: str) -> np.random.Generator:
    """The random generator of a prompt baseline's edits (RTA, RNA) of `prompt`: 64 bits of
    sha256(method, seed, prompt), stable across runs and machines."""
    digest = hashlib.sha256(f"{method}\0{seed}\0{prompt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], sigma: float = 1.0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """x_T of shape (len(seeds), *shape): N(0, σ² I), one CPU generator per seed, so the same seed gives the
    same noise on any device."""
    shape = tuple(int(s) for s in shape)
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    for i, seed in enumerate(seeds):
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out[i] = torch.randn(shape, generator=gen, dtype=torch.float32)
    return (out * sigma).to(device)


def gaussian_noise(shape: Sequence[int], sigma: float = 1.0, device: str | torch.device = "cpu") -> NoiseFn:
    """seeds -> x_T of shape (len(seeds), *shape): `initial_noise` with the shape, σ and device fixed."""
    shape = tuple(int(s) for s in shape)

    def noise(seeds: Sequence[int]) -> torch.Tensor:
        return initial_noise(seeds, shape, sigma, device)

    return noise


__all__ = ["NoiseFn", "SeedStream", "derive_seeds", "edit_rng", "fresh_seed", "gaussian_noise", "initial_noise"]
