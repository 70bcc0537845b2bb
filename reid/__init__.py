"""reid: person and vehicle re-identification with the strong baseline and knowledge distillation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reid.version import __version__

if TYPE_CHECKING:
    from reid.deploy.embedder import Embedder

__all__ = ["__version__", "load_model"]


def load_model(path: Any, device: Any = "auto", flip: bool | None = None) -> "Embedder":
    """An embedder for a checkpoint, ``.onnx`` or ``.ts`` file: ``.embed(images)``, ``.input_size``, ``.device``.

    Imported lazily so ``import reid`` (and ``reid --help``) stays cheap: torch loads on the first call.
    See :func:`reid.deploy.embedder.load_model`.
    """
    from reid.deploy.embedder import load_model as _load_model

    return _load_model(path, device=device, flip=flip)
