"""DreamBench (the DreamBooth benchmark): its 30 subjects, importing them, and the published results.

The catalog is built in: subject -> class noun and live/object (live subjects, cats and dogs,
get the paper's live prompt lists). The photos come from a local copy of the DreamBench
`dataset` folder (google/dreambooth on GitHub), which must agree with the catalog.

Import bounds the short side of each photo (`max_size`, default 1024 px): the originals
reach 2048 px (some as MPO), while training crops to `model.resolution` (512 for the
paper) and the metric encoders look at 224 px, so larger copies only cost disk and
decoding time in every stage that reads the references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rpo.artifacts import atomic_file
from rpo.images import image_files
from rpo.subjects import MAX_IMAGES, MIN_IMAGES, Subject, SubjectError, add_subject

DEFAULT_MAX_SIZE = 1024
CLASSES_FILE = "prompts_and_classes.txt"
CREDITS_FILE = "references_and_licenses.txt"


class DreamBenchError(SubjectError):
    """The DreamBench folder is missing, malformed or disagrees with the catalog; names the path."""


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


def read_classes(dataset: Path) -> dict[str, str]:
    """subject -> class noun from the dataset's prompts_and_classes.txt (lines `subject,class`)."""
    path = Path(dataset) / CLASSES_FILE
    if not path.exists():
        raise DreamBenchError(f"{path}: missing; is {dataset} the DreamBench `dataset` folder of google/dreambooth?")
    rows = (line.split(",") for line in path.read_text().splitlines() if line.count(",") == 1)
    return {name.strip(): noun.strip() for name, noun in rows if name.strip() in CATALOG}


def check(dataset: Path, names: list[str]) -> None:
    """Every requested subject folder exists, agrees with the catalog and holds a usable number of photos.

    Checks structure only (no decoding), so a bad folder fails before any photo is converted.
    """
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DreamBenchError(f"{dataset}: no such DreamBench folder (set paths.dreambench or pass --dataset)")
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise DreamBenchError(f"not DreamBench subjects: {', '.join(unknown)} (known: {', '.join(CATALOG)})")
    classes = read_classes(dataset)
    for name in names:
        folder = dataset / name
        if name not in classes:
            raise DreamBenchError(f"{dataset / CLASSES_FILE}: no line for {name!r}")
        if classes[name] != CATALOG[name].class_noun:
            raise DreamBenchError(f"{dataset / CLASSES_FILE}: class of {name!r} is {classes[name]!r}, "
                                  f"DreamBench's is {CATALOG[name].class_noun!r}")
        if not folder.is_dir():
            raise DreamBenchError(f"{folder}: missing subject folder of the DreamBench dataset")
        count = len(image_files(folder))
        if not MIN_IMAGES <= count <= MAX_IMAGES:
            raise DreamBenchError(f"{folder}: {count} photos, expected {MIN_IMAGES} to {MAX_IMAGES}")


def add_subjects(dataset: Path, subjects_dir: Path, names: list[str] | None = None, min_size: int | None = None,
                 max_size: int = DEFAULT_MAX_SIZE, overwrite: bool = False) -> list[Subject]:
    """Import DreamBench subjects (all 30 by default) into `subjects_dir`; existing ones are kept unless `overwrite`.

    Photos are validated and normalised by `add_subject` (MPO, EXIF rotation); the short side is
    bounded by `max_size`, never below the model's resolution `min_size`.
    """
    names = list(names or CATALOG)
    if min_size is not None and max_size < min_size:
        raise DreamBenchError(f"max size {max_size} px is below model.resolution {min_size} px")
    check(dataset, names)
    credits = _credits(Path(dataset))
    added = []
    for name in names:
        if (Path(subjects_dir) / name).exists() and not overwrite:
            continue
        entry = CATALOG[name]
        subject = add_subject(subjects_dir, name, Path(dataset) / name, entry.class_noun, entry.live, min_size,
                              overwrite, max_size=max_size)
        with atomic_file(subject.folder / "CREDITS.md") as tmp:
            tmp.write_text(_credits_text(name, credits.get(name, ""), max_size))
        added.append(subject)
    return added


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
