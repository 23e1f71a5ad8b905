"""A stage's view of the project: its root, the typed config, the checked subject, its artifact paths.

Light to import (no torch), so the CLI rejects bad params or photos within a second,
before any library or model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rpo.artifacts import Paths
from rpo.config import Config
from rpo.subjects import Subject, load_subject


@dataclass(frozen=True)
class Context:
    root: Path
    cfg: Config
    subject: Subject
    paths: Paths

    @property
    def token(self) -> str:
        return self.cfg.unique_token

    @property
    def resolution(self) -> int:
        return self.cfg.model.resolution

    def rel(self, path: Path) -> str:
        """Paths inside artifacts are relative to the project: valid in any clone or workspace."""
        return Path(path).relative_to(self.root).as_posix()

    def with_paths(self, paths: Paths) -> "Context":
        return dataclasses.replace(self, paths=paths)


def context(root: Path, cfg: Config, name: str, check_images: bool = True) -> Context:
    root = Path(root).resolve()
    subject = load_subject(root / cfg.paths.subjects, name, cfg.model.resolution, check_images)
    return Context(root, cfg, subject, Paths(root, name))
