"""Random scenes and captions for pretraining, seeded per batch so a resumed run sees the same data.

`kind` says who the data is for: the diffusion model never sees a mark nor a held-out
subject combination (so the subjects are new to it); encoders and judges see marks (they
must tell subjects apart), and judges also see the held-out combinations.
"""

from __future__ import annotations

import numpy as np

from rpo_world.grammar import COLOURS, CONTEXTS, MARKS, NOUNS, PATTERNS, SHAPES, SHAPE_WORDS, Scene, caption
from rpo_world.render import render
from rpo_world.subjects import HELD_OUT

KINDS = {
    # kind: (probability of a mark, held-out combinations allowed)
    "diffusion": (0.0, False),
    "encoder": (0.4, False),
    "judge": (0.5, True),
}
STYLE_P = 0.12
KEEP_P = {"colour": 0.75, "pattern": 0.7, "shape": 0.75, "context": 0.8, "style": 0.9}


def random_scene(rng: np.random.Generator, kind: str) -> Scene:
    mark_p, held_out_ok = KINDS[kind]
    while True:
        shape, colour, pattern = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(PATTERNS)
        if held_out_ok or (shape, colour, pattern) not in HELD_OUT:
            break
    mark = rng.choice(MARKS[1:]) if rng.random() < mark_p else "none"
    style = "vangogh" if rng.random() < STYLE_P else None
    return Scene(str(shape), str(colour), str(pattern), str(rng.choice(list(NOUNS))), str(rng.choice(list(CONTEXTS))),
                 str(mark), style)


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that leaves some attributes unsaid, so short prompts ("a V toy on the beach") work."""
    keep = {k: bool(rng.random() < p) for k, p in KEEP_P.items()}
    synonyms = [w for w, s in SHAPE_WORDS.items() if s == scene.shape]
    word = synonyms[0] if synonyms and rng.random() < 0.3 else None
    return caption(scene, keep, word)


def batch(seed: int, step: int, n: int, kind: str) -> tuple[np.ndarray, list[Scene], list[str]]:
    """n images (uint8, n x 32 x 32 x 3), their scenes and captions; a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    scenes = [random_scene(rng, kind) for _ in range(n)]
    images = np.stack([render(s, rng) for s in scenes])
    return images, scenes, [random_caption(s, rng) for s in scenes]
