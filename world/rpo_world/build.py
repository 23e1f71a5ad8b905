"""One stage of the world's pretraining pipeline (world/dvc.yaml), run in world/: `python -m rpo_world.build STAGE`.

Each training stage resumes from its checkpoint in world/work/STAGE/ and writes its final
weights (fp16, safetensors) into this package's weights/ folder, which git tracks. Each stage's
code is named by string, so running one imports only its own module (world/dvc.yaml's deps).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import yaml

from rpo_world.weights import WEIGHTS

log = logging.getLogger("rpo_world")
# stage -> (module, params section); every trainer has pretrain(cfg, seed, work, out, ...)
TRAINERS = {"judges": "rpo_world.pretrain_judges", "clip": "rpo_world.pretrain_clip", "vae": "rpo_world.pretrain_vae",
            "dino": "rpo_world.pretrain_dino", "unet": "rpo_world.pretrain_unet"}
OUTPUTS = {"judges": "world-judges", "clip": "world-clip", "vae": "world/vae", "dino": "world-dino", "unet": "world/unet"}
STAGES = (*TRAINERS, "assemble", "subjects")


def run(stage: str, world: Path) -> None:
    """`world`: the folder of the world's dvc.yaml and params.yaml (the project's world/)."""
    params = yaml.safe_load((world / "params.yaml").read_text())
    seed, work = params["seed"], world / "work" / stage
    if stage in TRAINERS:
        trainer = importlib.import_module(TRAINERS[stage])
        extra = {}
        if stage == "unet":
            extra = {"clip_dir": WEIGHTS / "world-clip", "vae_dir": WEIGHTS / "world" / "vae"}
        trainer.pretrain(params[stage], seed, work, WEIGHTS / OUTPUTS[stage], **extra)
    elif stage == "assemble":
        importlib.import_module("rpo_world.pipeline").assemble(WEIGHTS)
    elif stage == "subjects":
        subjects = importlib.import_module("rpo_world.subjects")
        for subject in subjects.SUBJECTS:
            subjects.write_subject(subject, world.parent / "data" / "subjects" / subject.name)
    else:
        raise ValueError(f"unknown stage {stage!r}: {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> None:
    """`python -m rpo_world.build STAGE` (world/dvc.yaml's commands; `rpo-world build STAGE` is the same)."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="python -m rpo_world.build", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--world", type=Path, default=Path.cwd(), help="the world's pipeline folder (default: here)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(args.stage, args.world.resolve())


if __name__ == "__main__":
    main()
