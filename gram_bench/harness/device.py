"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib

import torch

from gram_bench.core.errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device(name)


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
