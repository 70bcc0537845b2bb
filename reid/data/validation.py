"""A validation split held out of the training identities (``eval.val_ids``): model selection without the test set.

The published recipe reports the model of the last epoch. Choosing the epoch with the best mAP on
query / gallery is choosing a model on the test set, and every number reported from it is biased
upwards. A run that wants a "best" checkpoint must choose it on data it neither trains on nor reports:
``eval.val_ids = N`` removes N training identities from training and scores them as a small
query / gallery split of their own (:func:`hold_out_identities`); ``best.pt`` is then the epoch with
the best mAP *there*.

The split: the N identities are a seeded draw (``train.seed``) among the training identities that
have images from at least two cameras (otherwise no query could have a cross-camera match); for each
of them the first image of every camera (sorted by path) is a query and every other image is in the
gallery, the Market-1501 layout in miniature. The remaining identities are relabelled 0..C-N-1.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from reid.data.manifest import Manifest, train_labels_for
from reid.errors import ReidError


def hold_out_identities(manifest: Manifest, num_ids: int, seed: int) -> tuple[Manifest, Manifest]:
    """``(training manifest without the held-out identities, validation manifest of them)``.

    The training manifest keeps the dataset's query and gallery (the test split, used only for the
    training curve); the validation manifest has no training images and the held-out identities as
    its query and gallery.
    """
    by_pid: dict[int, list[Any]] = defaultdict(list)
    for sample in manifest.train:
        by_pid[sample.pid].append(sample)
    eligible = sorted(pid for pid, samples in by_pid.items() if len({s.camid for s in samples}) >= 2
                      or not manifest.has_cameras and len(samples) >= 2)
    if num_ids > len(eligible) or num_ids >= len(by_pid) - 1:
        raise ReidError(
            f"eval.val_ids={num_ids} cannot be held out: the training split has {len(by_pid)} identities, "
            f"{len(eligible)} of them with images from two cameras (a validation query needs a match in another "
            "camera), and at least two must stay for training; lower eval.val_ids or set it to 0 (no validation split)"
        )
    order = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(int(seed))).tolist()
    held = {eligible[i] for i in order[:num_ids]}
    train = [s for s in manifest.train if s.pid not in held]
    query, gallery = [], []
    for pid in sorted(held):
        seen_cameras: set[int] = set()
        for sample in sorted(by_pid[pid], key=lambda s: s.path):
            key = sample.camid if manifest.has_cameras else 0
            (gallery if key in seen_cameras else query).append(sample)
            seen_cameras.add(key)
    base = manifest.model_dump()
    labels = train_labels_for(train)
    training = Manifest.model_validate({**base, "train": train, "train_labels": labels,
                                        "num_classes": len(set(labels))})
    validation = Manifest.model_validate({**base, "name": f"{manifest.name}-val{num_ids}", "train": [],
                                          "train_labels": [], "num_classes": 0, "query": query,
                                          "gallery": gallery})
    return training, validation
