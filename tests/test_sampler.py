"""P x K batch sampler: batch structure, DDP rank split, epoch coverage and determinism."""

from collections import Counter

import pytest

from scstn_vcn.data import PKBatchSampler


def make_items(num_ids: int = 22, small: tuple[int, ...] = (3, 8)):
    """Identities 100.. with 3..9 images each; those in ``small`` have 2 images (< K)."""
    items = []
    for i in range(num_ids):
        n = 2 if i in small else 3 + i % 7
        items += [(f"img_{i}_{k}.jpg", 100 + i, k % 3) for k in range(n)]
    return items


def pids_of(batch, items):
    return [items[i][1] for i in batch]


def test_batches_are_p_by_k():
    items = make_items()
    sampler = PKBatchSampler(items, num_identities=4, num_instances=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 22 // 4
    for batch in batches:
        counts = Counter(pids_of(batch, items))
        assert len(batch) == 12 and len(counts) == 4 and set(counts.values()) == {3}
        for pid in counts:  # identities with >= K images are drawn without repeats
            own = [i for i in batch if items[i][1] == pid]
            if sum(1 for it in items if it[1] == pid) >= 3:
                assert len(set(own)) == 3


def test_identities_with_few_images_use_all_of_them():
    items = make_items()
    sampler = PKBatchSampler(items, num_identities=22, num_instances=4, seed=0)
    (batch,) = list(sampler)
    for pid in (103, 108):  # two images each: both used, then repeats
        used = {items[i][0] for i in batch if items[i][1] == pid}
        assert used == {f"img_{pid - 100}_0.jpg", f"img_{pid - 100}_1.jpg"}


def test_ranks_see_disjoint_identities_and_same_batch_count():
    items = make_items(num_ids=23)
    ranks = [PKBatchSampler(items, 3, 2, seed=5, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0]) == 23 // 9
    for step in zip(*per_rank):
        sets = [set(pids_of(b, items)) for b in step]
        assert all(len(s) == 3 for s in sets)
        assert len(set().union(*sets)) == 9  # disjoint across ranks


def test_epoch_covers_all_identities():
    items = make_items(num_ids=22)
    # drop_last=False: the last step is filled up, so every identity is used.
    for world_size in (1, 2):
        seen = set()
        for rank in range(world_size):
            s = PKBatchSampler(items, 4, 2, seed=3, rank=rank, world_size=world_size, drop_last=False)
            assert len(s) == -(-22 // (4 * world_size))
            for batch in s:
                assert len(set(pids_of(batch, items))) == 4
                seen |= set(pids_of(batch, items))
        assert seen == {100 + i for i in range(22)}
    # drop_last=True with a multiple of P: also every identity exactly once.
    items = make_items(num_ids=20)
    used = Counter(p for b in PKBatchSampler(items, 5, 2, seed=3) for p in set(pids_of(b, items)))
    assert set(used) == {100 + i for i in range(20)} and set(used.values()) == {1}


def test_set_epoch_is_deterministic_and_reshuffles():
    items = make_items()
    a, b = PKBatchSampler(items, 4, 2, seed=7), PKBatchSampler(items, 4, 2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and list(a) == list(a)  # same (seed, epoch) -> same batches, re-iterable
    b.set_epoch(4)
    assert list(a) != list(b)
    c = PKBatchSampler(items, 4, 2, seed=8)
    c.set_epoch(3)
    assert list(c) != list(a)


def test_too_few_identities_and_bad_arguments():
    items = make_items(num_ids=5)
    with pytest.raises(ValueError, match="at least"):
        PKBatchSampler(items, num_identities=4, num_instances=2, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler(items, 2, 2, rank=2, world_size=2)
