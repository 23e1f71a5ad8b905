"""U-Net checkpoints: written at each validation, read back by select and evaluate, pruned by `validate.keep`.

A checkpoint folder holds either a whole U-Net in diffusers' layout, weights in half precision
(1.7 GB for SD 2.1 instead of 3.5), or only the LoRA weights in diffusers' LoRA format
(`pipe.load_lora_weights(folder)` reads it too), when training used `train.lora_rank > 0`.
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

FULL = "diffusion_pytorch_model.safetensors"
LORA = "pytorch_lora_weights.safetensors"
# validate.keep=selectable keeps what select can pick for any lambda_val on this grid
LAMBDA_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


def save(unet, out: Path, dtype=None) -> None:
    """Whole U-Nets in `dtype` (default fp16); LoRA weights in fp32 (they are small)."""
    import torch

    from rpo.xla import to_host  # an XLA model's weights come to the host in one transfer

    dtype = dtype or torch.float16
    with atomic_dir(out) as tmp:
        if getattr(unet, "peft_config", None):
            _save_lora(unet, tmp)
        else:
            from safetensors.torch import save_file

            unet.save_config(tmp)
            _drop_origin(tmp / "config.json")
            state = {k: v.to(dtype).contiguous() for k, v in to_host(unet.state_dict(), unet.device).items()}
            save_file(state, tmp / FULL)


def _drop_origin(config: Path) -> None:
    """diffusers records where a model was loaded from (`_name_or_path`, an absolute path here): a
    checkpoint must hash the same in every clone of the project."""
    data = json.loads(config.read_text())
    data.pop("_name_or_path", None)
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_lora(unet, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    import torch

    from rpo.xla import to_host

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.to(torch.float32).contiguous() for k, v in to_host(state, unet.device).items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=LORA)


def is_complete(folder: Path) -> bool:
    return (Path(folder) / FULL).exists() or (Path(folder) / LORA).exists()


def load(folder: Path, base_unet):
    """The U-Net a checkpoint stands for, on base_unet's device and dtype.

    LoRA weights are fused into a copy of `base_unet`, so generation runs at the base model's speed.
    """
    folder = Path(folder)
    if (folder / LORA).exists():
        unet = copy.deepcopy(base_unet)
        unet.load_lora_adapter(folder, prefix="unet", weight_name=LORA)
        unet.fuse_lora()
        unet.unload_lora()  # drops the adapter layers; the fused weights stay
        return unet
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, dtype=base_unet.dtype, use_safetensors=True)
    return unet.to(base_unet.device)


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


def prune(checkpoints: Path, keep: set[int]) -> None:
    for folder in Path(checkpoints).glob("step_*"):
        if int(folder.name.split("_")[1]) not in keep:
            shutil.rmtree(folder)
