"""Accelerator choice: CUDA, TPU through torch_xla (also runs on the CPU with PJRT_DEVICE=CPU), or CPU."""

from __future__ import annotations

import importlib.util
import os

import torch

from rpo.cpu import has_amx
from rpo.params import ParamsError


class DeviceError(ParamsError):
    """`device` names an accelerator whose software is not installed (a user error: exit code 2)."""


def pick_device(name: str = "auto") -> torch.device:
    """Raises DeviceError, before any model loads, when `xla` is asked for (by name, or by PJRT_DEVICE
    under `auto` without CUDA) and torch_xla is not installed."""
    if name != "auto":
        return _xla("device: xla") if name == "xla" else torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("PJRT_DEVICE"):
        return _xla(f"device: auto with PJRT_DEVICE={os.environ['PJRT_DEVICE']}")
    return torch.device("cpu")


def _xla(why: str) -> torch.device:
    if importlib.util.find_spec("torch_xla") is None:
        from rpo.xla import EXTRA

        raise DeviceError(f"{why} needs torch_xla, which is not installed: install it with `{EXTRA}` "
                          "(README, section TPU), or set device: cpu / unset PJRT_DEVICE")
    from rpo import xla

    return xla.device()


def pick_dtype(name: str, device: torch.device, cpu_half: bool = False) -> torch.dtype:
    """'auto' means half precision where it is fast and safe: CUDA (bf16 if supported, else fp16); TPUs (bf16);
    with `cpu_half` (gradient-free work), CPUs with AMX tiles, whose bf16 matrix units run it
    about twice as fast as fp32; fp32 elsewhere. Training keeps fp32 on CPUs: bf16 backward
    passes are slow there."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "xla":
            from rpo.xla import is_tpu

            return torch.bfloat16 if is_tpu() else torch.float32  # XLA on a CPU: as the CPU without AMX
        if cpu_half and device.type == "cpu" and has_amx():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]

