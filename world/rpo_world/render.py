"""Drawing a scene: a 32 x 32 RGB picture of an object in a context, deterministic from a seed.

The object (shape, colour, surface pattern, mark; eyes and feet when it is live) is
anti-aliased by 2x supersampling and outlined, so shapes stay legible at this size; the
background is one hand-drawn painter per context, each with its own random jitter
(positions of stars, buildings, waves) so that a context is a distribution, not one picture.
"""

from __future__ import annotations

import numpy as np

from rpo_world.canvas import SIZE, X2, Y2, X, Y, coverage, disc, paint, polygon
from rpo_world.contexts import PAINTERS
from rpo_world.grammar import COLOURS, Scene

RGB = {
    "red": (0.86, 0.13, 0.13), "orange": (0.97, 0.55, 0.10), "yellow": (0.97, 0.88, 0.15),
    "green": (0.15, 0.68, 0.22), "blue": (0.15, 0.32, 0.90), "purple": (0.56, 0.20, 0.76),
}
assert set(RGB) == set(COLOURS)
OUTLINE = np.array((0.08, 0.08, 0.08))
WHITE = np.array((1.0, 1.0, 1.0))

def _star(cx, cy, r):
    a = -np.pi / 2 + np.arange(10) * np.pi / 5
    rho = np.where(np.arange(10) % 2 == 0, r * 1.15, r * 0.5)
    return np.stack([cx + rho * np.cos(a), cy + rho * np.sin(a)], 1)


def shape_mask(shape: str, cx: float, cy: float, r: float, x=X2, y=Y2) -> np.ndarray:
    """Boolean mask of a shape of half-size r centred at (cx, cy) on the grid (x, y)."""
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        return polygon([(cx, cy - 1.1 * r), (cx + 1.05 * r, cy + 0.85 * r), (cx - 1.05 * r, cy + 0.85 * r)], x, y)
    if shape == "star":
        return polygon(_star(cx, cy, r), x, y)
    if shape == "cross":
        w = 0.38 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _pattern(pattern: str, cx: float, cy: float) -> np.ndarray:
    """Where the darker shade goes, in pixel coordinates that move with the object."""
    u, v = np.floor(X - cx + 64).astype(int), np.floor(Y - cy + 64).astype(int)
    if pattern == "plain":
        return np.zeros((SIZE, SIZE), bool)
    if pattern == "striped":
        return (u // 2) % 2 == 0
    if pattern == "dotted":
        return (u % 4 >= 2) & (v % 4 >= 2)
    if pattern == "checkered":
        return (u // 3 + v // 3) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_object(img: np.ndarray, scene: Scene, cx: float, cy: float, r: float) -> np.ndarray:
    inside = coverage(shape_mask(scene.shape, cx, cy, r))
    outline = np.clip(coverage(shape_mask(scene.shape, cx, cy, r + 1.1)) - inside, 0, 1)
    colour = np.array(RGB[scene.colour])
    fill = np.where(_pattern(scene.pattern, cx, cy)[..., None], colour * 0.45, colour)
    img = paint(img, outline, WHITE if scene.mark == "ring" else OUTLINE)
    a = inside[..., None]
    img = img * (1 - a) + a * fill
    # marks and eyes sit where every shape has body: triangles are wide only low down
    low = 0.35 * r if scene.shape == "triangle" else 0.0
    if scene.mark == "spot":
        img = paint(img, disc(cx, cy + 0.2 * r + low, 2.3), WHITE)
    elif scene.mark == "band":
        img = paint(img, inside * (np.abs(Y - (cy + 0.3 * r + low / 2)) <= 1.0), OUTLINE)
    if scene.live:
        ey = cy - 0.35 * r + low
        for ex in (cx - 0.38 * r, cx + 0.38 * r):
            img = paint(img, disc(ex, ey, 1.7), WHITE)
            img = paint(img, disc(ex, ey, 0.8), OUTLINE)
        for fx in (cx - 0.45 * r, cx + 0.45 * r):
            img = paint(img, (np.abs(X - fx) <= 1.0) & (Y > cy + 0.85 * r) & (Y < cy + r + 2.5), OUTLINE)
    return img


def van_gogh(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The style: swirling displacement, brush-stroke texture, blue-yellow palette."""
    p = rng.uniform(0, 2 * np.pi, 2)
    sx = X + 1.3 * np.sin(2 * np.pi * Y / 7 + p[0])
    sy = Y + 1.3 * np.sin(2 * np.pi * X / 7 + p[1])
    xi, yi = np.clip(np.floor(sx).astype(int), 0, SIZE - 1), np.clip(np.floor(sy).astype(int), 0, SIZE - 1)
    out = img[yi, xi]
    angle = np.arctan2(Y - 16, X - 16) + np.pi / 2  # strokes circle the centre
    stroke = np.sin(2 * np.pi * (X * np.cos(angle) + Y * np.sin(angle)) / 2.5)
    out = out * (1 + 0.22 * stroke[..., None])
    tint = np.where((Y < 16)[..., None], (0.15, 0.25, 0.65), (0.95, 0.80, 0.20))
    return 0.78 * out + 0.22 * tint


def render(scene: Scene, seed: int | np.random.Generator) -> np.ndarray:
    """uint8 (32, 32, 3) picture of `scene`; the same seed gives the same picture."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    img = PAINTERS[scene.context](rng)
    cx, cy, r = 16 + rng.uniform(-2, 2), 17 + rng.uniform(-2, 2), rng.uniform(6.0, 7.5)
    img = draw_object(img, scene, cx, cy, r)
    if scene.style == "vangogh":
        img = van_gogh(img, rng)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
