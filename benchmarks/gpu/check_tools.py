"""The Python steps of benchmarks/gpu/check.sh, one subcommand each (the shell script sequences them).

* ``lock``: the carried wheels match ``wheels.lock`` (one wheel per pin, every requirement of a pinned
  package pinned too) and what Python imports is exactly the pinned version.
* ``plan``: how many epochs (and, when a full epoch does not fit twice, how many steps per epoch) of
  the recipe's schedule (``train.epochs``, ``optim.warmup_epochs``, ``optim.milestones`` of the base
  params, i.e. the config's recipe defaults: 120 / 10 / (40, 70)) fit the time left, from the measured
  training throughput; writes the run's params with the schedule compressed to those epochs (warmup
  and milestones scaled by ``epochs / train.epochs``).
* ``compare``: one checkpoint's query/gallery features extracted once on the device and one distance
  matrix computed from them; the protocol scores that same matrix on the device and on the CPU, and
  the metrics must agree to 1e-6, so only a bug in the evaluation can fail it. How far distances
  computed on the CPU (another summation order) lie from the device's, and what that changes in the
  metrics, is reported separately and decides nothing.
* ``imports``: (dry run) every third-party distribution the check's processes imported is on the GPU
  machine's image (``image_packages.txt``) or carried as a wheel (``wheels.lock``).
* ``curve``: the training curve (per-epoch loss, accuracy, img/s; mAP at each evaluation) read from
  the run's ``metrics.jsonl`` (which ``reid train`` writes whether or not MLflow is on), as JSON and a PNG.
* ``summary``: every phase's status and the headline numbers in one JSON.
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


def check_lock(lock: str | Path, wheels: str | Path | None, versions_must_match: bool = True,
               check_installed: bool = True) -> dict[str, Any]:
    """Problems (empty when fine) with the lock, the wheels folder and the importable versions.

    ``versions_must_match=False`` (the CPU dry run, whose venv may hold newer releases) turns an
    installed version that differs from its pin into a note instead of a problem;
    ``check_installed=False`` (the preparation, before anything is installed) checks the wheels alone.
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
    for name, version in pins.items() if check_installed else ():
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
def compressed_schedule(epochs: int, recipe: Any) -> dict[str, Any]:
    """The warmup and lr milestones of ``recipe`` (a :class:`reid.config.Config`) scaled from its
    ``train.epochs`` to ``epochs`` (at least 1 each).

    Milestones stay strictly increasing and after the warmup; a milestone that would fall past the
    last epoch is dropped, so a 1- or 2-epoch plan is simply warmup then constant lr.
    """
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    scale = epochs / recipe.train.epochs
    warmup = max(1, round(recipe.optim.warmup_epochs * scale))
    milestones: list[int] = []
    for m in recipe.optim.milestones:
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


def plan_training(budget_s: float, images_per_s: float | None, *, epoch_steps: int, batch: int, recipe_epochs: int,
                  startup_s: float = 40.0, eval_s: float = 25.0, efficiency: float = 0.85, min_epochs: int = 2,
                  min_steps: int = 4, fallback_images_per_s: float = 200.0) -> dict[str, Any]:
    """Epochs and steps per epoch whose training fits ``budget_s`` (the train phase's time limit).

    ``startup_s`` covers imports, decoding the training set into the image store and cuDNN autotuning;
    ``eval_s`` the one evaluation of the full query x gallery protocol after the last epoch (plus the
    checkpoint writes). The steps that fit at ``efficiency`` x the benchmarked throughput are split
    into at least ``min_epochs`` epochs: full epochs when ``min_epochs`` of them fit, else epochs capped
    at ``max_steps_per_epoch``. So the first epoch, and its ``last.pt``, is done by half the time
    even if training runs at half the benchmarked speed. Without a throughput (its benchmark failed)
    ``fallback_images_per_s``, far below any current GPU, sizes the epochs.
    """
    measured = bool(images_per_s)
    ips = float(images_per_s) if measured else fallback_images_per_s
    usable = budget_s - startup_s - eval_s
    fit = max(0, math.floor(usable * ips * efficiency / batch))
    if fit >= min_epochs * epoch_steps:
        epochs, max_steps = min(recipe_epochs, fit // epoch_steps), None
    else:
        epochs, max_steps = min_epochs, max(min_steps, fit // min_epochs)
    steps = epoch_steps if max_steps is None else min(max_steps, epoch_steps)
    return {"epochs": epochs, "max_steps_per_epoch": max_steps, "steps_per_epoch": steps,
            "full_epoch_steps": epoch_steps, "estimated_epoch_s": round(steps * batch / (ips * efficiency), 1),
            "usable_s": round(usable, 1), "images_per_s": ips, "throughput_measured": measured,
            "efficiency": efficiency, "startup_s": startup_s, "eval_s": eval_s}


def epoch_steps_of(manifest_path: str | Path, p: int, k: int, seed: int) -> int:
    """Steps of one full epoch: the length of the trainer's own P x K sampler over the manifest."""
    from reid.data.manifest import load_manifest
    from reid.data.sampler import PKSampler

    manifest = load_manifest(manifest_path)
    return len(PKSampler([int(x) for x in manifest.train_labels], p, k, seed))


def write_plan(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from reid.config import apply_overrides, read_params, validate

    base = apply_overrides(read_params(Path(args.base)), list(args.override or []))
    config = validate(base, f"{args.base} with the check's overrides")
    data = config.data
    epoch_steps = epoch_steps_of(data.manifest, data.ids_per_batch, data.instances_per_id, config.train.seed)
    ips = next((v for log in args.bench_log or [] if (v := throughput_from_log(log, args.backbone))), None)
    plan = plan_training(args.budget_s, ips, epoch_steps=epoch_steps, batch=data.batch_size,
                         recipe_epochs=config.train.epochs)
    if args.epochs:
        plan.update(epochs=args.epochs, reason="--epochs given")
    if args.max_steps:
        plan.update(max_steps_per_epoch=args.max_steps, steps_per_epoch=min(args.max_steps, epoch_steps),
                    reason="--max-steps given")
    epochs = plan["epochs"]
    schedule = compressed_schedule(epochs, config)
    # One evaluation, after the last epoch: the compare phase scores last.pt again, in detail.
    overrides = list(args.override or []) + [
        f"train.epochs={epochs}", f"train.eval_every={epochs}",
        f"optim.warmup_epochs={schedule['warmup_epochs']}", f"optim.milestones={schedule['milestones']}",
    ]
    if plan["max_steps_per_epoch"] is not None:
        overrides.append(f"train.max_steps_per_epoch={plan['max_steps_per_epoch']}")
    tree = apply_overrides(read_params(Path(args.base)), overrides)
    validate(tree, f"{args.base} with the plan's overrides")  # fail here, not inside `reid train`
    Path(args.params_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.params_out).write_text(yaml.safe_dump(tree, sort_keys=False))
    plan = {"budget_s": args.budget_s, "backbone": args.backbone, "schedule": schedule, "eval_every": epochs,
            "overrides": overrides, **plan}
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


def _max_abs(a: Any, b: Any) -> float:
    """Largest |a - b| over two float arrays (NaN where both are NaN, e.g. skipped queries, counts as equal)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return math.inf
    both = ~np.isnan(a)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def score_both_devices(dist: Any, query: Sequence[Any], gallery: Sequence[Any], eval_cfg: Any,
                       cross_camera: bool) -> dict[str, Any]:
    """The protocol on one distance matrix, once where it lies and once on a CPU copy of it.

    The inputs are identical, so every metric must agree to :data:`TOLERANCE` (per-query AP too): the
    ranking is exact integer work and the sums are float64; only a bug in the evaluation on one of
    the two devices can make them differ.
    """
    from reid.evaluation.metrics import evaluate_distances

    q_pids, q_cams = [s.pid for s in query], [s.camid for s in query]
    g_pids, g_cams = [s.pid for s in gallery], [s.camid for s in gallery]
    kwargs = dict(max_rank=eval_cfg.max_rank, ap_variant=eval_cfg.ap_variant, cross_camera=cross_camera,
                  chunk_size=eval_cfg.chunk_size, ranks=eval_cfg.ranks)
    results, seconds = {}, {}
    for name, matrix in (("device", dist), ("cpu", dist.cpu())):
        t0 = time.perf_counter()
        results[name] = evaluate_distances(matrix, q_pids, g_pids, q_cams, g_cams, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 3)
    dicts = {name: r.to_dict(include_cmc=True) for name, r in results.items()}
    diffs = _numeric_differences(dicts["device"], dicts["cpu"])
    diffs["ap_per_query"] = _max_abs(results["device"].ap_per_query, results["cpu"].ap_per_query)
    return {"metrics_device": dicts["device"], "metrics_cpu": dicts["cpu"], "seconds": seconds,
            "max_abs_difference": diffs, "equal": all(v <= TOLERANCE for v in diffs.values()),
            "results": results}


def compare_devices(args: argparse.Namespace) -> dict[str, Any]:
    """Features and one distance matrix on ``--device``; that matrix scored there and on the CPU."""
    import torch

    from reid.data.loaders import build_test_loader
    from reid.data.manifest import load_manifest
    from reid.engine.device import configure_backends, resolve_device
    from reid.evaluation.features import extract_features
    from reid.evaluation.metrics import evaluate_distances, make_distance_producer
    from reid.models.inference import load_inference_model

    device = resolve_device(args.device)
    configure_backends(device, deterministic=False)  # TF32 on, as during training: the evaluation must not use it
    model, config = load_inference_model(args.checkpoint, device)
    manifest = load_manifest(args.manifest or config.data.manifest)
    eval_cfg = config.eval
    cross_camera = bool(eval_cfg.cross_camera) and bool(getattr(manifest, "has_cameras", True))
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "device": str(device),
                              "query": len(manifest.query), "gallery": len(manifest.gallery),
                              "distance": eval_cfg.distance, "rerank": bool(eval_cfg.rerank),
                              "float32_matmul_precision_during_run": torch.get_float32_matmul_precision()}
    started = time.perf_counter()
    qf = extract_features(model, build_test_loader(manifest.query, config, device), device, eval_cfg.flip)
    gf = extract_features(model, build_test_loader(manifest.gallery, config, device), device, eval_cfg.flip)
    report["features_s"] = round(time.perf_counter() - started, 2)
    report["feature_dtype"] = str(qf.dtype)
    t0 = time.perf_counter()
    dist = make_distance_producer(qf, gf, eval_cfg)(0, len(manifest.query))  # exact float32, computed once
    report["distances_s"] = round(time.perf_counter() - t0, 3)
    report["distance_dtype"] = str(dist.dtype)
    scored = score_both_devices(dist, manifest.query, manifest.gallery, eval_cfg, cross_camera)
    report.update({k: v for k, v in scored.items() if k != "results"})
    report["metrics_seconds"] = report.pop("seconds")
    report["equal_to_1e-6"] = report.pop("equal")
    if device.type != "cpu":
        # Informative only: distances computed by the CPU's BLAS from the same features sum in another
        # order (~1e-7), and a near-tie at a first match can flip a rank-1 (1 / 3,368 = 3e-4).
        t0 = time.perf_counter()
        dist_cpu = make_distance_producer(qf.cpu(), gf.cpu(), eval_cfg)(0, len(manifest.query))
        report["cpu_distances_s"] = round(time.perf_counter() - t0, 2)
        gap = (dist.cpu() - dist_cpu).abs()
        report["distance_difference_device_vs_cpu"] = {"max_abs": float(gap.max()), "mean_abs": float(gap.mean())}
        del gap
        cpu_scored = evaluate_distances(
            dist_cpu, [s.pid for s in manifest.query], [s.pid for s in manifest.gallery],
            [s.camid for s in manifest.query], [s.camid for s in manifest.gallery], max_rank=eval_cfg.max_rank,
            ap_variant=eval_cfg.ap_variant, cross_camera=cross_camera, chunk_size=eval_cfg.chunk_size,
            ranks=eval_cfg.ranks)
        report["metric_difference_with_cpu_distances"] = _numeric_differences(
            report["metrics_device"], cpu_scored.to_dict(include_cmc=True))
        if device.type == "cuda" and eval_cfg.distance == "cosine" and not eval_cfg.rerank:
            from reid.evaluation.distance import prepare_features

            rows = slice(0, min(256, qf.shape[0]))  # what TF32 (training's setting) would have changed
            q, g = (prepare_features(f, "cosine", True) for f in (qf[rows], gf))
            previous = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("high")
            try:
                tf32 = 1 - q @ g.T
            finally:
                torch.set_float32_matmul_precision(previous)
            report["max_abs_distance_difference_tf32_vs_exact"] = float((tf32 - dist[rows]).abs().max())
        # Convolution numerics: a few query images embedded on the CPU as well.
        few = manifest.query[: min(args.cpu_images, len(manifest.query))]
        if few:
            cpu_model, _ = load_inference_model(args.checkpoint, "cpu")
            cf = extract_features(cpu_model, build_test_loader(few, config, "cpu"), "cpu", eval_cfg.flip)
            cos = torch.nn.functional.cosine_similarity(cf.float(), qf[: len(few)].cpu().float(), dim=1)
            report["cpu_feature_min_cosine"] = float(cos.min())
            report["cpu_feature_images"] = len(few)
    _write_json(args.output, report)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("metrics_")}, default=str))
    for name in ("device", "cpu"):
        print(f"{name} metrics:".ljust(16), json.dumps({k: report[f"metrics_{name}"][k] for k in ("mAP", "rank1", "mINP")}))
    return report


# -- curve -------------------------------------------------------------------------------------------
def read_curve(metrics_log: str | Path) -> dict[str, list[dict[str, float]]]:
    """Per-epoch training rows and per-evaluation rows from a run's ``metrics.jsonl``.

    ``train/*`` lines are logged at the epoch number, ``train_step/*`` at the global step (always at
    an epoch's last step, so the steps of an epoch are the difference of those), ``eval_epoch/*`` at
    the epoch of the evaluation. A replayed (resumed) epoch keeps its last line.
    """
    from reid.engine.metrics_log import read_metrics_log

    epochs: dict[int, dict[str, float]] = {}
    evals: dict[int, dict[str, float]] = {}
    last_step, epoch_start = 0, 0
    for row in read_metrics_log(metrics_log):
        if "train_step/loss" in row:
            last_step = int(row["step"])
        elif "train/loss" in row:
            epoch = int(row["step"])
            epochs[epoch] = {"epoch": epoch, "steps": last_step - epoch_start, "loss": row["train/loss"],
                             **({"acc": row["train/acc"]} if row.get("train/acc") is not None else {}),
                             "lr": row["train/lr"], "img_per_s": row["train/img_per_s"]}
            epoch_start = last_step
        elif "eval_epoch/mAP" in row:
            evals[int(row["step"])] = {"epoch": int(row["step"]), "mAP": row["eval_epoch/mAP"],
                                       "rank1": row["eval_epoch/rank1"], "mINP": row["eval_epoch/mINP"]}
    return {"train": [epochs[k] for k in sorted(epochs)], "eval": [evals[k] for k in sorted(evals)]}


def write_curve(args: argparse.Namespace) -> dict[str, Any]:
    curve = read_curve(args.metrics)
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


# -- imports ---------------------------------------------------------------------------------------
def read_names(path: str | Path) -> set[str]:
    """Normalised distribution names of a one-name-a-line file (``#`` comments)."""
    return {_norm(line.split("#", 1)[0].strip()) for line in Path(path).read_text().splitlines()
            if line.split("#", 1)[0].strip()}


# Imported when present, inside ``try: ... except ImportError`` of the importing package (checked in
# its source): their absence on the GPU image changes nothing the check uses.
OPTIONAL_IMPORTS = {
    "defusedxml": "Pillow (PIL/Image.py, XMP metadata only)",
    "pydot": "torch.fx.passes.graph_drawer (graph drawing only)",
    "pysocks": "pip's vendored urllib3, as ``socks`` (SOCKS proxies only)",
    "wcwidth": "tabulate (wide-character widths only)",
}


def check_imports(log: str | Path, image_packages: str | Path, lock: str | Path,
                  own: Sequence[str] = ("reid-toolkit",)) -> dict[str, Any]:
    """Distributions the logged processes imported that neither the GPU image nor the wheels provide.

    ``log`` holds one top-level module name a line (``without_tracking/sitecustomize.py`` writes it
    at each process's exit when ``REID_IMPORTS_LOG`` is set); standard-library and local modules map
    to no distribution and are skipped, as is this project itself (``own``) and what
    :data:`OPTIONAL_IMPORTS` lists.
    """
    from importlib import metadata

    modules = sorted({line.split("\t", 1)[0].strip() for line in Path(log).read_text().splitlines() if line.strip()})
    table = metadata.packages_distributions()
    used: dict[str, list[str]] = {}
    for module in modules:
        for dist in table.get(module, []):
            used.setdefault(_norm(dist), []).append(module)
    available = read_names(image_packages) | set(read_lock(lock)) | {_norm(o) for o in (*own, *OPTIONAL_IMPORTS)}
    missing = {dist: mods for dist, mods in sorted(used.items()) if dist not in available}
    problems = [f"{dist} (imported as {', '.join(mods)}) is neither on the GPU image ({image_packages}) nor in "
                f"{lock}: pin it there" for dist, mods in missing.items()]
    return {"modules": len(modules), "distributions": sorted(used), "problems": problems}


# -- summary -----------------------------------------------------------------------------------------
BENCH_LOGS = ("eager", "nchw", "compile", "pipeline")


def bench_rows(log: Path) -> list[dict[str, Any]]:
    """The per-backbone JSON rows bench_training.py printed (``[backbone] {json}``) in a phase log."""
    rows = []
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"^\[([\w.-]+)\] (\{.*\})$", line)
            if m:
                try:
                    row = json.loads(m.group(2))
                except json.JSONDecodeError:
                    continue
                if "backbone" in row:
                    rows.append(row)
    return rows


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _batch_of(params: Path) -> int | None:
    """Images per step of the run's params (P x K), None when they cannot be read."""
    try:
        import yaml

        data = yaml.safe_load(params.read_text())["data"]
        return int(data["ids_per_batch"]) * int(data["instances_per_id"])
    except (OSError, KeyError, TypeError, ValueError, ImportError):
        return None


def _row_key(row: dict[str, Any]) -> str:
    return f"{row['backbone']} {row.get('precision', row.get('amp'))}" + ("" if row.get("channels_last", True) else " nchw")


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    work, out = Path(args.work), Path(args.out)
    phases = []
    for line in (work / "phases.tsv").read_text().splitlines() if (work / "phases.tsv").is_file() else []:
        name, rc, seconds, limit = line.split("\t")
        if rc == "skip":
            phases.append({"phase": name, "status": "skipped", "exit": None, "seconds": 0, "timeout_s": 0})
            continue
        status = "passed" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed (exit {rc})")
        phases.append({"phase": name, "status": status, "exit": int(rc), "seconds": int(seconds),
                       "timeout_s": int(limit)})
    bench = {mode: bench_rows(work / "logs" / f"bench_{mode}.log") for mode in BENCH_LOGS}
    pipeline = _load(next(iter(sorted((work / "input_pipeline").glob("*.json"))), work / "missing.json"))
    tensor_case = (pipeline or {}).get("cases", {}).get("tensor") if pipeline else None
    _write_json(out / "bench.json", {**bench, "input_pipeline": pipeline})
    metrics = _load(work / "run" / "metrics.json")
    compare = _load(out / "eval_compare.json")
    batch = _batch_of(work / "params.yaml") or args.batch
    plan = _load(work / "plan.json")
    summary = {
        "dry_run": bool(args.dry_run),
        "wall_s": int(args.wall_s),
        "budget_s": args.budget_s,
        "phases": phases,
        "passed": [p["phase"] for p in phases if p["exit"] == 0],
        "failed": [p["phase"] for p in phases if p["exit"] not in (0, None)],
        "skipped": [p["phase"] for p in phases if p["exit"] is None],
        "environment": _load(work / "env.json"),
        "bench_images_per_s": {mode: {_row_key(r): r.get("images_per_s") for r in rows if "error" not in r}
                               for mode, rows in bench.items()},
        "bench_peak_memory_gb": {mode: {_row_key(r): r.get("peak_memory_gb") for r in rows if "error" not in r}
                                 for mode, rows in bench.items()},
        "input_pipeline_images_per_s": None if not tensor_case else tensor_case.get("images_per_s"),
        "plan": plan,
        "train_metrics": metrics,
        "epoch_times_s": [round(r["steps"] * batch / r["img_per_s"], 2)
                          for r in (_load(out / "curve.json") or {}).get("train", []) if r.get("img_per_s")],
        "eval_compare": None if compare is None else {
            **{k: compare.get(k) for k in ("equal_to_1e-6", "max_abs_difference", "query", "gallery",
                                           "distance_difference_device_vs_cpu", "metric_difference_with_cpu_distances",
                                           "max_abs_distance_difference_tf32_vs_exact", "cpu_feature_min_cosine",
                                           "features_s")},
            "metrics": {k: (compare.get("metrics_device") or {}).get(k) for k in ("mAP", "rank1", "rank5", "mINP")},
        },
    }
    _write_json(out / "summary.json", summary)
    width = max((len(p["phase"]) for p in phases), default=5)
    print("phase".ljust(width), " status          seconds  limit")
    for p in phases:
        print(p["phase"].ljust(width), "", p["status"].ljust(15), str(p["seconds"]).rjust(7), str(p["timeout_s"]).rjust(6))
    print(f"{len(summary['passed'])}/{len(phases) - len(summary['skipped'])} phases passed; wall {args.wall_s} s of a {args.budget_s} s budget; "
          f"results in {out}")
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
    p.add_argument("--budget-s", type=float, required=True, help="the train phase's time limit")
    p.add_argument("--bench-log", action="append", help="bench_training.py logs, first with a number wins")
    p.add_argument("--backbone", default="resnet50_ibn_a")
    p.add_argument("--epochs", type=int, default=None, help="fixed epoch count instead of the budget")
    p.add_argument("--max-steps", type=int, default=None, help="fixed steps per epoch instead of the budget")
    p.add_argument("-o", "--override", action="append")
    p = sub.add_parser("compare")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-images", type=int, default=64)
    p.add_argument("--output", required=True)
    p = sub.add_parser("curve")
    p.add_argument("--metrics", required=True, help="the run's metrics.jsonl (reid train writes it in train.output_dir)")
    p.add_argument("--output", required=True)
    p.add_argument("--png", default=None)
    p = sub.add_parser("imports")
    p.add_argument("--log", required=True)
    p.add_argument("--image-packages", default=str(Path(__file__).with_name("image_packages.txt")))
    p.add_argument("--lock", default=str(Path(__file__).with_name("wheels.lock")))
    p = sub.add_parser("summary")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--wall-s", type=int, required=True)
    p.add_argument("--budget-s", type=int, default=None)
    p.add_argument("--batch", type=int, default=64, help="images per step when the run's params cannot be read")
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
    if args.cmd == "imports":
        report = check_imports(args.log, args.image_packages, args.lock)
        print(json.dumps(report))
        return 1 if report["problems"] else 0
    summarize(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
