"""Judges with ground truth: a small CNN that reads every attribute of a scene from its pixels.

Trained on fresh renders (every combination, marks, the style; lightly blurred and noised
so that it also reads the slightly soft images a diffusion model draws), it gives each
generated image exact answers: which shape, colour, pattern, mark, class noun, context, style.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rpo_world.grammar import COLOURS, CONTEXTS, MARKS, NOUNS, PATTERNS, SHAPES

HEADS = {"shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "mark": MARKS, "noun": tuple(NOUNS),
         "context": tuple(CONTEXTS), "style": ("none", "vangogh")}


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.GELU())


class Judges(nn.Module):
    def __init__(self, heads: dict = HEADS):
        super().__init__()
        self.heads = {k: tuple(v) for k, v in heads.items()}
        self.body = nn.Sequential(_block(3, 32, 1), _block(32, 64, 2), _block(64, 64, 1), _block(64, 128, 2),
                                  _block(128, 128, 1))
        self.out = nn.Linear(256, sum(len(v) for v in self.heads.values()))

    def forward(self, x: torch.Tensor) -> dict:
        h = self.body(x)
        logits = self.out(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))
        return dict(zip(self.heads, logits.split([len(v) for v in self.heads.values()], 1)))

    @torch.no_grad()
    def predict(self, images) -> dict[str, list[str]]:
        """images: uint8 array (n, 32, 32, 3) or a list of PIL images -> attribute values per image."""
        self.eval()
        logits = self(to_input(images))
        return {k: [self.heads[k][i] for i in v.argmax(1).tolist()] for k, v in logits.items()}

    def save(self, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"heads": self.heads}, indent=1))
        save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
                   for k, v in self.state_dict().items()}, out / "model.safetensors")

    @classmethod
    def from_pretrained(cls, path: Path) -> "Judges":
        model = cls(json.loads((Path(path) / "config.json").read_text())["heads"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(Path(path) / "model.safetensors").items()}
        model.load_state_dict(state)
        return model.eval()


def to_input(images) -> torch.Tensor:
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB").resize((32, 32))) for im in images])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def targets(scenes) -> dict[str, torch.Tensor]:
    values = {"shape": lambda s: s.shape, "colour": lambda s: s.colour, "pattern": lambda s: s.pattern,
              "mark": lambda s: s.mark, "noun": lambda s: s.noun, "context": lambda s: s.context,
              "style": lambda s: s.style or "none"}
    return {k: torch.tensor([HEADS[k].index(f(s)) for s in scenes]) for k, f in values.items()}


@torch.no_grad()
def accuracy(judges: Judges, images: np.ndarray, scenes) -> dict:
    pred = judges.predict(images)
    truth = targets(scenes)
    return {f"acc_{k}": float(np.mean([HEADS[k].index(p) == t for p, t in zip(pred[k], truth[k].tolist())]))
            for k in HEADS}
