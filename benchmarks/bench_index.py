"""The gallery index at scale: recall of approximate FAISS indexes against exact search, build time, memory, latency.

Input: the query and gallery feature files of one model (``reid extract --split query|gallery``). The
gallery is padded with synthetic distractor features to each size of ``--sizes`` (vectors in total):
each distractor is ``normalise(0.6 a + 0.4 b + 0.05 n)`` with ``a``, ``b`` two real gallery features
drawn at random and ``n`` standard normal noise (seed ``--seed``), so distractors lie where real
features lie (uniform random vectors would be trivially far from every query and flatter the
approximate indexes). The real gallery stays at the front, so the exact index's answers on the
unpadded gallery are those of ``reid search --gallery``.

For every size, every index of ``--kinds`` is built with :func:`reid.deploy.index.build_index` (the
code ``reid index build`` runs) and measured against ``flat`` (exact) on ``--queries`` real queries:

* recall@1 (the exact top-1 is the approximate top-1) and recall@10 (share of the exact top-10 found in
  the approximate top-10), for each search setting (HNSW ``efSearch``, IVF ``nprobe``);
* for IVF indexes, FAISS's imbalance factor of the cells (1 when all are equal; a probe of unequal
  cells scans more than ``N * nprobe / nlist`` vectors);
* build seconds (training + adding), memory (bytes of the serialised index: the vectors, codes and
  graph it holds in RAM), query latency one query at a time (p50/p99 ms over the first
  ``--latency-queries``) and batched (all queries in one call, ms per query).

Results go to ``benchmarks/results/index_cpu_<date>.json``, written after every index.

Usage:
    nice -n 5 .venv/bin/python benchmarks/bench_index.py --query q.npz --gallery g.npz --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402

SEARCH_SETTINGS = {"hnsw": ("ef_search", (64, 128, 256)), "ivf": ("nprobe", (16, 32, 64, 128)),
                   "ivf-sq8": ("nprobe", (32, 64, 128)), "ivf-pq": ("nprobe", (32, 64, 128))}


def distractors(gallery: np.ndarray, count: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    """``count`` synthetic features mixed from pairs of real ones (module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, gallery.shape[1]), dtype=np.float32)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        a = gallery[rng.integers(0, len(gallery), n)]
        b = gallery[rng.integers(0, len(gallery), n)]
        x = 0.6 * a + 0.4 * b + 0.05 * rng.standard_normal((n, gallery.shape[1]), dtype=np.float32)
        out[start:start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    r1 = float((found[:, 0] == exact[:, 0]).mean())
    r10 = float(np.mean([len(set(f[:10]) & set(e[:10])) / 10 for f, e in zip(found, exact)]))
    return r1, r10


def latency(gallery: Any, queries: np.ndarray, k: int, single: int) -> tuple[dict[str, float], np.ndarray]:
    """One query at a time over the first ``single`` queries (p50/p99), then all of them in one call."""
    times = []
    for i in range(min(single, len(queries))):
        start = time.perf_counter()
        gallery.search(queries[i:i + 1], k)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    _, found = gallery.search(queries, k)
    batched = time.perf_counter() - start
    ms = 1000 * np.asarray(times)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "batched_ms_per_query": round(1000 * batched / len(queries), 3)}, found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", type=Path, required=True)
    parser.add_argument("--gallery", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf", "ivf-sq8", "ivf-pq"])
    parser.add_argument("--queries", type=int, default=500, help="real queries, evenly spread over the query file")
    parser.add_argument("--latency-queries", type=int, default=200, help="queries timed one at a time (p50/p99)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="kind@size pairs not to build (e.g. hnsw@1000000)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=None, help="hnsw search settings (default 64 128 256)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=None, help="ivf* search settings (default per kind)")
    parser.add_argument("--note", default="")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import faiss

    from reid.deploy.gallery import load_features
    from reid.deploy.index import IndexSettings, build_index

    faiss.omp_set_num_threads(args.threads)
    q, g = load_features(args.query), load_features(args.gallery)
    picks = np.unique(np.linspace(0, len(q.paths) - 1, min(args.queries, len(q.paths))).round().astype(int))
    queries = np.ascontiguousarray(q.features[picks])
    report: dict[str, Any] = {
        "benchmark": "index", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**describe_machine("cpu"), "faiss": faiss.__version__, "faiss_threads": args.threads},
        "note": args.note, "model": {k: g.metadata.get(k, "") for k in ("backbone", "weights_hash", "model_file")},
        "real_gallery": len(g.paths), "num_queries": len(queries), "dim": int(g.features.shape[1]),
        "distractors": "normalise(0.6 a + 0.4 b + 0.05 n), a, b real gallery features, n ~ N(0, 1)", "results": []}
    path = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"index_cpu_{dt.date.today().isoformat()}.json"
    for size in [len(g.paths), *args.sizes]:
        base = g.features if size <= len(g.paths) else np.concatenate([g.features, distractors(g.features, size - len(g.paths), args.seed)])
        exact_top = None
        for kind in args.kinds:
            if f"{kind}@{size}" in args.skip:
                continue
            started = time.perf_counter()
            index = build_index(base, [""] * len(base), np.zeros(len(base), int), np.zeros(len(base), int), True,
                                g.metadata, IndexSettings(kind=kind, seed=args.seed))
            built = time.perf_counter() - started
            row: dict[str, Any] = {"size": int(size), "kind": kind, "settings": index.settings,
                                   "build_s": round(built, 1),
                                   "memory_mib": round(len(faiss.serialize_index(index.index)) / 2**20, 1), "search": []}
            if kind.startswith("ivf"):  # uneven k-means cells make a probe scan far more than N * nprobe / nlist vectors
                row["ivf_imbalance_factor"] = round(float(faiss.extract_index_ivf(index.index).invlists.imbalance_factor()), 2)
            key, values = SEARCH_SETTINGS.get(kind, (None, (None,)))
            if key == "ef_search" and args.ef_search:
                values = tuple(args.ef_search)
            elif key == "nprobe" and args.nprobe:
                values = tuple(args.nprobe)
            for value in values:
                if key is not None:
                    index.set_search(**{key: value})
                timing, found = latency(index, queries, 10, args.latency_queries)
                entry = {**({key: value} if key else {}), **timing}
                if kind == "flat":
                    exact_top = found
                if exact_top is not None:
                    r1, r10 = recall(found, exact_top)
                    entry.update({"recall@1": round(r1, 4), "recall@10": round(r10, 4)})
                row["search"].append(entry)
                print(f"{size} {kind} {entry}", flush=True)
            print(f"{size} {kind}: build {row['build_s']} s, {row['memory_mib']} MiB", flush=True)
            report["results"].append(row)
            path.write_text(json.dumps(report, indent=2) + "\n")
            del index
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
