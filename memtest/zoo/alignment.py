"""Prompt alignment for the digits canaries: does a generated image still show the digit it was asked for?

A scikit-learn LogisticRegression trained on the same 16x16 digits the canaries train on, applied to a
colour-free "ink map" of each image (distance of every pixel from the background colour, scaled to
[0, 1]), so a digit drawn in any colours scores like the grayscale original. Mitigation uses it to check
that an image moved away from a memorised training image still shows what the prompt asks for.
No torch here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

SIZE = 16


def ink_map(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB in [0, 1] (a pipeline's `output_type="np"`) -> (N, 16, 16) ink in [0, 1].

    The background colour is the median of each image's border pixels; ink is the distance from it,
    divided by the image's largest distance. A single (H, W, 3) image is accepted too.
    """
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3) in [0, 1]; got {arr.shape}")
    border = np.concatenate([arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]], axis=1)  # (N, 2H+2W, 3)
    bg = np.median(border, axis=1)[:, None, None, :]
    ink = np.linalg.norm(arr - bg, axis=-1)
    if ink.shape[1:] != (SIZE, SIZE):
        from scipy.ndimage import zoom

        ink = zoom(ink, (1, SIZE / ink.shape[1], SIZE / ink.shape[2]), order=1)
    peak = ink.reshape(len(ink), -1).max(axis=1)
    return np.asarray(ink / np.maximum(peak, 1e-8)[:, None, None], dtype=np.float64)


@functools.lru_cache(maxsize=1)
def digit_classifier() -> Any:
    """LogisticRegression on the 1,797 upsampled 16x16 digits (each scaled to peak 1); cached."""
    from sklearn.linear_model import LogisticRegression

    from memtest.zoo.data import digits_16

    gray, labels = digits_16()
    feats = gray / np.maximum(gray.reshape(len(gray), -1).max(axis=1), 1e-8)[:, None, None]
    clf = LogisticRegression(C=0.1, max_iter=2000)
    clf.fit(feats.reshape(len(feats), -1), labels)
    return clf


def predict_proba(images: np.ndarray) -> np.ndarray:
    """(N, 10) class probabilities of the digits in RGB images (N, H, W, 3) in [0, 1]."""
    ink = ink_map(images)
    return np.asarray(digit_classifier().predict_proba(ink.reshape(len(ink), -1)), dtype=np.float64)


def alignment_score(images: np.ndarray, digit: int | Sequence[int]) -> np.ndarray:
    """Probability, per image, that it shows `digit` (one int for all images, or one per image)."""
    proba = predict_proba(images)
    want = np.broadcast_to(np.asarray(digit, dtype=np.int64), (len(proba),))
    if ((want < 0) | (want > 9)).any():
        raise ValueError(f"digits are 0-9; got {sorted(set(want.tolist()))}")
    return np.asarray(proba[np.arange(len(proba)), want], dtype=np.float64)
