"""Seeds and initial noise (memtest.detection.noise) are pinned: shipped calibrations store scores measured at
these noises, and mitigation records name these seeds. The numbers below were taken before the module existed
(from scoring.derive_seeds, sail.fresh_seed / gaussian_noise and the baselines' generator)."""

from __future__ import annotations

import hashlib

import torch

from memtest.detection.noise import SeedStream, derive_seeds, edit_rng, fresh_seed, gaussian_noise, initial_noise


def test_the_salted_seeds_are_pinned() -> None:
    assert derive_seeds(7, 2) == [7, 8]
    assert derive_seeds(0, 2, "a cat") == [207608117946163, 207608117946164]
    assert fresh_seed("0\0a cat", 0) == 142862053615702  # SAIL's salt: "{seed}\0{prompt}"
    assert fresh_seed("resample\0" + "0\0a cat", 1) == 153109940984527  # resample's salt
    assert edit_rng("rta", 0, "a cat").integers(0, 10**9, 3).tolist() == [321651825, 797818778, 64875754]


def test_the_initial_noise_is_pinned() -> None:
    x = gaussian_noise((4, 8, 8), 0.5)([0, 2**40])
    assert x.dtype == torch.float32 and x.shape == (2, 4, 8, 8)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == (
        "4b7a5c51a1c1c5bac833f13811e20716f5b99ebbb986a873d9b141a32bde4915"
    )
    assert torch.equal(initial_noise([0, 2**40], (4, 8, 8), 0.5), x)


def test_a_seed_stream_starts_with_its_seeds_and_never_repeats() -> None:
    stream = SeedStream([3, 3, fresh_seed("s", 0)], "s")
    drawn = [next(stream) for _ in range(4)]
    assert drawn == [3, fresh_seed("s", 0), fresh_seed("s", 1), fresh_seed("s", 2)] and stream.used == drawn
