"""The feature file of ``reid extract`` and the chunked top-k search of ``reid search``.

Format: ``.npz`` (numpy only, no pickle, readable from any language with an npz reader): ``paths``
(unicode array), ``features`` (float32 ``[N, D]``), ``pids``/``camids`` (int64, -1 where the names do
not carry them), ``normalized`` (bool: L2-normalised at extraction), ``metadata`` (the model's
contract as a JSON string). A parquet table would need pyarrow for a matrix that numpy already stores
densely; npz loads with ``np.load(..., allow_pickle=False)`` and memory-maps nothing it does not need.

Search ranks by the evaluation's distance (:mod:`reid.evaluation.distance`): ``1 - q.g`` on unit
vectors for cosine, the squared Euclidean distance otherwise. The gallery is scanned in chunks of
``chunk_size`` rows, keeping only the running top-k per query, so memory is ``queries x (k + chunk)``
whatever the gallery size (a 100k+ gallery never becomes one distance matrix). Ties rank the lower
gallery index first, as the evaluation's stable sort does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reid.atomic import atomic_target
from reid.errors import ReidError

KEYS = ("paths", "features", "pids", "camids", "normalized", "metadata")


@dataclass
class FeatureFile:
    paths: list[str]
    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    normalized: bool
    metadata: dict[str, str]

    @property
    def distance(self) -> str:
        return "cosine" if self.normalized else self.metadata.get("eval_distance", "euclidean")


def save_features(path: Path | str, ff: FeatureFile) -> Path:
    """Write ``ff`` atomically (the parent folder must be writable: the error says so)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, paths=np.asarray(ff.paths, dtype=str), features=ff.features.astype(np.float32),
                     pids=np.asarray(ff.pids, dtype=np.int64), camids=np.asarray(ff.camids, dtype=np.int64),
                     normalized=np.asarray(bool(ff.normalized)), metadata=np.asarray(json.dumps(ff.metadata)))
    except OSError as exc:
        raise ReidError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --output") from None
    return path


def load_features(path: Path | str) -> FeatureFile:
    """Read a file written by :func:`save_features`; anything else is a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"gallery file {path} does not exist; create it with `reid extract ... --output {path}`")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data.files]
            if missing:
                raise ReidError(f"{path} is not a `reid extract` feature file (missing {', '.join(missing)}); "
                                "re-create it with `reid extract`")
            return FeatureFile(paths=[str(p) for p in data["paths"]], features=data["features"].astype(np.float32),
                               pids=data["pids"], camids=data["camids"], normalized=bool(data["normalized"]),
                               metadata=json.loads(str(data["metadata"])))
    except (OSError, ValueError) as exc:
        raise ReidError(f"{path} is not a readable .npz feature file ({exc}); re-create it with `reid extract`") from None


def _distances(q: torch.Tensor, g: torch.Tensor, cosine: bool) -> torch.Tensor:
    if cosine:
        return torch.mm(q, g.T).neg_().add_(1.0)
    return torch.addmm((q * q).sum(1, keepdim=True) + (g * g).sum(1).unsqueeze(0), q, g.T, beta=1.0,
                       alpha=-2.0).clamp_(min=0.0)


def topk_search(queries: np.ndarray, gallery: np.ndarray, k: int, cosine: bool = True,
                chunk_size: int = 65536, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(distances [Q, k], indices [Q, k])`` of each query's ``k`` nearest gallery rows, nearest first.

    ``queries``/``gallery`` are float features prepared as the file says (normalised for cosine).
    ``k`` larger than the gallery is clipped. See the module docstring for memory and ties.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ReidError(f"query features {queries.shape} and gallery features {gallery.shape} do not match in dimension")
    if chunk_size < 1 or k < 1:
        raise ReidError("top-k and chunk size must be >= 1")
    device = torch.device(device)
    k = min(int(k), gallery.shape[0])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    best_d = torch.full((q.shape[0], 0), float("inf"), device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    for start in range(0, gallery.shape[0], chunk_size):
        g = torch.from_numpy(np.ascontiguousarray(gallery[start:start + chunk_size], dtype=np.float32)).to(device)
        d = _distances(q, g, cosine)
        # A stable sort, not topk: topk breaks ties at the k-th place arbitrarily.
        cand_d, cand_i = torch.sort(d, dim=1, stable=True)
        all_d = torch.cat([best_d, cand_d[:, :k]], dim=1)
        all_i = torch.cat([best_i, cand_i[:, :k] + start], dim=1)
        # Earlier chunks come first, so a stable sort by distance also orders ties by gallery index.
        order = torch.sort(all_d, dim=1, stable=True).indices[:, :k]
        best_d, best_i = all_d.gather(1, order), all_i.gather(1, order)
    return best_d.cpu().numpy(), best_i.cpu().numpy()


def same_flags(distances: np.ndarray, indices: np.ndarray, threshold: float | None, query_pids: Sequence[int],
               gallery_pids: np.ndarray) -> tuple[np.ndarray, str]:
    """Green/red flags for the picture and what they mean: ``distance <= threshold`` when a threshold
    is given, else same identity where both names carry one, else all red (unknown)."""
    found = indices >= 0  # an approximate index may return fewer than k (index -1)
    if threshold is not None:
        return (distances <= threshold) & found, f"green: distance <= {threshold} (same), red: different"
    q = np.asarray(query_pids)[:, None]
    g = np.where(found, gallery_pids[np.maximum(indices, 0)], -1)
    flags = (q == g) & (q >= 0) & (g >= 0)
    if (np.asarray(query_pids) >= 0).any() and (gallery_pids >= 0).any():
        return flags, "green: same identity (from the manifest or the file names), red: another identity"
    return flags, ("no identities known (the file names carry none and no manifest lists the files; extract the "
                   "gallery with --manifest or --split, or pass --manifest) and no --threshold: every tile is red (unknown)")
