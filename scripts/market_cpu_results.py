"""Collect a finished CPU-track Market-1501 run (scripts/market_cpu.sh) into one results JSON and a table.

    .venv/bin/python scripts/market_cpu_results.py                 # reads .market-cpu/
    .venv/bin/python scripts/market_cpu_results.py path/to/run --date 2026-12-03 --out x.json
    # one record of one recipe, merged across runs and machines (models finished so far):
    .venv/bin/python scripts/market_cpu_results.py .market-cpu --partial --merge-into benchmarks/results/<record>.json
    .venv/bin/python scripts/market_cpu_results.py --from-record one_run.json --merge-into benchmarks/results/<record>.json
    .venv/bin/python scripts/market_cpu_results.py --readme benchmarks/results/<record>.json   # README rows

Why a script: docs/RESULTS.md and ``benchmarks/results/market1501_cpu_<date>.json`` must
say, for every model, exactly what was trained (its configuration's difference from the base), what it
cost (seconds, images, img/s on which machine) and what it scored on the full official protocol
(standard *and* trapezoidal AP, so a reader comparing with the MATLAB code knows which is which),
without anyone copying numbers by hand.

Sources, all inside the run folder (the project copy market_cpu.sh works in):

* ``params.yaml``: the models (``evaluate.models``: baseline + variants, via :func:`reid.compare.read_plan`)
  and their resolved configurations;
* ``pipeline/eval/<model>/metrics.json`` (the evaluate stage): accuracy, AP variants, query counts;
* ``pipeline/models/<model>/metrics.json`` (the train stage): ``train_time_s``, ``train_images``,
  ``train_img_per_s``, ``eval_time_s``. A run made before the trainer recorded them falls back to
  its MLflow run (``train/epoch_time_s``, ``train/img_per_s`` and ``eval_time_s`` per epoch/evaluation)
  and says so in ``timing_source``; the MLflow run also gives the mAP curve per evaluation;
* ``pipeline/data/manifest.json``: the number of query and gallery images.

The machine is the one this script runs on (the run folder does not record it): run it on the
machine that trained.

``--merge-into RECORD``: the models of one comparison are trained one at a time, over sessions and
machines, so each finished model goes into one record as soon as it is done. Every row carries its
source commit, machine, date, run folder and collecting command (``wall_time_s`` as before); models
not yet recorded are added, recorded ones are kept unless ``--replace MODEL`` (a rerun is another
draw, not the same row); a run of another recipe (base configuration minus seed, output dir, tracking
and dataset location) or another dataset is refused with the differing keys, the record unchanged.
The record's seed groups, paired comparison per seed and verdicts are recomputed from its rows on
every merge; rows from several machines carry a note that such runs are not bit-identical. Metrics in the JSON are fractions in [0, 1] as in metrics.json; the table shows
percent. Exit code 2 with a message when the run folder lacks a model's metrics.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN = REPO / ".market-cpu"
RESULTS_DIR = REPO / "benchmarks" / "results"
# How market_cpu.sh runs the models (dvc.yaml's stages, in the run folder).
PIPELINE_COMMAND = "bash scripts/market_cpu.sh"
TIMING_KEYS = ("train_time_s", "train_images", "train_img_per_s", "eval_time_s", "evaluations")
ACCURACY_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP", "mAP_standard", "mAP_trapezoidal")


class ResultsError(Exception):
    """The run folder does not hold what a results file needs; the message says what is missing."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ResultsError(f"{path} does not exist ({what}); has that stage of the run finished?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path} does not hold a JSON object")
    return data


def describe_machine() -> dict[str, Any]:
    """The machine description every benchmark result carries (benchmarks/machine_info.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import machine_info
    finally:
        sys.path.pop(0)
    return machine_info.describe_machine()


def config_difference(base: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"base": ..., "value": ...}}`` for every flattened key whose value differs."""
    keys = list(dict.fromkeys([*base, *other]))
    return {k: {"base": base.get(k), "value": other.get(k)} for k in keys if base.get(k) != other.get(k)}


def mlflow_history(run_dir: Path, tracking: Any, model: str) -> dict[str, Any] | None:
    """Timing and the mAP curve from the model's newest MLflow run (tag ``variant``), or None."""
    from reid.tracking.mlflow_tracker import resolve_store_uri

    uri = resolve_store_uri(tracking.uri, run_dir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.variant = '{model}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id

    def series(name: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, name)}  # last value per step wins

    from reid.evaluation.naming import EPOCH_EVAL_PREFIX

    # The query/gallery curve during training: eval_epoch/* since the last epoch is the reported model,
    # curve/* in the runs of commit bd1efff (2026-12-06), plain names in runs recorded before.
    def curve_series(name: str) -> dict[int, float]:
        return series(f"{EPOCH_EVAL_PREFIX}{name}") or series(f"curve/{name}") or series(name)

    epoch_time, ips, eval_time = series("train/epoch_time_s"), series("train/img_per_s"), curve_series("eval_time_s")
    out: dict[str, Any] = {"mlflow_run_id": run_id,
                           "curve": [{"epoch": e, "mAP": v} for e, v in sorted(curve_series("mAP").items())]}
    if epoch_time:
        seconds = sum(epoch_time.values())
        images = sum(epoch_time[e] * ips.get(e, 0.0) for e in epoch_time)
        out.update({"train_time_s": seconds, "train_images": round(images), "train_img_per_s": images / seconds,
                    "eval_time_s": sum(eval_time.values()), "evaluations": len(eval_time)})
    return out


def collect(run_dir: Path, use_mlflow: bool = True, partial: bool = False) -> dict[str, Any]:
    """Everything the results JSON holds, read from a run folder.

    ``partial``: a run still in progress. Models whose training has not finished are listed under
    ``not_run``; a model trained but not yet through the evaluate stage takes its accuracy from the
    trainer's final evaluation (``accuracy_source`` says so).
    """
    from reid.compare import read_plan
    from reid.config import ConfigError
    from reid.checkpoint import LAST_CHECKPOINT

    run_dir = Path(run_dir).resolve()
    params = run_dir / "params.yaml"
    if not params.is_file():
        raise ResultsError(f"{params} does not exist: {run_dir} is not a market_cpu.sh run folder")
    cwd = Path.cwd()
    os.chdir(run_dir)  # the params' relative paths (pipeline/...) are relative to the run folder
    try:
        plan = read_plan(params)
    except ConfigError as exc:
        raise ResultsError(str(exc)) from None
    finally:
        os.chdir(cwd)
    manifest = read_json(run_dir / plan.models[0].config.data.manifest, "the prepare stage's manifest")
    stats = manifest.get("statistics") or {}
    num_query = (stats.get("query") or {}).get("images", len(manifest.get("query") or []))
    num_gallery = (stats.get("gallery") or {}).get("images", len(manifest.get("gallery") or []))

    base_flat = plan.models[0].config.flat()
    models = []
    not_run: list[str] = []
    for model in plan.models:
        cfg = model.config
        train_metrics = run_dir / cfg.train.output_dir / "metrics.json"
        eval_metrics = run_dir / plan.metrics_path(model)
        if partial and not train_metrics.is_file():
            not_run.append(model.name)
            continue
        trained = read_json(train_metrics, f"train stage of {model.name!r}")
        if eval_metrics.is_file() or not partial:
            evaluated = read_json(eval_metrics, f"evaluate stage of {model.name!r}")
            accuracy_source = "evaluate stage"
        else:
            # The trainer's last evaluation is the same full protocol on the same model (last.pt, the
            # last epoch); say which file the numbers come from.
            evaluated = trained
            accuracy_source = "train stage (final evaluation of the last epoch, last.pt)"
        row: dict[str, Any] = {
            "model": model.name,
            "backbone": cfg.model.backbone,
            "kd_mode": cfg.kd.mode,
            "seed": cfg.train.seed,
            "epochs": cfg.train.epochs,
            "input": f"{cfg.data.height}x{cfg.data.width}",
            "config_difference": config_difference(base_flat, cfg.flat()),
            **{k: evaluated.get(k) for k in ACCURACY_KEYS},
            "ap_variant": evaluated.get("ap_variant"),
            "num_queries": evaluated.get("num_queries", num_query),
            "num_valid_queries": evaluated.get("num_valid_queries"),
            "num_gallery": num_gallery,
        }
        timing = {k: trained[k] for k in TIMING_KEYS if trained.get(k) is not None}
        source = "metrics.json" if "train_time_s" in timing else None
        history = mlflow_history(run_dir, plan.tracking, model.name) if use_mlflow and plan.tracking.enabled else None
        if source is None and history and "train_time_s" in history:
            timing = {k: history[k] for k in TIMING_KEYS if k in history}
            source = "mlflow"
        row.update({k: timing.get(k) for k in TIMING_KEYS})
        row["timing_source"] = source
        row["wall_time_s"] = (timing["train_time_s"] + timing.get("eval_time_s", 0.0)
                              if "train_time_s" in timing else None)
        row["accuracy_source"] = accuracy_source
        row["curve"] = (history or {}).get("curve") or []
        row["mlflow_run_id"] = (history or {}).get("mlflow_run_id")
        row["checkpoint_sha256"] = file_sha256(run_dir / model.checkpoint)
        if cfg.kd.offline and cfg.kd.teacher_checkpoint is not None:
            # Which teacher this student learnt from, byte for byte: a run on a fresh machine retrains
            # its own seed-0 baseline, which need not be the recorded one.
            row["teacher_sha256"] = file_sha256(run_dir / cfg.kd.teacher_checkpoint)
        variant = f" --variant {model.variant}" if model.variant else ""
        row["command"] = (f"reid train --params params.yaml{variant} && reid evaluate "
                          f"{cfg.train.output_dir}/{LAST_CHECKPOINT} --params params.yaml --output "
                          f"{plan.metrics_path(model).parent}")
        models.append(row)
    base_config = plan.models[0].config.model_dump(mode="json")
    spread = seed_spread_rows(runs_of(base_config, models))
    return {
        "what": "Market-1501, full official protocol, CPU track (from scratch, small input; not the published "
                "ImageNet-pretrained 256 x 128 recipe)",
        "units": "accuracy as fractions in [0, 1]; times in seconds; wall_time_s = training steps + the "
                 "evaluations during training",
        "command": PIPELINE_COMMAND,
        "run_folder": str(run_dir),
        # The checkout commit market_cpu.sh copied the code from (source_commit.txt), when recorded.
        "source_commit": ((run_dir / "source_commit.txt").read_text().strip()
                          if (run_dir / "source_commit.txt").is_file() else None),
        "dataset": {"name": manifest.get("name"), "num_query": num_query, "num_gallery": num_gallery,
                    "num_train": len(manifest.get("train") or []), "num_classes": manifest.get("num_classes")},
        "machine": describe_machine(),
        "base_config": base_config,
        "plan": [m.name for m in plan.models],
        "models": models,
        "seed_spread": spread,
        "not_run": not_run,
    }


def file_sha256(path: Path) -> str | None:
    """The file's SHA-256, None when it is not there (a run folder copied without its checkpoints)."""
    import hashlib

    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def runs_of(base_config: dict[str, Any], models: list[dict[str, Any]]) -> list[Any]:
    """The rows as :class:`reid.seed_spread.Run` (metrics in percent), each config rebuilt from the base
    configuration and the row's ``config_difference``, so a merged record needs no run folder."""
    from reid.config import ConfigError, flatten, validate
    from reid.seed_spread import Run

    base = flatten(base_config)
    runs = []
    for row in models:
        flat = {**base, **{k: d["value"] for k, d in row.get("config_difference", {}).items()}}
        tree: dict[str, Any] = {}
        for key, value in flat.items():
            *sections, name = key.split(".")
            node = tree
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
        try:
            config = validate(tree, f"configuration of {row['model']!r} (base_config + config_difference)")
        except ConfigError as exc:
            raise ResultsError(str(exc)) from None
        runs.append(Run(row["model"], config,
                        {k: None if row.get(k) is None else 100 * float(row[k]) for k in ("mAP", "rank1")}))
    return runs


def seed_spread_rows(runs: list[Any]) -> dict[str, Any]:
    """Every model's mAP / rank-1 delta to its reference's seed mean and whether it exceeds the spread.

    The rule is ``reid compare``'s (:mod:`reid.seed_spread`): replicates are models that differ only in
    ``train.seed``; a delta counts only when ``|delta| > max - min`` over the reference's replicates.
    Values in percentage points, as in the table.
    """
    from reid.seed_spread import differences

    out: dict[str, Any] = {"rule": "delta = value - reference mean (percentage points); beyond = |delta| > "
                                   "reference spread (max - min over its seed replicates)",
                           "references": {}, "models": {}}
    for diff in differences(runs):
        ref = diff.reference
        out["references"][ref.name] = {
            "runs": [r.name for r in ref.runs],
            **{f"{k}_mean": ref.mean(k) for k in ("mAP", "rank1")},
            **{f"{k}_spread": ref.spread(k) for k in ("mAP", "rank1")},
        }
        out["models"][diff.run.name] = {"reference": ref.name, "replicate": diff.replicate,
                                        **{f"{k}_delta": diff.delta[k] for k in ("mAP", "rank1")},
                                        **{f"{k}_beyond_spread": diff.beyond[k] for k in ("mAP", "rank1")}}
    return out


# ------------------------------------------------------------------------------------------------
# One record of one recipe, merged from many runs
# ------------------------------------------------------------------------------------------------
#
# A model of the CPU track takes 20-50 minutes; the models of one comparison are trained one at a
# time, across sessions and machines (a fresh machine has no DVC cache, so it retrains what it
# needs). Each finished model is merged into one record as soon as it is done; the record keeps,
# per row, where that row came from.

#: Flattened configuration keys that may differ between two runs of one recipe: the seed and where a
#: model is written (they differ between replicates), the tracking store (where the run is logged) and
#: data.root (where the dataset lies on that machine; the dataset itself is compared through the
#: manifest's name and counts, the ``dataset`` section).
RUN_FREE_KEYS = ("train.seed", "train.output_dir", "data.root")
RUN_FREE_SECTIONS = ("tracking.",)
#: What each merged row carries about its origin.
PROVENANCE_KEYS = ("source_commit", "machine", "date", "run_folder", "collected_by")
MACHINE_NOTE = ("Rows from {n} machines ({names}): runs of one seed on two machines are not bit-identical "
                "(another CPU sums floats in another order, and from-scratch training amplifies the last-bit "
                "differences), so a seed's row depends on the machine it ran on; compare such rows as "
                "different draws, not as reruns.")


def recipe_differences(recorded: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"record": ..., "run": ...}}`` for every recipe key on which two base configurations differ.

    Keys of :data:`RUN_FREE_KEYS` / :data:`RUN_FREE_SECTIONS` are skipped. A key that only one side has
    (a setting added to the code after the older run) counts as the current code's default there, so a
    new setting left at its default does not split the recipe, while one set to anything else does.
    """
    from reid.config import flatten, validate

    defaults = validate({}, "the code's defaults").flat()
    old, cur = flatten(recorded), flatten(new)
    missing = object()
    out = {}
    for key in dict.fromkeys([*old, *cur]):
        if key in RUN_FREE_KEYS or key.startswith(RUN_FREE_SECTIONS):
            continue
        a, b = old.get(key, defaults.get(key, missing)), cur.get(key, defaults.get(key, missing))
        if a != b:
            out[key] = {"record": None if a is missing else a, "run": None if b is missing else b}
    return out


def machine_name(machine: dict[str, Any]) -> str:
    """``2-core AMD EPYC`` (the words the docs use for a machine)."""
    cores = machine.get("cpu_count") or machine.get("cores")
    return f"{cores}-core {machine.get('cpu') or 'unknown CPU'}"


def rows_with_provenance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The results' model rows, each carrying its commit, machine, date, run folder and collecting command
    (a row that already has one, from an earlier merge, keeps it)."""
    rows = []
    for row in results["models"]:
        row = dict(row)
        for key in PROVENANCE_KEYS:
            if row.get(key) is None:
                row[key] = results.get(key)
        rows.append(row)
    return rows


def machines_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct machines of ``rows`` (compared without the host name), in order of appearance."""
    seen: list[dict[str, Any]] = []
    for row in rows:
        machine = {k: v for k, v in (row.get("machine") or {}).items() if k != "host"}
        if machine not in seen:
            seen.append(machine)
    return seen


def statistics(record: dict[str, Any], plan: list[str] | None = None) -> None:
    """Recompute, in place, everything a record derives from its rows: seed spread, groups, verdicts,
    machines and what has not run (of ``plan``, by default the record's own plan)."""
    from reid.seed_spread import SPREAD_KEYS, control_comparisons, groups, paired_comparisons

    def described(comparisons: list[Any]) -> list[dict[str, Any]]:
        return [{"group": c.group.name, "reference": c.reference.name, "gain": c.gain,
                 "pairs": [{"seed": p.seed, "value": p.value, "reference_value": p.reference_value,
                            "delta": p.delta} for p in c.pairs],
                 **dict(zip(("delta_mean", "delta_min", "delta_max"), c.delta_stats() or (None,) * 3)),
                 "verdict": c.verdict(), "sentence": c.sentence()} for c in comparisons]

    runs = runs_of(record["base_config"], record["models"])
    record["seed_spread"] = seed_spread_rows(runs)
    out: dict[str, Any] = {}
    for key in SPREAD_KEYS:
        out[key] = {
            "groups": [{"name": g.name, "runs": [r.name for r in g.runs], "seeds": [r.seed for r in g.runs],
                        "mean": g.mean(key), "spread": g.spread(key)} for g in groups(runs)],
            "comparisons": described(paired_comparisons(runs, key)),
            # Self-distillation against the same run with its feature loss off (reid.seed_spread).
            "controls": described(control_comparisons(runs, key)),
        }
    record["seed_groups"] = {"rule": "group = models that differ only in train.seed; spread = max - min; paired "
                                     "delta = group's seed s - reference's seed s (percentage points); verdict: "
                                     "exceeds when |mean gain| > the reference's spread, undecided below 2 seeds "
                                     "in either group", **out}
    machines = machines_of(record["models"])
    record["machines"] = machines
    record["machine_note"] = (MACHINE_NOTE.format(n=len(machines), names="; ".join(machine_name(m) for m in machines))
                              if len(machines) > 1 else None)
    recorded = {r["model"] for r in record["models"]}
    record["not_run"] = [name for name in (record.get("plan", []) if plan is None else plan)
                         if name not in recorded]


def merge(record: dict[str, Any] | None, results: dict[str, Any], replace: set[str] = frozenset(),
          when: str | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``results`` (one run's :func:`collect`, or a results file of one run) merged into ``record``.

    Models not yet recorded are added; a recorded model is kept unless named in ``replace`` (a rerun
    elsewhere is another draw, never silently the same row). Refused, with ResultsError naming the keys:
    another dataset, or another recipe (:func:`recipe_differences`). Returns the new record (``record``
    is not modified) and what happened: ``{"added": [...], "replaced": [...], "kept": [...]}``.
    """
    import copy

    rows = rows_with_provenance(results)
    finished = {r["model"] for r in rows}
    unknown = sorted(set(replace) - finished)
    if unknown:
        raise ResultsError(f"--replace names {', '.join(unknown)}, not a finished model of this run "
                           f"({', '.join(sorted(finished)) or 'none'})")
    if record is None:
        record = {k: results[k] for k in ("what", "units", "command") if k in results}
        record.update({"kind": "merged record: one recipe, rows from one or more runs",
                       "dataset": results["dataset"], "base_config": results["base_config"],
                       "plan": list(results.get("plan") or []), "models": [], "merges": []})
    else:
        record = copy.deepcopy(record)
        if "merges" not in record:
            raise ResultsError("the file to merge into is not a merged record (it has no 'merges'): pass a new "
                               "file, and give this one with --from-record to start it")
        if results["dataset"] != record["dataset"]:
            keys = sorted(k for k in {*record["dataset"], *results["dataset"]}
                          if record["dataset"].get(k) != results["dataset"].get(k))
            raise ResultsError(f"another dataset: {', '.join(f'dataset.{k}' for k in keys)} differ(s) "
                               f"(record {record['dataset']}, run {results['dataset']})")
        diff = recipe_differences(record["base_config"], results["base_config"])
        if diff:
            listed = "; ".join(f"{k}: record {v['record']!r}, run {v['run']!r}" for k, v in diff.items())
            raise ResultsError(f"the run's base configuration is another recipe than the record's, refusing to put "
                               f"their rows side by side. Differing keys: {listed}. Rerun with the record's recipe "
                               f"or start a new record (another --merge-into file)")
    done: dict[str, list[str]] = {"added": [], "replaced": [], "kept": []}
    by_name = {r["model"]: i for i, r in enumerate(record["models"])}
    for row in rows:
        name = row["model"]
        if name not in by_name:
            record["models"].append(row)
            done["added"].append(name)
        elif name in replace:
            record["models"][by_name[name]] = row
            done["replaced"].append(name)
        else:
            done["kept"].append(name)
    plan = list(dict.fromkeys([*(results.get("plan") or []), *record.get("plan", []),
                               *(r["model"] for r in record["models"])]))
    record["plan"] = plan
    record["models"].sort(key=lambda r: plan.index(r["model"]))
    record["merges"].append({"merged": when or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             **{k: results.get(k) for k in ("collected_by", "run_folder", "source_commit", "date")},
                             "machine": machine_name(results.get("machine") or {}), **done})
    statistics(record)
    return record, done


def write_figures(results: dict[str, Any], folder: Path) -> list[Path]:
    """``market1501_cpu_curve.png`` (mAP per evaluation during training, every model) and
    ``market1501_cpu_comparison.png`` (final mAP and rank-1 per model, the baseline's seed range shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in models:
        curve = m.get("curve") or []
        if not curve:
            continue
        base = m["model"].startswith("baseline")
        ax.plot([c["epoch"] for c in curve], [100 * c["mAP"] for c in curve], marker="o",
                linewidth=2.2 if base else 1.2, color="black" if base else None,
                linestyle="-" if m["model"] == "baseline" else ("--" if base else "-"), label=m["model"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP (%), full Market-1501 protocol")
    ax.set_title("CPU track: mAP per evaluation during training")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "market1501_cpu_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    names = [m["model"] for m in models]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    spread = results.get("seed_spread", {})
    for ax, key, label in ((axes[0], "mAP", "mAP (%)"), (axes[1], "rank1", "rank-1 (%)")):
        values = [100 * float(m[key]) if m.get(key) is not None else 0.0 for m in models]
        ax.bar(range(len(names)), values, color=["0.3" if n.startswith("baseline") else "tab:blue" for n in names])
        base_runs = [m for m in models if m["model"] in (spread.get("references", {}).get("baseline", {}).get("runs") or [])]
        if len(base_runs) >= 2:
            lo = min(100 * float(m[key]) for m in base_runs)
            hi = max(100 * float(m[key]) for m in base_runs)
            ax.axhspan(lo, hi, color="tab:orange", alpha=0.3, label="baseline seed range")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(label)
        low = min(values) if values else 0.0
        ax.set_ylim(max(0.0, low - 8), max(values + [1.0]) + 3)
        for i, v in enumerate(values):
            ax.text(i, v + 0.3, f"{v:.1f}", ha="center", fontsize=7)
    fig.suptitle("CPU track, Market-1501 (3,368 queries x 15,913 gallery images)")
    fig.tight_layout()
    path = folder / "market1501_cpu_comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _spread_cells(results: dict[str, Any], model: str) -> list[str]:
    """The mAP delta to the model's reference mean and the verdict, as :mod:`reid.seed_spread` says."""
    row = (results.get("seed_spread") or {}).get("models", {}).get(model)
    if row is None:
        return ["-", "-"]
    delta = "-" if row["mAP_delta"] is None else f"{row['mAP_delta']:+.1f}"
    if row["replicate"]:
        return [delta, "(seed replicate)"]
    verdict = row["mAP_beyond_spread"]
    return [delta, "unknown (one seed)" if verdict is None else ("yes" if verdict else "no")]


def markdown(results: dict[str, Any]) -> str:
    """One row per model: accuracy in percent, both AP variants, the budget, the speed and where it ran;
    then the seed groups, the paired comparison and its verdict (:func:`reid.seed_spread.group_markdown`)."""
    from reid.seed_spread import group_markdown

    head = ["model", "backbone", "kd", "seed", "epochs", "mAP", "mAP (trapezoidal)", "rank-1", "rank-5", "rank-10",
            "mINP", "train + eval (min)", "img/s", "mAP delta", "beyond seed spread", "machine", "date", "commit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in results["models"]:
        wall = "-" if m.get("wall_time_s") is None else f"{m['wall_time_s'] / 60:.1f}"
        ips = "-" if m.get("train_img_per_s") is None else f"{m['train_img_per_s']:.1f}"
        machine = m.get("machine") or results.get("machine") or {}
        commit = m.get("source_commit") or results.get("source_commit") or "-"
        cells = [m["model"], m["backbone"], m["kd_mode"], str(m["seed"]), str(m["epochs"]), _pct(m.get("mAP")),
                 _pct(m.get("mAP_trapezoidal")), _pct(m.get("rank1")), _pct(m.get("rank5")), _pct(m.get("rank10")),
                 _pct(m.get("mINP")), wall, ips, *_spread_cells(results, m["model"]), machine_name(machine),
                 str(m.get("date") or results.get("date") or "-")[:10], commit[:7] + ("+dirty" if "+dirty" in commit else "")]
        lines.append("| " + " | ".join(cells) + " |")
    d = results["dataset"]
    if results.get("not_run"):
        lines.append("")
        lines.append(f"Not run yet: {', '.join(results['not_run'])}.")
    lines.append("")
    for name, ref in (results.get("seed_spread") or {}).get("references", {}).items():
        if ref.get("mAP_spread") is not None:
            lines.append(f"Seed spread of {name} ({', '.join(ref['runs'])}): mAP {ref['mAP_spread']:.1f}, rank-1 "
                         f"{ref['rank1_spread']:.1f} points (max - min); mean mAP {ref['mAP_mean']:.1f}. A delta "
                         "counts only beyond it.")
    for m in results["models"]:
        if m.get("note"):
            lines.append(f"{m['model']}: {m['note']}")
    machines = results.get("machines") or machines_of(rows_with_provenance(results))
    described = "; ".join(f"{machine_name(m)}, {m.get('cpu_count')} cores, torch {m.get('torch')}" for m in machines)
    lines.append(f"{d['num_query']} queries x {d['num_gallery']} gallery images; {described}.")
    if len(machines) > 1:
        lines.append(MACHINE_NOTE.format(n=len(machines), names="; ".join(machine_name(m) for m in machines)))
    groups = group_markdown(runs_of(results["base_config"], results["models"])) if results["models"] else ""
    return "\n".join(lines) + "\n" + ("\n" + groups if groups else "")


# ------------------------------------------------------------------------------------------------
# The README's and docs/RESULTS.md's CPU-track tables, generated from the record
# ------------------------------------------------------------------------------------------------

README = REPO / "README.md"
RESULTS_MD = REPO / "docs" / "RESULTS.md"
PARAMS_FILE = REPO / "scripts" / "market_cpu_params.yaml"
BLOCK_START = "<!-- generated by: python scripts/market_cpu_results.py --readme {record} (edit the record, not this block) -->"
BLOCK_END = "<!-- end of the generated block -->"
BLOCK = re.compile(r"<!-- generated by: python scripts/market_cpu_results\.py --readme (\S+) \(edit the record, not "
                   r"this block\) -->\n(.*?)" + re.escape(BLOCK_END), re.S)


def declared_models(params: Path = PARAMS_FILE) -> list[str]:
    """The models scripts/market_cpu_params.yaml declares (its evaluate.models), in order."""
    import yaml

    tree = yaml.safe_load(params.read_text()) or {}
    return list((tree.get("evaluate") or {}).get("models") or [])


def _describe(row: dict[str, Any], config: Any) -> str:
    """A group in words, from its configuration (what differs from the baseline)."""
    kd = config.kd
    if kd.offline:
        from reid.compare import _teacher_name

        return f"offline logit KD from `{_teacher_name(kd.teacher_checkpoint)}` seed 0 to a {config.model.backbone}"
    if kd.self_distill:
        if kd.feature_loss_coefficient == 0:
            return "stage heads with their ID loss, no feature loss"
        return f"self-distillation, feature coefficient {kd.feature_loss_coefficient:g} ({kd.feature_reduction})"
    return "no distillation"


def _dates(rows: list[dict[str, Any]]) -> str:
    dates = sorted({str(r.get("date"))[:10] for r in rows})
    return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def readme_block(record: dict[str, Any], record_path: str, declared: list[str]) -> str:
    """The README's CPU-track rows: one row per seed group (mAP per seed, mean and range; the paired gain
    over its reference), the verdicts in words, the machine note, and what has not run yet."""
    from reid.seed_spread import CONTROL_INTRO

    runs = {r.name: r for r in runs_of(record["base_config"], record["models"])}
    rows = {m["model"]: m for m in record["models"]}
    stats = record["seed_groups"]["mAP"]
    comparisons = {c["group"]: c for c in stats["comparisons"]}
    base = next(iter(runs.values())).config if runs else None
    link = f"[{Path(record_path).name}]({record_path})"
    lines = [BLOCK_START.format(record=record_path), "", "| what | result | machine, date | source |", "|---|---|---|---|"]
    for i, group in enumerate(stats["groups"]):
        members = [rows[name] for name in group["runs"]]
        config = runs[group["name"]].config
        seeds = " / ".join(str(s) for s in group["seeds"])
        what = f"`{group['name']}`: {_describe(members[0], config)}, seed{'s' if len(members) > 1 else ''} {seeds}"
        if i == 0 and base is not None:
            start = "from scratch" if base.model.pretrained == "none" else f"{base.model.pretrained} weights"
            what = (f"Market-1501 mAP, CPU track ({base.model.backbone} {start}, {base.data.height} x {base.data.width}, "
                    f"{base.train.epochs} epochs; not the ImageNet recipe): " + what)
        result = " / ".join(_pct(m["mAP"]) for m in members)
        if group["spread"] is not None:
            result += f" (mean {group['mean']:.1f}, range {group['spread']:.1f})"
        comp = comparisons.get(group["name"])
        if comp is not None and comp["gain"] is not None:
            word = "over" if comp["gain"] >= 0 else "below"
            result += f"; {abs(comp['gain']):.1f} {word} `{comp['reference']}`"
            if comp["pairs"] and len(comp["pairs"]) > 1:
                result += f" (paired per seed {comp['delta_min']:+.1f} to {comp['delta_max']:+.1f})"
        machines = " / ".join(machine_name(m) for m in machines_of(members))
        lines.append(f"| {what} | {result} | {machines}, {_dates(members)} | {link} |")
    lines.append("")
    for comp in stats["comparisons"]:
        lines.append(f"* {comp['sentence']}")
    if stats.get("controls"):
        lines.append(f"* {CONTROL_INTRO} " + " ".join(c["sentence"] for c in stats["controls"]))
    if record.get("machine_note"):
        lines.append(f"* {record['machine_note']}")
    pending = [name for name in declared if name not in rows]
    if pending:
        lines.append(f"* Not yet run under this recipe: {', '.join(f'`{n}`' for n in pending)} (declared in "
                     "`scripts/market_cpu_params.yaml`); their rows are pending. Rows of the earlier recipe: "
                     "[docs/RESULTS.md](docs/RESULTS.md#history-the-cpu-track-before-the-recipe-changes).")
    lines += ["", BLOCK_END]
    return "\n".join(lines)


def results_block(record: dict[str, Any], record_path: str) -> str:
    """docs/RESULTS.md's table of the record: :func:`markdown`, its headings one level down."""
    body = markdown(record).replace("\n## Seed groups", "\n#### Seed groups").rstrip("\n")
    return "\n".join([BLOCK_START.format(record=record_path), "", body, "", BLOCK_END])


def replace_block(text: str, block: str, where: Path) -> str:
    """``text`` with its generated block replaced by ``block``; ResultsError when it has none."""
    found = list(BLOCK.finditer(text))
    if len(found) != 1:
        raise ResultsError(f"{where} has {len(found)} generated blocks (expected one, starting "
                           f"{BLOCK_START.format(record='<record>')!r} and ending {BLOCK_END!r})")
    return text[:found[0].start()] + block + text[found[0].end():]


def write_docs(record_path: Path, readme: Path = README, results_md: Path = RESULTS_MD,
               params: Path = PARAMS_FILE) -> tuple[str, str]:
    """Regenerate the CPU-track blocks of the README and docs/RESULTS.md from ``record_path``."""
    from reid.atomic import write_text_atomic

    record = read_json(record_path, "the record")
    if "seed_groups" not in record:
        raise ResultsError(f"{record_path} is not a merged record: make one with --merge-into")
    rel = Path(os.path.relpath(Path(record_path).resolve(), readme.resolve().parent)).as_posix()
    declared = declared_models(params)
    # The documents follow the rows, not the statistics stored at the last merge: a row corrected
    # by hand must not leave a sentence that still quotes its old value. What has not run is judged
    # against what the CPU-track file declares today (the record's plan only knows the runs merged).
    statistics(record, plan=declared)
    blocks = (readme_block(record, rel, declared), results_block(record, rel))
    texts = [replace_block(path.read_text(), block, path) for path, block in zip((readme, results_md), blocks)]
    for path, text in zip((readme, results_md), texts):
        write_text_atomic(path, text)
    return blocks


def parse_note(text: str) -> tuple[str, str]:
    model, sep, note = text.partition("=")
    if not sep or not model.strip() or not note.strip():
        raise ResultsError(f"--note {text!r}: expected MODEL=TEXT, e.g. --note baseline_s1='paused 120 s'")
    return model.strip(), note.strip()


def load_results(path: Path) -> dict[str, Any]:
    """A results file of one run written earlier (this script's ``--out``), to merge its rows."""
    results = read_json(path, "a results file of one run")
    if "merges" in results:
        raise ResultsError(f"{path} is a merged record, not one run's results; merge the run folders (or their "
                           "own results files) it came from instead")
    missing = [k for k in ("models", "dataset", "base_config", "machine", "date") if k not in results]
    if missing:
        raise ResultsError(f"{path} lacks {', '.join(missing)}: is it written by scripts/market_cpu_results.py?")
    results.setdefault("plan", [*(m["model"] for m in results["models"]), *results.get("not_run", [])])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=DEFAULT_RUN, help="run folder (default: .market-cpu)")
    parser.add_argument("--date", default=None,
                        help="date of the results (default: today, UTC; with --from-record: the file's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output JSON (default: benchmarks/results/market1501_cpu_<date>.json)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not read timing/curves from the MLflow store")
    parser.add_argument("--partial", action="store_true",
                        help="a run in progress: list unfinished models under not_run instead of failing")
    parser.add_argument("--note", action="append", default=[], metavar="MODEL=TEXT",
                        help="a remark stored with one model (e.g. what else ran on the machine meanwhile)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder for market1501_cpu_curve.png and market1501_cpu_comparison.png")
    parser.add_argument("--merge-into", type=Path, default=None, metavar="RECORD",
                        help="merge the finished models into this record (created when absent) instead of --out: "
                             "new models are added, recorded ones kept, rows of another recipe refused")
    parser.add_argument("--replace", action="append", default=[], metavar="MODEL",
                        help="with --merge-into: overwrite the recorded row of MODEL with this run's")
    parser.add_argument("--from-record", type=Path, default=None, metavar="FILE",
                        help="with --merge-into: take the rows from one run's results file instead of a run folder")
    parser.add_argument("--readme", type=Path, default=None, metavar="RECORD",
                        help="regenerate the CPU-track blocks of README.md and docs/RESULTS.md from a merged record")
    args = parser.parse_args(argv)
    if args.readme is not None:
        try:
            for block in write_docs(args.readme):
                print(block)
        except ResultsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {README} and {RESULTS_MD}", file=sys.stderr)
        return 0
    if args.merge_into is None and (args.replace or args.from_record):
        parser.error("--replace and --from-record go with --merge-into")
    if args.merge_into is not None and args.out is not None:
        parser.error("--out and --merge-into exclude each other: the record is the output")
    try:
        if args.from_record is not None:
            results = load_results(args.from_record)
        else:
            results = collect(args.run, use_mlflow=not args.no_mlflow, partial=args.partial)
        notes = dict(parse_note(text) for text in args.note)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    known = {m["model"] for m in results["models"]}
    unknown = sorted(set(notes) - known)
    if unknown:
        print(f"error: --note names {', '.join(unknown)}, not a finished model ({', '.join(sorted(known))})",
              file=sys.stderr)
        return 2
    for m in results["models"]:
        if m["model"] in notes:
            m["note"] = notes[m["model"]]
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    if args.from_record is None or args.date is not None:
        results["date"] = args.date or today
    if args.from_record is None:
        results["collected_by"] = shlex.join(["python", "scripts/market_cpu_results.py", *(argv or sys.argv[1:])])
    from reid.atomic import write_text_atomic

    if args.merge_into is not None:
        try:
            record = read_json(args.merge_into, "the record") if args.merge_into.exists() else None
            record, done = merge(record, results, set(args.replace))
        except ResultsError as exc:
            print(f"error: {exc}; {args.merge_into} is unchanged", file=sys.stderr)
            return 2
        args.merge_into.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.merge_into, json.dumps(record, indent=2) + "\n")
        sys.stdout.write(markdown(record))
        for what, names in done.items():
            if names:
                print(f"{what}: {', '.join(names)}", file=sys.stderr)
        if done["kept"]:
            print("  (kept = already recorded; this run's rows of them are not merged: --replace MODEL overwrites)",
                  file=sys.stderr)
        print(f"wrote {args.merge_into}", file=sys.stderr)
        results = record
    else:
        out = args.out or RESULTS_DIR / f"market1501_cpu_{results['date']}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(results, indent=2) + "\n")
        sys.stdout.write(markdown(results))
        print(f"wrote {out}", file=sys.stderr)
    if args.figures is not None:
        for path in write_figures(results, args.figures):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
