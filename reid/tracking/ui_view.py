"""The MLflow UI page that compares the pipeline's models: a shared view that ``reid ui`` links to.

Why a shared view: MLflow 3.x opens an experiment in its GenAI traces overview and, in the runs table,
shows Created / Dataset / Duration / Source / Models but no metric or parameter. What it does accept
(read from the installed UI's code, MLflow 3.17):

* ``workflowType=machine_learning`` in the URL selects the "Model training" view (else the browser's
  local storage key ``mlflow.workflowType`` decides, GenAI by default);
* ``viewStateShareKey=<key>`` loads the view state stored as the experiment tag
  ``mlflow.sharedViewState.<key>`` (JSON): the search facets (``searchFilter``, ``orderByKey``,
  ``orderByAsc``...) and the table state (``selectedColumns``, ``columnOrder``, ``columnWidths``...),
  with columns named ``metrics.`eval/mAP```, ``params.`kd.feature_loss_coefficient```,
  ``tags.`kd_mode```, ``attributes.`Dataset```. This is what the UI's own "Share" button writes.

So :func:`publish_comparison_view` writes that tag, naming the latest training run of each variant, and
:func:`comparison_url` is the page: those runs side by side with mAP, rank-1, mINP, the kd mode, the
feature-loss coefficient and the teacher, sorted by mAP. The UI offers "Exit shared view" to get back
to the user's own table; nothing else of the user's state is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from reid.errors import TrackingError
from reid.evaluation.naming import EVAL_PREFIX, HEADLINE_METRICS, metric_key

VIEW_KEY = "reid-comparison"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's own prefix (EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX)
WORKFLOW = "machine_learning"  # the "Model training" toggle
#: Parameters that say how each model was made, in the order the table shows them.
COMPARED_PARAMS: tuple[str, ...] = ("kd.feature_loss_coefficient", "kd.teacher_stage", "kd.teacher_checkpoint",
                                    "model.backbone")
COMPARED_TAGS: tuple[str, ...] = ("kd_mode",)
TRAIN_RUNS_FILTER = "tags.`reid.command` = 'train'"


def column(kind: str, key: str) -> str:
    """A column id of MLflow's runs table (``metrics.`eval/mAP```), as its view state names columns."""
    return f"{kind}.`{key}`"


@dataclass
class ComparisonView:
    """The published view: where it is (experiment, share key) and which runs it compares."""

    experiment_id: str
    key: str
    runs: list[str] = field(default_factory=list)  # run ids, best mAP first
    names: list[str] = field(default_factory=list)


def latest_runs(client: Any, experiment_id: str) -> list[Any]:
    """The newest training run of each variant (``variant`` tag) of the experiment."""
    runs = client.search_runs([experiment_id], filter_string=TRAIN_RUNS_FILTER, order_by=["attributes.start_time DESC"],
                              max_results=1000)
    newest: dict[str, Any] = {}
    for run in runs:
        newest.setdefault(run.data.tags.get("variant", run.info.run_id), run)
    return list(newest.values())


def target_metrics(runs: list[Any]) -> list[str]:
    """The cross-domain targets' mAP keys (``eval/<target>/mAP``) that these runs carry, sorted."""
    keys = {k for run in runs for k in run.data.metrics
            if k.startswith(EVAL_PREFIX) and k.endswith("/mAP") and k.count("/") == 2}
    return sorted(keys)


def comparison_state(run_ids: list[str], extra_metrics: list[str] = ()) -> dict[str, Any]:
    """The view state (facets + table) of the comparison; ``run_ids`` empty shows every run."""
    metrics = [metric_key(m) for m in HEADLINE_METRICS] + list(extra_metrics)
    columns = ([column("metrics", m) for m in metrics] + [column("tags", t) for t in COMPARED_TAGS]
               + [column("params", p) for p in COMPARED_PARAMS]
               + [column("attributes", "Dataset"), column("attributes", "Models")])
    state: dict[str, Any] = {
        "orderByKey": column("metrics", metric_key("mAP")),
        "orderByAsc": False,
        "selectedColumns": columns,
        # Run name first, then what is compared, then the attributes MLflow shows by default.
        "columnOrder": [column("attributes", "Run Name"), *columns, "runDateAndNestInfo", "duration"],
        "columnWidths": {column("attributes", "Dataset"): 170, column("attributes", "Models"): 150,
                         column("params", "kd.teacher_checkpoint"): 220},
    }
    if run_ids:
        state["searchFilter"] = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    return state


def publish_comparison_view(client: Any, experiment: str, key: str = VIEW_KEY) -> ComparisonView:
    """Write the comparison of ``experiment``'s latest runs as the shared view ``key``; returns it.

    Raises :class:`TrackingError` when the experiment is not in the store (nothing was tracked there).
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} is not in this store: no run was tracked here yet")
    runs = latest_runs(client, found.experiment_id)
    mAP = metric_key("mAP")
    runs.sort(key=lambda r: r.data.metrics.get(mAP, float("-inf")), reverse=True)
    state = comparison_state([r.info.run_id for r in runs], target_metrics(runs))
    client.set_experiment_tag(found.experiment_id, SHARED_VIEW_TAG_PREFIX + key, json.dumps(state))
    return ComparisonView(found.experiment_id, key, [r.info.run_id for r in runs],
                          [r.info.run_name or r.info.run_id for r in runs])


def comparison_url(base_url: str, view: ComparisonView) -> str:
    """The page of ``view`` on the UI at ``base_url`` (``http://localhost:5000``)."""
    return (f"{base_url.rstrip('/')}/#/experiments/{view.experiment_id}/runs"
            f"?viewStateShareKey={view.key}&workflowType={WORKFLOW}")
