"""PKSampler: exact P x K batches, determinism, rank slices, resume, small identities, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from reid.data.sampler import PKSampler, derive_seed
from reid.errors import ReidError


def uneven_labels() -> list[int]:
    """12 identities with 1..23 images (some fewer than K), in a shuffled order."""
    labels = [pid for pid in range(12) for _ in range(1 + 2 * pid)]
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3)).tolist()
    return [labels[i] for i in perm]


def check_pk(batch: list[int], labels: list[int], p: int, k: int) -> None:
    assert len(batch) == p * k
    counts = Counter(labels[i] for i in batch)
    assert len(counts) == p, counts
    assert set(counts.values()) == {k}, counts
    # identity by identity: K consecutive indices of one id
    for start in range(0, len(batch), k):
        assert len({labels[i] for i in batch[start:start + k]}) == 1


def test_every_batch_is_p_ids_by_k_images() -> None:
    labels = uneven_labels()
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        check_pk(batch, labels, 4, 4)


def test_epoch_length_is_deterministic_and_follows_chunk_counts() -> None:
    labels = uneven_labels()
    counts = Counter(labels)
    chunks = sum(max(1, n // 4) for n in counts.values())
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    assert len(sampler) == chunks // 4
    for epoch in range(5):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == chunks // 4
    keep_all = PKSampler(labels, p=4, k=4, seed=0, drop_last=False)
    assert len(keep_all) == -(-chunks // 4)
    for batch in keep_all:
        check_pk(batch, labels, 4, 4)


def test_large_identities_are_drained_within_the_epoch() -> None:
    """A proportional pick spends most chunks; the reference uniform pick strands the big identity."""
    labels = [0] * 40 + [pid for pid in range(1, 9) for _ in range(4)]
    sampler = PKSampler(labels, p=2, k=4, seed=1)
    used = Counter(labels[i] for b in sampler for i in b)
    assert used[0] >= 32  # at least 8 of its 10 chunks


def test_same_seed_and_epoch_give_the_same_batches_other_epochs_differ() -> None:
    labels = uneven_labels()
    a, b = PKSampler(labels, 4, 4, seed=7), PKSampler(labels, 4, 4, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again replays the epoch
    b.set_epoch(3)
    assert list(a) != list(b)
    c = PKSampler(labels, 4, 4, seed=8)
    c.set_epoch(2)
    assert list(a) != list(c)


def test_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(PKSampler(uneven_labels(), 4, 4, seed=0))
    assert torch.equal(before, torch.get_rng_state())


def test_identities_with_fewer_than_k_images_are_drawn_with_replacement() -> None:
    labels = [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]  # id 0 has one image, id 1 two
    sampler = PKSampler(labels, p=2, k=4, seed=0, drop_last=False)
    seen = Counter()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for batch in sampler:
            check_pk(batch, labels, 2, 4)
            for start in range(0, 8, 4):
                chunk = batch[start:start + 4]
                seen[labels[chunk[0]]] += 1
                if labels[chunk[0]] == 0:
                    assert chunk == [0, 0, 0, 0]
                if labels[chunk[0]] == 3:
                    assert sorted(chunk) == [6, 7, 8, 9]  # enough images: no repeats
    assert seen[0] > 0 and seen[1] > 0


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_union_is_the_single_process_batch(world_size: int) -> None:
    labels = uneven_labels()
    single = PKSampler(labels, 4, 4, seed=5)
    ranks = [PKSampler(labels, 4, 4, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert all(len(s) == len(single) for s in ranks)
        for step, batch in enumerate(single):
            parts = [per_rank[r][step] for r in range(world_size)]
            assert all(len(p) == 4 // world_size * 4 for p in parts)
            assert sum(parts, []) == batch
            # whole identities per rank: no identity is split across ranks
            ids = [{labels[i] for i in p} for p in parts]
            assert sum(len(x) for x in ids) == 4


def test_resume_mid_epoch_reproduces_the_remaining_batches() -> None:
    labels = uneven_labels()
    sampler = PKSampler(labels, 4, 4, seed=11)
    sampler.set_epoch(4)
    full = list(sampler)
    it = iter(sampler)
    for _ in range(2):
        next(it)
    state = sampler.state_dict()
    assert state["consumed"] == 2 and state["epoch"] == 4
    resumed = PKSampler(labels, 4, 4, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # what a trainer does at the start of the epoch; keeps the resume point
    assert resumed.resume_offset == 2
    assert list(resumed) == full[2:]
    assert list(resumed) == full  # the next pass of the same epoch is whole again
    resumed.load_state_dict(state)
    resumed.set_epoch(5)  # moving on to another epoch forgets the resume point
    assert len(list(resumed)) == len(full)


def test_state_dict_holds_plain_ints_and_checks_compatibility() -> None:
    sampler = PKSampler(uneven_labels(), 4, 4, seed=1)
    state = sampler.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    other = PKSampler(uneven_labels(), 2, 4, seed=1)
    with pytest.raises(ReidError, match="p=4"):
        other.load_state_dict(state)


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ReidError, match=r"at least P=16 identities but the training set has 3"):
        PKSampler([0, 0, 1, 1, 2, 2], p=16, k=4, seed=0)


def test_p_must_split_over_ranks() -> None:
    with pytest.raises(ReidError, match="multiple of 4"):
        PKSampler(uneven_labels(), p=6, k=4, seed=0, rank=0, world_size=4)
    with pytest.raises(ReidError, match="rank 2"):
        PKSampler(uneven_labels(), p=4, k=4, seed=0, rank=2, world_size=2)


def test_derive_seed_mixes_all_parts() -> None:
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert 0 <= derive_seed(-5, 2) < 2**63
