"""Collect a finished CPU-track Market-1501 run (scripts/market_cpu.sh) into one results JSON and a table.

    .venv/bin/python scripts/market_cpu_results.py                 # reads .market-cpu/
    .venv/bin/python scripts/market_cpu_results.py path/to/run --date 2026-12-03 --out x.json

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
machine that trained. Metrics in the JSON are fractions in [0, 1] as in metrics.json; the table shows
percent. Exit code 2 with a message when the run folder lacks a model's metrics.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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
        variant = f" --variant {model.variant}" if model.variant else ""
        row["command"] = (f"reid train --params params.yaml{variant} && reid evaluate "
                          f"{cfg.train.output_dir}/{LAST_CHECKPOINT} --params params.yaml --output "
                          f"{plan.metrics_path(model).parent}")
        models.append(row)
    spread = seed_spread_rows(plan, models)
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
        "base_config": plan.models[0].config.model_dump(mode="json"),
        "models": models,
        "seed_spread": spread,
        "not_run": not_run,
    }


def seed_spread_rows(plan: Any, models: list[dict[str, Any]]) -> dict[str, Any]:
    """Every model's mAP / rank-1 delta to its reference's seed mean and whether it exceeds the spread.

    The rule is ``reid compare``'s (:mod:`reid.seed_spread`): replicates are models that differ only in
    ``train.seed``; a delta counts only when ``|delta| > max - min`` over the reference's replicates.
    Values in percentage points, as in the table.
    """
    from reid.seed_spread import Run, differences

    configs = {m.name: m.config for m in plan.models}
    runs = [Run(row["model"], configs[row["model"]],
                {k: None if row.get(k) is None else 100 * float(row[k]) for k in ("mAP", "rank1")})
            for row in models]
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
    """One row per model: accuracy in percent, both AP variants, the budget and the speed."""
    head = ["model", "backbone", "kd", "seed", "epochs", "mAP", "mAP (trapezoidal)", "rank-1", "rank-5", "rank-10",
            "mINP", "train + eval (min)", "img/s", "mAP delta", "beyond seed spread"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in results["models"]:
        wall = "-" if m.get("wall_time_s") is None else f"{m['wall_time_s'] / 60:.1f}"
        ips = "-" if m.get("train_img_per_s") is None else f"{m['train_img_per_s']:.1f}"
        cells = [m["model"], m["backbone"], m["kd_mode"], str(m["seed"]), str(m["epochs"]), _pct(m.get("mAP")),
                 _pct(m.get("mAP_trapezoidal")), _pct(m.get("rank1")), _pct(m.get("rank5")), _pct(m.get("rank10")),
                 _pct(m.get("mINP")), wall, ips, *_spread_cells(results, m["model"])]
        lines.append("| " + " | ".join(cells) + " |")
    d = results["dataset"]
    machine = results["machine"]
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
    lines.append(f"{d['num_query']} queries x {d['num_gallery']} gallery images; {machine['cpu']}, "
                 f"{machine['cpu_count']} cores, torch {machine['torch']}.")
    return "\n".join(lines) + "\n"


def parse_note(text: str) -> tuple[str, str]:
    model, sep, note = text.partition("=")
    if not sep or not model.strip() or not note.strip():
        raise ResultsError(f"--note {text!r}: expected MODEL=TEXT, e.g. --note baseline_s1='paused 120 s'")
    return model.strip(), note.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=DEFAULT_RUN, help="run folder (default: .market-cpu)")
    parser.add_argument("--date", default=dt.datetime.now(dt.timezone.utc).date().isoformat(),
                        help="date in the file name (default: today, UTC)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output JSON (default: benchmarks/results/market1501_cpu_<date>.json)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not read timing/curves from the MLflow store")
    parser.add_argument("--partial", action="store_true",
                        help="a run in progress: list unfinished models under not_run instead of failing")
    parser.add_argument("--note", action="append", default=[], metavar="MODEL=TEXT",
                        help="a remark stored with one model (e.g. what else ran on the machine meanwhile)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder for market1501_cpu_curve.png and market1501_cpu_comparison.png")
    args = parser.parse_args(argv)
    try:
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
    results["date"] = args.date
    results["collected_by"] = shlex.join(["python", "scripts/market_cpu_results.py", *(argv or sys.argv[1:])])
    out = args.out or RESULTS_DIR / f"market1501_cpu_{args.date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from reid.atomic import write_text_atomic

    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    sys.stdout.write(markdown(results))
    print(f"wrote {out}", file=sys.stderr)
    if args.figures is not None:
        for path in write_figures(results, args.figures):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
