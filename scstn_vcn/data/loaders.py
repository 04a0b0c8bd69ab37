"""DataLoaders for training (P x K batches) and evaluation (query and gallery, in order)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from .image_dataset import ImageDataset
from .sampler import PKBatchSampler
from .transforms import build_transforms


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from its torch seed (which the loader's generator fixes)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset,
    height: int,
    width: int,
    num_identities: int = 16,
    num_instances: int = 6,
    workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    **transform_kwargs,
) -> DataLoader:
    """P x K loader over ``dataset.train``; call ``loader.batch_sampler.set_epoch(e)`` every epoch.

    Worker seeds come from a generator seeded by (seed, rank), so augmentation is reproducible and
    differs between ranks. With ``workers=0`` augmentation uses the global torch RNG (seed it).
    """
    sampler = PKBatchSampler(
        dataset.train, num_identities, num_instances, seed=seed, rank=rank, world_size=world_size, drop_last=True
    )
    generator = torch.Generator().manual_seed(seed * 1000003 + rank)
    return DataLoader(
        ImageDataset(dataset.train, build_transforms(height, width, True, **transform_kwargs)),
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )


def build_eval_loaders(
    dataset, height: int, width: int, batch_size: int = 128, workers: int = 2
) -> tuple[DataLoader, DataLoader]:
    """(query_loader, gallery_loader); batches are (images, pids, camids, indices) in list order."""
    transform = build_transforms(height, width, is_train=False)

    def make(items) -> DataLoader:
        return DataLoader(
            ImageDataset(items, transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            worker_init_fn=seed_worker,
        )

    return make(dataset.query), make(dataset.gallery)
