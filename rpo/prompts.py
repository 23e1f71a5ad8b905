"""Prompts of the paper and of DreamBench, and the unique-token rule.

A prompt names the subject as "a V k ...". Only the diffusion model's own text
encoder ever sees V: reward and metric encoders never learned it, so it is
removed first (`strip_token`).
"""

from __future__ import annotations

import re

# Training prompts of the RPO paper (official code), "{v}" unique token, "{k}" class noun.
TRAIN_OBJECT = [
    "a {v} {k} in Vincent Van Gogh rendition",
    "a {v} {k} on the Moon",
    "a green {v} {k}",
    "a {v} {k} with a China Great Wall in the background",
    "a {v} {k} on top of wooden roof",
    "a {v} {k} with the Statue of Liberty in the background",
    "a {v} {k} with a volcano in the background",
    "a {v} {k} on a subway platform",
]
TRAIN_LIVE = [
    "a {v} {k} wearing a green outfit",
    "a {v} {k} in Vincent Van Gogh rendition",
    "a {v} {k} with a China Great Wall in the background",
    "a {v} {k} is swimming in a pool",
    "a {v} {k} on a subway platform",
    "a {v} {k} with the Statue of Liberty in the background",
    "a {v} {k} on the Moon",
    "a green {v} {k}",
]

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
# The 25 DreamBench evaluation templates (dreambench/prompts_and_classes.txt).
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


def fill(templates: list[str], token: str, class_noun: str) -> list[str]:
    return [t.format(v=token, k=class_noun) for t in templates]


def training_prompts(token: str, class_noun: str, live: bool) -> list[str]:
    return fill(TRAIN_LIVE if live else TRAIN_OBJECT, token, class_noun)


def evaluation_prompts(token: str, class_noun: str, live: bool) -> list[str]:
    return fill(EVAL_LIVE if live else EVAL_OBJECT, token, class_noun)


def instance_prompt(token: str, class_noun: str) -> str:
    """c_inst, the prompt of the reference photos in L_sim."""
    return f"a photo of {token} {class_noun}"


def strip_token(prompt: str, token: str) -> str:
    """Remove the unique token V (a whole word) so encoders that never learned it see plain text."""
    out = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", " ", prompt)
    return re.sub(r"\s+", " ", out).strip()
