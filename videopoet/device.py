"""Device and dtype policy, in one place.

cuda if present, then mps, then cpu. bf16 autocast on GPUs that support it, fp32 elsewhere
(CPU bf16 matmuls are slower than fp32 on most CPUs and change numerics in tests).
"""

from __future__ import annotations

from typing import Literal

import torch

from videopoet.errors import NotAvailableError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NotAvailableError(f"device {name!r} asked for, but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NotAvailableError("device 'mps' asked for, but MPS is not available")
    return torch.device(name)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for training/inference on `device`."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def lightning_precision(device: torch.device) -> str:
    return "bf16-mixed" if compute_dtype(device) == torch.bfloat16 else "32-true"
