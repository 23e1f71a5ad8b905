"""The world's committed models, registered with the core as named models (entry point group `rpo.models`).

`world` is a diffusers StableDiffusionPipeline directory (same layout as Stable Diffusion);
`world-clip` a transformers CLIP with its processor; `world-dino` a transformers ViT; all
safetensors, half precision, shipped inside this package (rpo_world/weights/), so an installed
package finds them wherever it lives. `world-judges` is the world's own ground truth.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
NAMES = ("world", "world-clip", "world-dino", "world-judges")


def path(name: str) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown world model {name!r}; known: {', '.join(NAMES)}")
    folder = WEIGHTS / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing; build it with `rpo-world build` (or restore it from git)")
    return folder
