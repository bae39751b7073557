"""Data-parallel training under torchrun: process group, rank facts and the few collectives pixelwise uses.

``torchrun --nproc_per_node N -m pixelwise train cfg.yaml`` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything here is a no-op and a run is a single process. Backend: nccl on CUDA, gloo on CPU.
``train.batch_size`` is per process (the global batch is batch_size x processes) and the learning rate is
used as configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pixelwise.errors import PixelwiseError
from pixelwise.progress import console


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def current() -> Dist:
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (once); other ranks than 0 print nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Dist()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:  # NCCL needs a GPU per process; set_device would fail inside torch
                raise PixelwiseError(
                    f"torchrun started process {local_rank} on this machine, which has {gpus} GPU(s): one process "
                    f"per GPU (--nproc_per_node {gpus}), or train.device: cpu for processes on the CPU (gloo)")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    info = current()
    if not info.is_main:
        console.quiet = True  # logs, progress and notes come from rank 0 once
    return info


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart under DDP)."""
    if current().enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
