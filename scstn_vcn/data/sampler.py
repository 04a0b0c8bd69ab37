"""P x K identity batch sampler, aware of distributed data parallel ranks.

Epoch semantics: an epoch is one pass over the identities. The identities are shuffled (from
``seed`` and the epoch number) and cut into global steps of ``P * world_size`` identities; in each
step rank r takes identities ``[r*P, (r+1)*P)`` of that step, so ranks see disjoint identities within
a step and every rank yields the same number of batches. Each identity contributes K images: K
distinct ones when it has at least K, otherwise all of its images plus draws with replacement.

With ``drop_last=True`` the identities left over after the last full step are skipped this epoch
(another epoch's shuffle uses them); with ``drop_last=False`` the last step is filled up with
identities from the start of the permutation that are not already in that step, so every identity
appears at least once per epoch.

Call ``set_epoch(epoch)`` before each epoch (as with DistributedSampler): the order depends only on
(seed, epoch, rank, world_size), so runs are reproducible and resumable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _pid_of(item) -> int:
    return int(item[1])  # (path, pid, camid) items, as produced by the data set readers


class PKBatchSampler(Sampler[list[int]]):
    """Yields lists of ``num_identities * num_instances`` dataset indices for this rank."""

    def __init__(
        self,
        items: Sequence,
        num_identities: int = 16,
        num_instances: int = 6,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if num_identities < 1 or num_instances < 1:
            raise ValueError(f"num_identities and num_instances must be >= 1, got {num_identities}, {num_instances}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not valid for world_size {world_size}")
        index_of = defaultdict(list)
        for index, item in enumerate(items):
            index_of[_pid_of(item)].append(index)
        self.pids = sorted(index_of)
        self.index_of = {pid: np.asarray(idx) for pid, idx in index_of.items()}
        self.P, self.K = num_identities, num_instances
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0
        per_step = self.P * self.world_size
        if len(self.pids) < per_step:
            raise ValueError(
                f"P x K sampling needs at least num_identities * world_size = {self.P} * "
                f"{self.world_size} = {per_step} identities, the training set has {len(self.pids)}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        per_step = self.P * self.world_size
        n = len(self.pids)
        return n // per_step if self.drop_last else -(-n // per_step)

    def _steps(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The identities of every global step (each an array of P * world_size distinct pids)."""
        per_step = self.P * self.world_size
        order = np.asarray(self.pids)[rng.permutation(len(self.pids))]
        steps = [order[i : i + per_step] for i in range(0, len(order), per_step)]
        if len(steps[-1]) < per_step:
            if self.drop_last:
                steps.pop()
            else:
                last = steps[-1]
                fill = [p for p in order if p not in set(last.tolist())][: per_step - len(last)]
                steps[-1] = np.concatenate([last, np.asarray(fill, dtype=order.dtype)])
        return steps

    def __iter__(self) -> Iterator[list[int]]:
        # All ranks draw the same identity permutation (same seed and epoch, no rank in it) so
        # that they can split each step disjointly; the image draws then use a per-rank stream.
        steps = self._steps(np.random.default_rng([self.seed, self.epoch]))
        image_rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        for step in steps:
            batch = []
            for pid in step[self.rank * self.P : (self.rank + 1) * self.P]:
                batch.extend(self._draw(image_rng, self.index_of[int(pid)]))
            yield batch

    def _draw(self, rng: np.random.Generator, indices: np.ndarray) -> list[int]:
        if len(indices) >= self.K:
            chosen = rng.choice(indices, size=self.K, replace=False)
        else:  # use every image once, then top up with repeats
            chosen = np.concatenate([rng.permutation(indices), rng.choice(indices, size=self.K - len(indices))])
        return [int(i) for i in chosen]
