"""Pretraining the world's judges: a multi-head CNN on fresh renders of every attribute (`rpo-world build judges`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rpo_world.data import batch
from rpo_world.judges import HEADS, Judges, accuracy, targets, to_input
from rpo_world.training import train_loop


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Half the batch slightly blurred, all of it lightly noised: generated images are softer than renders."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    amount = torch.rand(len(x), 1, 1, 1, generator=gen) * (torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5)
    x = x * (1 - 0.6 * amount) + 0.6 * amount * blur
    return x + 0.08 * torch.rand(len(x), 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)


def pretrain(cfg: dict, seed: int, work: Path, out: Path) -> None:
    torch.manual_seed(seed)
    judges = Judges()
    opt = torch.optim.AdamW(judges.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    eval_images, eval_scenes, _ = batch(seed + 1, 0, 1024, "judge")
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(step):
        images, scenes, _ = batch(seed, step, cfg["batch_size"], "judge")
        logits = judges(degrade(to_input(images), gen))
        truth = targets(scenes)
        return sum(F.cross_entropy(logits[k], truth[k]) for k in HEADS), {}

    train_loop(judges, opt, loss_fn, cfg=cfg, warmup=50, work=work,
               on_checkpoint=lambda s: accuracy(judges, eval_images, eval_scenes))
    judges.save(out)
