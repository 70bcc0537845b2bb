"""Benchmark of the evaluation protocol: our chunked, vectorised evaluator vs a per-query loop.

Two cases, each run in its own child process so that its peak memory (``ru_maxrss``) is its own:

* ``market``: 3,368 queries x 15,913 gallery images. Identities and cameras come from the real
  Market-1501 file names when the dataset is found (``--market-root``, else ``../shared/data``),
  otherwise from a synthetic layout with the same counts (750 ids, 6 cameras, 2,798 distractors).
  Features are identity clusters with a camera shift and noise, so the metrics are in a realistic
  range. The distance matrix is computed once; then ``evaluate_distances`` is timed against a
  straightforward per-query NumPy implementation written below (loop, argsort, filter, AP/CMC), and
  the two must agree to 1e-6 on mAP, mINP and every CMC value (standard and trapezoidal AP).
* ``market_hard``: the same ids/cameras with *structured* features of realistic difficulty (identity,
  a shared appearance group, camera, viewpoint, noise; a few percent of images off their identity, so
  mAP is about 50% and many queries have their hardest match beyond the top 1,024). Timed side by side,
  alternating, in one process: ``evaluate_distances`` against a fully vectorised NumPy evaluator written
  below, of the kind TransReID ships (one ``argsort`` of the whole matrix, then array operations), the
  fastest peer design; mAP, mINP and every CMC value must agree to 1e-6.
* ``msmt``: MSMT17 size, 11,659 queries x 82,161 gallery images (3,060 ids, 15 cameras), evaluated
  from features with ``evaluate_features`` (distances a chunk of queries at a time). ``--msmt-queries``
  evaluates only the first N queries against the full gallery to keep the run short on a small CPU;
  the full-size time is extrapolated linearly (the work is per query).
* ``rerank``: k-reciprocal re-ranking + evaluation at Market size from features: time and peak memory
  (the synthetic clusters make its metrics meaningless, so none are reported).

Usage:
    .venv/bin/python benchmarks/bench_evaluation.py                  # both cases, writes benchmarks/results/
    .venv/bin/python benchmarks/bench_evaluation.py --msmt-queries 500 --threads 2
    .venv/bin/python benchmarks/bench_evaluation.py --threads 2 --skip-market --skip-msmt --skip-rerank
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402
DEFAULT_MARKET = REPO.parent / "shared" / "data" / "Market-1501-v15.09.15"
NAME = re.compile(r"^(-?\d+)_c(\d)s\d+_\d+_\d+(?:\.jpg)+$")


# ---------------------------------------------------------------------------------------------------
# The straightforward implementation the reference evaluators use: one query at a time.
def reference_evaluate(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int, variant: str):
    """Per-query loop: stable argsort, remove same-id same-camera, AP (standard/trapezoidal), CMC, INP."""
    all_ap, all_cmc, all_inp = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        remove = (g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i])
        matches = (g_pids[order] == q_pids[i])[~remove].astype(np.int32)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        cmc = cmc[:max_rank]
        if len(cmc) < max_rank:
            cmc = np.pad(cmc, (0, max_rank - len(cmc)), mode="edge")
        all_cmc.append(cmc)
        num_rel = matches.sum()
        tmp = matches.cumsum()
        pos = np.where(matches == 1)[0]
        if variant == "standard":
            precision = tmp / (np.arange(len(tmp)) + 1.0)
            all_ap.append((precision * matches).sum() / num_rel)
        else:
            ap = 0.0
            for hit, p in enumerate(pos, start=1):
                before = (hit - 1) / p if p > 0 else 1.0
                ap += ((before + hit / (p + 1.0)) / 2.0) / num_rel
            all_ap.append(ap)
        all_inp.append(num_rel / (pos[-1] + 1.0))
    return float(np.mean(all_ap)), np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0), float(np.mean(all_inp))


def vectorised_evaluate(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int) -> dict:
    """The fastest peer design (TransReID's kind), standard AP: no per-query Python loop at all.

    One ``np.argsort`` of the whole matrix (NumPy's default sort, as the peers call it: not stable, which
    only matters for exactly equal distances), then whole-matrix array operations: matches and junk in
    ranked order, each position's rank among non-junk items by a cumulative sum, precision at the hits
    only, the first hit for CMC and the last for mINP. Also returns the hardest match's rank per query.
    """
    order = np.argsort(dist, axis=1)
    matches = g_pids[order] == q_pids[:, None]
    junk = matches & (g_cams[order] == q_cams[:, None])
    del order
    hits = matches & ~junk
    rank = np.cumsum(~junk, axis=1, dtype=np.int32)  # 1-based rank among non-junk items, per position
    num_rel = hits.sum(axis=1)
    valid = num_rel > 0
    rows, cols = np.nonzero(hits)
    hit_number = np.cumsum(hits, axis=1, dtype=np.int32)[rows, cols]
    ap = np.bincount(rows, weights=hit_number / rank[rows, cols], minlength=len(dist))[valid] / num_rel[valid]
    every = np.arange(len(dist))
    first_rank = rank[every, hits.argmax(axis=1)][valid]
    last_rank = rank[every, dist.shape[1] - 1 - hits[:, ::-1].argmax(axis=1)][valid]
    cmc = (first_rank[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(axis=0)
    return {"mAP": float(ap.mean()), "cmc": cmc, "mINP": float((num_rel[valid] / last_rank).mean()),
            "hardest_rank": last_rank}


# ---------------------------------------------------------------------------------------------------
def market_labels(root: Path | None, seed: int) -> tuple[dict, str]:
    """(q_pids, q_cams, g_pids, g_cams) from real Market names when present, else synthetic."""
    if root is not None and (root / "query").is_dir() and (root / "bounding_box_test").is_dir():
        def parse(folder: str) -> tuple[np.ndarray, np.ndarray]:
            pids, cams = [], []
            for name in sorted(os.listdir(root / folder)):
                m = NAME.match(name)
                if m and int(m.group(1)) != -1:
                    pids.append(int(m.group(1)))
                    cams.append(int(m.group(2)))
            return np.array(pids), np.array(cams)

        qp, qc = parse("query")
        gp, gc = parse("bounding_box_test")
        return dict(qp=qp, qc=qc, gp=gp, gc=gc), f"real Market-1501 ids/cameras from {root}"
    rng = np.random.default_rng(seed)
    qp, qc, gp, gc = [], [], [], []
    ids = np.arange(1, 751)
    per_id = rng.multinomial(15913 - 2798 - 750 * 2, np.ones(750) / 750) + 2  # >= 2 gallery images each
    for pid, n in zip(ids, per_id):
        cams = rng.choice(np.arange(1, 7), size=rng.integers(2, 7), replace=False)
        gp += [pid] * n
        gc += list(rng.choice(cams, size=n))
        for cam in cams:
            qp.append(pid)
            qc.append(cam)
    extra = len(qp) - 3368  # trim/grow to exactly 3,368 queries
    if extra > 0:
        keep = np.sort(rng.choice(len(qp), 3368, replace=False))
        qp, qc = list(np.array(qp)[keep]), list(np.array(qc)[keep])
    while len(qp) < 3368:
        j = int(rng.integers(len(gp)))
        qp.append(gp[j])
        qc.append(int(rng.integers(1, 7)))
    gp += [0] * 2798
    gc += list(rng.integers(1, 7, 2798))
    return dict(qp=np.array(qp), qc=np.array(qc), gp=np.array(gp), gc=np.array(gc)), "synthetic Market-size layout"


def clustered_features(pids: np.ndarray, cams: np.ndarray, dim: int, seed: int, noise: float):
    """Identity clusters + a per-camera shift + noise; pid 0 (distractors) are each their own cluster."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(int(pids.max()) + 1, dim, generator=torch.Generator().manual_seed(12345))
    cam_shift = 0.6 * torch.randn(int(cams.max()) + 1, dim, generator=torch.Generator().manual_seed(54321))
    feats = torch.empty(len(pids), dim)
    step = 8192
    for s in range(0, len(pids), step):
        p = torch.as_tensor(pids[s : s + step])
        c = torch.as_tensor(cams[s : s + step])
        base = torch.where((p == 0).unsqueeze(1), torch.randn(len(p), dim, generator=gen), centers[p])
        feats[s : s + step] = base + cam_shift[c] + noise * torch.randn(len(p), dim, generator=gen)
    return feats


def structured_features(pids: np.ndarray, cams: np.ndarray, dim: int, seed: int, noise: float = 2.0,
                        off_identity: float = 0.04, groups: int = 40, views: int = 8):
    """Features with the structure that makes real retrieval hard, at a realistic difficulty.

    Each image = its identity + its identity's appearance group (ids that dress alike, 40 groups) +
    its camera (0.8) + one of 8 viewpoints shared by everyone (0.7) + noise. A fraction
    ``off_identity`` of the images (occluded, mislabelled) keep only a fifth of their identity and
    a random group: their matches fall anywhere in the ranking, as the hardest matches of a real model
    do. Distractors (pid 0) have their own identity vector. With the defaults on Market-1501 ids: mAP
    about 52%, rank-1 72%, mINP 24%, hardest match beyond rank 1,024 for about 40% of the queries.
    """
    import torch

    shared = torch.Generator().manual_seed(777)
    num_ids = int(pids.max()) + 1
    identity = torch.randn(num_ids, dim, generator=shared)
    group_of = torch.randint(0, groups, (num_ids,), generator=shared)
    group = torch.randn(groups, dim, generator=shared)
    camera = torch.randn(int(cams.max()) + 1, dim, generator=shared)
    view = torch.randn(views, dim, generator=shared)
    gen = torch.Generator().manual_seed(seed)
    p, c, n = torch.as_tensor(pids), torch.as_tensor(cams), len(pids)
    own = torch.where((p == 0).unsqueeze(1), torch.randn(n, dim, generator=gen), identity[p])
    grp = torch.where(p == 0, torch.randint(0, groups, (n,), generator=gen), group_of[p])
    v = torch.randint(0, views, (n,), generator=gen)
    off = torch.rand(n, generator=gen) < off_identity
    weight = torch.where(off, 0.2, 1.0).unsqueeze(1)
    grp = torch.where(off, torch.randint(0, groups, (n,), generator=gen), grp)
    return weight * own + group[grp] + 0.8 * camera[c] + 0.7 * view[v] + noise * torch.randn(n, dim, generator=gen)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def case_market(args: argparse.Namespace) -> dict:
    import torch

    from reid.evaluation.distance import pairwise_distance
    from reid.evaluation.metrics import evaluate_distances

    labels, source = market_labels(None if args.synthetic else args.market_root, args.seed)
    qp, qc, gp, gc = labels["qp"], labels["qc"], labels["gp"], labels["gc"]
    qf = clustered_features(qp, qc, args.dim, args.seed, args.noise)
    gf = clustered_features(gp, gc, args.dim, args.seed + 1, args.noise)
    t = time.perf_counter()
    dist = pairwise_distance(qf, gf, "cosine")
    t_dist = time.perf_counter() - t
    dist_np = dist.numpy()
    out: dict = {"case": "market", "labels": source, "num_query": len(qp), "num_gallery": len(gp),
                 "dim": args.dim, "distance_matrix_s": round(t_dist, 3), "variants": {}}
    for variant in ("standard", "trapezoidal"):
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ours = evaluate_distances(dist, qp, gp, qc, gc, max_rank=50, ap_variant=variant, chunk_size=args.chunk_size)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref_map, ref_cmc, ref_inp = reference_evaluate(dist_np, qp, gp, qc, gc, 50, variant)
        t_ref = time.perf_counter() - t
        diff = {"mAP": abs(ours.mAP - ref_map), "mINP": abs(ours.mINP - ref_inp),
                "cmc_max": float(np.abs(ours.cmc - ref_cmc).max())}
        agree = all(v <= 1e-6 for v in diff.values())
        out["variants"][variant] = {
            "ours_s": [round(x, 3) for x in times], "ours_best_s": round(min(times), 3),
            "reference_loop_s": round(t_ref, 3), "speedup": round(t_ref / min(times), 1),
            "agree_1e-6": agree, "abs_diff": diff,
            "mAP": ours.mAP, "rank1": ours.rank(1), "rank5": ours.rank(5), "rank10": ours.rank(10), "mINP": ours.mINP,
            "num_valid_queries": ours.num_valid_queries, "num_skipped_queries": ours.num_skipped_queries,
        }
        if not agree:
            raise SystemExit(f"MISMATCH ({variant}): {diff}")
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return out


def case_market_hard(args: argparse.Namespace) -> dict:
    """Ours vs the vectorised NumPy evaluator on structured features, alternating, in one process."""
    import statistics

    from reid.evaluation.distance import pairwise_distance
    from reid.evaluation.metrics import evaluate_distances

    labels, source = market_labels(None if args.synthetic else args.market_root, args.seed)
    qp, qc, gp, gc = labels["qp"], labels["qc"], labels["gp"], labels["gc"]
    dist = pairwise_distance(structured_features(qp, qc, args.dim, args.seed),
                             structured_features(gp, gc, args.dim, args.seed + 1), "cosine")
    dist_np = dist.numpy()
    # Wall time, and the process's CPU time (all threads): on a shared machine the wall time mostly
    # measures the other jobs, the CPU time what each evaluator costs.
    ours_s, numpy_s, ours_cpu, numpy_cpu = [], [], [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        ours = evaluate_distances(dist, qp, gp, qc, gc, max_rank=50, chunk_size=args.chunk_size)
        ours_s.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        ref = vectorised_evaluate(dist_np, qp, gp, qc, gc, 50)
        numpy_s.append(time.perf_counter() - t)
        numpy_cpu.append(time.process_time() - c)
    diff = {"mAP": abs(ours.mAP - ref["mAP"]), "mINP": abs(ours.mINP - ref["mINP"]),
            "cmc_max": float(np.abs(ours.cmc - ref["cmc"]).max())}
    agree = all(v <= 1e-6 for v in diff.values())
    if not agree:
        raise SystemExit(f"MISMATCH (market_hard): {diff}")
    hardest = ref["hardest_rank"]
    best, median = (min(ours_s), min(numpy_s)), (statistics.median(ours_s), statistics.median(numpy_s))
    return {
        "case": "market_hard", "labels": source, "num_query": len(qp), "num_gallery": len(gp), "dim": args.dim,
        "chunk_size": args.chunk_size, "threads": args.threads,
        "ours_s": [round(x, 3) for x in ours_s], "vectorised_numpy_s": [round(x, 3) for x in numpy_s],
        "ours_best_s": round(best[0], 3), "ours_median_s": round(median[0], 3),
        "vectorised_numpy_best_s": round(best[1], 3), "vectorised_numpy_median_s": round(median[1], 3),
        "speedup_best": round(best[1] / best[0], 2), "speedup_median": round(median[1] / median[0], 2),
        "ours_cpu_s": [round(x, 3) for x in ours_cpu], "vectorised_numpy_cpu_s": [round(x, 3) for x in numpy_cpu],
        "speedup_cpu_best": round(min(numpy_cpu) / min(ours_cpu), 2),
        "speedup_cpu_median": round(statistics.median(numpy_cpu) / statistics.median(ours_cpu), 2),
        "agree_1e-6": agree, "abs_diff": diff,
        "mAP": ours.mAP, "rank1": ours.rank(1), "rank5": ours.rank(5), "mINP": ours.mINP,
        "hardest_match_beyond_1024": round(float((hardest > 1024).mean()), 3),
        "hardest_match_rank_median": float(np.median(hardest)),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def case_rerank(args: argparse.Namespace) -> dict:
    """k-reciprocal re-ranking at Market size, from features (k1=20, k2=6, lambda=0.3)."""
    from reid.config import EvalConfig
    from reid.evaluation.metrics import evaluate_features
    from reid.evaluation.reranking import estimate_rerank_memory

    labels, source = market_labels(None if args.synthetic else args.market_root, args.seed)
    qp, qc, gp, gc = labels["qp"], labels["qc"], labels["gp"], labels["gc"]
    qf = clustered_features(qp, qc, args.dim, args.seed, args.noise)
    gf = clustered_features(gp, gc, args.dim, args.seed + 1, args.noise)
    rss_features = peak_rss_mib()
    t = time.perf_counter()
    res = evaluate_features(qf, gf, qp, gp, qc, gc, EvalConfig(rerank=True, chunk_size=args.chunk_size))
    elapsed = time.perf_counter() - t
    return {
        "case": "rerank", "labels": source, "num_query": len(qp), "num_gallery": len(gp), "dim": args.dim,
        "rerank_and_evaluate_s": round(elapsed, 3),
        "estimate_mib": round(estimate_rerank_memory(len(qp), len(gp), feature_dim=args.dim,
                                                     chunk_size=args.chunk_size) / 2**20, 1),
        "peak_rss_after_features_mib": round(rss_features, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "note": "synthetic isotropic clusters: the metrics say nothing about re-ranking's gain on real features",
    }


def msmt_labels(num_query: int, seed: int) -> dict:
    """MSMT17 test-set sizes: 3,060 ids, 15 cameras, 11,659 queries, 82,161 gallery images."""
    rng = np.random.default_rng(seed)
    gp = np.sort(rng.integers(1, 3061, 82161))
    gc = rng.integers(1, 16, 82161)
    qp = rng.choice(np.unique(gp), 11659)
    qc = rng.integers(1, 16, 11659)
    return dict(qp=qp[:num_query], qc=qc[:num_query], gp=gp, gc=gc)


def case_msmt(args: argparse.Namespace) -> dict:
    from reid.config import EvalConfig
    from reid.evaluation.metrics import evaluate_features

    labels = msmt_labels(args.msmt_queries, args.seed)
    qp, qc, gp, gc = labels["qp"], labels["qc"], labels["gp"], labels["gc"]
    qf = clustered_features(qp, qc, args.dim, args.seed, args.noise)
    gf = clustered_features(gp, gc, args.dim, args.seed + 1, args.noise)
    rss_features = peak_rss_mib()
    cfg = EvalConfig(chunk_size=args.chunk_size)
    t = time.perf_counter()
    res = evaluate_features(qf, gf, qp, gp, qc, gc, cfg)
    elapsed = time.perf_counter() - t
    return {
        "case": "msmt", "num_query": len(qp), "num_query_full": 11659, "num_gallery": len(gp), "dim": args.dim,
        "chunk_size": args.chunk_size, "evaluate_features_s": round(elapsed, 3),
        "per_query_ms": round(1000 * elapsed / len(qp), 3),
        "extrapolated_full_s": round(elapsed / len(qp) * 11659, 1),
        "features_mib": round((qf.numel() + gf.numel()) * 4 / 2**20, 1),
        "peak_rss_after_features_mib": round(rss_features, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "mAP": res.mAP, "rank1": res.rank(1), "mINP": res.mINP, "num_valid_queries": res.num_valid_queries,
    }


# ---------------------------------------------------------------------------------------------------
def machine() -> dict:
    """This machine (see benchmarks/machine_info.py)."""
    return describe_machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--market-root", type=Path, default=DEFAULT_MARKET, help="Market-1501 root for real ids/cameras")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic Market layout even if the data exists")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (2048 = ResNet-50)")
    p.add_argument("--noise", type=float, default=2.7, help="feature noise (sets how hard the synthetic case is)")
    p.add_argument("--chunk-size", type=int, default=512, help="queries ranked at once (eval.chunk_size)")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats of our evaluator (best is reported)")
    p.add_argument("--msmt-queries", type=int, default=1000, help="queries of the MSMT17-size case (full: 11659)")
    p.add_argument("--skip-market", action="store_true", help="skip the per-query-loop comparison")
    p.add_argument("--skip-hard", action="store_true", help="skip market_hard (ours vs the vectorised NumPy evaluator)")
    p.add_argument("--skip-msmt", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="result JSON [default: benchmarks/results/evaluation_<date>.json]")
    p.add_argument("--skip-rerank", action="store_true")
    p.add_argument("--case", choices=["market", "market_hard", "msmt", "rerank"], help=argparse.SUPPRESS)  # child
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        result = {"market": case_market, "market_hard": case_market_hard, "msmt": case_msmt,
                  "rerank": case_rerank}[args.case](args)
        print("RESULT " + json.dumps(result))
        return

    own = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join([sys.executable, *sys.argv]),
               "machine": machine(), "cases": {}}
    cases = [case for case, skip in (("market", args.skip_market), ("market_hard", args.skip_hard),
                                     ("msmt", args.skip_msmt), ("rerank", args.skip_rerank)) if not skip]
    for case in cases:
        print(f"== {case} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, *own, "--case", case], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"case {case} failed")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results["cases"][case] = json.loads(line[len("RESULT "):])
        print(json.dumps(results["cases"][case], indent=2), flush=True)

    out = args.out or REPO / "benchmarks" / "results" / f"evaluation_{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "market" in results["cases"]:
        m = results["cases"]["market"]["variants"]["standard"]
        print(f"\nMarket {results['cases']['market']['num_query']}x{results['cases']['market']['num_gallery']}: ours "
              f"{m['ours_best_s']} s vs per-query loop {m['reference_loop_s']} s ({m['speedup']}x), "
              f"agree={m['agree_1e-6']}")
    if "market_hard" in results["cases"]:
        h = results["cases"]["market_hard"]
        print(f"Market, structured features (mAP {100 * h['mAP']:.1f}, hardest match beyond 1,024 for "
              f"{100 * h['hardest_match_beyond_1024']:.0f}% of queries): ours best {h['ours_best_s']} s / median "
              f"{h['ours_median_s']} s vs vectorised NumPy {h['vectorised_numpy_best_s']} / "
              f"{h['vectorised_numpy_median_s']} s ({h['speedup_best']}x / {h['speedup_median']}x; CPU time "
              f"{h['speedup_cpu_best']}x / {h['speedup_cpu_median']}x), agree={h['agree_1e-6']}")
    if "msmt" in results["cases"]:
        s = results["cases"]["msmt"]
        print(f"MSMT17-size {s['num_query']}x{s['num_gallery']}: {s['evaluate_features_s']} s "
              f"(~{s['extrapolated_full_s']} s for all 11,659 queries), peak RSS {s['peak_rss_mib']} MiB")
    if "rerank" in results["cases"]:
        r = results["cases"]["rerank"]
        print(f"Re-ranking {r['num_query']}x{r['num_gallery']}: {r['rerank_and_evaluate_s']} s, peak RSS "
              f"{r['peak_rss_mib']} MiB (estimate_rerank_memory: {r['estimate_mib']} MiB)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
