"""The resumable loop every world model is pretrained with.

A run checkpoints its weights (safetensors), optimizer state and step every `every` steps
into its work directory, atomically; started again, it resumes from the last checkpoint.
Batches are a pure function of (seed, step), so a resumed run sees the data it would have.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from rpo.artifacts import atomic_dir

log = logging.getLogger("rpo_world")


def cpu_autocast():
    """bf16 autocast where the CPU has AMX tiles (about twice as fast as fp32 for these small models);
    fp32 elsewhere: without native bf16 units, autocast made a U-Net step ten times slower (AMD EPYC Zen 3)."""
    from rpo.cpu import has_amx

    return torch.autocast("cpu", dtype=torch.bfloat16) if has_amx() else nullcontext()


def lr_at(step: int, steps: int, peak: float, warmup: int, schedule: str = "cosine", cooldown: int = 0) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak, or constant.

    A constant rate (with an EMA of the weights) makes a run's result at step N independent
    of its planned length, so a run stopped early is the run that planned N steps. Its last
    `cooldown` steps fall linearly to zero (warmup-stable-decay): until they start, a longer
    run is this run extended.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak * min(1.0, (steps - step) / cooldown) if cooldown else peak
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _run_key(cfg: dict) -> dict:
    """What makes two runs the same run: everything but their length (more steps extend a run)
    and which of its weights are exported."""
    return {k: v for k, v in cfg.items() if k not in ("steps", "cooldown_steps", "checkpoint_every", "export")}


def _decay_from(cfg: dict) -> int:
    """The step where the rate starts to fall; a checkpoint from after it belongs to that length only."""
    return cfg["steps"] - cfg.get("cooldown_steps", 0) if cfg.get("schedule") == "constant" else 0


def load_checkpoint(work: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: dict,
                    extra: dict | None = None) -> int:
    """Restore the last checkpoint of this run in `work`, if any; returns the step to start from."""
    ckpt = work / "checkpoint"
    if not (ckpt / "state.json").exists():
        return 0
    state = json.loads((ckpt / "state.json").read_text())
    if state["run"] != _run_key(cfg):
        log.info("checkpoint in %s is of another configuration (%s): starting afresh", ckpt, state["run"])
        return 0
    decayed_from = state.get("decay_from", state["step"])  # checkpoints from before this key had no decay
    if state["step"] > decayed_from and decayed_from != _decay_from(cfg):
        log.info("checkpoint in %s is %d steps into a decay that started at step %d, not %d: starting afresh",
                 ckpt, state["step"] - decayed_from, decayed_from, _decay_from(cfg))
        return 0
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    for name, module in (extra or {}).items():
        module.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    step = state["step"]
    log.info("resuming from step %d (%s)", step, ckpt)
    return step


def save_checkpoint(work: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, cfg: dict,
                    extra: dict | None = None) -> None:
    with atomic_dir(work / "checkpoint") as tmp:
        for name, module in {"model": model, **(extra or {})}.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "run": _run_key(cfg), "decay_from": _decay_from(cfg)}))


def train_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[int], tuple], *, cfg: dict,
               warmup: int, work: Path, grad_clip: float = 1.0,
               on_checkpoint: Callable[[int], dict] | None = None, after_step: Callable[[], None] | None = None,
               extra: dict | None = None) -> None:
    """loss_fn(step) -> (loss, logs); logs and checkpoint evaluations go to work/log.jsonl.

    `extra` modules (an EMA copy) are checkpointed with the model; `after_step` runs after each update.
    """
    work.mkdir(parents=True, exist_ok=True)
    steps, lr, every = cfg["steps"], cfg["lr"], cfg["checkpoint_every"]
    start_step = load_checkpoint(work, model, opt, cfg, extra)
    t0 = time.perf_counter()
    for step in range(start_step, steps):
        for group in opt.param_groups:  # a group's `lr_scale` scales the schedule for its parameters
            group["lr"] = (lr_at(step, steps, lr, warmup, cfg.get("schedule", "cosine"), cfg.get("cooldown_steps", 0))
                           * group.get("lr_scale", 1.0))
        model.train()
        loss, logs = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if after_step:
            after_step()
        done, loss = step + 1, float(loss.detach())
        if done % 25 == 0:
            log.info("step %d: loss %.4f, %.2f s/step", done, loss, (time.perf_counter() - t0) / (done - start_step))
        if done % every == 0 or done == steps:
            save_checkpoint(work, model, opt, done, cfg, extra)
            model.eval()
            row = {"step": done, "loss": loss, **logs, "seconds_per_step": (time.perf_counter() - t0) / (done - start_step)}
            if on_checkpoint:
                row.update(on_checkpoint(done))
            with open(work / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("step %d: %s", done, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
