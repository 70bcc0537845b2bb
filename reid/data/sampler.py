"""P x K identity sampling: every training batch holds exactly P identities with K images each.

The batch-hard triplet loss needs positives *and* negatives inside one batch, which a plain shuffle
does not give; hence the strong baseline's identity sampler. This one keeps its semantics (per
identity: shuffle, cut into chunks of K, identities with fewer than K images are drawn with
replacement up to K, the incomplete last chunk is dropped) and fixes what makes the original awkward
for long, resumable, multi-GPU runs:

* **Deterministic epoch length.** The reference picks P identities uniformly among those with chunks
  left and stops when fewer than P remain, so the number of batches varies from epoch to epoch (an
  identity with many images is left alone at the end). Here the length is fixed by the chunk counts,
  ``floor(total_chunks / P)`` (``ceil`` without ``drop_last``), and identities are picked with
  probability proportional to their *remaining* chunks, which drains the large identities at the
  pace of the small ones. If fewer than P identities still have chunks before the epoch is full,
  the batch is completed with fresh chunks of other identities, so every batch is exactly P x K.
* **Explicit randomness.** Everything comes from a ``torch.Generator`` seeded by ``(seed, epoch)``;
  the global RNGs are never touched, so evaluation or logging between epochs cannot shift a batch.
* **Exact resume.** ``state_dict()`` records the batches already consumed in the current epoch;
  after ``load_state_dict`` the next iteration continues with the following batch.
* **Ranks.** The global batch list is identical on every rank (it ignores the rank); rank ``r`` takes
  the contiguous block of ``P / world_size`` whole identities ``r`` of every global batch, so the
  ranks' batches of one step concatenated in rank order are the single-process batch.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from reid.errors import ReidError


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. ``(seed, epoch, step)``).

    Plain arithmetic such as ``seed + epoch`` makes neighbouring runs share streams (seed 1 epoch 0 ==
    seed 0 epoch 1); NumPy's ``SeedSequence`` hashes the whole tuple instead.
    """
    words = [int(p) % 2**63 for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen


class PKSampler:
    """Batch sampler of ``P x K`` indices (``P / world_size x K`` on each rank); see the module docstring.

    Use it as ``DataLoader(dataset, batch_sampler=sampler)`` or iterate it directly: each item is a list
    of indices into ``labels``, ordered identity by identity (K consecutive indices per identity).
    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        if p < 1 or k < 1:
            raise ReidError(f"P x K sampling needs P >= 1 and K >= 1, got P={p}, K={k}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ReidError(f"rank {rank} is not in a world of {world_size} process(es)")
        if p % world_size:
            raise ReidError(
                f"data.ids_per_batch={p} cannot be split over {world_size} processes: each process takes whole "
                f"identities, so P must be a multiple of {world_size}"
            )
        label_list = [int(x) for x in labels]
        groups: dict[int, list[int]] = {}
        for index, label in enumerate(label_list):
            groups.setdefault(label, []).append(index)
        if len(groups) < p:
            raise ReidError(
                f"P x K sampling needs at least P={p} identities but the training set has {len(groups)}; "
                f"lower data.ids_per_batch to at most {len(groups)} or add identities"
            )
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.num_samples = len(label_list)
        # Identities in sorted label order so the batch list does not depend on the order of the manifest's ids.
        self._ids = sorted(groups)
        self._members = [torch.tensor(groups[i], dtype=torch.long) for i in self._ids]
        self._chunks_per_id = [max(1, len(m) // self.k) for m in self._members]
        total = sum(self._chunks_per_id)
        self._num_batches = total // self.p if self.drop_last else -(-total // self.p)
        self.epoch = 0
        self._consumed = 0  # batches of the current epoch handed out (for state_dict)
        self._resume_from = 0  # batches to skip at the next __iter__ (set by load_state_dict)
        self._cache: tuple[int, list[list[int]]] | None = None

    # -- public API -------------------------------------------------------------------------------
    @property
    def ids_per_rank(self) -> int:
        return self.p // self.world_size

    @property
    def batch_size(self) -> int:
        """Indices per batch on this rank (``P / world_size * K``)."""
        return self.ids_per_rank * self.k

    @property
    def resume_offset(self) -> int:
        """Batches the next ``__iter__`` skips (non-zero only right after ``load_state_dict``)."""
        return self._resume_from

    def __len__(self) -> int:
        """Batches of a full epoch on this rank (the same on every rank and every epoch)."""
        return self._num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields.

        Setting the epoch that ``load_state_dict`` just restored keeps the resume point; any other epoch
        starts from its first batch.
        """
        epoch = int(epoch)
        if epoch != self.epoch:
            self._resume_from = 0
            self._consumed = 0
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches(self.epoch)
        start, self._resume_from = self._resume_from, 0
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        self._consumed = start
        for batch in batches[start:]:
            self._consumed += 1
            yield batch[lo:hi]
        self._consumed = 0  # a finished epoch: iterating again replays it from the start

    def state_dict(self) -> dict[str, Any]:
        """Plain ints only (safe for ``torch.load(weights_only=True)`` and for pickling between ranks)."""
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self._consumed, "p": self.p, "k": self.k,
                "world_size": self.world_size, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore seed, epoch and the resume point; the next ``__iter__`` continues after ``consumed``."""
        for key in ("p", "k", "world_size", "num_samples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ReidError(
                    f"sampler state was saved with {key}={state[key]} but this sampler has {key}={getattr(self, key)}; "
                    "a batch-exact resume needs the same data and P x K split"
                )
        consumed = int(state.get("consumed", 0))
        if not 0 <= consumed <= self._num_batches:
            raise ReidError(f"sampler state says {consumed} batches consumed, but an epoch has {self._num_batches}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._cache = None
        self._consumed = consumed
        self._resume_from = consumed

    # -- the epoch's batch list -------------------------------------------------------------------
    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every global batch (``P x K`` indices) of ``epoch``; identical on all ranks. Cached per epoch."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._build(seeded_generator(self.seed, epoch))
        self._cache = (epoch, batches)
        return batches

    def _fresh_chunk(self, slot: int, gen: torch.Generator) -> list[int]:
        """K images of one identity: a random subset, or drawn with replacement when it has fewer than K."""
        members = self._members[slot]
        n = len(members)
        if n >= self.k:
            pick = torch.randperm(n, generator=gen)[: self.k]
        else:
            pick = torch.randint(n, (self.k,), generator=gen)
        return members[pick].tolist()

    def _chunks(self, slot: int, gen: torch.Generator) -> list[list[int]]:
        members = self._members[slot]
        n = len(members)
        if n < self.k:
            return [members[torch.randint(n, (self.k,), generator=gen)].tolist()]
        shuffled = members[torch.randperm(n, generator=gen)].tolist()
        return [shuffled[i * self.k:(i + 1) * self.k] for i in range(n // self.k)]

    def _build(self, gen: torch.Generator) -> list[list[int]]:
        num_ids = len(self._ids)
        chunks = [self._chunks(slot, gen) for slot in range(num_ids)]
        remaining = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
        batches: list[list[int]] = []
        for _ in range(self._num_batches):
            available = int((remaining > 0).sum())
            take = min(self.p, available)
            picked = torch.multinomial(remaining, take, replacement=False, generator=gen).tolist() if take else []
            batch: list[int] = []
            for slot in picked:
                remaining[slot] -= 1
                batch.extend(chunks[slot][int(remaining[slot])])
            if take < self.p:
                # The epoch is not full yet but too few identities have chunks left: complete the batch with
                # fresh chunks of identities not in it (uniformly chosen), keeping exactly P ids x K images.
                weights = torch.ones(num_ids, dtype=torch.float64)
                weights[picked] = 0
                extra = torch.multinomial(weights, self.p - take, replacement=False, generator=gen).tolist()
                for slot in extra:
                    batch.extend(self._fresh_chunk(slot, gen))
                picked = picked + extra
            batches.append(batch)
        return batches
