"""Embedding extraction for evaluation.

The model is switched to eval mode (BatchNorm uses its running statistics, the ReID model returns the
embedding only) and run under ``torch.inference_mode``; its previous train/eval mode is restored
afterwards, so evaluating in the middle of training leaves the trainer's model as it found it.

Flip averaging: the embedding of an image is the *sum* of the embeddings of the image and of its
horizontal mirror. A sum rather than a mean because the features are L2-normalised before any
distance (see :mod:`reid.evaluation.distance`), where a factor of 2 makes no difference; for the
un-normalised Euclidean distance the sum is what the reference implementations do.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from reid.errors import EvaluationError


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, or the first element of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise EvaluationError("the test loader yielded an empty tuple instead of an image batch")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise EvaluationError(f"the test loader must yield image batches [B, 3, H, W] (or tuples starting with one), got {shape}")
    return batch


def _embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if isinstance(out, dict):
        # A model left in a train-style output: prefer the test feature the ReID model would return.
        for key in ("bn_feat", "embedding", "global_feat"):
            if key in out:
                out = out[key]
                break
        else:
            raise EvaluationError(f"the model returned a dict without an embedding (keys: {sorted(out)})")
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EvaluationError(f"the model must return embeddings [B, D] in eval mode, got {shape}")
    return out


def extract_features(model: nn.Module, loader: Iterable[Any], device: torch.device | str, flip: bool = False) -> torch.Tensor:
    """Embeddings of every image the loader yields, in order, as float32 ``[N, D]`` on ``device``.

    ``loader`` yields normalised float image batches ``[B, 3, H, W]`` (or tuples whose first element
    is such a batch, e.g. ``(images, pids)``). With ``flip`` each embedding is the sum of the image's
    and its horizontal mirror's.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for batch in loader:
                images = _images_of(batch).to(device, non_blocking=True)
                feats = _embed(model, images).float()
                if flip:
                    feats = feats + _embed(model, torch.flip(images, dims=[3])).float()
                chunks.append(feats)
    finally:
        model.train(was_training)
    if not chunks:
        raise EvaluationError("the test loader yielded no images: is the query or gallery split empty?")
    # Concatenated outside inference mode, so the result is an ordinary tensor callers may reuse freely.
    return torch.cat(chunks)
