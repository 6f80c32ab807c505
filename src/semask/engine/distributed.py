"""torch.distributed set-up for training: one process per device, launched by torchrun.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them
and starts the process group (NCCL for CUDA devices, gloo on CPU). Without them it is a no-op and the
helpers answer as for a single process.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger("semask.train")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_distributed() -> bool:
    """True when the environment describes more than one process (torchrun or a manual launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def init_distributed(device: torch.device | str | None = None, timeout_s: int = 1800) -> bool:
    """Start the process group described by the environment; returns True when distributed.

    Backend: NCCL when the device is CUDA, gloo otherwise. Does nothing when already initialised or when
    WORLD_SIZE is 1 or unset.
    """
    if is_initialized():
        return True
    if not launched_distributed():
        return False
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run a single process instead")
    device = torch.device(device) if device is not None else default_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("distributed: rank %d of %d, backend %s, device %s", get_rank(), get_world_size(), backend, device)
    return True


def barrier() -> None:
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place); identity for one process."""
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj, src: int = 0):
    """The object of rank `src` on every rank."""
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
