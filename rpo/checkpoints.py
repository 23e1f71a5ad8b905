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

    dtype = dtype or torch.float16
    with atomic_dir(out) as tmp:
        if getattr(unet, "peft_config", None):
            _save_lora(unet, tmp)
        else:
            from safetensors.torch import save_file

            unet.save_config(tmp)
            drop_origin(tmp / "config.json")
            state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
            save_file(state, tmp / FULL)


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
