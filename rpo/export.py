"""`rpo export`: the fine-tuned subject as a model people use, in diffusers, AUTOMATIC1111 and ComfyUI.

The export is a complete diffusers pipeline folder (StableDiffusionPipeline or StableDiffusionXLPipeline,
as the base is), the base model's components with the selected U-Net (or the base with the LoRA of the
U-Net, and of the text encoders where they trained, fused in), in half precision by default, that plain
`DiffusionPipeline.from_pretrained(folder)` loads without this project; a model card (README.md)
says what it is and how to prompt it. A LoRA run also leaves the adapter on its own: diffusers'
format (`pipe.load_lora_weights(folder / "lora")`) and one kohya single-file `.safetensors`
(`lora_unet_...` keys with `.alpha`) that AUTOMATIC1111, ComfyUI and kohya load. A Textual Inversion or
Custom Diffusion run's pipeline carries the learned token in its tokenizer and text encoder, and `adapter/`
holds the method's own files (`learned_embeds.safetensors`, `pytorch_custom_diffusion_weights.safetensors`).
The folder is written under a temporary name and renamed, so a killed export leaves nothing that
looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from rpo import artifacts as A
from rpo import checkpoints
from rpo.config import METHOD_NAMES, to_dict
from rpo.prompts import instance_prompt

log = logging.getLogger("rpo")
DTYPES = ("fp16", "bf16", "fp32")
ADAPTER = "adapter"  # Textual Inversion / Custom Diffusion files on their own, beside the full pipeline


class ExportError(A.ArtifactError):
    """A model to export is missing or the destination is taken; the message names the file and the fix."""


def base_reference(cfg, root: Path) -> str:
    """The base model as `from_pretrained` resolves it anywhere: a hub id, or the folder a registered name
    stands for (relative to the project when it lives there, else absolute); never an internal name."""
    from rpo import registry

    name = cfg.model.base
    resolved = registry.model_path(name, build=False)
    if resolved == name and not Path(name).exists():
        return name  # a hub id
    path = Path(resolved).resolve()
    return path.relative_to(Path(root).resolve()).as_posix() if path.is_relative_to(Path(root).resolve()) else str(path)


def checkpoint_of(ctx, step: int | None) -> Path:
    """The selected checkpoint, or the one of a validation step; a clear error naming the stage to run."""
    if step is None:
        folder = ctx.paths.selected / "unet"
        if not checkpoints.is_complete(folder):
            raise ExportError(f"{folder}: no selected model for {ctx.subject.name}; run `dvc repro select@{ctx.subject.name}` "
                              f"(or `rpo stage select --subject {ctx.subject.name}`) first")
        return folder
    folder = ctx.paths.checkpoints / f"step_{step:05d}"
    if not checkpoints.is_complete(folder):
        kept = sorted(int(p.name.split("_")[1]) for p in ctx.paths.checkpoints.glob("step_*")) \
            if ctx.paths.checkpoints.is_dir() else []
        raise ExportError(f"{folder}: no checkpoint of step {step} (kept: {kept or 'none'}; run finetune first)")
    return folder


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists (pass --overwrite to replace it)")


METHOD_TEXT = {
    "rpo": "RPO (Reward Preference Optimization, arXiv 2407.12164)",
    "dreambooth": "DreamBooth with prior preservation (arXiv 2208.12242), in the RPO pipeline",
    "textual_inversion": "Textual Inversion (arXiv 2208.01618; only the token's embedding), in the RPO pipeline",
    "custom_diffusion": "Custom Diffusion (arXiv 2212.04488; cross-attention k/v and the token), in the RPO pipeline",
}


def model_card(ctx, step: int, base: str, lora: bool, dtype: str, parts: list[str] = ()) -> str:
    metrics = A.read_json(ctx.paths.metrics) if ctx.paths.metrics.exists() else {}
    shown = {k: metrics[k] for k in ("dino", "clip_i", "clip_t", "reward") if k in metrics}
    prompt = f"a {ctx.token} {ctx.subject.class_noun} on the beach"
    method = ctx.cfg.train.method
    lines = [
        "---", "library_name: diffusers", f"base_model: {base}",
        f"tags: [{', '.join(dict.fromkeys(['rpo', method.replace('_', '-'), 'text-to-image']))}]", "---", "",
        f"# {METHOD_NAMES[method]} fine-tune of `{ctx.subject.name}` ({ctx.subject.class_noun})", "",
        f"Fine-tuned from `{base}` with {METHOD_TEXT[method]} on "
        f"{len(ctx.subject.images)} photos of the subject; checkpoint of step {step}, chosen by "
        + (f"the best mean validation reward at lambda_val {ctx.cfg.validate.lambda_val:g}."
           if ctx.cfg.validate.early_stopping else "the last step (early stopping off)."), "",
        "## Prompting", "",
        f"The subject is `{ctx.token} {ctx.subject.class_noun}` (unique token `{ctx.token}`, class noun "
        f"`{ctx.subject.class_noun}`): `{instance_prompt(ctx.token, ctx.subject.class_noun)}`, `{prompt}`.", "",
        "```python", "import torch", "from diffusers import DiffusionPipeline", "",
        f'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", torch_dtype=torch.{_torch_name(dtype)})',
        f'image = pipe("{prompt}").images[0]', "```", ""]
    if lora:
        lines += ["## The LoRA on its own", "",
                  f"- diffusers: `pipe.load_lora_weights(\"path/to/this/folder/lora\")` on `{base}`;",
                  f"- AUTOMATIC1111, ComfyUI, kohya: `lora/{ctx.subject.name}_kohya.safetensors` (kohya single file).", ""]
    if parts:
        lines += [f"## The {METHOD_NAMES[method]} weights on their own", "",
                  f"`{ADAPTER}/` holds them in diffusers' formats, for the base model `{base}`:", "", "```python"]
        if checkpoints.CUSTOM in parts:  # diffusers 0.42 ignores the file unless every layer and the pipeline are given
            lines += ["from safetensors.torch import load_file", "",
                      f'kv = load_file("path/to/this/folder/{ADAPTER}/{checkpoints.CUSTOM}")',
                      "# diffusers wants an entry for every attention layer (empty: unchanged), and the pipeline",
                      'kv |= {n: {} for n in pipe.unet.attn_processors if f"{n}.to_k_custom_diffusion.weight" not in kv}',
                      "pipe.unet.load_attn_procs(kv, _pipeline=pipe)"]
        lines += [f'pipe.load_textual_inversion("path/to/this/folder/{ADAPTER}", weight_name="{checkpoints.EMBEDS}")',
                  "```", ""]
    lines += ["## Evaluation (DreamBench protocol)", "",
              *(f"- {k}: {v:.4f}" for k, v in shown.items()), *([] if shown else ["- not evaluated"]), "",
              "## Training", "", "```json",
              json.dumps({"train": to_dict(ctx.cfg)["train"], "validate": to_dict(ctx.cfg)["validate"],
                          "seed": ctx.cfg.seed, "selected_step": step}, indent=1), "```", ""]
    return "\n".join(lines)


def _torch_name(dtype: str) -> str:
    return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[dtype]


def export(ctx, out: Path, dtype: str = "fp16", step: int | None = None, overwrite: bool = False) -> Path:
    """Write the diffusers folder of the subject's selected model (or of a validation step) to `out`."""
    import torch

    from rpo.generate import load_pipeline

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    out = Path(out).resolve()
    check_destination(out, overwrite)
    source = checkpoint_of(ctx, step)
    chosen = step if step is not None else A.read_json(ctx.paths.selection)["step"]
    base = base_reference(ctx.cfg, ctx.root)
    torch_dtype = getattr(torch, _torch_name(dtype))
    log.info("export %s: step %d on %s, %s -> %s", ctx.subject.name, chosen, base, dtype, out)
    base_pipe = load_pipeline(ctx.cfg.model.base, torch.device("cpu"), torch.float32, vae=ctx.cfg.model.vae)
    pipe = checkpoints.pipeline(source, base_pipe)  # SD or SDXL; LoRA (U-Net, text encoders) fused in, or a learned token
    lora = bool(checkpoints.lora_parts(source))
    with A.atomic_dir(out) as tmp:
        pipe.to(torch_dtype).save_pretrained(tmp, safe_serialization=True)
        for config in [*tmp.rglob("config.json"), tmp / "model_index.json"]:
            checkpoints.drop_origin(config)  # no clone's path in a model others load
        if lora:
            (tmp / "lora").mkdir()
            shutil.copy2(source / checkpoints.LORA, tmp / "lora" / checkpoints.LORA)
            checkpoints.save_kohya(source, tmp / "lora" / f"{ctx.subject.name}_kohya.safetensors")
        parts = [f for f in (checkpoints.CUSTOM, checkpoints.EMBEDS) if (source / f).exists()]
        if parts:  # the baseline's own files, for diffusers' loaders on the base model
            (tmp / ADAPTER).mkdir()
            for f in parts:
                shutil.copy2(source / f, tmp / ADAPTER / f)
        (tmp / "README.md").write_text(model_card(ctx, chosen, base, lora, dtype, parts))
    return out


def cli(args) -> None:
    from rpo.params import ParamsError
    from rpo.stages import checked_context

    if not args.out.strip():
        raise ParamsError("--out: must not be empty")
    if args.step is not None and args.step < 1:
        raise ParamsError(f"--step: must be >= 1, got {args.step}")
    ctx = checked_context(args)
    print(export(ctx, Path(args.out), args.dtype, args.step, args.overwrite))
