"""Process groups and the facts a rank needs about them (rank, world size, device).

Ray Train creates the process group on its workers; the local launcher and the tests
create one here (gloo on CPU, nccl on GPU). Everything else reads ``DistEnv``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def pick_device(pref: str, local_rank: int) -> torch.device:
    """``auto`` takes the GPU when there is one; ``cuda`` without one is an error."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def backend_for(device_pref: str) -> str:
    """The process-group backend for ``trainer.device``: nccl where the ranks train on CUDA
    (NCCL takes CUDA tensors only), gloo on the CPU."""
    cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def current_env(device_pref: str = "auto") -> DistEnv:
    """The env of an already initialized process group (Ray Train, torchrun, ``launch``)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistEnv(
        dist.get_rank(), dist.get_world_size(), local_rank, pick_device(device_pref, local_rank)
    )


def node_id() -> str:
    """The node this process runs on: Ray's node id inside a Ray worker (two Ray nodes on one
    machine are two nodes), else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # Ray missing or not started here: the host is the node
        pass
    return socket.gethostname()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, port: int, backend: str = "gloo") -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=300)
    )


def close_process_group() -> None:
    """Barrier, then destroy: without the barrier a fast rank's exit fails the others."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _spawned(rank: int, world_size: int, port: int, backend: str, fn: Callable, args: Sequence[Any]) -> None:
    init_process_group(rank, world_size, port, backend)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        # No barrier: the other ranks may be stuck in a collective; exiting with the error
        # makes torch.multiprocessing terminate them instead of waiting for a timeout.
        dist.destroy_process_group()
        raise
    close_process_group()


def spawn(fn: Callable[..., None], world_size: int, *args: Any, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` local processes (gloo ranks, or
    nccl ones on a GPU host: rank r on ``cuda:r``).

    ``fn`` must be importable (module level). Raises if any rank fails.
    """
    mp.start_processes(
        _spawned,
        args=(world_size, free_port(), backend, fn, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def run_ranks(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks: one rank in this process
    (a process group of one, as DMP needs), more through ``spawn``."""
    if world_size == 1:
        init_process_group(0, 1, free_port())
        fn(0, 1, *args)
    else:
        spawn(fn, world_size, *args)


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (a list of one without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks (``t`` itself without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t
