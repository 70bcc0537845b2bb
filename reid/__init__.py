"""reid: person and vehicle re-identification with the strong baseline and knowledge distillation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reid.version import __version__

if TYPE_CHECKING:
    from reid.deploy.embedder import Embedder

__all__ = ["__version__", "load_model", "same_identity"]


def load_model(path: Any, device: Any = "auto", flip: bool | None = None) -> "Embedder":
    """An embedder for a checkpoint, ``.onnx`` or ``.ts`` file: ``.embed(images)``, ``.input_size``, ``.device``.

    Imported lazily so ``import reid`` (and ``reid --help``) stays cheap: torch loads on the first call.
    See :func:`reid.deploy.embedder.load_model`.
    """
    from reid.deploy.embedder import load_model as _load_model

    return _load_model(path, device=device, flip=flip)


def same_identity(a: Any, b: Any, threshold: Any, far: float = 1e-3) -> Any:
    """Whether embeddings ``a`` and ``b`` show the same identity at ``threshold`` (a distance, or the
    ``threshold.json`` of ``reid evaluate`` read at ``far``). See :func:`reid.evaluation.threshold.same_identity`."""
    from reid.evaluation.threshold import same_identity as _same_identity

    return _same_identity(a, b, threshold, far=far)
