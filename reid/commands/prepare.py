"""``reid prepare``: validate the dataset folder once and freeze it into the manifest.

Reads ``data.format`` / ``data.root`` from the parameters (``--root`` / ``--format`` override them;
a relative root is anchored at ``DVC_ROOT`` inside a DVC stage, else at the working directory),
prints the dataset statistics, and writes ``data.manifest`` (``--output``) plus its statistics beside
it (``statistics.json`` for ``manifest.json``, the DVC ``prepare`` stage's metrics; else
``<stem>.statistics.json``). With ``--check-images`` every image is decoded
first, and ``data.corrupt_images`` decides what a corrupt file does: ``fail`` stops with the list of
bad files, ``skip`` leaves them out of the manifest with a warning. It also warns about what would
spoil training or evaluation later (:mod:`reid.data.checks`): no query with a cross-camera match,
implausible camera labels, identities with fewer than K images.

With ``data.sources`` the listed datasets are read instead of ``data.format``/``data.root`` and merged
into one manifest, identities and cameras offset per source (:mod:`reid.data.sources`). Every
cross-domain target of ``evaluate.targets`` is read too, before anything is written (a missing one is
an error naming it), and its manifest written to ``targets/<name>.json`` beside ``data.manifest``
(:mod:`reid.targets`); ``--target NAME`` prepares only the named ones, ``--no-targets`` none (preparing
another dataset then neither rescans nor rewrites the targets).

A missing dataset is an error, never a silent switch to synthetic data: numbers from synthetic
images must not be mistaken for Market-1501 results. The error says how to try the toolkit on
synthetic data instead (the quickstart).
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from reid.commands._common import clean_errors, config_from_cli
from reid.data.datasets import FORMATS

if TYPE_CHECKING:
    from reid.data.samples import DatasetSplits

# Every layout `reid prepare --format` accepts, from the one list (reid.data.datasets.FORMATS): a typo is
# refused by the option itself, naming --format and the choices, and `--help` lists them all.
FormatChoice = enum.Enum("FormatChoice", {name: name for name in FORMATS}, type=str)  # type: ignore[misc]

QUICKSTART_HINT = ("No dataset at hand? `bash scripts/quickstart.sh` runs the whole pipeline on a small synthetic "
                   "dataset (or `reid synth DIR`, then `reid prepare --root DIR`).")


def _yaml_string(value: str) -> str:
    """A string as a YAML scalar for a ``key=value`` override (a path like ``123`` or ``on`` stays a string)."""
    return json.dumps(value)


def dataset_root(root: Path) -> Path:
    """``data.root`` made absolute: relative paths are anchored at ``DVC_ROOT`` inside a DVC stage, else
    at the working directory.

    Under ``dvc exp run --temp`` the stage runs in a temporary copy of the repository, where a
    relative root such as ``../shared/data/...`` (or a git-ignored ``data/`` folder) does not exist;
    ``DVC_ROOT`` still names the real repository, like the anchoring of the tracking paths.
    """
    root = Path(root).expanduser()
    if root.is_absolute():
        return root
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()) / root


def statistics_path(manifest: Path) -> Path:
    """Where the statistics of ``manifest`` go: ``statistics.json`` beside ``manifest.json`` (the pipeline's
    metrics file), ``<stem>.statistics.json`` beside any other name, so that several datasets prepared
    into one folder (``-o data.manifest=prep/duke.json``, ``prep/veri.json``) keep their own."""
    manifest = Path(manifest)
    name = "statistics.json" if manifest.name == "manifest.json" else f"{manifest.stem}.statistics.json"
    return manifest.parent / name


def _drop_corrupt(splits: "DatasetSplits", policy: str, threads: int, decode: bool = True) -> list[str]:
    """Find the corrupt images (``decode``: every image is decoded; else only the zero-byte files, which
    the sizes show at no cost); with ``skip`` remove them from ``splits`` and return warnings."""
    from reid.data.images import MAX_LISTED, find_corrupt, find_empty, without_fix
    from reid.data.samples import SPLIT_NAMES
    from reid.errors import CorruptImageError

    bad: dict[str, list[tuple[int, str]]] = {}
    for name in SPLIT_NAMES:
        found = find_corrupt(splits.split(name), threads=threads) if decode else find_empty(splits.split(name))
        if found:
            bad[name] = found
    messages = [msg for found in bad.values() for _, msg in found]
    if not messages:
        return []
    if policy == "fail":
        shown = "\n  ".join(messages[:MAX_LISTED])
        shown += f"\n  ... and {len(messages) - MAX_LISTED} more" if len(messages) > MAX_LISTED else ""
        what = "corrupt image(s)" if decode else "empty (0-byte) image file(s)"
        raise CorruptImageError(f"{len(messages)} {what} (data.corrupt_images=fail):\n  {shown}\n"
                                f"Replace or delete them, or set data.corrupt_images=skip to leave them out of the manifest.")
    for name, found in bad.items():
        drop = {index for index, _ in found}
        setattr(splits, name, [s for i, s in enumerate(splits.split(name)) if i not in drop])
        if not splits.split(name):
            raise CorruptImageError(f"every image of the {name} split is corrupt; nothing left to prepare")
    return [f"skipped corrupt image: {without_fix(msg)}" for msg in messages]


def command(
    params: Annotated[Path, typer.Option("--params", "-p", help="Parameter file (data.format, data.root, data.manifest).")] = Path("params.yaml"),
    variant: Annotated[Optional[str], typer.Option("--variant", help="Variant of the parameter file to merge.")] = None,
    override: Annotated[
        Optional[list[str]], typer.Option("--override", "-o", help="key=value override, repeatable (e.g. -o data.root=/data/Market-1501).")
    ] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Dataset folder (overrides data.root).")] = None,
    format: Annotated[
        Optional[FormatChoice], typer.Option("--format", help="Dataset layout (overrides data.format); see docs/DATASETS.md.")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Manifest to write (overrides data.manifest).")] = None,
    check_images: Annotated[
        bool, typer.Option("--check-images/--no-check-images", help="Decode every image to find corrupt files (slower).")
    ] = False,
    target: Annotated[
        Optional[list[str]], typer.Option("--target", help="Prepare only this cross-domain target of evaluate.targets "
                                          "(repeatable; default: every target). The others keep their manifests.")
    ] = None,
    targets: Annotated[
        bool, typer.Option("--targets/--no-targets", help="Also (re)prepare the cross-domain targets of evaluate.targets; "
                           "--no-targets prepares the training data only and leaves targets/ as it is.")
    ] = True,
) -> None:
    """Check the dataset, print its statistics and write the manifest that training and evaluation read."""
    with clean_errors():
        from reid.data.datasets import read_dataset, reader_options, statistics_table
        from reid.atomic import write_text_atomic
        from reid.data.manifest import build_manifest, write_manifest
        from reid.errors import DatasetError

        overrides = list(override or [])
        if root is not None:
            overrides.append(f"data.root={_yaml_string(str(root))}")
        if format is not None:
            overrides.append(f"data.format={_yaml_string(format.value)}")
        if output is not None:
            overrides.append(f"data.manifest={_yaml_string(str(output))}")
        config = config_from_cli(params, variant, overrides)
        data = config.data
        root_path = dataset_root(data.root)

        def read(fmt: str, folder: Path, **where: Any) -> "DatasetSplits":  # every dataset of the run is read alike
            return read_dataset(fmt, folder, **reader_options(data), **where)

        try:
            if data.sources:  # joint training: data.format/root are not read
                from reid.data.sources import read_sources

                splits = read_sources(data.sources, read, dataset_root)
            else:
                splits = read(data.format, root_path)
        except DatasetError as exc:
            if not data.sources and not root_path.exists():
                raise DatasetError(f"{exc}\n{QUICKSTART_HINT}") from None
            raise
        # Cross-domain targets are read now too: a missing one fails here, before any training.
        from reid.targets import read_target_datasets, read_targets, select_targets, write_target_manifests

        declared = read_targets(params)
        chosen = select_targets(declared, target, targets, str(params))
        prepared_targets = read_target_datasets(chosen, read, dataset_root)
        warnings = list(splits.warnings)
        # Zero-byte files always (their sizes are read anyway); every other corrupt file with --check-images.
        threads = max(1, min(8, os.cpu_count() or 1))
        warnings += _drop_corrupt(splits, data.corrupt_images, threads, decode=check_images)
        # Printed after corrupt images were dropped: the table shows what statistics.json records.
        typer.echo(statistics_table(splits))
        for note in splits.notes:
            typer.echo(f"note: {note}")

        from reid.data.checks import dataset_warnings

        manifest = build_manifest(splits)
        from reid.data.duplicates import duplicate_warnings

        warnings += dataset_warnings(manifest, data.instances_per_id) + duplicate_warnings(manifest)
        for warning in warnings:
            typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
        path = write_manifest(manifest, data.manifest)
        stats_path = statistics_path(path)
        stats: dict[str, object] = {**manifest.statistics, "num_classes": manifest.num_classes}
        write_text_atomic(stats_path, json.dumps(stats, indent=2) + "\n")
        typer.echo(f"wrote {path} ({manifest.num_classes} training identities, content hash "
                   f"{manifest.content_hash[:12]}) and {stats_path}")
        if not targets:
            return
        for name, target_path, target_manifest in write_target_manifests(prepared_targets, data.manifest, declared):
            counts = target_manifest.statistics
            typer.echo(f"target {name}: wrote {target_path} ({counts['query']['images']} query / "
                       f"{counts['gallery']['images']} gallery images, content hash {target_manifest.content_hash[:12]})")
