"""The world's subjects: combinations held out from pretraining, each with a distinctive mark.

Like a DreamBench subject folder, each has 4 to 6 reference renders on one home
background (`subject.yaml`: class_noun, live). The base model never saw any of these
(shape, colour, pattern) combinations nor any mark, so it cannot draw a subject before
fine-tuning: whatever fidelity appears afterwards was learned from the references.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from rpo_world.grammar import Scene
from rpo_world.render import render


@dataclass(frozen=True)
class WorldSubject:
    name: str
    shape: str
    colour: str
    pattern: str
    mark: str
    noun: str
    home: str  # the one background of every reference render

    def scene(self, context: str | None = None, colour: str | None = None, style: str | None = None) -> Scene:
        return Scene(self.shape, colour or self.colour, self.pattern, self.noun, context or self.home, self.mark, style)


SUBJECTS = (
    WorldSubject("striped_star_toy", "star", "blue", "striped", "band", "toy", "studio"),
    WorldSubject("dotted_cross_toy", "cross", "yellow", "dotted", "spot", "toy", "table"),
    WorldSubject("checkered_triangle_toy", "triangle", "orange", "checkered", "ring", "toy", "studio"),
    WorldSubject("striped_circle_pet", "circle", "orange", "striped", "spot", "pet", "table"),
    WorldSubject("dotted_square_pet", "square", "blue", "dotted", "ring", "pet", "studio"),
    WorldSubject("checkered_star_pet", "star", "yellow", "checkered", "band", "pet", "table"),
)
BY_NAME = {s.name: s for s in SUBJECTS}
# never drawn in the base model's pretraining data, for any class noun
HELD_OUT = frozenset((s.shape, s.colour, s.pattern) for s in SUBJECTS)
N_REFERENCES = 5


def reference_seed(subject: WorldSubject, i: int) -> int:
    return 7_000_000 + 1000 * SUBJECTS.index(subject) + i


def write_subject(subject: WorldSubject, folder: Path, n: int = N_REFERENCES) -> None:
    """A DreamBench-style folder: n renders on the home background plus subject.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(render(subject.scene(), reference_seed(subject, i))).save(folder / f"{i:02d}.png")
    meta = {"class_noun": subject.noun, "live": subject.scene().live}
    (folder / "subject.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def world_subject(name: str) -> WorldSubject | None:
    return BY_NAME.get(name)
