"""One painter per context: a 32 x 32 background with its own random jitter.

Each context has a layout a small model can tell apart at a glance (a sky and a ground of
its own colours, one landmark), so "in the prompted context" can be judged exactly.
"""

from __future__ import annotations

import numpy as np

from rpo_world.grammar import CONTEXTS
from rpo_world.canvas import SIZE, X2, Y2, X, Y, coverage, disc, paint, polygon

SKY = (0.55, 0.78, 0.97)


def _fill(colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, float), (SIZE, SIZE, 3)).copy()


def _split(top, bottom, horizon: float) -> np.ndarray:
    return np.where((Y < horizon)[..., None], np.asarray(top, float), np.asarray(bottom, float))


def _poly(img, points, colour):
    return paint(img, coverage(polygon(points, X2, Y2)), colour)


def _rect(img, x0, y0, x1, y1, colour):
    return paint(img, (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1), colour)


def moon(rng):
    h = 13 + rng.uniform(-1, 1)
    img = _split((0.02, 0.02, 0.07), (0.62, 0.62, 0.60), h + 1.5 * np.sin(X / 6 + rng.uniform(0, 6)))
    for x, y in zip(rng.integers(0, SIZE, 8), rng.integers(0, int(h) - 2, 8)):
        img[y, x] = 1.0
    for _ in range(3):
        img = paint(img, disc(rng.uniform(2, 30), rng.uniform(h + 4, 30), rng.uniform(1.5, 3)), (0.45, 0.45, 0.44))
    return img


def great_wall(rng):
    h = 14 + rng.uniform(-1.5, 1.5)
    img = _split(SKY, (0.30, 0.55, 0.25), h)
    img = _rect(img, 0, h - 4, SIZE, h + 2, (0.62, 0.52, 0.40))
    for x in range(int(rng.integers(0, 4)), SIZE, 4):
        img = _rect(img, x, h - 6, x + 2, h - 4, (0.62, 0.52, 0.40))
    return _rect(img, 0, h + 2, SIZE, h + 3, (0.40, 0.33, 0.25))


def wooden_roof(rng):
    img = _fill(SKY)
    k = rng.uniform(0.3, 0.5)
    roof = Y > 8 + k * X
    img = np.where(roof[..., None], (0.52, 0.30, 0.16), img)
    lines = roof & ((X + 2 * Y + rng.integers(0, 6)).astype(int) % 6 == 0)
    return np.where(lines[..., None], (0.32, 0.17, 0.08), img)


def statue_of_liberty(rng):
    img = _split(SKY, (0.15, 0.30, 0.55), 26)
    x = rng.choice([4.0, 24.0]) + rng.uniform(-1, 1)
    green = (0.35, 0.68, 0.58)
    img = _rect(img, x - 3, 20, x + 3, 26, (0.55, 0.50, 0.45))
    img = _rect(img, x - 1.5, 9, x + 1.5, 20, green)
    img = paint(img, disc(x, 7.5, 1.8), green)
    img = _rect(img, x + 1, 2, x + 2.2, 9, green)
    return paint(img, disc(x + 1.6, 2, 1.3), (0.98, 0.80, 0.20))


def volcano(rng):
    img = _fill((0.85, 0.55, 0.40))
    top = 7 + rng.uniform(-1, 1)
    img = _poly(img, [(-2, 32), (11, top), (21, top), (34, 32)], (0.28, 0.18, 0.14))
    img = _rect(img, 11, top - 1, 21, top + 2, (0.98, 0.30, 0.05))
    for x in rng.uniform(12, 20, 2):
        img = _poly(img, [(x, top), (x + 1.5, top), (x - 4 + 8 * (x > 16), 30)], (0.95, 0.35, 0.05))
    return paint(img, disc(16 + rng.uniform(-3, 3), top - 4, 3), (0.45, 0.42, 0.42))


def subway(rng):
    img = _fill((0.76, 0.82, 0.76))
    off = int(rng.integers(0, 4))
    img = np.where((((X.astype(int) + off) % 4 == 0) | (Y.astype(int) % 4 == 0))[..., None], (0.55, 0.60, 0.55), img)
    img = _rect(img, 0, 22, SIZE, SIZE, (0.28, 0.28, 0.30))
    return _rect(img, 0, 22, SIZE, 24, (0.97, 0.85, 0.10))


def pool(rng):
    img = _fill((0.30, 0.78, 0.88))
    ripple = np.sin(X / 2 + 3 * np.sin(Y / 3) + rng.uniform(0, 6)) > 0.8
    img = np.where(ripple[..., None], (0.55, 0.90, 0.95), img)
    off = rng.integers(0, 8)
    lanes = (Y.astype(int) + off) % 10 == 0
    return np.where((lanes & ((X.astype(int) // 2) % 2 == 0))[..., None], (0.95, 0.25, 0.25), img)


def jungle(rng):
    img = _fill((0.06, 0.30, 0.10))
    phase = rng.uniform(0, 6)
    leaves = np.sin(X * 0.9 + 2 * np.sin(Y / 4 + phase)) > 0.3
    img = np.where(leaves[..., None], (0.18, 0.58, 0.18), img)
    for x in rng.uniform(0, SIZE, 2):
        img = _rect(img, x, 0, x + 1, SIZE, (0.40, 0.28, 0.12))
    return img


def snow(rng):
    img = _split((0.72, 0.78, 0.88), (0.97, 0.97, 1.0), 12 + rng.uniform(-1, 1))
    for x, y in zip(rng.integers(0, SIZE, 14), rng.integers(0, 11, 14)):
        img[y, x] = 1.0
    return paint(img, disc(rng.uniform(0, 32), 30, 5) * 0.4, (0.70, 0.78, 0.92))


def beach(rng):
    h = 10 + rng.uniform(-1, 1)
    img = np.where((Y < h)[..., None], SKY, np.where((Y < h + 6)[..., None], (0.08, 0.42, 0.75), (0.94, 0.84, 0.56)))
    return paint(img, (np.abs(Y - (h + 6)) < 0.8) * 0.7, (1.0, 1.0, 1.0))


def cobblestone(rng):
    row = (Y.astype(int) + rng.integers(0, 4)) // 4
    col = (X.astype(int) + 3 * (row % 2) + rng.integers(0, 6)) // 6
    shade = 0.45 + 0.12 * np.sin(row * 7.1 + col * 3.7)
    img = np.repeat(shade[..., None], 3, -1) * (1.0, 1.0, 0.95)
    gaps = ((Y.astype(int) + 0) % 4 == 0) | ((X.astype(int) + 3 * (row % 2)) % 6 == 0)
    return np.where(gaps[..., None], (0.22, 0.22, 0.22), img)


def pink_fabric(rng):
    fold = np.sin((X + Y) / 3 + rng.uniform(0, 6))
    return np.asarray((0.96, 0.60, 0.76)) * (1 + 0.12 * fold[..., None])


def wooden_floor(rng):
    off = rng.integers(0, 5)
    plank = (Y.astype(int) + off) // 5
    img = np.asarray((0.72, 0.50, 0.30)) * (1 + 0.08 * np.sin(plank * 5.3))[..., None]
    grain = np.sin(X * 0.7 + plank * 2) > 0.9
    img = np.where(grain[..., None], img * 0.88, img)
    return np.where(((Y.astype(int) + off) % 5 == 0)[..., None], (0.38, 0.24, 0.12), img)


def city(rng):
    img = _split(SKY, (0.40, 0.40, 0.42), 27)
    x = -rng.uniform(0, 4)
    while x < SIZE:
        w, top = rng.uniform(4, 7), rng.uniform(3, 14)
        img = _rect(img, x, top, x + w - 0.5, 27, (0.36, 0.40, 0.50) if rng.random() < 0.5 else (0.50, 0.50, 0.55))
        win = (X >= x + 1) & (X < x + w - 1.5) & (Y > top + 1) & (Y < 26)
        img = np.where((win & (X.astype(int) % 2 == 0) & (Y.astype(int) % 3 == 0))[..., None], (0.98, 0.90, 0.40), img)
        x += w
    return img


def mountain(rng):
    img = _split(SKY, (0.30, 0.60, 0.28), 24)
    peak = 16 + rng.uniform(-6, 6)
    img = _poly(img, [(peak - 20, 25), (peak, 3), (peak + 20, 25)], (0.50, 0.50, 0.56))
    return _poly(img, [(peak - 5, 8.5), (peak, 3), (peak + 5, 8.5)], (0.98, 0.98, 1.0))


def blue_house(rng):
    img = _split(SKY, (0.32, 0.64, 0.28), 20)
    x = rng.choice([2.0, 21.0]) + rng.uniform(-1, 1)
    img = _rect(img, x, 10, x + 9, 21, (0.18, 0.32, 0.85))
    img = _poly(img, [(x - 1.5, 10.5), (x + 4.5, 4), (x + 10.5, 10.5)], (0.60, 0.15, 0.12))
    return _rect(img, x + 3.5, 15, x + 5.5, 21, (0.45, 0.28, 0.10))


def purple_rug(rng):
    img = _split((0.06, 0.28, 0.10), (0.30, 0.22, 0.12), 14)
    for x in np.arange(rng.uniform(-2, 2), SIZE, 6):
        img = _poly(img, [(x - 3, 14), (x, 2), (x + 3, 14)], (0.10, 0.45, 0.15))
    img = _poly(img, [(3, 16), (29, 16), (32, 31), (0, 31)], (0.50, 0.22, 0.62))
    return np.where(((Y > 30) & (X.astype(int) % 2 == 0))[..., None], (0.85, 0.75, 0.90), img)


def wheat_field(rng):
    h = 11 + rng.uniform(-1, 1)
    img = _split(SKY, (0.90, 0.74, 0.30), h)
    stalks = (Y >= h) & (np.sin(X * 2.1 + Y * 0.3 + rng.uniform(0, 6)) > 0.6)
    return np.where(stalks[..., None], (0.70, 0.52, 0.15), img)


def autumn_tree(rng):
    img = _split(SKY, (0.55, 0.45, 0.25), 25)
    x = 16 + rng.uniform(-5, 5)
    img = _rect(img, x - 1.5, 12, x + 1.5, 26, (0.40, 0.25, 0.12))
    img = paint(img, disc(x, 9, 9), (0.93, 0.45, 0.10))
    for lx, ly in zip(rng.uniform(x - 8, x + 8, 10), rng.uniform(2, 16, 10)):
        img = paint(img, disc(lx, ly, 1.2), (0.80, 0.15, 0.08))
    for lx, ly in zip(rng.uniform(0, 32, 8), rng.uniform(26, 32, 8)):
        img = paint(img, disc(lx, ly, 1.0), (0.93, 0.45, 0.10))
    return img


def eiffel_tower(rng):
    img = _split((0.80, 0.85, 0.95), (0.35, 0.60, 0.30), 27)
    x = rng.choice([6.0, 26.0]) + rng.uniform(-1, 1)
    dark = (0.30, 0.26, 0.22)
    img = _poly(img, [(x - 6, 28), (x - 0.6, 1), (x + 0.6, 1), (x + 6, 28)], dark)
    img = paint(img, disc(x, 28, 3.5), (0.35, 0.60, 0.30))  # the arch between the legs
    return _rect(img, x - 3.5, 14, x + 3.5, 15.5, dark)


def water(rng):
    img = _fill((0.10, 0.30, 0.66))
    waves = np.abs(np.sin(X / 2.5 + rng.uniform(0, 6)) * 1.5 + (Y % 6) - 3) < 0.6
    return np.where(waves[..., None], (0.40, 0.62, 0.90), img)


def milk(rng):
    img = _fill((0.98, 0.96, 0.90))
    waves = np.abs(np.sin(X / 3 + rng.uniform(0, 6)) * 1.5 + (Y % 7) - 3.5) < 0.5
    return np.where(waves[..., None], (0.84, 0.82, 0.76), img)


def sunflowers(rng):
    img = _split(SKY, (0.30, 0.66, 0.25), 7)
    for fx, fy in zip(rng.uniform(0, 32, 7), rng.uniform(9, 31, 7)):
        img = paint(img, disc(fx, fy, 2.6), (0.98, 0.85, 0.05))
        img = paint(img, disc(fx, fy, 1.1), (0.40, 0.22, 0.05))
    return img


def mirror(rng):
    shade = 0.72 + 0.22 * (X + Y) / 64
    img = np.repeat(shade[..., None], 3, -1) * (0.97, 0.99, 1.0)
    streak = np.abs((X - Y) - rng.uniform(-12, 12)) < 1.5
    img = np.where(streak[..., None], (1.0, 1.0, 1.0), img)
    frame = (X < 2) | (X > 30) | (Y < 2) | (Y > 30)
    return np.where(frame[..., None], (0.55, 0.40, 0.15), img)


def crowded_street(rng):
    img = _split((0.35, 0.35, 0.38), (0.68, 0.67, 0.63), 14)
    for px in np.arange(rng.uniform(0, 3), SIZE, 3.5):
        py = rng.uniform(4, 9)
        colour = rng.uniform(0.2, 1.0, 3)
        img = _rect(img, px, py, px + 2, py + 5, colour)
        img = paint(img, disc(px + 1, py - 1, 1.1), (0.90, 0.72, 0.55))
    return np.where(((Y > 14) & (X.astype(int) % 8 == 0))[..., None], (0.55, 0.54, 0.50), img)


def dirt_road(rng):
    img = _split(SKY, (0.28, 0.58, 0.22), 8)
    c = 16 + rng.uniform(-3, 3)
    img = _poly(img, [(c - 2, 8), (c + 2, 8), (c + 18, 32), (c - 18, 32)], (0.58, 0.42, 0.25))
    for x, y in zip(rng.uniform(0, 32, 10), rng.uniform(12, 32, 10)):
        img = paint(img, disc(x, y, 0.7) * (np.abs(X - c) < 4 + (Y - 8) * 0.7), (0.40, 0.28, 0.15))
    return img


def white_rug(rng):
    img = _split((0.62, 0.44, 0.28), (0.95, 0.95, 0.93), 6 + rng.uniform(-1, 1))
    fluff = rng.uniform(-0.05, 0.05, (SIZE, SIZE, 1))
    img = np.where((Y >= 7)[..., None], img + fluff, img)
    return np.where(((np.abs(Y - 7) < 1) & (X.astype(int) % 2 == 0))[..., None], (0.80, 0.80, 0.78), img)


def studio(rng):
    shade = 0.86 - 0.14 * Y / SIZE + 0.05 * (Y > 22 + rng.uniform(-2, 2))
    return np.repeat(shade[..., None], 3, -1)


def table(rng):
    h = 13 + rng.uniform(-1, 1)
    img = _split((0.92, 0.87, 0.76), (0.80, 0.60, 0.40), h)
    return _rect(img, 0, h, SIZE, h + 1.2, (0.55, 0.38, 0.22))


PAINTERS = {name: globals()[name] for name in CONTEXTS}
