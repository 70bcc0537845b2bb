"""``reid synth``: write a synthetic Market-1501-format dataset, to try the toolkit without real data.

The images are drawn by :mod:`reid.data.synthetic` (learnable identities, camera changes, clutter,
occlusion) and the folder says it is synthetic in its README.txt. Point ``data.root`` at it (or
``reid prepare --root DIR``) with ``data.format: market1501``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from reid.commands._common import clean_errors


def command(
    output: Annotated[Path, typer.Argument(help="Folder to create (new, empty, or a previous `reid synth` output).")],
    num_train_ids: Annotated[int, typer.Option("--num-train-ids", min=1, help="Identities in bounding_box_train.")] = 100,
    num_test_ids: Annotated[int, typer.Option("--num-test-ids", min=1, help="Identities in query / bounding_box_test.")] = 100,
    cameras: Annotated[int, typer.Option("--cameras", min=2, max=9, help="Number of cameras.")] = 6,
    images_per_id: Annotated[int, typer.Option("--images-per-id", min=2, help="Images of every identity.")] = 12,
    height: Annotated[int, typer.Option("--height", min=16, help="Image height in pixels.")] = 128,
    width: Annotated[int, typer.Option("--width", min=8, help="Image width in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same files.")] = 0,
    domain: Annotated[int, typer.Option("--domain", min=0, help="0: the default dataset; 1, 2, ...: other people seen by "
                                        "cameras of another style (a cross-domain target).")] = 0,
) -> None:
    """Generate a synthetic re-identification dataset in the Market-1501 layout."""
    with clean_errors():
        from reid.data.datasets import read_dataset, statistics_table
        from reid.data.synthetic import generate_synthetic

        started = time.perf_counter()
        root = generate_synthetic(output, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                                  num_cameras=cameras, images_per_id=images_per_id, height=height, width=width,
                                  seed=seed, domain=domain)
        elapsed = time.perf_counter() - started
        splits = read_dataset("market1501", root)
        typer.echo(statistics_table(splits))
        for note in splits.notes:
            typer.echo(f"note: {note}")
        typer.echo(f"wrote a synthetic Market-1501-format dataset to {root} in {elapsed:.1f} s; "
                   f"use it with `reid prepare --root {root} --format market1501`")
