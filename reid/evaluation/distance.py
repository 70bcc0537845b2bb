"""Query-to-gallery distances, computed a chunk of queries at a time.

Two metrics are offered:

* ``"cosine"``: ``1 - q.g`` on L2-normalised features. Cosine distance is only defined on unit
  vectors, so this metric always normalises, whatever ``normalize`` says.
* ``"euclidean"``: the *squared* Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` (clamped at 0 against
  round-off). The square root is skipped because it does not change any ranking. With
  ``normalize=True`` (the default in :class:`reid.config.EvalConfig`) the features are L2-normalised
  first, which makes it rank exactly like cosine (``|q-g|^2 = 2 - 2 q.g`` on unit vectors).

Everything stays on the features' device and in float32: the caller decides where the work runs.
Exact float32 on every device: features are cast to float32 first (a bf16 or fp16 feature from an
autocast model is widened, never multiplied in half precision), and the products run under
:func:`exact_fp32_matmul`, because training switches CUDA matmuls to TF32 (reid/engine/device.py),
whose 10-bit mantissa would otherwise make the GPU's ranking (and mAP) differ from the CPU's.
Distances are produced in chunks of queries so that an MSMT17-size gallery (82k images) never needs
a full query x gallery matrix in memory.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")

# A function that returns the distance rows of queries [start, stop) against the whole gallery.
DistanceProducer = Callable[[int, int], torch.Tensor]


def prepare_features(features: torch.Tensor, metric: Metric, normalize: bool) -> torch.Tensor:
    """Return the features as float32, L2-normalised when the metric or ``normalize`` asks for it.

    Doing this once, up front, keeps every chunk a single matrix product.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown distance {metric!r}; expected one of {', '.join(METRICS)}")
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D [N, D] tensor, got shape {tuple(features.shape)}")
    features = features.float()
    if metric == "cosine" or normalize:
        features = F.normalize(features, p=2, dim=1)
    return features


@contextlib.contextmanager
def exact_fp32_matmul() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32) inside the block; the previous setting is restored after.

    ``torch.set_float32_matmul_precision`` is the switch that both the legacy flag
    (``torch.backends.cuda.matmul.allow_tf32``) and the newer ``fp32_precision`` follow, and the one
    :func:`reid.engine.device.configure_backends` sets for training.
    """
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _pairwise(q: torch.Tensor, g: torch.Tensor, metric: Metric, g_sq: torch.Tensor | None) -> torch.Tensor:
    """Distances between already-prepared feature rows (see :func:`prepare_features`), in exact fp32."""
    with exact_fp32_matmul():
        return _pairwise_fp32(q, g, metric, g_sq)


def _pairwise_fp32(q: torch.Tensor, g: torch.Tensor, metric: Metric, g_sq: torch.Tensor | None) -> torch.Tensor:
    if metric == "cosine":
        return torch.mm(q, g.T).neg_().add_(1.0)  # in place: one [q, g] matrix, not two
    if g_sq is None:
        g_sq = (g * g).sum(dim=1)
    q_sq = (q * q).sum(dim=1, keepdim=True)
    # addmm keeps it to one [q, g] temporary: q_sq + g_sq - 2 q g^T.
    dist = torch.addmm(q_sq + g_sq.unsqueeze(0), q, g.T, beta=1.0, alpha=-2.0)
    return dist.clamp_(min=0.0)


def pairwise_distance(
    qf: torch.Tensor, gf: torch.Tensor, metric: Metric = "cosine", normalize: bool = True
) -> torch.Tensor:
    """The full ``[Q, G]`` distance matrix (fine for Market-size data; use chunks beyond that)."""
    return distance_producer(qf, gf, metric, normalize)(0, qf.shape[0])


def distance_producer(
    qf: torch.Tensor, gf: torch.Tensor, metric: Metric = "cosine", normalize: bool = True
) -> DistanceProducer:
    """A function ``(start, stop) -> [stop-start, G]`` distances for that slice of queries.

    Features are prepared once here; each call costs one matrix product of the slice.
    """
    if qf.shape[1:] != gf.shape[1:]:
        raise ValueError(f"query features {tuple(qf.shape)} and gallery features {tuple(gf.shape)} differ in dimension")
    if qf.device != gf.device:
        raise ValueError(f"query features are on {qf.device} but gallery features on {gf.device}")
    q = prepare_features(qf, metric, normalize)
    g = prepare_features(gf, metric, normalize)
    g_sq = (g * g).sum(dim=1) if metric == "euclidean" else None

    def produce(start: int, stop: int) -> torch.Tensor:
        return _pairwise(q[start:stop], g, metric, g_sq)

    return produce


def iter_distance_chunks(
    qf: torch.Tensor, gf: torch.Tensor, metric: Metric = "cosine", normalize: bool = True, chunk_size: int = 512
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, distances of queries [start, start+chunk))`` over all queries."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    produce = distance_producer(qf, gf, metric, normalize)
    for start in range(0, qf.shape[0], chunk_size):
        yield start, produce(start, min(start + chunk_size, qf.shape[0]))
