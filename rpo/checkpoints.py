"""Checkpoints: written at each validation, read back by select, evaluate, sample and export, pruned by `validate.keep`.

A checkpoint folder holds what its method trained, in diffusers' formats:
- a whole U-Net in diffusers' layout, weights in half precision (1.7 GB for SD 2.1 instead of 3.5): rpo, dreambooth;
- or only LoRA weights in diffusers' LoRA format (`pipe.load_lora_weights(folder)` reads it too), when training
  used `train.lora_rank > 0`: the U-Net's adapters and, with `train.text_encoder_lora`, every text encoder's
  (`text_encoder.`, `text_encoder_2.` keys, as StableDiffusionXLPipeline.save_lora_weights writes them);
- or only the cross-attention key and value projections in Custom Diffusion's format
  (`pytorch_custom_diffusion_weights.safetensors`, `pipe.unet.load_attn_procs(folder, weight_name=...)`);
- and, for textual_inversion (no U-Net at all) and custom_diffusion, the learned token's embedding
  (`learned_embeds.safetensors`, rpo.embeddings; `pipe.load_textual_inversion(folder, weight_name=...)`).

The same files serve SD 1.x/2.x and SDXL (the baselines are SD only); `pipeline(folder, pipe)` gives the
pipeline a checkpoint stands for, and `kohya_state_dict` turns LoRA weights into the single-file format of
kohya's scripts, which AUTOMATIC1111 and ComfyUI load.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from rpo.artifacts import atomic_dir, atomic_file
from rpo.embeddings import EMBEDS

FULL = "diffusion_pytorch_model.safetensors"
LORA = "pytorch_lora_weights.safetensors"
CUSTOM = "pytorch_custom_diffusion_weights.safetensors"
CUSTOM_KEY = ".processor.{}_custom_diffusion.weight"  # diffusers' CustomDiffusionAttnProcessor: attn2.to_k -> ...
# validate.keep=selectable keeps what select can pick for any lambda_val on this grid
LAMBDA_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


def save(unet, out: Path, dtype=None, *, method: str = "rpo", text=None, text_encoders: dict | None = None) -> None:
    """What `method` trained. Whole U-Nets in `dtype` (default fp16); LoRA weights (with those of the
    `text_encoders`, component name -> model, that carry adapters), Custom Diffusion's k/v and token embeddings
    in fp32 (they are small); textual_inversion: no U-Net. `text`: (tokenizer, text_encoder) whose added
    tokens' embeddings are saved too."""
    import torch

    from rpo.xla import to_host  # an XLA model's weights come to the host in one transfer

    dtype = dtype or torch.float16
    with atomic_dir(out) as tmp:
        if method == "custom_diffusion":
            _save_custom_diffusion(unet, tmp)
        elif method == "textual_inversion":
            pass  # the U-Net is the base model's
        elif getattr(unet, "peft_config", None):
            _save_lora(unet, tmp, text_encoders or {})
        else:
            from safetensors.torch import save_file

            unet.save_config(tmp)
            drop_origin(tmp / "config.json")
            state = {k: v.to(dtype).contiguous() for k, v in to_host(unet.state_dict(), unet.device).items()}
            save_file(state, tmp / FULL)
        if text is not None:
            from rpo import embeddings

            embeddings.save(*text, tmp)


def _save_custom_diffusion(unet, folder: Path) -> None:
    """attn2.to_k / to_v of every cross-attention layer, keyed as diffusers' save_attn_procs keys them."""
    import torch
    from safetensors.torch import save_file

    from rpo.xla import to_host

    state = {}
    for name, p in unet.named_parameters():
        for proj in ("to_k", "to_v"):
            if name.endswith(f".attn2.{proj}.weight"):
                state[name[: -len(f".{proj}.weight")] + CUSTOM_KEY.format(proj)] = p.detach()
    state = {k: v.to(torch.float32).contiguous() for k, v in to_host(state, unet.device).items()}
    save_file(state, folder / CUSTOM, metadata={"format": "pt"})


def drop_origin(config: Path) -> None:
    """diffusers records where a model was loaded from (`_name_or_path`, an absolute path here): a
    checkpoint must hash the same in every clone of the project."""
    data = json.loads(config.read_text())
    data.pop("_name_or_path", None)
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_lora(unet, folder: Path, text_encoders: dict) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    import torch

    from rpo.family import of_unet
    from rpo.xla import to_host

    def adapters(model):
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        # transformers 5 flattened CLIPTextModel; LoRA files name its modules as every published one does
        prefix = "text_model." if hasattr(model, "get_input_embeddings") and not hasattr(model, "text_model") else ""
        return {prefix + k: v.to(torch.float32).contiguous() for k, v in to_host(state, model.device).items()}

    layers = {f"{name}_lora_layers": adapters(model) for name, model in text_encoders.items()
              if getattr(model, "peft_config", None)}
    of_unet(unet).pipeline_class().save_lora_weights(folder, unet_lora_layers=adapters(unet), weight_name=LORA,
                                                     **layers)


def is_complete(folder: Path) -> bool:
    return any((Path(folder) / f).exists() for f in (FULL, LORA, CUSTOM, EMBEDS))


def load(folder: Path, base_unet):
    """The U-Net a checkpoint stands for, on base_unet's device and dtype.

    LoRA weights are fused into a copy of `base_unet`, so generation runs at the base model's speed; Custom
    Diffusion's k/v replace those of a copy; a Textual Inversion checkpoint is `base_unet` itself.
    """
    folder = Path(folder)
    if (folder / CUSTOM).exists():
        return _load_custom_diffusion(folder / CUSTOM, base_unet)
    if not (folder / FULL).exists() and not (folder / LORA).exists() and (folder / EMBEDS).exists():
        return base_unet
    if (folder / LORA).exists():
        unet = copy.deepcopy(base_unet)
        unet.load_lora_adapter(folder, prefix="unet", weight_name=LORA)
        unet.fuse_lora()
        unet.unload_lora()  # drops the adapter layers; the fused weights stay
        return unet
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, dtype=base_unet.dtype, use_safetensors=True)
    return unet.to(base_unet.device)


def _load_custom_diffusion(path: Path, base_unet):
    import torch
    from safetensors.torch import load_file

    unet = copy.deepcopy(base_unet)
    params = dict(unet.named_parameters())
    state = load_file(path)
    with torch.no_grad():
        for key, value in state.items():
            layer, proj = key.split(".processor.")[0], key.split(".processor.")[1].split("_custom_diffusion")[0]
            target = params.get(f"{layer}.{proj}.weight")
            if target is None or target.shape != value.shape:
                raise ValueError(f"{path}: {key} does not fit the base U-Net")
            target.copy_(value.to(target.device, target.dtype))
    return unet


def lora_parts(folder: Path) -> set[str]:
    """The components a LoRA checkpoint adapts ("unet", "text_encoder", "text_encoder_2"); empty for a whole U-Net."""
    from safetensors import safe_open

    path = Path(folder) / LORA
    if not path.exists():
        return set()
    with safe_open(path, framework="pt") as f:
        return {key.split(".")[0] for key in f.keys()}


def pipeline(folder: Path, pipe):
    """The pipeline a checkpoint stands for: `pipe`'s components (left untouched) with the checkpoint's U-Net and,
    where it trained them, text encoders or a learned token (a checkpoint has one or the other:
    rpo.params refuses LoRA with the token methods). LoRA weights go through diffusers' own `load_lora_weights` into copies
    and are fused, so generation runs at the base model's speed. A `StableDiffusionPipeline` or
    `StableDiffusionXLPipeline` as `pipe` is; `save_pretrained` writes it as a plain diffusers folder."""
    folder = Path(folder)
    parts = sorted(lora_parts(folder))
    if set(parts) <= {"unet"}:  # a whole U-Net, LoRA on the U-Net alone, Custom Diffusion's k/v, or none (TI)
        model = type(pipe).from_pipe(pipe, unet=load(folder, pipe.unet), **learned_token(folder, pipe))
    else:
        model = type(pipe).from_pipe(pipe, **{name: copy.deepcopy(getattr(pipe, name)) for name in parts})
        model.load_lora_weights(folder, weight_name=LORA)
        model.fuse_lora(components=parts)
        model.unload_lora_weights()  # drops the adapter layers; the fused weights stay
    model.set_progress_bar_config(disable=True)
    return model


def learned_token(folder: Path, pipe) -> dict:
    """The pipeline components with a checkpoint's learned token (copies of `pipe`'s tokenizer and text encoder
    with it added); {} when it learned none."""
    if not (Path(folder) / EMBEDS).exists():
        return {}
    from rpo import embeddings

    tokenizer, text_encoder = embeddings.load(folder, pipe.tokenizer, pipe.text_encoder)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder}


def encodes_prompts_anew(folder: Path) -> bool:
    """Does a checkpoint turn prompts into other embeddings than the base does (text-encoder LoRA, a learned
    token)? Then the base's encodings of the prompts cannot be reused for it."""
    return bool(lora_parts(folder) - {"unet"}) or (Path(folder) / EMBEDS).exists()


def kohya_state_dict(folder: Path) -> dict:
    """A LoRA checkpoint in kohya's single-file layout (`lora_unet_...`, `lora_te1_...`, `lora_te2_...` keys with
    `lora_down` / `lora_up` weights and an `.alpha` per module), the format AUTOMATIC1111 and ComfyUI load for SD
    and SDXL, converted by diffusers' own functions as its advanced DreamBooth-LoRA script does."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file

    path = Path(folder) / LORA
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (a whole U-Net checkpoint has no LoRA weights to convert)")
    state, peft = load_file(path), {}
    for part in lora_parts(folder):  # one at a time: diffusers names the U-Net's and the encoders' layers differently
        peft.update(convert_all_state_dict_to_peft({k: v for k, v in state.items() if k.startswith(f"{part}.")}))
    return convert_state_dict_to_kohya(peft)


def save_kohya(folder: Path, out: Path) -> Path:
    """kohya_state_dict of `folder`, written to the single .safetensors file `out` (atomically)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in kohya_state_dict(folder).items()}
    with atomic_file(Path(out)) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    return Path(out)


def copy_folder(source: Path, dest: Path) -> None:
    """Hard links where the filesystem allows (a selected U-Net costs no second 1.7 GB), else a copy."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)


def selectable_steps(validation: pd.DataFrame) -> set[int]:
    """Steps select can pick: the best one for each lambda_val of LAMBDA_GRID, and the last one.

    Ties go to the earliest step and the maximum only grows, so a step outside this set after
    some validation can never come back into it: pruning as training goes is safe.
    """
    from rpo.selection import select_step

    return {select_step(validation, float(lam)) for lam in LAMBDA_GRID} | {int(validation["step"].max())}


def kept_steps(validation: pd.DataFrame, validate) -> set[int]:
    """The checkpoints `validate.keep` keeps after the validations so far (`validate`: the config's section).

    `selectable`: every step select can pick (see selectable_steps). A number N: the step select picks under
    the current lambda_val and early_stopping, then the most recent others, N in all.
    """
    from rpo.selection import select_step, trained

    if validate.keep == "selectable":
        return selectable_steps(validation)
    steps = sorted({int(s) for s in trained(validation)["step"]}, reverse=True)
    kept = [select_step(validation, validate.lambda_val, validate.early_stopping)]
    return set(kept + [s for s in steps if s not in kept][: validate.keep - 1])


def prune(checkpoints: Path, keep: set[int]) -> None:
    for folder in Path(checkpoints).glob("step_*"):
        if int(folder.name.split("_")[1]) not in keep:
            shutil.rmtree(folder)
