"""DreamBench (the DreamBooth benchmark): its 30 subjects, its 25 evaluation prompts, the published results.

The catalog is built in: subject -> class noun and live/object (live subjects, cats and dogs,
get the paper's live prompt lists). `rpo.importer` imports the photos from a local copy of the
DreamBench `dataset` folder (google/dreambooth on GitHub).
"""

from __future__ import annotations

from dataclasses import dataclass

from rpo.prompts import fill

@dataclass(frozen=True)
class Entry:
    class_noun: str
    live: bool


_LIVE = ("cat", "dog")
CATALOG: dict[str, Entry] = {name: Entry(noun, noun in _LIVE) for name, noun in {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat",
    "clock": "clock", "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog",
    "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog", "duck_toy": "toy",
    "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}.items()}


@dataclass(frozen=True)
class Published:
    """A DreamBench result as published, with the models behind it (DESIGN.md section 1)."""

    method: str
    dino: float
    clip_i: float
    clip_t: float | None
    models: str
    source: str
    lambda_val: float | None = None


_RPO_MODELS = ("base stabilityai/stable-diffusion-2-1, reward kakaobrain/align-base; "
               "DINO facebook/dino-vits16, CLIP openai/clip-vit-base-patch16")
_RPO_SOURCE = "RPO official README (arXiv 2407.12164), 30 subjects"
_DREAMBOOTH_SOURCE = "DreamBooth paper (Ruiz et al., CVPR 2023), quoted by the RPO README"
PUBLISHED = (
    Published("RPO, lambda_val 0.3", 0.581, 0.798, 0.329, _RPO_MODELS, _RPO_SOURCE, 0.3),
    Published("RPO, lambda_val 0.5", 0.652, 0.833, 0.314, _RPO_MODELS, _RPO_SOURCE, 0.5),
    Published("RPO, lambda_val 0.7", 0.679, 0.850, 0.304, _RPO_MODELS, _RPO_SOURCE, 0.7),
    Published("DreamBooth (Stable Diffusion)", 0.668, 0.803, 0.305,
              "base Stable Diffusion; DINO ViT-S/16 and CLIP, as in the DreamBooth paper", _DREAMBOOTH_SOURCE),
    Published("Real images (references against each other)", 0.774, 0.885, None,
              "no generation; DINO ViT-S/16 and CLIP, as in the DreamBooth paper", _DREAMBOOTH_SOURCE),
)


def published_rpo(lambda_val: float) -> Published | None:
    return next((p for p in PUBLISHED if p.lambda_val is not None and abs(p.lambda_val - lambda_val) < 1e-9), None)


_EVAL_SHARED = [
    "a {v} {k} in the jungle",
    "a {v} {k} in the snow",
    "a {v} {k} on the beach",
    "a {v} {k} on a cobblestone street",
    "a {v} {k} on top of pink fabric",
    "a {v} {k} on top of a wooden floor",
    "a {v} {k} with a city in the background",
    "a {v} {k} with a mountain in the background",
    "a {v} {k} with a blue house in the background",
    "a {v} {k} on top of a purple rug in a forest",
]
_EVAL_TAIL = [
    "a red {v} {k}",
    "a purple {v} {k}",
    "a shiny {v} {k}",
    "a wet {v} {k}",
    "a cube shaped {v} {k}",
]
# The 25 DreamBench evaluation templates (dataset/prompts_and_classes.txt), "{v}" unique token, "{k}" class noun.
EVAL_OBJECT = _EVAL_SHARED + [
    "a {v} {k} with a wheat field in the background",
    "a {v} {k} with a tree and autumn leaves in the background",
    "a {v} {k} with the Eiffel Tower in the background",
    "a {v} {k} floating on top of water",
    "a {v} {k} floating in an ocean of milk",
    "a {v} {k} on top of green grass with sunflowers around it",
    "a {v} {k} on top of a mirror",
    "a {v} {k} on top of the sidewalk in a crowded street",
    "a {v} {k} on top of a dirt road",
    "a {v} {k} on top of a white rug",
] + _EVAL_TAIL
EVAL_LIVE = _EVAL_SHARED + [
    "a {v} {k} wearing a red hat",
    "a {v} {k} wearing a santa hat",
    "a {v} {k} wearing a rainbow scarf",
    "a {v} {k} wearing a black top hat and a monocle",
    "a {v} {k} in a chef outfit",
    "a {v} {k} in a firefighter outfit",
    "a {v} {k} in a police outfit",
    "a {v} {k} wearing pink glasses",
    "a {v} {k} wearing a yellow shirt",
    "a {v} {k} in a purple wizard outfit",
] + _EVAL_TAIL


def evaluation_prompts(token: str, class_noun: str, live: bool) -> list[str]:
    return fill(EVAL_LIVE if live else EVAL_OBJECT, token, class_noun)
