"""``reid index``: a FAISS index over an extracted gallery (``build``), appended to without a rebuild (``add``).

The logic lives in :mod:`reid.deploy.index`; ``reid search QUERIES --index FILE`` queries the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors

app = typer.Typer(help="Build and grow a FAISS gallery index (exact or approximate) for `reid search --index`.",
                  no_args_is_help=True)


@app.command("build")
def build(
    features: Annotated[Path, typer.Argument(help="Feature file written by `reid extract` (.npz).")],
    output: Annotated[Path, typer.Option("--output", help="Index file to write (e.g. gallery.index).")],
    kind: Annotated[str, typer.Option("--kind", help="auto (exact below 50k vectors, else hnsw), flat (exact), hnsw, ivf, "
                                                       "ivf-sq8 or ivf-pq (compressed codes for very large galleries).")] = "auto",
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", min=4, help="hnsw: links per vector.")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=8, help="hnsw: candidates while building.")] = 80,
    ef_search: Annotated[int, typer.Option("--ef-search", min=1, help="hnsw: candidates per query (recall vs speed).")] = 128,
    nlist: Annotated[Optional[int], typer.Option("--nlist", min=1, help="ivf*: k-means cells (default about 2 sqrt(N)).")] = None,
    nprobe: Annotated[int, typer.Option("--nprobe", min=1, help="ivf*: cells scanned per query (recall vs speed).")] = 64,
    pq_m: Annotated[int, typer.Option("--pq-m", min=1, help="ivf-pq: bytes per vector (must divide the dimension).")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the k-means training sample.")] = 0,
) -> None:
    """Index a gallery's features; the model's contract hash is stored so other models' queries are refused."""
    with clean_errors():
        import time

        from reid.deploy.gallery import load_features
        from reid.deploy.index import IndexSettings, build_index, import_faiss

        import_faiss()
        ff = load_features(features)
        started = time.perf_counter()
        gallery = build_index(ff.features, ff.paths, ff.pids, ff.camids, ff.normalized, ff.metadata,
                              IndexSettings(kind=kind, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                            ef_search=ef_search, nlist=nlist, nprobe=nprobe, pq_m=pq_m, seed=seed),
                              source=str(features))
        built = time.perf_counter() - started
        gallery.save(output)
        typer.echo(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB): {gallery.describe()}; built in {built:.1f} s")


@app.command("add")
def add(
    index: Annotated[Path, typer.Argument(help="Index file written by `reid index build`.")],
    features: Annotated[list[Path], typer.Argument(help="Feature files of new crops (`reid extract`, same model).")],
) -> None:
    """Append new crops' features to an index without rebuilding it (the file is replaced atomically)."""
    with clean_errors():
        from reid.deploy.gallery import load_features
        from reid.deploy.index import AUTO_EXACT_LIMIT, load_index

        gallery = load_index(index)
        before = gallery.size
        for path in features:  # all checked and added in memory first: a refused file leaves the index as it was
            ff = load_features(path)
            gallery.add(ff.features, ff.paths, ff.pids, ff.camids, ff.normalized, ff.metadata, path)
        gallery.save(index)
        typer.echo(f"added {gallery.size - before} vectors: {gallery.describe()}")
        if gallery.settings["kind"] == "flat" and gallery.size >= AUTO_EXACT_LIMIT:
            typer.secho(f"note: the exact index now holds {gallery.size} vectors; past {AUTO_EXACT_LIMIT} an approximate "
                        "one answers faster (reid index build --kind hnsw)", fg=typer.colors.YELLOW, err=True)


@app.command("info")
def info(index: Annotated[Path, typer.Argument(help="Index file.")]) -> None:
    """What an index holds: kind, size, model, search settings."""
    with clean_errors():
        from reid.deploy.index import load_index

        gallery = load_index(index)
        typer.echo(gallery.describe())
        typer.echo(f"sources: {', '.join(gallery.metadata.get('sources', [])) or '?'}")
