"""A distance threshold for "same person or not", with its measured error rates (TAR at a chosen FAR).

Retrieval metrics (mAP, CMC) rank; a tracker or an alarm must *decide*: two crops closer than ``t`` are
the same identity. Where ``t`` lies is not a property of the model alone but of the data it is measured
on, so it is computed here from held-out identities (a dataset's query/gallery, which share no identity
with training, or the ``eval.val_ids`` split) and reported with what it costs:

* pairs: every query against every gallery image of the evaluation, scored with the evaluation's
  distance (:mod:`reid.evaluation.distance`, the same one ``reid search`` prints). *Genuine* pairs share
  an identity; with ``cross_camera`` (the Market-1501 protocol) same-identity same-camera pairs are left
  out, as the ranking leaves them out (they are near-duplicates, not re-identifications). *Impostor*
  pairs have different identities (distractors, pid 0, count as impostors);
* FAR (false accept rate) of ``t`` = impostor pairs with distance <= ``t`` / impostor pairs; TAR (true
  accept rate) = genuine pairs with distance <= ``t`` / genuine pairs;
* the threshold at a target FAR ``f`` is the largest ``t`` whose FAR does not exceed ``f``: just below
  the ``(floor(f * impostors) + 1)``-th smallest impostor distance. The achieved FAR is reported beside
  the target; below ``1 / impostors`` (or with few impostors) the estimate is coarse, which
  ``impostor_pairs`` lets a reader judge.

Memory: distances are produced a chunk of queries at a time; all genuine distances are kept (a few per
query) but only the smallest ``max(far) * impostors + 1`` impostor distances, which is all the
thresholds need.

**Across datasets** a threshold does not transfer: another domain (cameras, resolution, crowd) moves
both distributions, usually towards each other. The threshold measured on a cross-domain target
(``reid evaluate --target``, logged under ``eval/<target>/``) is that domain's number; applying the
source's threshold there gives another FAR than the one chosen.

Use: :func:`same_identity` (``reid.same_identity``), ``reid search --threshold-file threshold.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from reid.errors import ReidError

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
DEFAULT_FAR = 1e-3
THRESHOLD_FILE = "threshold.json"
FORMAT = "reid-threshold-v1"


@dataclass
class OperatingPoint:
    """One row of the table: the threshold at ``target_far`` and what it achieves."""

    target_far: float
    threshold: float
    far: float
    tar: float

    def key(self) -> str:
        return far_key(self.target_far)


def far_key(far: float) -> str:
    """``1e-3`` -> ``far_0.001``: the name of a FAR in metrics.json and MLflow."""
    return f"far_{far:g}"


@dataclass
class Thresholds:
    """Operating points of one evaluation, with what they were measured on; saved as ``threshold.json``."""

    distance: str
    normalize: bool
    points: list[OperatingPoint]
    genuine_pairs: int
    impostor_pairs: int
    cross_camera: bool
    measured_on: str = ""
    model: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT

    def at(self, far: float = DEFAULT_FAR) -> OperatingPoint:
        for point in self.points:
            if math.isclose(point.target_far, far, rel_tol=1e-9):
                return point
        raise ReidError(f"no threshold at FAR {far:g} (measured: {', '.join(f'{p.target_far:g}' for p in self.points)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The MLflow metrics: ``<prefix>threshold/far_0.001`` (distance) and ``<prefix>tar/far_0.001``."""
        out: dict[str, float] = {}
        for p in self.points:
            out[f"{prefix}threshold/{p.key()}"] = float(p.threshold)
            out[f"{prefix}tar/{p.key()}"] = float(p.tar)
        return out

    def metrics_json(self) -> dict[str, Any]:
        """The block of ``metrics.json`` (flat per FAR, so ``dvc metrics show`` lists each number)."""
        return {"distance": self.distance, "genuine_pairs": self.genuine_pairs, "impostor_pairs": self.impostor_pairs,
                **{p.key(): {"threshold": p.threshold, "tar": p.tar, "far": p.far} for p in self.points}}

    def summary(self) -> str:
        rows = ", ".join(f"FAR {p.target_far:g}: distance <= {p.threshold:.4f}, TAR {100 * p.tar:.1f}%" for p in self.points)
        return (f"same-identity thresholds ({self.distance} distance, {self.genuine_pairs} genuine / "
                f"{self.impostor_pairs} impostor pairs): {rows}")

    def save(self, path: Path | str) -> Path:
        from reid.atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Thresholds":
        data = dict(data)
        data["points"] = [OperatingPoint(**p) for p in data["points"]]
        return cls(**data)


def load_thresholds(path: Path | str) -> Thresholds:
    """A ``threshold.json`` written by ``reid evaluate``; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"threshold file {path} does not exist; `reid evaluate` writes threshold.json beside metrics.json")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise KeyError("format")
        return Thresholds.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReidError(f"{path} holds no reid threshold ({exc}); use the threshold.json `reid evaluate` writes") from None


def pair_distances(produce: Callable[[int, int], torch.Tensor], q_pids: Sequence[int], g_pids: Sequence[int],
                   q_camids: Sequence[int], g_camids: Sequence[int], cross_camera: bool = True,
                   max_far: float = max(DEFAULT_FARS), chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray, int]:
    """``(genuine distances, smallest impostor distances (sorted), number of impostor pairs)``; see the module docstring."""
    qp, gp = torch.as_tensor(np.asarray(q_pids, dtype=np.int64)), torch.as_tensor(np.asarray(g_pids, dtype=np.int64))
    qc, gc = torch.as_tensor(np.asarray(q_camids, dtype=np.int64)), torch.as_tensor(np.asarray(g_camids, dtype=np.int64))
    # Impostor pairs per query: gallery images of another identity.
    values, counts = torch.unique(gp, return_counts=True)
    same = torch.zeros_like(qp)
    pos = torch.searchsorted(values, qp).clamp(max=len(values) - 1)
    same = torch.where(values[pos] == qp, counts[pos], same)
    impostors = int((len(gp) - same).sum())
    keep = min(impostors, int(math.floor(max_far * impostors)) + 1)
    genuine: list[np.ndarray] = []
    smallest = torch.empty(0)
    for start in range(0, len(qp), chunk_size):
        stop = min(start + chunk_size, len(qp))
        dist = produce(start, stop).float().cpu()
        match = qp[start:stop, None] == gp[None, :]
        real = match & (qc[start:stop, None] != gc[None, :]) if cross_camera else match
        genuine.append(dist[real].numpy())
        other = dist[~match]
        if keep and other.numel():
            part = torch.topk(other, min(keep, other.numel()), largest=False, sorted=False).values
            merged = torch.cat([smallest, part])
            smallest = torch.topk(merged, min(keep, merged.numel()), largest=False, sorted=False).values
    return (np.concatenate(genuine) if genuine else np.zeros(0, np.float32),
            np.sort(smallest.numpy()), impostors)


def operating_points(genuine: np.ndarray, impostor_smallest: np.ndarray, impostors: int,
                     fars: Sequence[float] = DEFAULT_FARS) -> list[OperatingPoint]:
    """The threshold, achieved FAR and TAR at each target FAR (module docstring for the rule)."""
    if genuine.size == 0 or impostors == 0:
        raise ReidError(f"a threshold needs genuine and impostor pairs: got {genuine.size} genuine and {impostors} "
                        "impostor pairs (the split needs two identities and an identity seen by two cameras)")
    points = []
    for far in sorted(fars, reverse=True):
        if not 0 < far < 1:
            raise ReidError(f"a FAR must lie strictly between 0 and 1, got {far}")
        allowed = int(math.floor(far * impostors))
        if allowed < impostor_smallest.size:
            t = float(np.nextafter(np.float32(impostor_smallest[allowed]), np.float32(-np.inf)))
        else:  # every impostor fits under the target (tiny splits only)
            t = float(impostor_smallest[-1]) if impostor_smallest.size else float("inf")
        accepted = int(np.searchsorted(impostor_smallest, t, side="right"))
        points.append(OperatingPoint(target_far=float(far), threshold=t, far=accepted / impostors,
                                     tar=float((genuine <= t).mean())))
    return points


def thresholds_from_features(qf: torch.Tensor, gf: torch.Tensor, q_pids: Sequence[int], g_pids: Sequence[int],
                             q_camids: Sequence[int], g_camids: Sequence[int], eval_cfg: Any,
                             cross_camera: bool | None = None, fars: Sequence[float] = DEFAULT_FARS,
                             measured_on: str = "", model: dict[str, str] | None = None) -> Thresholds:
    """:class:`Thresholds` of query/gallery features, with the evaluation's (plain, not re-ranked) distance.

    Re-ranked distances depend on the whole gallery, so a threshold on them would not apply to a pair;
    the plain distance is what ``reid search`` and :func:`same_identity` compute.
    """
    from reid.evaluation.distance import distance_producer

    cross = bool(eval_cfg.cross_camera) if cross_camera is None else bool(cross_camera)
    produce = distance_producer(qf, gf, eval_cfg.distance, eval_cfg.normalize)
    genuine, smallest, impostors = pair_distances(produce, q_pids, g_pids, q_camids, g_camids, cross,
                                                  max(fars), int(eval_cfg.chunk_size))
    return Thresholds(distance=str(eval_cfg.distance), normalize=bool(eval_cfg.normalize),
                      points=operating_points(genuine, smallest, impostors, fars), genuine_pairs=int(genuine.size),
                      impostor_pairs=impostors, cross_camera=cross, measured_on=measured_on, model=dict(model or {}))


class ThresholdCollector:
    """Called by :func:`reid.evaluation.runner.evaluate_model` with the evaluation's features (``on_features``),
    so ``reid evaluate`` gets the thresholds without extracting the features twice."""

    def __init__(self, eval_cfg: Any, has_cameras: bool = True, measured_on: str = "",
                 model: dict[str, str] | None = None) -> None:
        self.eval_cfg, self.has_cameras, self.measured_on, self.model = eval_cfg, has_cameras, measured_on, model
        self.result: Thresholds | None = None
        self.error: str | None = None  # why there is no threshold (a split without genuine pairs): never fails the evaluation

    def __call__(self, qf: torch.Tensor, gf: torch.Tensor, query: Sequence[Any], gallery: Sequence[Any]) -> None:
        try:
            self.result = self._compute(qf, gf, query, gallery)
        except ReidError as exc:
            self.error = str(exc)

    def _compute(self, qf: torch.Tensor, gf: torch.Tensor, query: Sequence[Any], gallery: Sequence[Any]) -> Thresholds:
        return thresholds_from_features(
            qf, gf, [s.pid for s in query], [s.pid for s in gallery], [s.camid for s in query],
            [s.camid for s in gallery], self.eval_cfg, cross_camera=bool(self.eval_cfg.cross_camera) and self.has_cameras,
            measured_on=self.measured_on, model=self.model)


def log_to_mlflow(thresholds: Thresholds, run_id: str, prefix: str, tracking_uri: str) -> None:
    """The operating points as metrics of the evaluation's run (:meth:`Thresholds.metrics`)."""
    import time

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reid.errors import TrackingError

    now = int(time.time() * 1000)
    try:
        MlflowClient(tracking_uri=tracking_uri).log_batch(
            run_id, metrics=[Metric(k, v, now, 0) for k, v in thresholds.metrics(prefix).items()])
    except MlflowException as exc:
        raise TrackingError(f"could not log the thresholds to MLflow run {run_id}: {exc}") from exc


def _distance(a: np.ndarray, b: np.ndarray, metric: str, normalize: bool) -> np.ndarray:
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ReidError(f"features of dimension {a.shape[1]} and {b.shape[1]} cannot be compared")
    if metric == "cosine" or normalize:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    if metric == "cosine":
        return 1.0 - (a * b).sum(1)
    return ((a - b) ** 2).sum(1)


def same_identity(a: Any, b: Any, threshold: "float | Thresholds | Path | str", far: float = DEFAULT_FAR,
                  distance: str = "cosine", normalize: bool = True) -> Any:
    """Whether embeddings ``a`` and ``b`` show the same identity: their distance <= the threshold.

    ``a``/``b``: one embedding each (``[D]``) or row-aligned batches (``[N, D]``; one side may be a single
    row), raw or normalised, as ``model.embed`` returns them. ``threshold``: a distance, a
    :class:`Thresholds` or the path of a ``threshold.json`` from ``reid evaluate`` (then ``far`` picks
    the operating point, and its distance settings are used). Returns a bool, or a bool array for batches.

    Example::

        from reid import load_model, same_identity
        model = load_model("pipeline/models/baseline/last.pt")
        a, b = model.embed(["a.jpg", "b.jpg"])
        same_identity(a, b, "pipeline/evaluation/baseline/threshold.json", far=1e-3)
    """
    if isinstance(threshold, (str, Path)):
        threshold = load_thresholds(threshold)
    if isinstance(threshold, Thresholds):
        distance, normalize = threshold.distance, threshold.normalize
        t = threshold.at(far).threshold
    else:
        t = float(threshold)
    d = _distance(a, b, distance, normalize)
    single = np.ndim(a) == 1 and np.ndim(b) == 1
    return bool(d[0] <= t) if single else d <= t
