"""Subjects: a folder of 3 to 6 photos plus `subject.yaml` (class noun, live or object)."""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path

import yaml

from rpo.artifacts import atomic_dir
from rpo.images import ImageError, image_files, limit_short_side, load_rgb

MIN_IMAGES, MAX_IMAGES = 2, 12  # the paper uses 3 to 6; leave-one-out ALIGN-I needs at least 2
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


def load_subject(subjects_dir: Path, name: str, min_size: int | None = None, check_images: bool = True) -> Subject:
    """Read and check a subject folder; with `check_images`, every photo is opened and size-checked."""
    folder = Path(subjects_dir) / name
    if not folder.is_dir():
        known = sorted(p.name for p in Path(subjects_dir).iterdir() if p.is_dir()) if Path(subjects_dir).is_dir() else []
        raise SubjectError(f"unknown subject {name!r}: no folder {folder} (known: {', '.join(known) or 'none'})")
    meta_path = folder / "subject.yaml"
    if not meta_path.exists():
        raise SubjectError(f"{meta_path}: missing (needs class_noun and live); `rpo subjects add` writes it")
    meta = yaml.safe_load(meta_path.read_text()) or {}
    if not isinstance(meta.get("class_noun"), str) or not meta["class_noun"].strip():
        raise SubjectError(f"{meta_path}: class_noun must be a non-empty string")
    if not isinstance(meta.get("live", False), bool):
        raise SubjectError(f"{meta_path}: live must be true or false")
    images = image_files(folder)
    if not images:
        raise SubjectError(f"{folder}: no images (expected {MIN_IMAGES} to {MAX_IMAGES} photos: .jpg, .png, ...)")
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise SubjectError(f"{folder}: {len(images)} images, expected {MIN_IMAGES} to {MAX_IMAGES}")
    subject = Subject(name, meta["class_noun"].strip(), bool(meta.get("live", False)), folder, tuple(images))
    if check_images:
        subject.load_images(min_size)
    return subject


def add_subject(subjects_dir: Path, name: str, images_dir: Path, class_noun: str, live: bool,
                min_size: int | None = None, overwrite: bool = False, max_size: int | None = None) -> Subject:
    """Validate photos in `images_dir` and copy them, with subject.yaml, into `subjects_dir/name`.

    With `max_size`, photos whose short side is larger are scaled down to it (never up).
    """
    if not NAME_RE.match(name):
        raise SubjectError(f"subject name {name!r}: use letters, digits, '_' and '-' only")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise SubjectError(f"{images_dir}: not a directory")
    dest = Path(subjects_dir) / name
    if dest.exists() and not overwrite:
        raise SubjectError(f"{dest}: subject already exists (pass --overwrite to replace it)")
    images = image_files(images_dir)
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise SubjectError(f"{images_dir}: {len(images)} images, expected {MIN_IMAGES} to {MAX_IMAGES}")
    for path in images:
        load_rgb(path, min_size)  # raises ImageError naming the file
    with atomic_dir(dest) as tmp:
        for i, path in enumerate(images):
            limit_short_side(load_rgb(path), max_size).save(tmp / f"{i:02d}.png")  # normalised: upright RGB, one format
        (tmp / "subject.yaml").write_text(yaml.safe_dump({"class_noun": class_noun, "live": live}))
    return load_subject(subjects_dir, name, min_size)



