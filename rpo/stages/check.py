"""check: params.yaml and every listed subject, before any stage that loads a model (DVC runs it first).

Every subject stage depends on `data/checked/<subject>.json`, so `dvc repro` over a list with an
unknown subject, a broken photo or bad params stops here, in a second, with the error `rpo check`
prints. The file holds only what the subject's stages read from the folder's metadata, so
re-checking an unchanged subject changes nothing downstream.
"""

from __future__ import annotations

from pathlib import Path

from rpo import artifacts as A
from rpo import family
from rpo.config import Config, family_keys
from rpo.stages import StageSpec
from rpo.subjects import Subject, load_subject

STAGE = StageSpec(
    deps=("${paths.subjects}",),
    params=("subjects", "paths.subjects", "model.resolution", "model.base", "model.vae", *family_keys()),
    outs=("data/checked",),
    models=("model.base", "model.vae"),  # their model_index.json / config.json say the model family
    per_subject=False,
)


def check_all(root: Path, cfg: Config) -> list[Subject]:
    """Every subject of `cfg.subjects`, its photos decoded, and the parameters against the base model's family
    (SD 1.x/2.x or SDXL, from its model_index.json: no weights load); raises SubjectError / ImageError naming
    the file, FamilyError naming the key."""
    family.check(cfg)
    return [load_subject(Path(root) / cfg.paths.subjects, name, cfg.model.resolution) for name in cfg.subjects]


def run(root: Path, cfg: Config) -> Path:
    subjects = check_all(root, cfg)
    paths = A.Paths(Path(root), "")
    with A.atomic_dir(paths.checked_dir) as tmp:
        for s in subjects:
            A.write_json({"subject": s.name, "class_noun": s.class_noun, "live": s.live}, tmp / f"{s.name}.json")
    return paths.checked_dir
