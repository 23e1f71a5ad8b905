"""Subjects: a folder of photos (3 to 6 in the paper) plus `subject.yaml` (class noun, live or object)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rpo.images import image_files, load_rgb

TYPICAL_IMAGES = (3, 6)  # the paper's range; fewer or more photos work, with a warning when imported
MAX_NAME = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SubjectError(ValueError):
    """A subject is unknown or its folder is malformed; the message names the folder or file."""


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    live: bool
    folder: Path
    images: tuple[Path, ...]

    def load_images(self, min_size: int | None = None):
        return [load_rgb(p, min_size) for p in self.images]


def check_name(name: str) -> str:
    """A subject name is a folder name and part of DVC stage names (`finetune@NAME`)."""
    if not isinstance(name, str) or not name.strip():
        raise SubjectError(f"subject name {name!r}: must not be empty")
    if len(name) > MAX_NAME:
        raise SubjectError(f"subject name {name[:20]!r}...: {len(name)} characters, at most {MAX_NAME}")
    if not NAME_RE.match(name):
        raise SubjectError(f"subject name {name!r}: use letters, digits, '_' and '-' only (starting with a letter or digit)")
    return name


def check_class_noun(noun, where: str) -> str:
    """The class noun goes into every prompt: one line of text, not blank, not a paragraph."""
    if not isinstance(noun, str) or not noun.strip():
        raise SubjectError(f"{where}: class noun must be a non-empty word, got {noun!r}")
    noun = " ".join(noun.split())
    if len(noun) > MAX_NAME:
        raise SubjectError(f"{where}: class noun {noun[:20]!r}... is {len(noun)} characters, at most {MAX_NAME}")
    return noun


def load_subject(subjects_dir: Path, name: str, min_size: int | None = None, check_images: bool = True) -> Subject:
    """Read and check a subject folder; with `check_images`, every photo is opened and size-checked."""
    check_name(name)
    folder = Path(subjects_dir) / name
    if not folder.is_dir():
        known = sorted(p.name for p in Path(subjects_dir).iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if Path(subjects_dir).is_dir() else []
        raise SubjectError(f"unknown subject {name!r}: no folder {folder} (known: {', '.join(known) or 'none'})")
    meta_path = folder / "subject.yaml"
    if not meta_path.exists():
        raise SubjectError(f"{meta_path}: missing (needs class_noun and live); `rpo subjects add` writes it")
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SubjectError(f"{meta_path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(meta, dict):
        raise SubjectError(f"{meta_path}: expected class_noun and live, got {meta!r}")
    class_noun = check_class_noun(meta.get("class_noun"), str(meta_path))
    if not isinstance(meta.get("live", False), bool):
        raise SubjectError(f"{meta_path}: live must be true or false")
    images = image_files(folder)
    if not images:
        raise SubjectError(f"{folder}: no images (expected photos of the subject: .jpg, .png, ...)")
    subject = Subject(name, class_noun, bool(meta.get("live", False)), folder, tuple(images))
    if check_images:
        subject.load_images(min_size)
    return subject
