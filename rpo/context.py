"""A stage's view of the project: its root, validated params, the checked subject, its artifact paths.

Light to import (no torch), so the CLI rejects bad params or photos within a second,
before any library or model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rpo.artifacts import Paths
from rpo.prompts import training_prompts
from rpo.subjects import Subject, load_subject

STAGES = ("prior", "score", "labels", "finetune", "select", "evaluate")


@dataclass
class Context:
    root: Path
    params: dict
    subject: Subject
    paths: Paths

    @property
    def token(self) -> str:
        return self.params["unique_token"]

    @property
    def resolution(self) -> int:
        return self.params["model"]["resolution"]

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def train_prompts(self) -> list[str]:
        return training_prompts(self.token, self.subject.class_noun, self.subject.live)

    def device(self):
        from rpo.device import pick_device

        return pick_device(self.params["device"])


def context(root: Path, params: dict, name: str, check_images: bool = True) -> Context:
    root = Path(root).resolve()
    subject = load_subject(root / params["paths"]["subjects"], name, params["model"]["resolution"], check_images)
    return Context(root, params, subject, Paths(root, name))
