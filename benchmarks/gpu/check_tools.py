"""The Python steps of benchmarks/gpu/check.sh, one subcommand each (the shell script sequences them).

* ``lock``: the carried wheels match ``wheels.lock`` (one wheel per pin, every requirement of a pinned
  package pinned too) and what Python imports is exactly the pinned version.
* ``plan``: how many epochs of the recipe's 120-epoch schedule fit the time left, from the measured
  training throughput; writes the run's params with the schedule compressed to those epochs (warmup
  and milestones scaled by ``epochs / 120``).
* ``compare``: one checkpoint's query/gallery features extracted once on the device, then the
  protocol run on the device and on the CPU: the metrics must agree to 1e-6 (distances are exact
  float32 whatever the training numerics; see reid/evaluation/distance.py).
* ``curve``: the training curve (per-epoch loss, accuracy, img/s; mAP at each evaluation) parsed from
  the training log, as JSON and a PNG.
* ``summary``: every phase's status and the headline numbers in one JSON.

Why a log parser for the curve: with ``tracking.enabled: false`` (the GPU machine has no MLflow) the
trainer's per-epoch numbers exist only as its one-line-per-epoch progress output; the dry run in
tests/test_gpu_check.py fails if that format changes under the parser.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPE_EPOCHS = 120
RECIPE_WARMUP = 10
RECIPE_MILESTONES = (40, 70)
MARKET_TRAIN = 12_936
TOLERANCE = 1e-6


def _write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- lock --------------------------------------------------------------------------------------------
def read_lock(path: str | Path) -> dict[str, str]:
    """``{normalised name: version}`` of a lock file of ``name==version`` lines (``#`` comments)."""
    pins: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise ValueError(f"{path}: {line!r} is not name==version")
        name, version = (p.strip() for p in line.split("==", 1))
        pins[_norm(name)] = version
    return pins


def _requirement_names(requires: Sequence[str] | None) -> list[str]:
    """Names of the unconditional requirements (``extra ==`` markers skipped; other markers kept)."""
    names = []
    for req in requires or []:
        if "extra ==" in req.replace("extra==", "extra =="):
            continue
        names.append(_norm(re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0]))
    return names


def _wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def check_lock(lock: str | Path, wheels: str | Path | None, versions_must_match: bool = True) -> dict[str, Any]:
    """Problems (empty when fine) with the lock, the wheels folder and the importable versions.

    ``versions_must_match=False`` (the CPU dry run, whose venv may hold newer releases) turns an
    installed version that differs from its pin into a note instead of a problem.
    """
    from importlib import metadata

    pins = read_lock(lock)
    problems: list[str] = []
    notes: list[str] = []
    installed: dict[str, str | None] = {}
    requires: dict[str, list[str]] = {}
    wheel_files: dict[str, str] = {}
    if wheels is not None:
        found = sorted(Path(wheels).glob("*.whl"))
        for name, version in pins.items():
            mine = [w for w in found if _norm(w.name.split("-")[0]) == name]
            if len(mine) != 1 or mine[0].name.split("-")[1] != version:
                problems.append(f"{wheels}: expected one wheel of {name}=={version}, found {[w.name for w in mine]}")
            else:
                wheel_files[name] = mine[0].name
                requires[name] = _requirement_names(_wheel_requires(mine[0]))
        extra = [w.name for w in found if _norm(w.name.split("-")[0]) not in pins]
        if extra:
            problems.append(f"{wheels}: wheels not in the lock: {extra}")
    for name, version in pins.items():
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
            problems.append(f"{name} is not importable here")
            continue
        if installed[name] != version:
            (problems if versions_must_match else notes).append(
                f"{name} {installed[name]} is installed, the lock pins {version}")
        requires.setdefault(name, _requirement_names(metadata.requires(name)))
    for name, needs in requires.items():
        for need in needs:
            if need not in pins:
                problems.append(f"{name} requires {need}, which the lock does not pin")
    return {"lock": str(lock), "pins": pins, "installed": installed, "wheels": wheel_files, "problems": problems,
            "notes": notes}


# -- plan --------------------------------------------------------------------------------------------
def compressed_schedule(epochs: int) -> dict[str, Any]:
    """The recipe's warmup and lr milestones scaled from 120 epochs to ``epochs`` (at least 1 each).

    Milestones stay strictly increasing and after the warmup; a milestone that would fall past the
    last epoch is dropped, so a 1- or 2-epoch plan is simply warmup then constant lr.
    """
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    scale = epochs / RECIPE_EPOCHS
    warmup = max(1, round(RECIPE_WARMUP * scale))
    milestones: list[int] = []
    for m in RECIPE_MILESTONES:
        value = max(round(m * scale), warmup + 1, (milestones[-1] + 1) if milestones else 0)
        if value < epochs:
            milestones.append(value)
    return {"epochs": epochs, "warmup_epochs": min(warmup, epochs), "milestones": milestones}


def throughput_from_log(log: str | Path, backbone: str) -> float | None:
    """The ``images_per_s`` bench_training.py printed for ``backbone`` (its ``[name] {json}`` line)."""
    path = Path(log)
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(f"[{backbone}] {{"):
            try:
                value = json.loads(line[len(backbone) + 3:]).get("images_per_s")
            except json.JSONDecodeError:
                continue
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return None


def plan_epochs(budget_s: float, images_per_s: float | None, *, train_images: int = MARKET_TRAIN,
                startup_s: float = 45.0, eval_s: float = 12.0, evaluations: int = 3,
                efficiency: float = 0.85) -> tuple[int, dict[str, Any]]:
    """Epochs (1..120) whose training fits ``budget_s`` at ``efficiency`` x the benchmarked throughput.

    ``startup_s`` covers imports, decoding the training set into the image store and cuDNN autotuning;
    ``eval_s`` is one evaluation of the full query x gallery protocol, done ``evaluations`` times.
    Without a throughput (its benchmark failed) one epoch is planned: the run still checks the path.
    """
    if not images_per_s:
        return 1, {"reason": "no training throughput measured: 1 epoch"}
    epoch_s = train_images / (images_per_s * efficiency)
    usable = budget_s - startup_s - evaluations * eval_s
    epochs = int(max(1, min(RECIPE_EPOCHS, math.floor(usable / epoch_s))))
    return epochs, {"estimated_epoch_s": round(epoch_s, 2), "usable_s": round(usable, 1),
                    "images_per_s": images_per_s, "efficiency": efficiency}


def write_plan(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from reid.config import apply_overrides, read_params, validate

    ips = next((v for log in args.bench_log or [] if (v := throughput_from_log(log, args.backbone))), None)
    if args.epochs:
        epochs, why = args.epochs, {"reason": "--epochs given"}
    else:
        epochs, why = plan_epochs(args.budget_s, ips)
    schedule = compressed_schedule(epochs)
    evaluate_every = max(1, math.ceil(epochs / 3))
    overrides = list(args.override or []) + [
        f"train.epochs={epochs}", f"train.eval_every={evaluate_every}",
        f"optim.warmup_epochs={schedule['warmup_epochs']}", f"optim.milestones={schedule['milestones']}",
    ]
    tree = apply_overrides(read_params(Path(args.base)), overrides)
    validate(tree, f"{args.base} with the plan's overrides")  # fail here, not inside `reid train`
    Path(args.params_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.params_out).write_text(yaml.safe_dump(tree, sort_keys=False))
    plan = {"budget_s": args.budget_s, "backbone": args.backbone, "schedule": schedule,
            "eval_every": evaluate_every, "overrides": overrides, **why}
    _write_json(args.output, plan)
    print(json.dumps(plan))
    return plan


# -- compare -----------------------------------------------------------------------------------------
def _numeric_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    diffs: dict[str, float] = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, list) and isinstance(other, list) and len(value) == len(other):
                diffs[key] = max((abs(float(x) - float(y)) for x, y in zip(value, other)), default=0.0)
            continue
        diffs[key] = abs(float(value) - float(other)) if isinstance(other, (int, float)) else math.inf
    return diffs


def compare_devices(args: argparse.Namespace) -> dict[str, Any]:
    """Features once on ``--device``; the protocol on that device and on the CPU; equal to 1e-6."""
    import torch

    from reid.data.loaders import build_test_loader
    from reid.data.manifest import load_manifest
    from reid.engine.device import configure_backends, resolve_device
    from reid.evaluation.distance import pairwise_distance
    from reid.evaluation.features import extract_features
    from reid.evaluation.runner import evaluate_sample_features
    from reid.models.inference import load_inference_model

    device = resolve_device(args.device)
    configure_backends(device, deterministic=False)  # TF32 on, as during training: the evaluation must not use it
    model, config = load_inference_model(args.checkpoint, device)
    manifest = load_manifest(args.manifest or config.data.manifest)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "device": str(device),
                              "query": len(manifest.query), "gallery": len(manifest.gallery),
                              "float32_matmul_precision_during_run": torch.get_float32_matmul_precision()}
    started = time.perf_counter()
    qf = extract_features(model, build_test_loader(manifest.query, config, device), device, config.eval.flip)
    gf = extract_features(model, build_test_loader(manifest.gallery, config, device), device, config.eval.flip)
    report["features_s"] = round(time.perf_counter() - started, 2)
    report["feature_dtype"] = str(qf.dtype)
    results = {}
    for name, (q, g) in {"device": (qf, gf), "cpu": (qf.cpu(), gf.cpu())}.items():
        t0 = time.perf_counter()
        result = evaluate_sample_features(q, g, manifest.query, manifest.gallery, config.eval)
        results[name] = result.to_dict(include_cmc=True)
        report[f"metrics_{name}_s"] = round(time.perf_counter() - t0, 2)
    report["metrics_device"], report["metrics_cpu"] = results["device"], results["cpu"]
    diffs = _numeric_differences(results["device"], results["cpu"])
    report["max_abs_difference"] = diffs
    report["equal_to_1e-6"] = all(v <= TOLERANCE for v in diffs.values())
    # How far apart the distances themselves are, exact fp32 on both sides, and what TF32 would do.
    rows = slice(0, min(256, qf.shape[0]))
    exact = pairwise_distance(qf[rows], gf, config.eval.distance, config.eval.normalize)
    report["distance_dtype"] = str(exact.dtype)
    report["max_abs_distance_difference_device_vs_cpu"] = float(
        (exact.cpu() - pairwise_distance(qf[rows].cpu(), gf.cpu(), config.eval.distance, config.eval.normalize)).abs().max())
    if device.type == "cuda":
        q = torch.nn.functional.normalize(qf[rows], dim=1)
        g = torch.nn.functional.normalize(gf, dim=1)
        torch.set_float32_matmul_precision("high")
        tf32 = 1 - q @ g.T
        report["max_abs_distance_difference_tf32_vs_exact"] = float((tf32 - exact).abs().max())
    # Conv numerics: a few query images embedded on the CPU as well (informative only).
    few = manifest.query[: min(args.cpu_images, len(manifest.query))]
    if device.type != "cpu" and few:
        cpu_model, _ = load_inference_model(args.checkpoint, "cpu")
        cf = extract_features(cpu_model, build_test_loader(few, config, "cpu"), "cpu", config.eval.flip)
        cos = torch.nn.functional.cosine_similarity(cf, qf[: len(few)].cpu(), dim=1)
        report["cpu_feature_min_cosine"] = float(cos.min())
        report["cpu_feature_images"] = len(few)
    _write_json(args.output, report)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("metrics_")}, default=str))
    print("device metrics:", json.dumps({k: results["device"][k] for k in ("mAP", "rank1", "mINP")}))
    print("cpu metrics:   ", json.dumps({k: results["cpu"][k] for k in ("mAP", "rank1", "mINP")}))
    return report


# -- curve -------------------------------------------------------------------------------------------
_EPOCH = re.compile(r"^epoch (\d+)/(\d+) \[[#.]*\] (\d+)/(\d+)\s+(.*)$")
_EVAL = re.compile(r"epoch (\d+): mAP ([0-9.]+)\s+rank1 ([0-9.]+)\s+mINP ([0-9.]+)")


def parse_training_log(text: str) -> dict[str, list[dict[str, float]]]:
    """Per-epoch training rows and per-evaluation rows from ``reid train``'s output."""
    epochs: dict[int, dict[str, float]] = {}
    evals: list[dict[str, float]] = []
    for line in text.replace("\r", "\n").splitlines():
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip()
        m = _EPOCH.match(line)
        if m and m.group(3) == m.group(4):  # the closing line of an epoch
            row: dict[str, float] = {"epoch": int(m.group(1)), "steps": int(m.group(4))}
            for key, pattern in (("loss", r"\bloss (\S+)"), ("acc", r"\bacc (\S+)"), ("lr", r"\blr (\S+)"),
                                 ("img_per_s", r"(\d+) img/s")):
                found = re.search(pattern, m.group(5))
                if found:
                    row[key] = float(found.group(1))
            epochs[row["epoch"]] = row  # a replayed (resumed) epoch keeps its last line
            continue
        e = _EVAL.search(line)
        if e:
            evals.append({"epoch": int(e.group(1)), "mAP": float(e.group(2)), "rank1": float(e.group(3)),
                          "mINP": float(e.group(4))})
    return {"train": [epochs[k] for k in sorted(epochs)], "eval": evals}


def write_curve(args: argparse.Namespace) -> dict[str, Any]:
    curve = parse_training_log(Path(args.log).read_text(errors="replace"))
    _write_json(args.output, curve)
    if args.png and curve["train"]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["epoch"] for r in curve["train"]], [r.get("loss", math.nan) for r in curve["train"]],
                label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if curve["eval"]:
            ax2 = ax.twinx()
            ax2.plot([r["epoch"] for r in curve["eval"]], [r["mAP"] for r in curve["eval"]], "o-", color="C1",
                     label="mAP")
            ax2.set_ylabel("mAP")
            ax2.set_ylim(0, 1)
        ax.set_title("reid train on the packed Market-1501 (compressed schedule)")
        fig.tight_layout()
        fig.savefig(args.png)
        plt.close(fig)
    print(f"curve: {len(curve['train'])} epoch(s), {len(curve['eval'])} evaluation(s)")
    return curve


# -- summary -----------------------------------------------------------------------------------------
def bench_rows(log: Path) -> list[dict[str, Any]]:
    rows = []
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"^\[([\w.-]+)\] (\{.*\})$", line)
            if m:
                try:
                    rows.append(json.loads(m.group(2)))
                except json.JSONDecodeError:
                    pass
    return rows


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    work, out = Path(args.work), Path(args.out)
    phases = []
    for line in (work / "phases.tsv").read_text().splitlines() if (work / "phases.tsv").is_file() else []:
        name, rc, seconds, limit = line.split("\t")
        status = "passed" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed (exit {rc})")
        phases.append({"phase": name, "status": status, "exit": int(rc), "seconds": int(seconds),
                       "timeout_s": int(limit)})
    bench = {mode: bench_rows(work / "logs" / f"bench_{mode}.log") for mode in ("eager", "compile", "augment")}
    _write_json(out / "bench.json", bench)
    metrics = _load(work / "run" / "metrics.json")
    compare = _load(out / "eval_compare.json")
    plan = _load(work / "plan.json")
    summary = {
        "dry_run": bool(args.dry_run),
        "wall_s": int(args.wall_s),
        "phases": phases,
        "passed": [p["phase"] for p in phases if p["exit"] == 0],
        "failed": [p["phase"] for p in phases if p["exit"] != 0],
        "environment": _load(work / "env.json"),
        "bench_images_per_s": {mode: {r["backbone"]: r.get("images_per_s") for r in rows} for mode, rows in bench.items()},
        "bench_peak_memory_gb": {mode: {r["backbone"]: r.get("peak_memory_gb") for r in rows}
                                 for mode, rows in bench.items()},
        "plan": plan,
        "train_metrics": metrics,
        "epoch_times_s": [round(r["steps"] * args.batch / r["img_per_s"], 2)
                          for r in (_load(out / "curve.json") or {}).get("train", []) if r.get("img_per_s")],
        "eval_compare": None if compare is None else {
            k: compare.get(k) for k in ("equal_to_1e-6", "max_abs_difference", "query", "gallery",
                                        "max_abs_distance_difference_device_vs_cpu",
                                        "max_abs_distance_difference_tf32_vs_exact", "cpu_feature_min_cosine")},
    }
    _write_json(out / "summary.json", summary)
    width = max((len(p["phase"]) for p in phases), default=5)
    print("phase".ljust(width), " status          seconds")
    for p in phases:
        print(p["phase"].ljust(width), "", p["status"].ljust(15), str(p["seconds"]).rjust(7))
    print(f"{len(summary['passed'])}/{len(phases)} phases passed; wall {args.wall_s} s; results in {out}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("lock")
    p.add_argument("--lock", default=str(Path(__file__).with_name("wheels.lock")))
    p.add_argument("--wheels", default=None)
    p.add_argument("--any-installed-version", action="store_true", help="installed != pinned is a note only")
    p.add_argument("--output", default=None)
    p = sub.add_parser("plan")
    p.add_argument("--base", required=True)
    p.add_argument("--params-out", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--bench-log", action="append", help="bench_training.py logs, first with a number wins")
    p.add_argument("--backbone", default="resnet50_ibn_a")
    p.add_argument("--epochs", type=int, default=None, help="fixed epoch count instead of the budget")
    p.add_argument("-o", "--override", action="append")
    p = sub.add_parser("compare")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-images", type=int, default=64)
    p.add_argument("--output", required=True)
    p = sub.add_parser("curve")
    p.add_argument("--log", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--png", default=None)
    p = sub.add_parser("summary")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--wall-s", type=int, required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "lock":
        report = check_lock(args.lock, args.wheels, versions_must_match=not args.any_installed_version)
        if args.output:
            _write_json(args.output, report)
        print(json.dumps(report))
        return 1 if report["problems"] else 0
    if args.cmd == "plan":
        write_plan(args)
        return 0
    if args.cmd == "compare":
        return 0 if compare_devices(args)["equal_to_1e-6"] else 1
    if args.cmd == "curve":
        return 0 if write_curve(args)["train"] else 1
    summarize(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
