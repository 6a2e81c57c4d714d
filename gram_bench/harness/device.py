"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib

import torch

from gram_bench.harness.errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """`auto` = bf16 autocast on CUDA with bf16 support and on CPUs with AVX-512 BF16/AMX."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
