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

Past what memory holds (``--stream-size``, e.g. 10M x 512 float32 = 19.1 GiB on a 24 GiB machine) the
padded gallery is never materialised: distractors are drawn a chunk at a time (``--chunk`` vectors,
the same mix, each chunk from its own seed ``(seed, offset)`` so it can be drawn again), the exact
top-10 comes from a streamed scan of every chunk (the ground truth; timed without the drawing), and
each index of ``--stream-kinds`` (compressed codes: ``ivf-sq8``, ``ivf-pq``) is trained by
:func:`reid.deploy.index.build_index` on the first chunk (the real gallery plus distractors) and grown
a chunk at a time with :meth:`GalleryIndex.add`, the code ``reid index add`` runs. Its memory is the
bytes of its codes, ids and coarse centroids, and the process's peak resident memory.

Usage:
    nice -n 5 .venv/bin/python benchmarks/bench_index.py --query q.npz --gallery g.npz --sizes 100000 1000000
    .venv/bin/python benchmarks/bench_index.py --query q.npz --gallery g.npz --sizes --stream-size 10000000 \
        --stream-kinds ivf-sq8 --nlist 4096
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
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


def distractor_chunk(gallery: np.ndarray, offset: int, count: int, seed: int) -> np.ndarray:
    """The ``count`` distractors from position ``offset`` on, drawn from their own seed (streamed mode)."""
    rng = np.random.default_rng([seed, offset])
    a = gallery[rng.integers(0, len(gallery), count)]
    b = gallery[rng.integers(0, len(gallery), count)]
    x = 0.6 * a + 0.4 * b + 0.05 * rng.standard_normal((count, gallery.shape[1]), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stream_chunks(gallery: np.ndarray, total: int, chunk: int, seed: int):
    """``(offset, vectors)`` of the padded gallery: the real gallery first, then distractor chunks."""
    first = min(chunk, total)
    yield 0, np.concatenate([gallery, distractor_chunk(gallery, len(gallery), first - len(gallery), seed)])
    for offset in range(first, total, chunk):
        yield offset, distractor_chunk(gallery, offset, min(chunk, total - offset), seed)


def streamed_exact_top(queries: np.ndarray, gallery: np.ndarray, total: int, chunk: int, seed: int,
                       k: int = 10) -> tuple[np.ndarray, float]:
    """Exact top-``k`` (inner product) over the padded gallery, one chunk in memory at a time, and the
    seconds spent scanning (the drawing of the chunks left out)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    scanning = 0.0
    for offset, block in stream_chunks(gallery, total, chunk, seed):
        started = time.perf_counter()
        scores = queries @ block.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + offset], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        scanning += time.perf_counter() - started
    return best_i, scanning


def code_bytes(index: Any) -> int:
    """What an IVF index holds in RAM: codes and 8-byte ids of every vector, plus the coarse centroids."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return int(ivf.ntotal) * (int(ivf.code_size) + 8) + int(ivf.nlist) * int(ivf.d) * 4


def stream(args: argparse.Namespace, q: Any, g: Any, queries: np.ndarray, report: dict[str, Any], path: Path) -> None:
    """The ``--stream-size`` measurement (module docstring)."""
    import faiss

    from reid.deploy.index import IndexSettings, build_index

    total, chunk = args.stream_size, args.chunk
    if chunk <= len(g.paths):
        raise SystemExit(f"--chunk {chunk} must exceed the real gallery ({len(g.paths)} vectors)")
    exact, scan_s = streamed_exact_top(queries, g.features, total, chunk, args.seed)
    report["streamed"] = {"size": total, "chunk": chunk, "distractor_seed": "numpy default_rng([seed, offset]) per chunk",
                          "exact": {"method": "streamed scan, one chunk in memory (ground truth)",
                                    "float32_gib": round(total * g.features.shape[1] * 4 / 2**30, 1),
                                    "scan_ms_per_query": round(1000 * scan_s / len(queries), 2)}, "results": []}
    print(f"{total} exact (streamed): {report['streamed']['exact']}", flush=True)
    for kind in args.stream_kinds:
        started = time.perf_counter()
        index = None
        for offset, block in stream_chunks(g.features, total, chunk, args.seed):
            if index is None:
                index = build_index(block, [""] * len(block), np.zeros(len(block), int), np.zeros(len(block), int),
                                    True, g.metadata, IndexSettings(kind=kind, seed=args.seed, nlist=args.nlist))
                trained = time.perf_counter() - started
            else:
                index.add(block, [""] * len(block), np.zeros(len(block), int), np.zeros(len(block), int), True,
                          g.metadata, "distractors")
            print(f"  {kind}: {index.size} vectors after {time.perf_counter() - started:.0f} s", flush=True)
        built = time.perf_counter() - started
        row: dict[str, Any] = {"size": index.size, "kind": kind, "settings": index.settings,
                               "build_s": round(built, 1), "first_chunk_build_s": round(trained, 1),
                               "memory_mib": round(code_bytes(index.index) / 2**20, 1),
                               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                               "ivf_imbalance_factor": round(float(
                                   faiss.extract_index_ivf(index.index).invlists.imbalance_factor()), 2),
                               "search": []}
        key, values = SEARCH_SETTINGS[kind]
        for value in (tuple(args.nprobe) if args.nprobe else values):
            index.set_search(**{key: value})
            timing, found = latency(index, queries, 10, args.latency_queries)
            r1, r10 = recall(found, exact)
            entry = {key: value, **timing, "recall@1": round(r1, 4), "recall@10": round(r10, 4)}
            row["search"].append(entry)
            print(f"{total} {kind} {entry}", flush=True)
        print(f"{total} {kind}: build {row['build_s']} s, {row['memory_mib']} MiB, peak RSS {row['peak_rss_gib']} GiB",
              flush=True)
        report["streamed"]["results"].append(row)
        path.write_text(json.dumps(report, indent=2) + "\n")
        del index


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
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="padded sizes held in memory (none: only the real gallery)")
    parser.add_argument("--stream-size", type=int, default=None, help="a padded size never held in memory (e.g. 10000000)")
    parser.add_argument("--stream-kinds", nargs="+", default=["ivf-sq8"], help="indexes grown chunk by chunk to --stream-size")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="vectors per drawn chunk (streamed mode)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: reid index build's, about 2 sqrt(N))")
    parser.add_argument("--kinds", nargs="*", default=["flat", "hnsw", "ivf", "ivf-sq8", "ivf-pq"])
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
    for size in [len(g.paths), *args.sizes] if args.kinds else []:
        base = g.features if size <= len(g.paths) else np.concatenate([g.features, distractors(g.features, size - len(g.paths), args.seed)])
        exact_top = None
        for kind in args.kinds:
            if f"{kind}@{size}" in args.skip:
                continue
            started = time.perf_counter()
            index = build_index(base, [""] * len(base), np.zeros(len(base), int), np.zeros(len(base), int), True,
                                g.metadata, IndexSettings(kind=kind, seed=args.seed, nlist=args.nlist))
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
    if args.stream_size:
        stream(args, q, g, queries, report, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
