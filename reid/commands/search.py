"""``reid search``: rank an extracted gallery for query images, print the top-k, draw the ranked lists.

The query images are embedded by the gallery's own model (recorded in the feature file) or by
``--model``, whose metadata must match the gallery's (:func:`reid.deploy.contract.check_same_model`).
The search is chunked (:func:`reid.deploy.gallery.topk_search`), so a gallery of 100k+ features is
ranked in bounded memory. With ``--index`` (a file of ``reid index build``) the gallery is a FAISS index
instead (:mod:`reid.deploy.index`): exact or approximate, for galleries of millions of crops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors


def command(
    queries: Annotated[list[Path], typer.Argument(help="Query images, folders or .txt lists of paths.")],
    gallery: Annotated[Optional[Path], typer.Option("--gallery", "-g", help="Feature file written by `reid extract` (exact scan).")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Index file written by `reid index build` (instead of --gallery).")] = None,
    ef_search: Annotated[Optional[int], typer.Option("--ef-search", min=1, help="--index hnsw: candidates per query (default: the index's).")] = None,
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", min=1, help="--index ivf*: cells scanned per query (default: the index's).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model to embed the queries (default: the one that extracted the gallery).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results per query.")] = 10,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Distance at or below which a result is called the same identity.")] = None,
    threshold_file: Annotated[Optional[Path], typer.Option("--threshold-file", help="threshold.json of `reid evaluate`: the "
                                                           "distance at --far measured on held-out identities (instead of --threshold).")] = None,
    far: Annotated[float, typer.Option("--far", help="With --threshold-file: the false-match rate whose threshold is used.")] = 1e-3,
    output: Annotated[Path, typer.Option("--output", help="Ranked-list picture (PNG).")] = Path("search.png"),
    results: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON.")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Gallery rows ranked at once (bounds memory).")] = 65536,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    glob: Annotated[str, typer.Option("--glob", help="Pattern inside query folders.")] = "**/*",
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest whose labels mark right and wrong hits "
                                                     "(default: the one the gallery was extracted with, if any).")] = None,
) -> None:
    """Search a gallery by image: top-k with distances, a ranked-list picture, optional same/different threshold."""
    with clean_errors():
        from reid.deploy.contract import check_same_model
        from reid.deploy.embedder import load_model
        from reid.deploy.gallery import load_features, same_flags, topk_search
        from reid.deploy.inputs import collect_images, labels_for, manifest_labels
        from reid.deploy.export import check_writable
        from reid.engine.device import resolve_device
        from reid.evaluation.plots import ranked_list_figure

        from reid.errors import ReidError

        if (gallery is None) == (index is None):
            raise ReidError("give the gallery as --gallery FEATURES.npz (exact scan) or --index FILE (reid index build), one of them")
        if index is not None:
            from reid.deploy.index import load_index

            ff = load_index(index)
            ff.set_search(ef_search, nprobe)
            source: Path = index
        else:
            ff = load_features(gallery)  # type: ignore[assignment, arg-type]
            source = gallery  # type: ignore[assignment]
        meta = ff.contract if index is not None else ff.metadata  # type: ignore[attr-defined]
        check_writable(output)
        model_path = model or Path(meta.get("model_file", ""))
        if not model_path or not model_path.is_file():
            raise ReidError(f"the model that extracted {source} ({model_path}) is not here; give it with --model")
        embedder = load_model(model_path, device=device, flip=meta.get("flip_used") == "true")
        check_same_model(meta, embedder.metadata, source, model_path)
        if threshold_file is not None:
            if threshold is not None:
                raise ReidError("give --threshold or --threshold-file, not both")
            threshold = _threshold_for(threshold_file, far, embedder.metadata, ff.distance)
        paths = collect_images(queries, glob)
        qf = embedder.embed(paths, normalize=ff.normalized)
        if index is not None:
            dist, idx = ff.search(qf, top_k)  # type: ignore[attr-defined]
        else:
            dist, idx = topk_search(qf, ff.features, top_k, cosine=ff.normalized, chunk_size=chunk_size,  # type: ignore[attr-defined]
                                    device=resolve_device(device))
        labels_from = manifest or (Path(meta["labels_manifest"]) if meta.get("labels_manifest") else None)
        q_labels = labels_for(paths, manifest_labels(labels_from) if labels_from is not None else None)
        q_pids = [pid for pid, _ in q_labels]
        flags, legend = same_flags(dist, idx, threshold, q_pids, ff.pids)
        rows = []
        for qi, path in enumerate(paths):
            typer.echo(f"query {path}" + (f"  (id {q_pids[qi]})" if q_pids[qi] >= 0 else ""))
            hits = []
            for rank, (d, gi) in enumerate(zip(dist[qi], idx[qi]), start=1):
                if gi < 0:  # an approximate index found fewer than --top-k
                    break
                verdict = "" if threshold is None else ("  same" if d <= threshold else "  different")
                pid = int(ff.pids[gi])
                match = "" if pid < 0 or q_pids[qi] < 0 else ("  right" if pid == q_pids[qi] else "  wrong")
                typer.echo(f"  {rank:3d}. {d:.4f}  {ff.paths[gi]}{verdict}{match}")
                hits.append({"rank": rank, "distance": float(d), "path": ff.paths[gi], "index": int(gi), "pid": pid,
                             **({"same_identity": pid == q_pids[qi]} if pid >= 0 and q_pids[qi] >= 0 else {}),
                             **({"same": bool(d <= threshold)} if threshold is not None else {})})
            rows.append({"query": path, "pid": q_pids[qi], "camid": q_labels[qi][1], "results": hits})
        picture = ranked_list_figure(paths, [[ff.paths[j] for j in row if j >= 0] for row in idx], None, flags, output)
        typer.echo(f"distance: {ff.distance}; picture: {picture} ({legend})")
        if results is not None:
            from reid.atomic import write_text_atomic

            write_text_atomic(results, json.dumps({"gallery": str(source), "distance": ff.distance, "queries": rows},
                                                  indent=2) + "\n")
            typer.echo(f"results: {results}")


def _threshold_for(path: Path, far: float, model_meta: dict[str, str], distance: str) -> float:
    """The distance at ``far`` of a ``threshold.json``, refused when it was measured on another model or distance."""
    from reid.errors import ReidError
    from reid.evaluation.threshold import load_thresholds

    found = load_thresholds(path)
    measured = found.model.get("weights_hash")
    if measured and measured != model_meta.get("weights_hash"):
        raise ReidError(f"{path} was measured on another model (weights_hash {measured}, this model "
                        f"{model_meta.get('weights_hash')}); evaluate this model to get its threshold")
    point = found.at(far)
    value = point.threshold
    if found.distance == "euclidean" and found.normalize and distance == "cosine":
        value = point.threshold / 2.0  # on unit vectors |q - g|^2 = 2 (1 - q.g): the same cut on the cosine scale
    elif found.distance != distance:
        raise ReidError(f"{path} is a threshold on the {found.distance} distance; this gallery is ranked by {distance}")
    typer.echo(f"threshold {value:.4f} ({distance} distance) at FAR {far:g} (TAR {100 * point.tar:.1f}% on "
               f"{found.measured_on or 'held-out identities'})")
    return value
