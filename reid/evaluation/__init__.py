"""Evaluation: features, distances, the exact Market-1501 protocol, re-ranking, pictures, outputs.

Modules (see docs/ARCHITECTURE.md): ``features`` (embedding extraction), ``distance`` (chunked
query x gallery distances), ``metrics`` (mAP / CMC / mINP, :class:`EvalResult`), ``reranking``
(k-reciprocal), ``plots`` (CMC curve, ranked lists), ``runner`` (model -> result -> files / MLflow).
"""

from reid.evaluation.features import extract_features
from reid.evaluation.metrics import EvalResult, RankedLists, evaluate_distances, evaluate_features, ranked_lists
from reid.evaluation.runner import evaluate_model, write_outputs

__all__ = [
    "EvalResult",
    "RankedLists",
    "evaluate_distances",
    "evaluate_features",
    "evaluate_model",
    "extract_features",
    "ranked_lists",
    "write_outputs",
]
