"""What the CPU's matrix units can do, asked of torch alone (the world's build imports this without the product)."""

from __future__ import annotations

import torch


def has_amx() -> bool:
    """Intel AMX tiles (Sapphire Rapids and later): `torch.cpu` has no public query for them yet."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())
