"""``reid search``: rank an extracted gallery for query images, print the top-k, draw the ranked lists.

The query images are embedded by the gallery's own model (recorded in the feature file) or by
``--model``, whose metadata must match the gallery's (:func:`reid.deploy.contract.check_same_model`).
The search is chunked (:func:`reid.deploy.gallery.topk_search`), so a gallery of 100k+ features is
ranked in bounded memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors


def command(
    queries: Annotated[list[Path], typer.Argument(help="Query images, folders or .txt lists of paths.")],
    gallery: Annotated[Path, typer.Option("--gallery", "-g", help="Feature file written by `reid extract`.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model to embed the queries (default: the one that extracted the gallery).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results per query.")] = 10,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Distance at or below which a result is called the same identity.")] = None,
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

        ff = load_features(gallery)
        check_writable(output)
        model_path = model or Path(ff.metadata.get("model_file", ""))
        if not model_path or not model_path.is_file():
            from reid.errors import ReidError

            raise ReidError(f"the model that extracted {gallery} ({model_path}) is not here; give it with --model")
        embedder = load_model(model_path, device=device, flip=ff.metadata.get("flip_used") == "true")
        check_same_model(ff.metadata, embedder.metadata, gallery, model_path)
        paths = collect_images(queries, glob)
        qf = embedder.embed(paths, normalize=ff.normalized)
        dist, idx = topk_search(qf, ff.features, top_k, cosine=ff.normalized, chunk_size=chunk_size,
                                device=resolve_device(device))
        labels_from = manifest or (Path(ff.metadata["labels_manifest"]) if ff.metadata.get("labels_manifest") else None)
        q_labels = labels_for(paths, manifest_labels(labels_from) if labels_from is not None else None)
        q_pids = [pid for pid, _ in q_labels]
        flags, legend = same_flags(dist, idx, threshold, q_pids, ff.pids)
        rows = []
        for qi, path in enumerate(paths):
            typer.echo(f"query {path}" + (f"  (id {q_pids[qi]})" if q_pids[qi] >= 0 else ""))
            hits = []
            for rank, (d, gi) in enumerate(zip(dist[qi], idx[qi]), start=1):
                verdict = "" if threshold is None else ("  same" if d <= threshold else "  different")
                pid = int(ff.pids[gi])
                match = "" if pid < 0 or q_pids[qi] < 0 else ("  right" if pid == q_pids[qi] else "  wrong")
                typer.echo(f"  {rank:3d}. {d:.4f}  {ff.paths[gi]}{verdict}{match}")
                hits.append({"rank": rank, "distance": float(d), "path": ff.paths[gi], "index": int(gi), "pid": pid,
                             **({"same_identity": pid == q_pids[qi]} if pid >= 0 and q_pids[qi] >= 0 else {}),
                             **({"same": bool(d <= threshold)} if threshold is not None else {})})
            rows.append({"query": path, "pid": q_pids[qi], "camid": q_labels[qi][1], "results": hits})
        picture = ranked_list_figure(paths, [[ff.paths[j] for j in row] for row in idx], None, flags, output)
        typer.echo(f"distance: {ff.distance}; picture: {picture} ({legend})")
        if results is not None:
            from reid.atomic import write_text_atomic

            write_text_atomic(results, json.dumps({"gallery": str(gallery), "distance": ff.distance, "queries": rows},
                                                  indent=2) + "\n")
            typer.echo(f"results: {results}")
