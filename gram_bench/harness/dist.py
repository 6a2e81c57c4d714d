"""Data-parallel runs under torchrun (DESIGN.md section 7).

`torchrun --nproc-per-node N -m gram_bench run ...` (or `gram-bench run --nproc N`, which
launches exactly that) starts N processes with RANK / LOCAL_RANK / WORLD_SIZE set. Each
process joins one process group (NCCL on GPUs, gloo on CPUs), takes the GPU of its local
rank, and trains its slice of every global batch under DistributedDataParallel; rank 0 alone
writes files. Evaluation shards the test inputs across ranks and gathers every per-example
record to rank 0. A single process (no WORLD_SIZE, or 1) never touches torch.distributed.
"""

from __future__ import annotations

import os
from typing import Any

FIND_UNUSED = False  # every model's loss uses all its parameters (checked for each model under 2 processes)

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str = "auto") -> str:
    """Join the process group torchrun describes; returns the device name for this rank
    (`cuda:<local rank>` on GPUs). A no-op returning `device_name` outside torchrun."""
    if not launched():
        return device_name
    if dist.is_initialized():
        return _device_for(device_name)
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _device_for(device_name)


def _device_for(device_name: str) -> str:
    if device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available()):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu" if device_name == "auto" else device_name


def close() -> int:
    """Leave the process group, if this process joined one; returns the world size it left (1
    when it was in none). Called on every exit path of the CLI (success, error, SIGTERM): a
    gloo or NCCL group left alive at interpreter exit tears down its worker threads unjoined,
    and the process dies with SIGABRT ("terminate called without an active exception"), which
    torchrun reports as a failed rank. No barrier: on an error path the other ranks may
    already be gone."""
    if dist.is_available() and dist.is_initialized():
        n = dist.get_world_size()
        dist.destroy_process_group()
        return n
    return 1


def local_batch(global_batch: int) -> int:
    """The rows of a global batch this rank trains on; the global batch must split evenly."""
    w = world_size()
    if global_batch % w:
        from gram_bench.core.errors import UsageError

        raise UsageError(f"train.batch_size={global_batch} does not split evenly across {w} processes; "
                         f"use a multiple of {w}.")
    return global_batch // w


def my_slice(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch of example indices."""
    w, r = world_size(), rank()
    if w == 1:
        return idx
    b = len(idx) // w
    return idx[r * b:(r + 1) * b]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank); [obj] in a single process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (e.g. a time limit reached)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_across(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average each scalar over ranks (for logging)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(t)
    t = t / world_size()
    return {k: t[i] for i, k in enumerate(keys)}


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """A DistributedDataParallel view of `model` whose forward is `model.loss(batch, carry)`,
    or None in a single process. Buffers are not broadcast (every rank keeps identical ones:
    the sparse puzzle table is updated from the all-gathered rows)."""
    if world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    # no buffer sync in forward (newer torch names the knob forward_sync_buffers; the buffers are
    # identical at init anyway, every rank having built the model from the same seed)
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(_LossForward(model), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=FIND_UNUSED, **sync)


class _LossForward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, carry):
        return self.model.loss(batch, carry)
