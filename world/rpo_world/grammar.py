"""The world's vocabulary and its captions, in the paper's prompt grammar.

A scene is an object (shape, colour, surface pattern, class noun, and optionally a mark)
in a context drawn as a background, optionally in a style. Its caption reads
`a [colour] [pattern] [shape] noun [context phrase] [style phrase]`, e.g.
`a red striped star toy on the beach`. Context and style phrases are exactly those of the
paper's training prompts and of the DreamBench evaluation prompts, so every drawable
prompt of the product is a caption of this world. `parse` reads a caption (or a product
prompt with the unique token in it) back into the attributes it asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SHAPES = ("circle", "square", "triangle", "star", "cross")
SHAPE_WORDS = {"cube shaped": "square"}  # DreamBench's "a cube shaped V k"
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
PATTERNS = ("plain", "striped", "dotted", "checkered")  # "plain" is never written in a caption
MARKS = ("none", "spot", "band", "ring")  # the subjects' distinctive marks: never named in a caption
NOUNS = {"toy": False, "pet": True}  # class noun -> live (a pet is drawn with eyes and feet)
STYLES = {"vangogh": "in Vincent Van Gogh rendition"}

# context -> its phrase in the paper's training prompts / DreamBench's evaluation prompts
CONTEXTS = {
    # paper's training prompts
    "moon": "on the Moon",
    "great_wall": "with a China Great Wall in the background",
    "wooden_roof": "on top of wooden roof",
    "statue_of_liberty": "with the Statue of Liberty in the background",
    "volcano": "with a volcano in the background",
    "subway": "on a subway platform",
    "pool": "is swimming in a pool",
    # DreamBench evaluation prompts
    "jungle": "in the jungle",
    "snow": "in the snow",
    "beach": "on the beach",
    "cobblestone": "on a cobblestone street",
    "pink_fabric": "on top of pink fabric",
    "wooden_floor": "on top of a wooden floor",
    "city": "with a city in the background",
    "mountain": "with a mountain in the background",
    "blue_house": "with a blue house in the background",
    "purple_rug": "on top of a purple rug in a forest",
    "wheat_field": "with a wheat field in the background",
    "autumn_tree": "with a tree and autumn leaves in the background",
    "eiffel_tower": "with the Eiffel Tower in the background",
    "water": "floating on top of water",
    "milk": "floating in an ocean of milk",
    "sunflowers": "on top of green grass with sunflowers around it",
    "mirror": "on top of a mirror",
    "crowded_street": "on top of the sidewalk in a crowded street",
    "dirt_road": "on top of a dirt road",
    "white_rug": "on top of a white rug",
    # home backgrounds of the subjects' reference photos: in no prompt of the product
    "studio": "in a photo studio",
    "table": "on a kitchen table",
}
HOME_CONTEXTS = ("studio", "table")


@dataclass(frozen=True)
class Scene:
    """Everything a render depends on, besides the seed of its jitter."""

    shape: str
    colour: str
    pattern: str
    noun: str
    context: str
    mark: str = "none"
    style: str | None = None

    @property
    def live(self) -> bool:
        return NOUNS[self.noun]


@dataclass
class Request:
    """What a caption or prompt asks for; None where it says nothing (any value is faithful)."""

    noun: str | None = None
    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None
    context: str | None = None
    style: str | None = None
    unparsed: list[str] = field(default_factory=list)  # words this world cannot draw (shiny, wearing a hat)


def caption(scene: Scene, keep: dict | None = None, shape_word: str | None = None) -> str:
    """The caption of `scene`; `keep[attr] = False` leaves an attribute unsaid (noun is always said)."""
    keep = keep or {}
    words = ["a"]
    if keep.get("colour", True):
        words.append(scene.colour)
    if keep.get("pattern", True) and scene.pattern != "plain":
        words.append(scene.pattern)
    if keep.get("shape", True):
        words.append(shape_word or scene.shape)
    words.append(scene.noun)
    if keep.get("context", True):
        words.append(CONTEXTS[scene.context])
    if scene.style and keep.get("style", True):
        words.append(STYLES[scene.style])
    return " ".join(words)


_PHRASES = sorted([(p, "context", c) for c, p in CONTEXTS.items()] + [(p, "style", s) for s, p in STYLES.items()],
                  key=lambda x: -len(x[0]))
_WORDS = {**{w: ("shape", w) for w in SHAPES}, **{w: ("colour", w) for w in COLOURS},
          **{w: ("pattern", w) for w in PATTERNS}, **{w: ("noun", w) for w in NOUNS}}


def parse(text: str, token: str | None = None) -> Request:
    """Attributes named by a caption or prompt; the unique token, if given, is skipped.

    Colour, pattern and shape words count only before the class noun (the grammar puts them
    there), so "a V pet wearing a red hat" asks for no colour: the hat is not drawable.
    """
    text = " " + re.sub(r"\s+", " ", text.strip()) + " "
    req = Request()
    for phrase, attr, value in _PHRASES:
        if f" {phrase} " in text:
            setattr(req, attr, value)
            text = text.replace(f" {phrase} ", " ")
    for phrase, value in SHAPE_WORDS.items():
        if f" {phrase} " in text:
            req.shape, text = value, text.replace(f" {phrase} ", " ")
    for word in text.split():
        attr, value = _WORDS.get(word, (None, None))
        if req.noun is None and attr is not None:
            setattr(req, attr, value)
        elif word not in ("a", "an", "the", "of", "photo", token):
            req.unparsed.append(word)
    return req
