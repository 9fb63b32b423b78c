"""Running a test function in several gloo processes on the CPU (torch.multiprocessing spawn, file rendezvous)."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, fn, world_size, init_file, args):
    # One thread per process: two processes share the two cores of the test machines.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size, tmp_path, *args):
    """fn(rank, world_size, *args) in `world_size` processes with torch.distributed initialised (gloo). fn must be
    a module-level function (it is pickled by name); it reports through files under tmp_path."""
    init_file = os.path.join(str(tmp_path), "dist_init")
    mp.spawn(_entry, args=(fn, world_size, init_file, args), nprocs=world_size, join=True)
