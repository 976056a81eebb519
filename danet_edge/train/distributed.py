"""Multi-process (DDP) helpers: one process per device, launched by torchrun or by ``spawn``.

* ``torchrun --nproc_per_node N -m danet_edge.cli train ...`` sets ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; ``init_from_env`` joins that group.
* ``danet-edge train --devices N`` calls ``spawn(fn, N, ...)``: ``torch.multiprocessing`` starts N
  processes on a free local port.

Backend: NCCL on CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_from_env", "spawn", "free_port", "cleanup", "in_torchrun", "launched_by_torchrun"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun (a process group exists, even of one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """DDP (and SyncBatchNorm on CUDA): several processes, or torchrun's group of one."""
        return self.world_size > 1 or self.launched


def in_torchrun() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_by_torchrun() -> bool:
    """True when torchrun started this process, one process included (it sets ``TORCHELASTIC_RUN_ID``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env() -> DistContext:
    """Join the process group described by torchrun's environment (single process when absent)."""
    if not in_torchrun() and not launched_by_torchrun():
        return DistContext(device=_device_for(0))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    return _init(rank, world, local, launched=True)


def _init(rank: int, world: int, local_rank: int, launched: bool = False) -> DistContext:
    device = _device_for(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    if device.type == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return DistContext(rank, world, local_rank, device, launched)


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    ctx = _init(local_rank, world, local_rank)
    try:
        fn(ctx, *args)
    finally:
        cleanup()


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run ``fn(ctx: DistContext, *args)`` in ``nprocs`` local processes (``torch.multiprocessing``).

    Exceptions in a child are re-raised here (as ``torch.multiprocessing.ProcessRaisedException``).
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
