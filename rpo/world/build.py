"""`python -m rpo.world.build STAGE`: one stage of the world's pretraining pipeline (world/dvc.yaml).

Each training stage resumes from its checkpoint in world/work/STAGE/ and writes its
final weights (fp16, safetensors) under world/models/, which git tracks.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import yaml

WORLD = Path(__file__).resolve().parents[2] / "world"
STAGES = ("judges", "clip", "vae", "dino", "unet", "assemble", "subjects")


def run(stage: str, world: Path = WORLD) -> None:
    params = yaml.safe_load((world / "params.yaml").read_text())
    seed, work, models = params["seed"], world / "work" / stage, world / "models"
    if stage == "judges":
        from rpo.world.judges import pretrain

        pretrain(params["judges"], seed, work, models / "world-judges")
    elif stage == "clip":
        from rpo.world.pretrain_clip import pretrain

        pretrain(params["clip"], seed, work, models / "world-clip")
    elif stage == "vae":
        from rpo.world.pretrain_vae import pretrain

        pretrain(params["vae"], seed, work, models / "world" / "vae")
    elif stage == "dino":
        from rpo.world.pretrain_dino import pretrain

        pretrain(params["dino"], seed, work, models / "world-dino")
    elif stage == "unet":
        from rpo.world.pretrain_unet import pretrain

        pretrain(params["unet"], seed, work, models / "world" / "unet", models / "world-clip", models / "world" / "vae",
                 probe=_probe(models))
    elif stage == "assemble":
        from rpo.world.pipeline import assemble

        assemble(models)
    elif stage == "subjects":
        from rpo.world.subjects import SUBJECTS, write_subject

        for subject in SUBJECTS:
            write_subject(subject, world.parent / "data" / "subjects" / subject.name)
    else:
        raise ValueError(f"unknown stage {stage!r}: {', '.join(STAGES)}")


def _probe(models: Path):
    """Judge the EMA U-Net's samples at each checkpoint, once the judges exist (logging only)."""

    def probe(unet):
        from rpo.world.judges import Judges
        from rpo.world.pipeline import stable_diffusion
        from rpo.world.probe import prompt_following

        if not (models / "world-judges" / "model.safetensors").exists():
            return {}
        pipe = stable_diffusion(unet, models / "world-clip", models / "world" / "vae")
        return prompt_following(pipe, Judges.from_pretrained(models / "world-judges"), n=64)

    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(args.stage)


if __name__ == "__main__":
    main()
