"""torch.distributed as `torchrun` launches it: one process per device, set up from the environment.

torchrun (and any launcher following its convention) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. A process started without them is a run of one, and torch.distributed stays uninitialised. The
backend is NCCL when CUDA is there, gloo otherwise (the CPU path: SyncBN is then resnest_fast.nn.SyncBatchNorm).
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

from resnest_fast.utils import hold_sigterm

__all__ = ["DistInfo", "init_distributed", "is_distributed", "barrier", "all_gather_object", "broadcast_object",
           "report_failure", "peer_failure", "report_own_failure", "peer_stopped", "cleanup"]

_FAILURE_KEY = "resnest_fast/failure"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None: not distributed
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Reads torchrun's environment and initialises the default process group when WORLD_SIZE > 1 (or reuses
    one already initialised). device: 'cpu', 'cuda' or None (CUDA when available). Each process of a CUDA run uses
    GPU LOCAL_RANK."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU (use --device cpu)")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    initialised_here = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        backend = dist.get_backend()
    elif world_size > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        initialised_here = True
    else:
        backend = None
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world_size, local_rank, dev, backend, initialised_here)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _store():
    """The default process group's key-value store (torchrun's agent holds it), None outside a distributed run."""
    if not is_distributed():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # a private function: without it, the other processes only see their collective fail
        return None


def report_failure(rank: int, message: str) -> None:
    """Leaves this process's error in the store before it leaves the process group: the others, whose next
    collective then fails with only "Connection closed by peer", read it there (peer_failure)."""
    store = _store()
    if store is not None:
        try:
            store.set(_FAILURE_KEY, f"{rank}\n{message}")
        except Exception:
            pass  # the store is gone with its host: the others see their collective fail, as without this


def peer_failure(timeout_s: float = 2.0) -> Optional[Tuple[int, str]]:
    """(rank, message) of a process that reported its error (report_failure), waiting up to timeout_s for it (a
    collective can fail here before the report arrives); None when no process reported one."""
    store = _store()
    if store is None:
        return None
    try:
        if timeout_s > 0:
            store.wait([_FAILURE_KEY], datetime.timedelta(seconds=timeout_s))
        elif not store.check([_FAILURE_KEY]):
            return None
        rank, _, message = store.get(_FAILURE_KEY).decode("utf-8", "replace").partition("\n")
        return int(rank), message
    except Exception:  # nothing reported in time, or the store is gone
        return None


def report_own_failure(info: Optional[DistInfo], message: str) -> None:
    """In a run of several processes, this process's error for the others to read (report_failure), only this
    process knowing it (e.g. a sample it could not read); a SIGTERM (torchrun's, once another process has ended) is
    held from now on, so that the error stays what this process reports."""
    if info is not None and info.world_size > 1:
        hold_sigterm(True)
        report_failure(info.rank, message)


def peer_stopped(info: Optional[DistInfo], wait: bool = True) -> Optional[str]:
    """"process R of N stopped: <its error>" when another process of this run reported the error that ended it
    (report_own_failure), else None (a run of one, or nothing reported). For a collective that failed ("Connection
    closed by peer"): wait=True waits briefly for the report and holds SIGTERM meanwhile; for the SIGTERM itself
    (KeyboardInterrupt), wait=False reads what is there."""
    if info is None or info.world_size <= 1:
        return None
    if wait:
        hold_sigterm(True)
    failure = peer_failure() if wait else peer_failure(timeout_s=0)
    return None if failure is None else f"process {failure[0]} of {info.world_size} stopped: {failure[1]}"


def cleanup(info: DistInfo) -> None:
    """Destroys the process group if init_distributed created it."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
