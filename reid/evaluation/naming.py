"""Names of one evaluation's results, so that different measurements never overwrite each other.

A model's own-dataset evaluation (``eval/mAP`` in its MLflow run, ``<evaluate.output_dir>/<name>/``)
is the number the pipeline tracks. Two other measurements of the same checkpoint are different
numbers and get names of their own:

* on **another dataset** (a cross-domain target, or any manifest whose content hash differs from the
  checkpoint's ``data_hash``): ``eval/<target>/mAP``, ``<name>/targets/<target>/``,
  artifacts ``evaluation/<target>/``;
* **re-ranked** (k-reciprocal): ``eval_rerank/mAP`` (``eval_rerank/<target>/mAP``),
  ``<name>/rerank/`` (``<name>/targets/<target>/rerank/``), artifacts ``evaluation_rerank[/<target>]``.

The re-ranked prefix is a sibling of ``eval/`` rather than a level below it so that no target name can
collide with it.

**Metric names in MLflow, one name per quantity** (this module is the one place that defines them):

* ``eval/mAP``, ``eval/rank<k>`` (each of ``eval.ranks``), ``eval/mINP`` (+ query counts): the
  reported model on its own test split, logged by ``reid evaluate`` into the run that trained it. The
  headline: what the runs table shows and sorts by (:data:`HEADLINE_METRICS`).
* ``eval/<target>/...`` and ``eval_rerank/...``: the measurements above.
* ``eval_epoch/mAP``, ``eval_epoch/rank1``, ...: the evaluation the trainer runs every
  ``train.eval_every`` epochs on the same split, a curve over epochs (step = epoch). A sibling of
  ``eval/`` so that the selectors list both next to each other yet never as one name.
* ``mAP_<variant>`` is logged only for the AP variant that is *not* ``eval.ap_variant`` (e.g.
  ``eval/mAP_trapezoidal``): the other one is ``mAP`` itself.
* ``train/*`` (per epoch), ``train_step/*`` (per logged step), ``export/*`` (parity of the export).

Every key sorts under its prefix, so the column and chart selectors list a quantity's names together.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

#: The reported model on its own test split (``reid evaluate``).
EVAL_PREFIX = "eval/"
#: The same split re-ranked (k-reciprocal).
RERANK_PREFIX = "eval_rerank/"
#: The trainer's evaluation every ``train.eval_every`` epochs (a curve; step = epoch).
EPOCH_EVAL_PREFIX = "eval_epoch/"
#: The trainer's evaluation on the validation split held out of the training identities
#: (``eval.val_ids``), the only one ``best.pt`` is chosen on.
VAL_PREFIX = "val/"
#: What a comparison of models shows first, in this order.
HEADLINE_METRICS: tuple[str, ...] = ("mAP", "rank1", "mINP")


def metric_key(quantity: str, prefix: str = EVAL_PREFIX) -> str:
    """The MLflow key of ``quantity`` (``mAP``, ``rank1``...) under ``prefix``: ``eval/mAP`` by default."""
    return f"{prefix}{quantity}"


def slug(text: str) -> str:
    """A dataset name made safe for a metric key and a folder name (``Market-1501-v15.09.15`` -> ``Market-1501-v15_09_15``)."""
    return _UNSAFE.sub("_", text).strip("_") or "dataset"


@dataclass(frozen=True)
class EvaluationNames:
    """Where one evaluation is recorded: ``target`` is None for the model's own dataset."""

    target: str | None = None
    rerank: bool = False

    @property
    def metric_prefix(self) -> str:
        root = RERANK_PREFIX if self.rerank else EVAL_PREFIX
        return root + (f"{self.target}/" if self.target else "")

    @property
    def artifact_path(self) -> str:
        root = "evaluation_rerank" if self.rerank else "evaluation"
        return root + (f"/{self.target}" if self.target else "")

    def output_dir(self, base: Path, model: str) -> Path:
        """The default folder under ``evaluate.output_dir`` (``base``) for model ``model``."""
        out = Path(base) / model
        if self.target:
            out = out / "targets" / self.target
        return out / "rerank" if self.rerank else out


def cross_domain_target(explicit: str | None, checkpoint_hash: str | None, manifest_hash: str | None,
                        manifest_name: str) -> str | None:
    """The target name of an evaluation: the one asked for, else the manifest's dataset name when the
    manifest is not the data the checkpoint was trained on (content hashes differ), else None.

    Without both hashes (an old checkpoint, a hand-made manifest) the data cannot be told apart and the
    evaluation counts as the model's own.
    """
    if explicit:
        return explicit
    if checkpoint_hash and manifest_hash and checkpoint_hash != manifest_hash:
        return slug(manifest_name)
    return None


def output_name(checkpoint: Path, variant: str | None, models_dir: Path) -> str:
    """The folder name of a checkpoint's evaluation under ``evaluate.output_dir``.

    A variant name wins; a pipeline checkpoint ``<models_dir>/<name>/last.pt`` keeps ``<name>`` (what
    dvc.yaml writes); any other checkpoint gets its folder name plus a short hash of its absolute path,
    so that ``runs/a/baseline/last.pt`` and ``runs/b/baseline/last.pt`` never share a folder.
    """
    if variant:
        return variant
    path = checkpoint.resolve()
    if path.parent.parent == models_dir.resolve():
        return path.parent.name
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return f"{path.parent.name or path.stem}-{digest}"
