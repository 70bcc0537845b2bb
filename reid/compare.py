"""One table for every model of the pipeline: accuracy next to what each model costs to deploy.

The DVC pipeline trains a baseline and named KD variants (``variants:`` in params.yaml) and evaluates
each of them into ``<evaluate.output_dir>/<name>/metrics.json``. Accuracy alone does not tell whether
distillation was worth it: a ResNet-18 student at 2 GMACs and a ResNet-50 at 4 GMACs with the same
mAP are different results. So next to each model's metrics this module puts its deployed size and
compute, both measured on the trained checkpoint itself rather than copied from a paper:

* parameters: the checkpoint's tensors that belong to modules the inference forward actually runs
  (the training-only classifier, the self-distillation heads and an offline teacher are not part of
  the deployed model and are not counted; BatchNorm running statistics are buffers, not parameters);
* GMACs: multiply-accumulates of one image at the configured input size, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on a model built from the checkpoint's
  own configuration.

The model list comes from params.yaml (baseline + every variant), never from a folder scan, so a stale
checkpoint of a deleted variant cannot sneak into the table. Below the table, :mod:`reid.seed_spread`
gives each model's difference to its reference and whether it exceeds the seed (run-to-run) spread.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from reid.config import Config, ConfigError, EvaluateSettings, TrackingConfig, evaluate_settings, load_config, read_params, validate
from reid.checkpoint import LAST_CHECKPOINT
from reid.errors import ReidError
from reid.seed_spread import Run, spread_markdown

BASELINE = "baseline"
# dvc.yaml addresses every model's checkpoint as pipeline/models/<name>/last.pt (a foreach over
# evaluate.models cannot look up each variant's train.output_dir), so the params must agree with it.
MODELS_DIR = Path("pipeline/models")
# dvc.yaml's prepare stage writes the cross-domain targets' manifests here, and evaluate_target reads them.
TARGETS_DIR = Path("pipeline/data/targets")
CHECKPOINT_NAME = LAST_CHECKPOINT  # the model of the last epoch, the one the recipe reports
METRICS_NAME = "metrics.json"

COLUMNS = (
    "model", "backbone", "kd mode", "feature_loss_coefficient", "temperature", "teacher",
    "mAP", "rank1", "rank5", "rank10", "mINP", "params (M)", "GMACs", "mlflow run",
)
ACCURACY_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# Per cross-domain target (evaluate.targets), these metrics get a column "<target> <key>" after mINP.
TARGET_KEYS = ("mAP", "rank1")


class CompareError(ReidError):
    """A model of the pipeline whose metrics or checkpoint is missing or unreadable."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompareSettings(_Settings):
    """``compare:`` in params.yaml: where the comparison table and chart are written."""

    output_dir: Path = Path("pipeline/compare")


@dataclass(frozen=True)
class PipelineModel:
    """One trained model of the pipeline: its name, the variant it comes from and its resolved config."""

    name: str
    variant: str | None
    config: Config

    @property
    def checkpoint(self) -> Path:
        return self.config.train.output_dir / CHECKPOINT_NAME


@dataclass(frozen=True)
class PipelinePlan:
    """Everything ``reid compare`` needs to know about the pipeline, read from params.yaml."""

    models: list[PipelineModel]
    evaluate: EvaluateSettings
    compare: CompareSettings
    tracking: TrackingConfig

    def metrics_path(self, model: PipelineModel) -> Path:
        return self.evaluate.output_dir / model.name / METRICS_NAME

    def target_metrics_path(self, model: PipelineModel, target: str) -> Path:
        """Where dvc.yaml's evaluate_target stage writes ``model``'s metrics on ``target``."""
        from reid.evaluation.naming import EvaluationNames

        return EvaluationNames(target).output_dir(self.evaluate.output_dir, model.name) / METRICS_NAME


@dataclass
class ModelRow:
    """One line of the comparison; ``None`` where a value does not apply (e.g. no temperature)."""

    model: PipelineModel
    metrics: dict[str, float]
    params_m: float
    gmacs: float
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> metrics in percent

    def cells(self) -> dict[str, Any]:
        """The row as ``{column: value}`` with raw numbers (accuracy in percent)."""
        cfg = self.model.config
        kd = cfg.kd
        inactive = cfg.inactive_keys()  # the same rule as the MLflow params ("-" there, empty here)
        teachers = []
        if kd.self_distill:
            teachers.append(f"self {kd.teacher_stage} -> {'+'.join(kd.student_stages)}")
        if kd.offline:
            assert kd.teacher_checkpoint is not None
            teachers.append(_teacher_name(kd.teacher_checkpoint))
        return {
            "model": self.model.name,
            "backbone": cfg.model.backbone,
            "kd mode": kd.mode,
            "feature_loss_coefficient": None if "kd.feature_loss_coefficient" in inactive else kd.feature_loss_coefficient,
            "temperature": None if "kd.temperature" in inactive else kd.temperature,
            "teacher": "; ".join(teachers) or None,
            **{k: self.metrics.get(k) for k in ACCURACY_KEYS},
            **{target_column(t, k): m.get(k) for t, m in self.targets.items() for k in TARGET_KEYS},
            "params (M)": self.params_m,
            "GMACs": self.gmacs,
            "mlflow run": self.run_id,
        }


def target_column(target: str, key: str) -> str:
    """The column of metric ``key`` on cross-domain target ``target`` (e.g. ``duke mAP``)."""
    return f"{target} {key}"


def table_columns(rows: list[ModelRow]) -> list[str]:
    """:data:`COLUMNS` with the per-target columns of ``rows`` inserted after ``mINP``."""
    targets = list(dict.fromkeys(t for row in rows for t in row.targets))
    extra = [target_column(t, k) for t in targets for k in TARGET_KEYS]
    at = COLUMNS.index("mINP") + 1
    return [*COLUMNS[:at], *extra, *COLUMNS[at:]]


def _teacher_name(path: Path) -> str:
    """``pipeline/models/baseline/last.pt`` -> ``baseline``: the model the teacher checkpoint belongs to."""
    parts = Path(path).parts
    if len(parts) >= 2 and Path(*parts[:-2]) == MODELS_DIR:
        return parts[-2]
    return str(path)


def read_plan(params: Path) -> PipelinePlan:
    """Read the pipeline's model list from params.yaml and check it agrees with dvc.yaml's layout.

    Raises ConfigError when ``evaluate.models`` is not exactly ``baseline`` + every variant (in order),
    or when a model's ``train.output_dir`` is not ``pipeline/models/<name>``: either would make the
    pipeline evaluate a different checkpoint than the one its train stage wrote.
    """
    params = Path(params)
    tree = read_params(params)
    variants = tree.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"{params}: variants must be a mapping of name -> partial overrides")
    if BASELINE in variants:
        raise ConfigError(f"{params}: a variant may not be called {BASELINE!r}; that name is the base configuration")
    try:
        compare = CompareSettings.model_validate(tree.get("compare") or {})
    except ValidationError as err:
        raise ConfigError(f"{params}: invalid compare section: {err}") from None
    evaluate = evaluate_settings(tree, str(params))

    names = [BASELINE, *variants]
    if evaluate.models is not None and list(evaluate.models) != names:
        missing = [n for n in names if n not in evaluate.models]
        extra = [n for n in evaluate.models if n not in names]
        raise ConfigError(
            f"{params}: evaluate.models must list {BASELINE!r} and then every variant in order, i.e. {names}; "
            f"got {evaluate.models} (missing: {missing or 'none'}, unknown: {extra or 'none'})"
        )
    models: list[PipelineModel] = []
    for name in names:
        variant = None if name == BASELINE else name
        config = load_config(params, variant=variant)
        expected = MODELS_DIR / name
        if Path(config.train.output_dir) != expected:
            where = "train.output_dir" if variant is None else f"variants.{name}.train.output_dir"
            raise ConfigError(
                f"{params}: {where} is {config.train.output_dir}, but dvc.yaml reads this model from {expected}; "
                f"set it to {expected}"
            )
        models.append(PipelineModel(name, variant, config))
    for target in evaluate.targets:
        where = target.manifest_for(models[0].config.data.manifest)
        if where != TARGETS_DIR / f"{target.name}.json":
            raise ConfigError(
                f"{params}: evaluate.targets[{target.name}] would be prepared into {where}, but dvc.yaml reads it from "
                f"{TARGETS_DIR / (target.name + '.json')}; leave its manifest unset and data.manifest at "
                f"pipeline/data/manifest.json")
    return PipelinePlan(models, evaluate, compare, models[0].config.tracking)


def read_metrics(path: Path, model: str, target: str | None = None) -> dict[str, float]:
    """The evaluation metrics of one model (on ``target``), with an error that says how to produce a missing file."""
    if not path.is_file():
        on = f" on target {target!r}" if target else ""
        option = f" --target {target}" if target else ""
        raise CompareError(
            f"no metrics for model {model!r}{on}: {path} does not exist. Run the pipeline (`dvc repro`) or "
            f"`reid evaluate {MODELS_DIR / model / CHECKPOINT_NAME}{option} --output {path.parent}` first"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path} is not valid JSON ({exc}); re-run the evaluate stage of {model!r}") from None
    if not isinstance(data, dict) or "mAP" not in data:
        raise CompareError(f"{path} has no 'mAP' entry; is it the output of `reid evaluate`?")
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class DeployedCost:
    """What the inference model costs: parameters (from the checkpoint's tensors) and MACs per image."""

    params: int
    macs: float
    mlflow_run_id: str | None


def deployed_cost(checkpoint: Path) -> DeployedCost:
    """Count the deployed parameters and one image's MACs of a trained checkpoint.

    The model is rebuilt from the configuration stored in the checkpoint (the one it was trained with,
    not today's params) and loaded strictly, so a checkpoint that does not match its architecture fails
    here instead of producing a wrong count.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from reid.checkpoint import load_checkpoint
    from reid.models.reid_model import build_model

    state = load_checkpoint(checkpoint)
    try:
        config = validate(state["config"], f"configuration stored in {checkpoint}")
        num_classes = int(state["num_classes"])
        weights: dict[str, torch.Tensor] = state["model"]
    except KeyError as exc:
        raise CompareError(f"{checkpoint} lacks {exc.args[0]!r}; was it written by `reid train`?") from None
    # The weights come from the checkpoint; never fetch ImageNet weights just to count.
    config.model.pretrained = "none"
    config.model.pretrained_path = None
    model = build_model(config, num_classes)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CompareError(f"{checkpoint}: weights do not fit the model its config describes: {exc}") from None
    model.eval()

    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, _i, _o: ran.add(id(mod))) for m in model.modules()]
    image = torch.zeros(1, 3, config.data.height, config.data.width)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    deployed = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, module in model.named_modules()
        if id(module) in ran
        for p_name, _ in module.named_parameters(recurse=False)
    }
    params = sum(weights[name].numel() for name in deployed)
    run_id = state.get("mlflow_run_id")
    return DeployedCost(params=params, macs=counter.get_total_flops() / 2, mlflow_run_id=run_id or None)


def as_percent(value: float | None) -> float | None:
    """Metrics are fractions in [0, 1] in metrics.json; tables show percent."""
    return None if value is None else 100.0 * value


def collect_rows(plan: PipelinePlan) -> list[ModelRow]:
    """Metrics + deployed cost for every model of the plan, in params order."""
    rows = []
    for model in plan.models:
        metrics = read_metrics(plan.metrics_path(model), model.name)
        cost = deployed_cost(model.checkpoint)
        pct = {k: as_percent(metrics.get(k)) for k in ACCURACY_KEYS if k in metrics}
        targets = {}
        for target in plan.evaluate.targets:
            found = read_metrics(plan.target_metrics_path(model, target.name), model.name, target.name)
            targets[target.name] = {k: as_percent(found.get(k)) for k in TARGET_KEYS if k in found}
        rows.append(ModelRow(model, pct, cost.params / 1e6, cost.macs / 1e9, cost.mlflow_run_id, targets=targets))
    return rows


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ACCURACY_KEYS or column.endswith(tuple(f" {k}" for k in TARGET_KEYS)):
        return f"{value:.1f}"
    if column in ("params (M)", "GMACs"):
        return f"{value:.2f}"
    if column == "mlflow run":
        return str(value)[:8]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(rows: list[ModelRow]) -> str:
    """A GitHub-style table; accuracy in percent, '-' where a column does not apply."""
    columns = table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = row.cells()
        lines.append("| " + " | ".join(_fmt(c, cells.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[ModelRow], path: Path) -> None:
    """Machine-readable twin of the table: raw numbers, empty where a column does not apply."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=table_columns(rows))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.cells().items()})


def bar_chart(rows: list[ModelRow], path: Path) -> None:
    """Grouped bars of mAP and rank-1 per model, values printed on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.model.name for r in rows]
    series = [("mAP", [r.metrics.get("mAP", 0.0) for r in rows]), ("rank-1", [r.metrics.get("rank1", 0.0) for r in rows])]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    for i, (label, values) in enumerate(series):
        xs = [j + (i - 0.5) * width for j in range(len(rows))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("mAP and rank-1 per model")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def find_runs(tracking: TrackingConfig, rows: list[ModelRow], base: Path) -> list[str]:
    """Fill ``row.run_id`` from MLflow; returns warnings for models without a run.

    The checkpoint records the run that trained it, which is exact even when DVC skipped an unchanged
    stage in a later experiment. Checkpoints without one are matched by the ``variant`` tag in the
    configured experiment (newest run wins). A missing store is not an error: tracking may be off.
    """
    from reid.tracking.mlflow_tracker import resolve_store_uri

    uri = resolve_store_uri(tracking.uri, base)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return [f"no MLflow store at {uri}; the table has no run ids"]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    warnings = []
    for row in rows:
        if row.run_id:
            try:
                client.get_run(row.run_id)
                continue
            except MlflowException:
                row.run_id = None
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.variant = '{row.model.name}'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
            row.run_id = found[0].info.run_id if found else None
        if row.run_id is None:
            warnings.append(f"no MLflow run found for model {row.model.name!r} in experiment {tracking.experiment!r}")
    return warnings


@dataclass(frozen=True)
class Comparison:
    """What ``reid compare`` produced."""

    rows: list[ModelRow]
    markdown: str
    files: list[Path]
    warnings: list[str]
    spread: str = ""  # the seed-spread section (reid.seed_spread), also written below the table


def compare(params: Path, output_dir: Path | None = None, use_mlflow: bool = True,
            tracking_base: Path | None = None) -> Comparison:
    """Build the comparison of every model in params.yaml and write it to ``output_dir``.

    ``tracking_base`` anchors a relative MLflow store (``reid compare`` passes DVC_ROOT or the working
    directory, like every command); default: the folder of ``params``.
    """
    plan = read_plan(params)
    rows = collect_rows(plan)
    base = tracking_base if tracking_base is not None else Path(params).resolve().parent
    warnings = find_runs(plan.tracking, rows, base) if use_mlflow and plan.tracking.enabled else []
    out = Path(output_dir) if output_dir is not None else plan.compare.output_dir
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    spread = spread_markdown([Run(r.model.name, r.model.config, r.metrics) for r in rows])
    md, csv_path, png = out / "comparison.md", out / "comparison.csv", out / "comparison.png"
    md.write_text(
        "# Model comparison\n\n"
        "Accuracy in percent (Market-1501 protocol of `eval` in params.yaml); params = deployed model only; "
        "GMACs = one image at the configured input size"
        + ("; `<target> mAP`/`<target> rank1`: evaluated on that cross-domain target of evaluate.targets"
           if plan.evaluate.targets else "") + ".\n\n" + table + "\n" + spread
    )
    write_csv(rows, csv_path)
    bar_chart(rows, png)
    return Comparison(rows, table, [md, csv_path, png], warnings, spread)
