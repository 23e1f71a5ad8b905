"""The 32 x 32 canvas both the object and the backgrounds are drawn on: pixel grids and painting primitives."""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as Polygon

SIZE = 32
Y, X = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
Y2, X2 = np.mgrid[0 : 2 * SIZE, 0 : 2 * SIZE] / 2 + 0.25  # 2x supersampling grid


def coverage(inside: np.ndarray) -> np.ndarray:
    """Fraction of each pixel covered, from a boolean mask on the 2x grid."""
    return inside.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3))


def polygon(points, x, y) -> np.ndarray:
    return Polygon(points).contains_points(np.stack([x.ravel(), y.ravel()], 1)).reshape(x.shape)


def disc(cx, cy, r) -> np.ndarray:
    return coverage((X2 - cx) ** 2 + (Y2 - cy) ** 2 <= r * r)


def paint(img: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    a = np.clip(alpha, 0, 1)[..., None]
    return img * (1 - a) + a * np.asarray(colour, float)
