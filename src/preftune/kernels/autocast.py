"""What autocast is doing, for the code paths that compute differently under it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls beat float32 on a CPU only with native bf16 instructions (AVX512-BF16 or AMX)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast on `device_type` runs matmuls in right now, or None when it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
