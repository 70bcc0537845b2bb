"""The evaluations during training: a monitoring curve on query/gallery, the choice of best.pt on held-out ids.

The query/gallery evaluation after the last epoch is the run's result; before it, it is a curve
(``eval_epoch/*``) and nothing chooses an epoch on it, since that would be choosing on the test set.
Only a validation split of held-out training identities (``eval.val_ids``) chooses ``best.pt``
(``val/*`` metrics). Every rank evaluates (features are extracted in shards and gathered) and keeps
the same bookkeeping, so the ranks take the same decisions afterwards; rank 0 logs and writes.

The validation split also gives the model's same-identity thresholds (TAR at FAR,
:mod:`reid.evaluation.threshold`) on identities it never trained on: logged as
``val/threshold/far_*`` and ``val/tar/far_*``, kept in ``metrics.json`` (``val_threshold``) and written
to ``<output_dir>/threshold.json`` after each evaluation, so the file always belongs to ``last.pt``
(its ``model.weights_hash`` says so) and ``reid search --threshold-file`` can use it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

from reid.checkpoint import BEST_CHECKPOINT, save_checkpoint
from reid.data.manifest import Manifest
from reid.engine import distributed as dist_utils
from reid.engine.callbacks import Callback
from reid.engine.metrics_log import MetricSink
from reid.engine.state import TrainState, checkpoint_payload
from reid.evaluation.naming import EPOCH_EVAL_PREFIX, VAL_PREFIX
from reid.evaluation.threshold import THRESHOLD_FILE, ThresholdCollector

SELECTION_METRIC = "mAP"


class EpochEvaluation(Callback):
    """``evaluate``: query/gallery (and validation) metrics after an epoch; best.pt on the validation split."""

    def __init__(self, manifest: Manifest, val_manifest: Manifest | None, sink: MetricSink,
                 say: Callable[[str], None], best_path: Path, identity: Callable[[], Mapping[str, Any]]) -> None:
        self.manifest, self.val_manifest, self.sink, self.say = manifest, val_manifest, sink, say
        self.best_path, self.identity = best_path, identity

    def evaluate(self, state: TrainState, completed: int) -> None:
        from reid.evaluation.runner import evaluate_model, metrics_for_logging

        started = time.perf_counter()
        dist_utils.broadcast_buffers(state.model, state.ctx)  # one model embeds every rank's shard
        result = evaluate_model(state.model, self.manifest, state.config, state.device)
        thresholds = self._threshold_collector(state, completed) if self.val_manifest is not None else None
        val = (evaluate_model(state.model, self.val_manifest, state.config, state.device, on_features=thresholds)
               if self.val_manifest is not None else None)
        summary = state.summary
        summary.timing["eval_time_s"] += time.perf_counter() - started
        summary.timing["evaluations"] += 1
        metrics = {**result.to_dict(), "epoch": completed}
        if thresholds is not None and thresholds.result is not None:
            metrics["val_threshold"] = thresholds.result.metrics_json()
        summary.last_metrics = metrics
        entry = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        improved = False
        if val is not None:
            value = float(val.to_dict()[SELECTION_METRIC])
            entry[f"val_{SELECTION_METRIC}"] = value
            improved = summary.best_metric is None or value > summary.best_metric
            if improved:
                summary.best_metric, summary.best_epoch = value, completed
        summary.history.append(entry)
        if not state.ctx.is_main:
            return
        logged = metrics_for_logging(result, prefix=EPOCH_EVAL_PREFIX)  # a curve; eval/* is the reported model's
        logged["eval_time_s"] = time.perf_counter() - started
        if val is not None:
            logged.update(metrics_for_logging(val, prefix=VAL_PREFIX))
        if thresholds is not None and thresholds.result is not None:
            logged.update(thresholds.result.metrics(VAL_PREFIX))
            thresholds.result.save(self.best_path.parent / THRESHOLD_FILE)
        elif thresholds is not None and thresholds.error:
            self.say(f"note: no same-identity threshold on the validation split: {thresholds.error}")
        self.sink.log_metrics(logged, step=completed)
        self.say(f"epoch {completed}: query/gallery {result.summary()}{self._val_note(state, entry, improved)}")
        if result.skipped_report():
            self.say(result.skipped_report())
        if improved:
            save_checkpoint(checkpoint_payload(state, full=False, extra=self.identity()), self.best_path)
            self.sink.log_metrics({f"{VAL_PREFIX}best_{SELECTION_METRIC}": summary.best_metric,
                                   f"{VAL_PREFIX}best_epoch": completed}, step=completed)

    def _threshold_collector(self, state: TrainState, completed: int) -> ThresholdCollector:
        """Thresholds of this epoch's model on the held-out identities (tagged with its weights' hash)."""
        from reid.models.inference import model_identity

        model = model_identity(dist_utils.unwrap(state.model), state.config.model.backbone) if state.ctx.is_main else {}
        held_out = len({s.pid for s in self.val_manifest.query})
        return ThresholdCollector(state.config.eval, True, model=model,
                                  measured_on=f"eval.val_ids: {held_out} held-out training identities, epoch {completed}")

    def _val_note(self, state: TrainState, entry: Mapping[str, Any], improved: bool) -> str:
        """`` | validation mAP 41.2 (best, saved as best.pt)`` in percent, as `reid evaluate` prints."""
        if self.val_manifest is None:
            return ""
        summary = state.summary
        best = (f" (best, saved as {BEST_CHECKPOINT})" if improved
                else f" (best {100 * summary.best_metric:.1f} at epoch {summary.best_epoch})")
        return f"  | validation mAP {100 * entry[f'val_{SELECTION_METRIC}']:.1f}{best}"
