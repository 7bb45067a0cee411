"""Device and dtype selection: CUDA when available, never hard-coded."""

from __future__ import annotations

import torch

from nup.validation import check_choice

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA if available else CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        device = device.type
    if device is None:
        device = "auto"
    check_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False; use device='cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        check_choice("dtype", dtype, DTYPES.values())
        return dtype
    check_choice("dtype", dtype, DTYPES)
    return DTYPES[dtype]
