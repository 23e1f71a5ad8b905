"""Accelerator choice: CUDA, TPU through torch_xla (also runs on the CPU with PJRT_DEVICE=CPU), or CPU."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        if name == "xla":
            import torch_xla.core.xla_model as xm  # only in the TPU environment

            return xm.xla_device()
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("PJRT_DEVICE"):
        try:
            import torch_xla.core.xla_model as xm

            return xm.xla_device()
        except ImportError:
            pass
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device, cpu_half: bool = False) -> torch.dtype:
    """'auto' means half precision where it is fast and safe: CUDA (bf16 if supported, else fp16);
    with `cpu_half` (gradient-free work), CPUs with AMX tiles, whose bf16 matrix units run it
    about twice as fast as fp32; fp32 elsewhere. Training keeps fp32 on CPUs: bf16 backward
    passes are slow there."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if cpu_half and device.type == "cpu" and has_amx():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def has_amx() -> bool:
    """Intel AMX tiles (Sapphire Rapids and later): `torch.cpu` has no public query for them yet."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())
