"""Training and test loaders: normalised float batches on the training device.

Two input pipelines give the same batches (same sampler, same augmentation function, same random
streams); they differ only in where the pixels come from:

* ``gpu``: the training set is decoded once into an :class:`~reid.data.image_store.ImageStore` on the
  device; a step is an ``index_select`` plus the batch augmentation, all on the device, with no
  ``DataLoader``, no worker processes and no host synchronisation (indices and augmentation
  parameters go up as small pinned, asynchronous copies). This is what keeps an H100 busy.
* ``cpu``: a ``DataLoader`` whose workers decode (and, for datasets of mixed sizes, resize) the
  images of each ``PKSampler`` batch to uint8; the uint8 batch is moved to the device (pinned memory
  on CUDA) and augmented there by the same :class:`~reid.data.transforms.TrainAugment`. Augmenting
  after the transfer rather than in the workers moves 4x fewer bytes (uint8 instead of float32), runs
  the augmentation on the GPU when there is one, and makes the random stream independent of the
  number of workers and of their scheduling.
* ``auto``: ``gpu`` on a CUDA device when the store needs at most :data:`STORE_MEMORY_FRACTION` of the
  free GPU memory, else ``cpu``.

Randomness: the sampler's batch list comes from ``(seed, epoch)``; the augmentation of step ``s`` from
a generator seeded by ``(seed, epoch, s)``. A resumed epoch therefore needs no generator state beyond
the step count, and the augmentation parameters are drawn for the *global* batch and sliced per rank,
so a data-parallel run sees exactly the images (and augmentations) of the single-process run.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from reid.data.image_store import ImageStore, estimate_bytes
from reid.data.images import already_reported
from reid.data.sampler import PKSampler, seeded_generator
from reid.data.transforms import TestTransform, TrainAugment, resize_uint8
from reid.errors import CorruptImageError, ReidError

STORE_MEMORY_FRACTION = 0.25  # of the free GPU memory the ``auto`` pipeline lets the image store take
_AUGMENT_STREAM = 0x5EED_A06  # separates the augmentation seeds from the sampler's


def _decode(path: str) -> torch.Tensor:
    from reid.data.images import decode_image

    return decode_image(path)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without stalling the host: pinned + ``non_blocking`` for CUDA."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


# -- the CPU pipeline's worker side -----------------------------------------------------------------
class _DecodeDataset(Dataset):
    """Item ``i``: ``(uint8 [3, h, w] image, label)`` of ``samples[i]``, decoded in a loader worker.

    Corrupt images with ``skip``: in training the image is replaced by the next decodable image of the
    same identity (a P x K batch must stay P x K; the ``gpu`` pipeline drops it up front instead); in
    testing the item is ``None`` and the batch comes out one image short.
    """

    def __init__(self, samples: Sequence[Any], labels: Sequence[int] | None, policy: str, train: bool) -> None:
        self.paths = [str(s.path) for s in samples]
        self.labels = [int(x) for x in labels] if labels is not None else [-1] * len(self.paths)
        self.policy = policy
        self.train = train
        self._warned: set[str] = set()
        self._members: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _same_identity(self, index: int) -> list[int]:
        if self._members is None:
            members: dict[int, list[int]] = {}
            for i, label in enumerate(self.labels):
                members.setdefault(label, []).append(i)
            self._members = members
        group = self._members[self.labels[index]]
        at = group.index(index)
        return group[at + 1:] + group[:at]

    def _try(self, index: int) -> torch.Tensor | None:
        try:
            return _decode(self.paths[index])
        except CorruptImageError:
            if self.policy != "skip":
                raise
            if self.paths[index] not in self._warned and not already_reported(self.paths[index]):
                # Named once: not again when the check before training already listed it.
                self._warned.add(self.paths[index])
                warnings.warn(f"data.corrupt_images=skip: skipping corrupt image {self.paths[index]}", stacklevel=2)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image = self._try(index)
        if image is None and self.train:
            for other in self._same_identity(index):
                image = self._try(other)
                if image is not None:
                    break
            else:
                raise CorruptImageError(
                    f"every image of training identity {self.labels[index]} is corrupt (e.g. {self.paths[index]}); "
                    "remove the identity from the dataset and rebuild the manifest"
                )
        if image is None:
            return None
        return image, self.labels[index]


class _Collate:
    """Stack decoded images: at their native size when the batch is uniform (the device resizes it),
    else each resized to the input size here in the worker."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        images = [img for img, _ in items]
        labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
        if all(img.shape == images[0].shape for img in images):
            return torch.stack(images), labels
        return torch.cat([resize_uint8(img.unsqueeze(0), self.size) for img in images]), labels


def _data_loader(dataset: Dataset, config: Any, device: torch.device, persistent: bool = False,
                 **kwargs: Any) -> DataLoader:
    """A DataLoader with the project's collate; pinned batches on CUDA. Persistent workers for training,
    where re-forking them every epoch would cost seconds per epoch."""
    workers = int(config.data.num_workers)
    return DataLoader(dataset, num_workers=workers, collate_fn=_Collate((config.data.height, config.data.width)),
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0 and persistent, **kwargs)


# -- training ----------------------------------------------------------------------------------------
class TrainLoader:
    """Iterable of ``(images float [B, 3, H, W] normalised, labels int64 [B])`` on ``device``.

    ``len()`` is the number of steps of an epoch (``train.max_steps_per_epoch`` applied). Call
    ``set_epoch(epoch)`` before each epoch. ``state_dict()`` after ``n`` batches of an epoch and
    ``load_state_dict`` on a fresh loader continue with batch ``n + 1``, identically.
    """

    def __init__(self, *, sampler: PKSampler, augment: TrainAugment, device: torch.device, seed: int,
                 num_classes: int, pipeline: str, max_steps: int | None, channels_last: bool,
                 store: ImageStore | None = None, loader: DataLoader | None = None) -> None:
        if (store is None) == (loader is None):
            raise ValueError("a TrainLoader reads from exactly one of an ImageStore or a DataLoader")
        self.sampler, self.augment, self.device = sampler, augment, device
        self.seed, self.num_classes, self.pipeline = int(seed), int(num_classes), pipeline
        self.max_steps, self.channels_last = max_steps, channels_last
        self.store, self.loader = store, loader
        self._consumed = 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def batch_size(self) -> int:
        """Images per step on this rank."""
        return self.sampler.batch_size

    def __len__(self) -> int:
        steps = len(self.sampler)
        return steps if self.max_steps is None else min(steps, int(self.max_steps))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.sampler.epoch:
            self._consumed = 0
        self.sampler.set_epoch(epoch)

    def _uint8_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.store is not None:
            for indices in self.sampler:
                idx = _to_device(torch.tensor(indices, dtype=torch.long), self.device)
                yield self.store.batch(idx)
        else:
            assert self.loader is not None
            for images, labels in self.loader:
                yield _to_device(images, self.device), _to_device(labels, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = len(self)
        step = self.sampler.resume_offset
        self._consumed = step
        if step >= steps:  # a resumed epoch that was already complete
            return
        epoch = self.sampler.epoch
        global_batch = self.sampler.p * self.sampler.k
        lo = self.sampler.rank * self.batch_size
        batches = self._uint8_batches()
        try:
            for images, labels in batches:
                gen = seeded_generator(self.seed, epoch, step, _AUGMENT_STREAM)
                params = self.augment.sample(global_batch, gen).slice(lo, lo + self.batch_size)
                out = self.augment.apply(images, params)
                if self.channels_last:
                    out = out.contiguous(memory_format=torch.channels_last)
                step += 1
                self._consumed = step
                yield out, labels
                if step >= steps:
                    break
        finally:
            batches.close()

    def state_dict(self) -> dict[str, Any]:
        """Sampler position (``consumed`` = batches this loader has yielded this epoch) and the augmentation
        seed; plain ints, loadable with ``weights_only=True``."""
        sampler = self.sampler.state_dict()
        sampler["consumed"] = self._consumed
        return {"sampler": sampler, "seed": self.seed, "pipeline": self.pipeline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sampler" not in state:
            raise ReidError(f"not a training-loader state (keys: {sorted(state)}); was it saved by TrainLoader.state_dict?")
        self.sampler.load_state_dict(state["sampler"])
        self.seed = int(state.get("seed", self.seed))
        self._consumed = int(state["sampler"].get("consumed", 0))


def choose_pipeline(requested: str, device: torch.device, num_images: int, size: tuple[int, int]) -> str:
    """Resolve ``data.input_pipeline``; ``auto`` is ``gpu`` on CUDA when the store fits comfortably."""
    if requested in ("gpu", "cpu"):
        return requested
    if requested != "auto":
        raise ReidError(f"data.input_pipeline must be auto, gpu or cpu, got {requested!r}")
    if device.type != "cuda":
        return "cpu"
    free, _ = torch.cuda.mem_get_info(device)
    return "gpu" if estimate_bytes(num_images, size) <= STORE_MEMORY_FRACTION * free else "cpu"


def build_train_loader(manifest: Any, config: Any, device: torch.device | str, rank: int = 0, world_size: int = 1,
                       seed: int | None = None, cache_dir: str | None = None) -> TrainLoader:
    """The training loader of ``manifest.train`` for ``config`` on ``device`` (this rank's share).

    ``seed`` defaults to ``config.train.seed``; ``cache_dir`` (``gpu`` pipeline only) keeps the decoded
    image store on disk between runs.
    """
    device = torch.device(device)
    data = config.data
    size = (int(data.height), int(data.width))
    seed = int(config.train.seed if seed is None else seed)
    samples, labels = list(manifest.train), [int(x) for x in manifest.train_labels]
    if len(samples) != len(labels):
        raise ReidError(f"the manifest has {len(samples)} training samples but {len(labels)} labels")
    pipeline = choose_pipeline(data.input_pipeline, device, len(samples), size)
    augment = TrainAugment(data)
    common = dict(augment=augment, device=device, seed=seed, num_classes=int(manifest.num_classes),
                  pipeline=pipeline, max_steps=config.train.max_steps_per_epoch,
                  channels_last=bool(config.model.channels_last) and device.type == "cuda")
    p, k = int(data.ids_per_batch), int(data.instances_per_id)
    if pipeline == "gpu":
        store = ImageStore.build(samples, labels, size, data.corrupt_images, num_threads=max(1, int(data.num_workers)),
                                 cache_dir=cache_dir)
        sampler = PKSampler(store.labels.tolist(), p, k, seed, rank, world_size)  # rows of the store
        return TrainLoader(sampler=sampler, store=store.to(device), **common)
    sampler = PKSampler(labels, p, k, seed, rank, world_size)
    dataset = _DecodeDataset(samples, labels, data.corrupt_images, train=True)
    loader = _data_loader(dataset, config, device, batch_sampler=sampler, persistent=True)
    return TrainLoader(sampler=sampler, loader=loader, **common)


# -- testing -----------------------------------------------------------------------------------------
class TestLoader:
    """Iterable of normalised float batches ``[B, 3, H, W]`` on ``device``, in sample order."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, loader: DataLoader, transform: TestTransform, device: torch.device, channels_last: bool) -> None:
        self.loader, self.transform, self.device, self.channels_last = loader, transform, device, channels_last
        # Positions (into the sample list) of the images the last pass yielded, in order: with
        # data.corrupt_images=skip a corrupt image is left out, and the evaluation must drop its sample too.
        self.kept: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.kept = []
        for batch in self.loader:
            if batch is None:  # every image of the batch was corrupt and skipped
                continue
            self.kept.extend(int(i) for i in batch[1].tolist())
            out = self.transform(_to_device(batch[0], self.device))
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            yield out


def build_test_loader(samples: Sequence[Any], config: Any, device: torch.device | str) -> TestLoader:
    """Batches of ``data.test_batch_size`` images of ``samples``, in order: decoded by loader workers,
    resized and normalised on ``device`` (the same :class:`TestTransform` on every device)."""
    device = torch.device(device)
    # The "labels" of test items are their positions, so that the loader can report which images it kept.
    dataset = _DecodeDataset(samples, range(len(samples)), config.data.corrupt_images, train=False)
    loader = _data_loader(dataset, config, device, batch_size=int(config.data.test_batch_size), shuffle=False)
    channels_last = bool(config.model.channels_last) and device.type == "cuda"
    return TestLoader(loader, TestTransform(config.data), device, channels_last)
