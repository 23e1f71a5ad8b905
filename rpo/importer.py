"""Importing subjects: a folder of the user's photos (`rpo subjects add`) or DreamBench's (`rpo subjects add-dreambench`).

A request is checked whole before anything is written: names, class nouns, every folder, and
every photo decoded. Photos become upright RGB PNGs (MPO, EXIF rotation, CMYK, alpha) whose
short side is at most `max_size` (default 1024 px): training crops to `model.resolution` (512
for the paper) and the metric encoders look at 224 px, so 2048 px originals only cost disk and
decoding time in every stage that reads the references.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rpo.artifacts import atomic_dir
from rpo.dreambench import CATALOG
from rpo.images import DEFAULT_MAX_SIZE, image_files, limit_short_side, load_rgb
from rpo.subjects import TYPICAL_IMAGES, Subject, SubjectError, check_class_noun, check_name, load_subject

log = logging.getLogger("rpo")
CLASSES_FILE = "prompts_and_classes.txt"
CREDITS_FILE = "references_and_licenses.txt"


class DreamBenchError(SubjectError):
    """The DreamBench folder is missing, malformed or disagrees with the catalog; names the path."""


@dataclass
class Planned:
    """A subject checked and decoded, ready to be written."""

    name: str
    class_noun: str
    live: bool
    images: list  # PIL images, upright RGB, short side bounded
    dest: Path
    credits: str | None = None


def plan_subject(subjects_dir: Path, name: str, images_dir: Path, class_noun: str, live: bool,
                 min_size: int | None = None, max_size: int | None = DEFAULT_MAX_SIZE,
                 overwrite: bool = False) -> Planned:
    """Check everything about one subject and decode its photos; nothing is written."""
    check_name(name)
    class_noun = check_class_noun(class_noun, "--class-noun")
    if max_size is not None and min_size is not None and max_size < min_size:
        raise SubjectError(f"--max-size {max_size} px is below model.resolution {min_size} px")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise SubjectError(f"{images_dir}: not a directory")
    dest = Path(subjects_dir) / name
    if dest.exists() and not overwrite:
        raise SubjectError(f"{dest}: subject already exists (pass --overwrite to replace it)")
    files = image_files(images_dir)
    if not files:
        raise SubjectError(f"{images_dir}: no photos (.jpg, .png, .webp, ...)")
    if not TYPICAL_IMAGES[0] <= len(files) <= TYPICAL_IMAGES[1]:
        log.warning("%s: %d photos; the paper uses %d to %d (all %d are kept)", images_dir, len(files),
                    *TYPICAL_IMAGES, len(files))
    images = [limit_short_side(load_rgb(path, min_size), max_size) for path in files]  # raises naming the file
    return Planned(name, class_noun, live, images, dest)


def write(planned: Planned, min_size: int | None = None) -> Subject:
    with atomic_dir(planned.dest) as tmp:
        for i, image in enumerate(planned.images):
            image.save(tmp / f"{i:02d}.png")
        meta = {"class_noun": planned.class_noun, "live": planned.live}
        (tmp / "subject.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        if planned.credits:
            (tmp / "CREDITS.md").write_text(planned.credits)
    return load_subject(planned.dest.parent, planned.name, min_size)


def add_subject(subjects_dir: Path, name: str, images_dir: Path, class_noun: str, live: bool,
                min_size: int | None = None, max_size: int | None = DEFAULT_MAX_SIZE,
                overwrite: bool = False) -> Subject:
    """Validate the photos in `images_dir` and write them, with subject.yaml, to `subjects_dir/name`."""
    planned = plan_subject(subjects_dir, name, images_dir, class_noun, live, min_size, max_size, overwrite)
    return write(planned, min_size)


# --- DreamBench ---------------------------------------------------------------------------


def read_classes(dataset: Path) -> dict[str, str]:
    """subject -> class noun from the dataset's prompts_and_classes.txt (lines `subject,class`)."""
    path = Path(dataset) / CLASSES_FILE
    if not path.exists():
        raise DreamBenchError(f"{path}: missing; is {dataset} the DreamBench `dataset` folder of google/dreambooth?")
    rows = (line.split(",") for line in path.read_text().splitlines() if line.count(",") == 1)
    return {name.strip(): noun.strip() for name, noun in rows if name.strip() in CATALOG}


def check_dreambench(dataset: Path, names: list[str]) -> None:
    """Every requested subject is DreamBench's, its folder exists and agrees with the catalog."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DreamBenchError(f"{dataset}: no such DreamBench folder (set paths.dreambench or pass --dataset)")
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise DreamBenchError(f"not DreamBench subjects: {', '.join(unknown)} (known: {', '.join(CATALOG)})")
    classes = read_classes(dataset)
    for name in names:
        if name not in classes:
            raise DreamBenchError(f"{dataset / CLASSES_FILE}: no line for {name!r}")
        if classes[name] != CATALOG[name].class_noun:
            raise DreamBenchError(f"{dataset / CLASSES_FILE}: class of {name!r} is {classes[name]!r}, "
                                  f"DreamBench's is {CATALOG[name].class_noun!r}")
        if not (dataset / name).is_dir():
            raise DreamBenchError(f"{dataset / name}: missing subject folder of the DreamBench dataset")


def add_dreambench(dataset: Path, subjects_dir: Path, names: list[str] | None = None, min_size: int | None = None,
                   max_size: int = DEFAULT_MAX_SIZE, overwrite: bool = False) -> list[Subject]:
    """Import DreamBench subjects (all 30 by default); existing ones are kept unless `overwrite`.

    Every photo of every requested subject is decoded before the first subject is written.
    """
    names = list(dict.fromkeys(names or CATALOG))
    check_dreambench(dataset, names)
    credits = _credits(Path(dataset))
    todo = [n for n in names if overwrite or not (Path(subjects_dir) / n).exists()]
    planned = [plan_subject(subjects_dir, n, Path(dataset) / n, CATALOG[n].class_noun, CATALOG[n].live, min_size,
                            max_size, overwrite) for n in todo]
    for p in planned:
        p.credits = _credits_text(p.name, credits.get(p.name, ""), max_size)
    return [write(p, min_size) for p in planned]


def _credits(dataset: Path) -> dict[str, str]:
    """Per-subject sources from references_and_licenses.txt (a `name:` line, then its lines until a blank one)."""
    path = dataset / CREDITS_FILE
    if not path.exists():
        return {}
    out = {}
    for block in re.split(r"\n\s*\n", path.read_text()):
        head, _, rest = block.strip().partition(":")
        if head in CATALOG:
            out[head] = rest.strip()
    return out


def _credits_text(name: str, sources: str, max_size: int) -> str:
    return (f"# {name}\n\nDreamBench subject `{name}` (the DreamBooth dataset, google/dreambooth, folder "
            f"`dataset/{name}`), imported by `rpo subjects add-dreambench`.\n\n"
            f"Sources: {sources or 'see the dataset'}\n\n"
            "DreamBooth dataset owners: Nataniel Ruiz, Yuanzhen Li, Varun Jampani, Yael Pritch, Michael Rubinstein, "
            "Kfir Aberman. License: Creative Commons Attribution 4.0 International (CC BY 4.0), "
            "https://creativecommons.org/licenses/by/4.0/ .\n"
            f"Changes: converted to upright RGB PNG; photos scaled down to a short side of at most {max_size} px.\n")


# --- commands -----------------------------------------------------------------------------


def cli_add(args) -> None:
    from rpo.params import config_from_args

    cfg = config_from_args(args)
    s = add_subject(Path(cfg.paths.subjects), args.name, Path(args.images), args.class_noun, args.live,
                    cfg.model.resolution, args.max_size, args.overwrite)
    print(f"added {s.name}: {len(s.images)} images in {s.folder}; add it to `subjects` in {args.params} to run it")


def cli_add_dreambench(args) -> None:
    from rpo.params import config_from_args

    cfg = config_from_args(args)
    dataset = Path(args.dataset or cfg.paths.dreambench)
    added = add_dreambench(dataset, Path(cfg.paths.subjects), args.names, cfg.model.resolution, args.max_size,
                           args.overwrite)
    names = args.names or list(CATALOG)
    print(f"added {len(added)} DreamBench subjects from {dataset} ({len(names) - len(added)} already there)")
    missing = [n for n in names if n not in cfg.subjects]
    if missing:
        print(f"add them to `subjects` in {args.params} to run them: {', '.join(missing)}")


def cli_list(args) -> None:
    from rpo.params import config_from_args

    cfg = config_from_args(args)
    root = Path(cfg.paths.subjects)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            s = load_subject(root, folder.name, check_images=False)
        except SubjectError as e:
            print(f"! {folder.name:24s} not a usable subject: {e}")
            continue
        mark = "*" if s.name in cfg.subjects else " "
        print(f"{mark} {s.name:24s} {s.class_noun:16s} {'live' if s.live else 'object':6s} {len(s.images)} images")
