"""Checkpoints: written at each validation, read back by select, evaluate, sample and export, pruned by `validate.keep`.

A checkpoint folder holds what its method trained, in diffusers' formats:
- a whole U-Net in diffusers' layout, weights in half precision (1.7 GB for SD 2.1 instead of 3.5): rpo, dreambooth;
- or only LoRA weights in diffusers' LoRA format (`pipe.load_lora_weights(folder)` reads it too), when training
  used `train.lora_rank > 0`;
- or only the cross-attention key and value projections in Custom Diffusion's format
  (`pytorch_custom_diffusion_weights.safetensors`, `pipe.unet.load_attn_procs(folder, weight_name=...)`);
- and, for textual_inversion (no U-Net at all) and custom_diffusion, the learned token's embedding
  (`learned_embeds.safetensors`, rpo.embeddings; `pipe.load_textual_inversion(folder, weight_name=...)`).

`load(folder, base_unet)` gives the U-Net a checkpoint stands for, `load_text(folder, tokenizer, text_encoder)`
the tokenizer and text encoder (with the learned token, if it has one).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from rpo.artifacts import atomic_dir
from rpo.embeddings import EMBEDS

FULL = "diffusion_pytorch_model.safetensors"
LORA = "pytorch_lora_weights.safetensors"
CUSTOM = "pytorch_custom_diffusion_weights.safetensors"
CUSTOM_KEY = ".processor.{}_custom_diffusion.weight"  # diffusers' CustomDiffusionAttnProcessor: attn2.to_k -> ...
# validate.keep=selectable keeps what select can pick for any lambda_val on this grid
LAMBDA_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


def save(unet, out: Path, dtype=None, *, method: str = "rpo", text=None) -> None:
    """What `method` trained. Whole U-Nets in `dtype` (default fp16); LoRA weights, Custom Diffusion's k/v and
    token embeddings in fp32 (they are small); textual_inversion: no U-Net. `text`: (tokenizer, text_encoder)
    whose added tokens' embeddings are saved too."""
    import torch

    dtype = dtype or torch.float16
    with atomic_dir(out) as tmp:
        if method == "custom_diffusion":
            _save_custom_diffusion(unet, tmp)
        elif method == "textual_inversion":
            pass  # the U-Net is the base model's
        elif getattr(unet, "peft_config", None):
            _save_lora(unet, tmp)
        else:
            from safetensors.torch import save_file

            unet.save_config(tmp)
            drop_origin(tmp / "config.json")
            state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
            save_file(state, tmp / FULL)
        if text is not None:
            from rpo import embeddings

            embeddings.save(*text, tmp)


def _save_custom_diffusion(unet, folder: Path) -> None:
    """attn2.to_k / to_v of every cross-attention layer, keyed as diffusers' save_attn_procs keys them."""
    import torch
    from safetensors.torch import save_file

    state = {}
    for name, p in unet.named_parameters():
        for proj in ("to_k", "to_v"):
            if name.endswith(f".attn2.{proj}.weight"):
                layer = name[: -len(f".{proj}.weight")]
                state[layer + CUSTOM_KEY.format(proj)] = p.detach().to("cpu", torch.float32).contiguous()
    save_file(state, folder / CUSTOM, metadata={"format": "pt"})


def drop_origin(config: Path) -> None:
    """diffusers records where a model was loaded from (`_name_or_path`, an absolute path here): a
    checkpoint must hash the same in every clone of the project."""
    data = json.loads(config.read_text())
    data.pop("_name_or_path", None)
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_kohya(folder: Path, out: Path) -> Path:
    """The LoRA weights of checkpoint `folder` as one kohya single-file `.safetensors` (`lora_unet_...` keys
    with `.alpha`), the format AUTOMATIC1111, ComfyUI and kohya's scripts load.

    Adapters are trained with alpha = rank (rpo.train.add_lora), which is the alpha the converter writes.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
    from safetensors.torch import load_file, save_file

    saved = load_file(Path(folder) / LORA)  # diffusers' layout: unet.<module>.lora.down/up.weight
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in saved.items() if k.startswith("unet.")})
    state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, out, metadata={"format": "pt"})
    return out


def _save_lora(unet, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    import torch

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=LORA)


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


def load_text(folder: Path, tokenizer, text_encoder):
    """(tokenizer, text_encoder) a checkpoint stands for: the given ones, or copies with its learned token added."""
    if not (Path(folder) / EMBEDS).exists():
        return tokenizer, text_encoder
    from rpo import embeddings

    return embeddings.load(folder, tokenizer, text_encoder)


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
    from rpo.selection import select_step

    if validate.keep == "selectable":
        return selectable_steps(validation)
    steps = sorted(set(int(s) for s in validation["step"]), reverse=True)
    kept = [select_step(validation, validate.lambda_val, validate.early_stopping)]
    return set(kept + [s for s in steps if s not in kept][: validate.keep - 1])


def prune(checkpoints: Path, keep: set[int]) -> None:
    for folder in Path(checkpoints).glob("step_*"):
        if int(folder.name.split("_")[1]) not in keep:
            shutil.rmtree(folder)
