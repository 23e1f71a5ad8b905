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


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' means half precision where it is fast and safe (CUDA: bf16 if supported), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "xla":
        import torch_xla.core.xla_model as xm

        xm.mark_step()
