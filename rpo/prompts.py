"""The paper's training prompts, the instance prompt, and the unique-token rule.

A prompt names the subject as "a V k ...". Only the diffusion model's own text
encoder ever sees V: reward and metric encoders never learned it, so it is
removed first (`strip_token`). The evaluation prompts are DreamBench's (rpo.dreambench).
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

def fill(templates: list[str], token: str, class_noun: str) -> list[str]:
    return [t.format(v=token, k=class_noun) for t in templates]


def training_prompts(token: str, class_noun: str, live: bool) -> list[str]:
    return fill(TRAIN_LIVE if live else TRAIN_OBJECT, token, class_noun)


def subject_training_prompts(ctx) -> list[str]:
    """The training prompts of a stage's subject (rpo.context.Context)."""
    return training_prompts(ctx.token, ctx.subject.class_noun, ctx.subject.live)


def instance_prompt(token: str, class_noun: str) -> str:
    """c_inst, the prompt of the reference photos in L_sim."""
    return f"a photo of {token} {class_noun}"


def class_prompt(class_noun: str) -> str:
    """The instance prompt without V: DreamBooth's class prompt, of the class images of prior preservation."""
    return f"a photo of {class_noun}"


def strip_token(prompt: str, token: str) -> str:
    """Remove the unique token V (a whole word) so encoders that never learned it see plain text."""
    out = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", " ", prompt)
    return re.sub(r"\s+", " ", out).strip()
