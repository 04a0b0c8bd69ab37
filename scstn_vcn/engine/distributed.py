"""torchrun / DistributedDataParallel set-up.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (plus MASTER_ADDR/PORT); without them the run is a
single process. Process groups use NCCL on GPUs and gloo on CPUs. Only rank 0 writes logs and
checkpoints; every rank draws its own share of the P x K batches (the sampler takes rank/world_size).
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device_type):
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def wrap_model(model, info, device, sync_bn=False):
    """DistributedDataParallel around `model` when the run has more than one process."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_mean(values, info):
    """Average a dict of floats over the ranks (for logging the epoch's loss)."""
    if not info.enabled:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    tensor /= info.world_size
    return {k: float(v) for k, v in zip(keys, tensor.cpu().tolist())}


def barrier(info):
    if info.enabled:
        dist.barrier()


def cleanup(info):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
