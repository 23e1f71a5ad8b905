"""`rpo sample`: images of the fine-tuned subject for any prompt (the official code's inference.py).

From the selected model (or a validation step's checkpoint, or an exported folder), batched, one
seed per image (seed, seed + 1, ...): the same seed gives the same bytes. The prompt may name the
subject with the placeholders the training prompts use: `{V}` for the unique token and `{k}` for the
class noun, e.g. "a {V} {k} on the beach". Images and a grid land in `samples/<subject>/<prompt>/`
(or `--out`), which neither git nor DVC tracks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from rpo import artifacts as A
from rpo.params import ParamsError

log = logging.getLogger("rpo")
MAX_PROMPT = 500


def fill_prompt(prompt: str, token: str | None, class_noun: str | None) -> str:
    """`{V}` / `{v}` -> the unique token, `{k}` -> the class noun; anything else in braces is refused."""
    if not prompt or not prompt.strip():
        raise ParamsError("--prompt: must not be empty")
    if len(prompt) > MAX_PROMPT:
        raise ParamsError(f"--prompt: {len(prompt)} characters, at most {MAX_PROMPT}")
    unknown = set(re.findall(r"\{([^}]*)\}", prompt)) - {"V", "v", "k"}
    if unknown:
        raise ParamsError(f"--prompt: unknown placeholders {sorted(unknown)}; use {{V}} (unique token) and {{k}} (class noun)")
    if ("{" in prompt) and token is None:
        raise ParamsError("--prompt: placeholders need --subject (its unique token and class noun)")
    return " ".join(prompt.replace("{V}", token or "").replace("{v}", token or "").replace("{k}", class_noun or "").split())


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:80] or "prompt"


def check_request(n: int, steps: int, guidance: float, batch_size: int) -> None:
    for name, value, low in (("-n", n, 1), ("--steps", steps, 1), ("--batch-size", batch_size, 1)):
        if value < low:
            raise ParamsError(f"{name}: must be >= {low}, got {value}")
    if guidance < 0:
        raise ParamsError(f"--guidance: must be >= 0, got {guidance}")


def pipeline_for(ctx, step: int | None, model: Path | None):
    """The fine-tuned pipeline: an exported folder, or the base model with the selected (or a step's) checkpoint:
    its U-Net (or LoRA), and its learned token (Textual Inversion, Custom Diffusion)."""
    from rpo import checkpoints
    from rpo.device import pick_device, pick_dtype
    from rpo.export import checkpoint_of
    from rpo.generate import load_pipeline, stage_pipeline

    if model is not None:
        device = pick_device(ctx.cfg.device if ctx else "auto")
        dtype = pick_dtype(ctx.cfg.model.dtype if ctx else "auto", device, cpu_half=True)
        return load_pipeline(str(model), device, dtype)
    source = checkpoint_of(ctx, step)
    pipe = stage_pipeline(ctx.cfg.model, pick_device(ctx.cfg.device))
    return checkpoints.pipeline(source, pipe)  # SD or SDXL; LoRA fused in


def sample(pipe, prompt: str, out: Path, n: int, seed: int, steps: int, guidance: float, resolution: int,
           batch_size: int) -> list[Path]:
    """n images of `prompt` (seeds seed .. seed + n - 1) and their grid, written into `out`."""
    from rpo.generate import generate
    from rpo.plots import image_grid, save_image

    images = generate(pipe, [prompt] * n, [seed + i for i in range(n)], steps=steps, guidance=guidance,
                      resolution=resolution, batch_size=batch_size, desc="sample")
    files = []
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        with A.atomic_file(out / f"{seed + i:06d}.png") as tmp:
            image.save(tmp, format="PNG")
        files.append(out / f"{seed + i:06d}.png")
    save_image(image_grid([(prompt, [(f"seed {seed + i}", im) for i, im in enumerate(images)])]), out / "grid.png")
    return files


def cli(args) -> None:
    from rpo.stages import checked_context

    check_request(args.n, 1 if args.steps is None else args.steps, 0.0 if args.guidance is None else args.guidance,
                  args.batch_size)
    if args.step is not None and args.step < 1:
        raise ParamsError(f"--step: must be >= 1, got {args.step}")
    if args.model is not None and not (Path(args.model) / "model_index.json").exists():
        raise A.ArtifactError(f"{args.model}: not a diffusers pipeline folder (no model_index.json); `rpo export` writes one")
    ctx = checked_context(args) if args.subject else None
    if ctx is None and args.model is None:
        raise ParamsError("rpo sample: give --subject (its selected model) or --model (an exported folder)")
    prompt = fill_prompt(args.prompt, ctx.token if ctx else None, ctx.subject.class_noun if ctx else None)
    if ctx and ctx.token not in prompt.split():
        log.warning("the prompt does not name the subject (%s %s): the images will show the base model's idea of it",
                    ctx.token, ctx.subject.class_noun)
    ev = ctx.cfg.evaluate if ctx else None
    steps = args.steps or (ev.num_inference_steps if ev else 50)
    guidance = args.guidance if args.guidance is not None else (ev.guidance_scale if ev else 7.5)
    out = Path(args.out) if args.out else Path("samples") / (ctx.subject.name if ctx else Path(args.model).name) / slug(prompt)
    pipe = pipeline_for(ctx, args.step, Path(args.model) if args.model else None)
    resolution = ctx.resolution if ctx else pipe.unet.config.sample_size * pipe.vae_scale_factor
    files = sample(pipe, prompt, out, args.n, args.seed, steps, guidance, resolution, args.batch_size)
    print(f"{len(files)} images of {prompt!r} in {out} (grid: {out / 'grid.png'})")
