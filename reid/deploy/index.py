"""A FAISS index over a gallery's features: exact for small galleries, approximate past a measured size.

``reid search --gallery features.npz`` ranks exactly by scanning every feature, which is right for a
dataset's gallery and wrong for a city's cameras (millions of crops a day): one query then scans
gigabytes. ``reid index build`` puts the features of ``reid extract`` into a FAISS index instead:

* ``flat``: exact search (``IndexFlatIP`` on L2-normalised features, ``IndexFlatL2`` otherwise), the
  same ranking as ``reid search --gallery``;
* ``hnsw``: a graph (``IndexHNSWFlat``, ``M`` links per vector, ``efSearch`` candidates per query):
  approximate, millisecond queries, the full vectors kept, appendable; slow to build on few cores;
* ``ivf``: an inverted file (``IndexIVFFlat``, ``nlist`` k-means cells, ``nprobe`` scanned per query):
  approximate, quick to build (k-means on a sample), appendable against its fixed cells;
* ``ivf-sq8`` / ``ivf-pq``: the inverted file with compressed codes (8-bit scalar quantiser: 1 byte per
  dimension; product quantiser: ``pq_m`` bytes per vector) for galleries that do not fit in memory as
  float32 (10M x 512 floats are 20 GiB);
* ``auto``: ``flat`` below :data:`AUTO_EXACT_LIMIT` vectors, ``hnsw`` from there. Measured with
  ``benchmarks/bench_index.py`` on Market-1501 features padded with distractors (docs/DEPLOY.md has the
  numbers): one exact query costs tens of milliseconds at 16k-100k vectors on 2 cores and grows
  linearly; HNSW answered in under a millisecond at recall@10 >= 0.999 at 100k, where IVF, whose
  k-means cells come out unbalanced on such data, needed 10-20 ms for the same recall.

Distances are those of ``reid search``: ``1 - cosine`` on normalised features, squared Euclidean
otherwise, so a threshold from the evaluation applies unchanged.

The file (``.npz``, numpy only, no pickle) holds the serialised FAISS index (``faiss``, bytes), the
gallery's ``paths``/``pids``/``camids``, and ``metadata`` (JSON): the model's contract, its
:func:`contract_hash`, the index kind and settings. Queries embedded by another model are refused
(:func:`reid.deploy.contract.check_same_model`): features of two models live in different spaces even at
the same dimension. Every write replaces the file atomically; a truncated, corrupt or foreign file is a
clear error naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reid.deploy.contract import COMPATIBILITY_KEYS, check_same_model
from reid.errors import ReidError

INDEX_FORMAT = "reid-index-v1"
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivf-sq8", "ivf-pq")
#: ``auto`` builds an exact index below this many vectors, HNSW from there (see the module docstring).
AUTO_EXACT_LIMIT = 50_000
KEYS = ("faiss", "paths", "pids", "camids", "metadata")
TRAIN_SAMPLE_PER_CELL = 40  # k-means sample: FAISS warns below 39 points per centroid
KMEANS_ITERATIONS = 10  # FAISS's default 25 costs 2.5x the build for no recall measured here
DEPLOY_HINT = "pip install 'reid-toolkit[deploy]' (or pip install faiss-cpu)"


class IndexFileError(ReidError):
    """An index file that is missing, corrupt, of another model, or asked for what it cannot do."""


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ReidError(f"the gallery index needs FAISS: {DEPLOY_HINT}") from None
    return faiss


def contract_hash(meta: dict[str, str]) -> str:
    """SHA-256 (16 hex digits) of the contract keys two feature sets must share to be compared."""
    payload = json.dumps({k: str(meta.get(k, "")) for k in COMPATIBILITY_KEYS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class IndexSettings:
    """How to build the index (``reid index build`` options); ``None`` sizes come from the gallery."""

    kind: str = "auto"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None  # default: about 2 * sqrt(N), at most N / 39
    nprobe: int = 64
    pq_m: int = 64
    seed: int = 0

    def resolved(self, n: int, dim: int) -> "IndexSettings":
        if self.kind not in INDEX_KINDS:
            raise IndexFileError(f"--kind {self.kind!r} is not an index kind; use one of {', '.join(INDEX_KINDS)}")
        kind = self.kind if self.kind != "auto" else ("flat" if n < AUTO_EXACT_LIMIT else "hnsw")
        nlist = self.nlist
        if kind.startswith("ivf"):
            nlist = nlist or max(1, min(int(2 * math.sqrt(n)), n // 39))
            if nlist > n:
                raise IndexFileError(f"--nlist {nlist} is more than the {n} vectors to train on; lower it")
            if kind == "ivf-pq" and dim % self.pq_m:
                raise IndexFileError(f"--pq-m {self.pq_m} must divide the feature dimension {dim}")
            if kind == "ivf-pq" and n < 256:
                raise IndexFileError(f"ivf-pq trains 256 codes per sub-quantiser and needs at least 256 vectors, got {n}; "
                                  "use --kind flat")
        return IndexSettings(**{**asdict(self), "kind": kind, "nlist": nlist})


def _build_empty(settings: IndexSettings, dim: int, inner_product: bool) -> Any:
    faiss = import_faiss()
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    kind = settings.kind
    if kind == "flat":
        return faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(settings.hnsw_m), metric)
        index.hnsw.efConstruction = int(settings.ef_construction)
        return index
    quantizer = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, int(settings.nlist), metric)
    if kind == "ivf-sq8":
        return faiss.IndexIVFScalarQuantizer(quantizer, dim, int(settings.nlist), faiss.ScalarQuantizer.QT_8bit, metric)
    return faiss.IndexIVFPQ(quantizer, dim, int(settings.nlist), int(settings.pq_m), 8, metric)


def _apply_search_settings(index: Any, settings: dict[str, Any]) -> None:
    faiss = import_faiss()
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(settings["ef_search"])
    elif hasattr(index, "nprobe"):
        faiss.extract_index_ivf(index).nprobe = int(settings["nprobe"])


class GalleryIndex:
    """A built index with the gallery's paths and labels; see the module docstring."""

    def __init__(self, index: Any, paths: list[str], pids: np.ndarray, camids: np.ndarray, metadata: dict[str, Any],
                 source: Path | None = None) -> None:
        self.index, self.paths, self.pids, self.camids = index, paths, np.asarray(pids, np.int64), np.asarray(camids, np.int64)
        self.metadata, self.source = metadata, source

    # -- what the model and the search need to know --------------------------------------------------
    @property
    def normalized(self) -> bool:
        return bool(self.metadata["normalized"])

    @property
    def distance(self) -> str:
        return "cosine" if self.normalized else "euclidean"

    @property
    def contract(self) -> dict[str, str]:
        return dict(self.metadata["contract"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.metadata["settings"])

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def set_search(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Trade speed for recall at query time (HNSW ``efSearch``, IVF ``nprobe``); saved with the next write."""
        if ef_search is not None:
            self.metadata["settings"]["ef_search"] = int(ef_search)
        if nprobe is not None:
            self.metadata["settings"]["nprobe"] = int(nprobe)
        _apply_search_settings(self.index, self.settings)

    def check_model(self, model_meta: dict[str, str], model_path: Path | str) -> None:
        """Refuse features of another model (:func:`reid.deploy.contract.check_same_model`)."""
        check_same_model(self.contract, model_meta, self.source or "the index", model_path)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances [Q, k], indices [Q, k])``, nearest first, distances as ``reid search`` gives them.

        An approximate index may find fewer than ``k`` (index -1, distance inf)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        dim = int(self.index.d)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise IndexFileError(f"query features of shape {queries.shape} do not match the index's dimension {dim}")
        if k < 1:
            raise IndexFileError("top-k must be >= 1")
        k = min(int(k), max(self.size, 1))
        scores, idx = self.index.search(queries, k)
        missing = idx < 0
        dist = (1.0 - scores) if self.normalized else np.maximum(scores, 0.0)
        dist = np.where(missing, np.inf, dist).astype(np.float32)
        return dist, idx.astype(np.int64)

    def add(self, features: np.ndarray, paths: Sequence[str], pids: Sequence[int], camids: Sequence[int],
            normalized: bool, model_meta: dict[str, str], source: Path | str) -> None:
        """Append features of the same model (refused otherwise) without a rebuild."""
        self.check_model(model_meta, source)
        if bool(normalized) != self.normalized:
            raise IndexFileError(f"{source} holds {'L2-normalised' if normalized else 'raw'} features but the index "
                              f"{'normalised' if self.normalized else 'raw'} ones; extract them again with the index's model")
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != int(self.index.d):
            raise IndexFileError(f"{source}: features of shape {features.shape} do not match the index's dimension {self.index.d}")
        self.index.add(features)
        self.paths.extend(str(p) for p in paths)
        self.pids = np.concatenate([self.pids, np.asarray(pids, np.int64)])
        self.camids = np.concatenate([self.camids, np.asarray(camids, np.int64)])
        self.metadata["sources"] = [*self.metadata.get("sources", []), str(source)]

    def save(self, path: Path | str) -> Path:
        """Write the index atomically: a reader sees the previous file or this one, never half."""
        from reid.atomic import atomic_target

        faiss = import_faiss()
        path = Path(path)
        if len(self.paths) != self.size:
            raise IndexFileError(f"internal: {self.size} vectors but {len(self.paths)} paths; not writing {path}")
        blob = faiss.serialize_index(self.index)
        meta = {**self.metadata, "size": self.size}
        try:
            with atomic_target(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, faiss=blob, paths=np.asarray(self.paths, dtype=str), pids=self.pids,
                         camids=self.camids, metadata=np.asarray(json.dumps(meta)))
        except OSError as exc:
            raise IndexFileError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --output") from None
        self.source = path
        return path

    def describe(self) -> str:
        s = self.settings
        detail = {"flat": "exact", "hnsw": f"M {s['hnsw_m']}, efSearch {s['ef_search']}"}.get(
            s["kind"], f"nlist {s['nlist']}, nprobe {s['nprobe']}" + (f", PQ {s['pq_m']} bytes" if s["kind"] == "ivf-pq" else ""))
        return (f"{s['kind']} index ({detail}) of {self.size} x {self.index.d} {self.distance} features, "
                f"model {self.contract.get('backbone', '?')} weights {self.contract.get('weights_hash', '?')} "
                f"(contract {self.metadata['contract_hash']})")


def build_index(features: np.ndarray, paths: Sequence[str], pids: Sequence[int], camids: Sequence[int],
                normalized: bool, model_meta: dict[str, str], settings: IndexSettings | None = None,
                source: str = "") -> GalleryIndex:
    """A :class:`GalleryIndex` of ``features`` (from one model, described by ``model_meta``)."""
    faiss = import_faiss()
    settings = settings or IndexSettings()
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise IndexFileError(f"no features to index (shape {features.shape}); extract a gallery with `reid extract`")
    n, dim = features.shape
    chosen = settings.resolved(n, dim)
    index = _build_empty(chosen, dim, inner_product=bool(normalized))
    if not index.is_trained:
        sample = min(n, max(int(chosen.nlist or 1) * TRAIN_SAMPLE_PER_CELL, 256 * 64 if chosen.kind == "ivf-pq" else 0))
        rows = np.sort(np.random.default_rng(chosen.seed).choice(n, size=sample, replace=False))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed, ivf.cp.niter = int(chosen.seed), KMEANS_ITERATIONS
        index.train(features[rows])
    index.add(features)
    meta = {"format": INDEX_FORMAT, "contract": dict(model_meta), "contract_hash": contract_hash(model_meta),
            "normalized": bool(normalized), "settings": asdict(chosen), "sources": [source] if source else []}
    gallery = GalleryIndex(index, [str(p) for p in paths], np.asarray(pids), np.asarray(camids), meta)
    _apply_search_settings(index, gallery.settings)
    return gallery


def load_index(path: Path | str) -> GalleryIndex:
    """Read a file written by :meth:`GalleryIndex.save`; anything else is a clear error naming it."""
    import zipfile

    faiss = import_faiss()
    path = Path(path)
    if not path.is_file():
        raise IndexFileError(f"index file {path} does not exist; build it with `reid index build FEATURES.npz --output {path}`")
    rebuild = f"rebuild it with `reid index build FEATURES.npz --output {path}`"
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data.files]
            if missing:
                raise IndexFileError(f"{path} is not a `reid index` file (missing {', '.join(missing)}); {rebuild}")
            meta = json.loads(str(data["metadata"]))
            blob, paths = data["faiss"], [str(p) for p in data["paths"]]
            pids, camids = data["pids"], data["camids"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise IndexFileError(f"{path} is corrupt or not a `reid index` file ({exc}); {rebuild}") from None
    if meta.get("format") != INDEX_FORMAT:
        raise IndexFileError(f"{path} has format {meta.get('format')!r}, not {INDEX_FORMAT!r}; {rebuild}")
    if meta.get("contract_hash") != contract_hash(meta.get("contract", {})):
        raise IndexFileError(f"{path}: the stored model contract does not match its hash (the file was edited); {rebuild}")
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError with its C++ message
        raise IndexFileError(f"{path}: the FAISS index inside is corrupt ({str(exc).splitlines()[0][:200]}); {rebuild}") from None
    if not (index.ntotal == len(paths) == len(pids) == len(camids)):
        raise IndexFileError(f"{path}: {index.ntotal} vectors but {len(paths)} paths; {rebuild}")
    gallery = GalleryIndex(index, paths, pids, camids, meta, source=path)
    _apply_search_settings(index, gallery.settings)
    return gallery
