"""Data-parallel training on torch.distributed (processes started by `torchrun`).

Every rank holds the whole adapter and the same seeded generators; the data side gives each
rank its slice of the same global batch (training/data/loader.py), the loop averages the
trained parameters' gradients with all_reduce before each optimizer step, and only rank 0
writes files and renders samples. This is what DistributedDataParallel does for a module
whose forward it owns; ours are patched into ComfyUI's model, whose forward we do not own,
so the engine reduces the gradients itself, once per optimizer step, in one flat buffer.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import user_error


@user_error
class DistributedSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Group:
    """This process's place in the job; the default is a single process."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (cuda for nccl)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over all ranks (t itself when single)."""
        if not self.active:
            return t
        buf = t.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any: how ranks stop together."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Each parameter's gradient becomes the mean over ranks (a missing one counts as zero,
        so every rank sends the same layout)."""
        if not self.active or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1).to(self.device, torch.float32) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g).to(g.dtype))
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Group()
_current = SINGLE


def current() -> Group:
    """The group this process trains in: set once by join_from_environment (scripts/train.py
    under torchrun); every trainer reads it, so each one runs data-parallel without its own code."""
    return _current


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_PINNED = "LLLITE_KIT_DEVICE_PINNED"


def pin_local_device() -> None:
    """Under torchrun, let this process see only its own GPU (LOCAL_RANK-th of the visible
    ones), so ComfyUI's model management, which always takes the first, uses it. Must run
    before CUDA is initialised."""
    if not launched_by_torchrun() or os.environ.get(_PINNED) == "1":
        return
    os.environ[_PINNED] = "1"  # once: the narrowed list must not be narrowed again
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v.strip()] if visible else None
    if ids is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local)
    elif local < len(ids):
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[local]
    else:
        raise DistributedSetupError(f"LOCAL_RANK {local} but CUDA_VISIBLE_DEVICES lists only {len(ids)} device(s): "
                                    "start no more processes per machine than it has GPUs (torchrun --nproc_per_node)")


def join_from_environment(timeout_minutes: float = 30) -> Group:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT): nccl when this process has a GPU, gloo otherwise. SINGLE without torchrun."""
    global _current
    if not launched_by_torchrun():
        return SINGLE
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    _current = Group(dist.get_rank(), dist.get_world_size(), device)
    return _current


def leave() -> None:
    global _current
    if _current.active and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def shard(count: int, rank: int, world: int) -> slice:
    """Rank's contiguous part of a global batch of `count` samples: sizes differ by at most one,
    the first ranks take the larger parts (a short last batch may leave a rank nothing)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))
