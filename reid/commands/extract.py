"""``reid extract``: features of a folder, a list file or a manifest split, into one ``.npz`` file.

The model is a ``reid train`` checkpoint, an ONNX export (ONNX Runtime) or a TorchScript export
(:func:`reid.deploy.embedder.load_model`); the file format is described in :mod:`reid.deploy.gallery`.
Corrupt images follow ``data.corrupt_images`` of ``--params`` (or ``--corrupt-images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors


def command(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Image files, folders (searched recursively) or .txt lists of paths.")] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (last.pt), .onnx or .ts export.")] = Path("pipeline/models/baseline/last.pt"),
    output: Annotated[Path, typer.Option("--output", help="The .npz feature file to write.")] = Path("features.npz"),
    glob: Annotated[str, typer.Option("--glob", help="Pattern inside folders (recursive with **).")] = "**/*",
    split: Annotated[Optional[str], typer.Option("--split", help="Embed a manifest split instead: query, gallery or train.")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest for --split (default: data.manifest of --params).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N.")] = "auto",
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Add the mirrored image's features (default: the model's eval.flip).")] = None,
    corrupt_images: Annotated[Optional[str], typer.Option("--corrupt-images", help="fail or skip (default: data.corrupt_images of --params, else fail).")] = None,
    params: Annotated[Path, typer.Option("--params", "-p", help="params.yaml for data.manifest and data.corrupt_images (optional).")] = Path("params.yaml"),
) -> None:
    """Embed images with a trained or exported model; write paths, features, ids and cameras to .npz."""
    with clean_errors():
        from reid.commands._common import config_from_cli
        from reid.deploy.embedder import load_model
        from reid.deploy.gallery import FeatureFile, save_features
        from reid.deploy.inputs import collect_images, labels_for, manifest_labels, manifest_split
        from reid.errors import ReidError

        config = config_from_cli(params, None, None) if params.is_file() else None
        policy = corrupt_images or (config.data.corrupt_images if config is not None else "fail")
        if policy not in ("fail", "skip"):
            raise ReidError(f"--corrupt-images must be fail or skip, got {policy!r}")
        where: Path | None = None
        if split is not None:
            if sources:
                raise ReidError("give either image sources or --split, not both")
            where = manifest or (config.data.manifest if config is not None else None)
            if where is None:
                raise ReidError("--split needs --manifest (or a params.yaml with data.manifest)")
            paths, pids, camids = manifest_split(where, split)
        else:
            paths = collect_images(list(sources or []), glob)
            # Labels from the manifest when there is one (folder data carries no identity in its names).
            where = manifest or (config.data.manifest if config is not None and Path(config.data.manifest).is_file() else None)
            pids, camids = (list(v) for v in zip(*labels_for(paths, manifest_labels(where) if where else None)))
        embedder = load_model(model, device=device, flip=flip)
        typer.echo(f"extracting {len(paths)} images with {embedder}", err=True)
        feats, kept = embedder.embed_paths(paths, batch_size=batch_size, policy=policy, progress=True)
        if len(kept) < len(paths):
            typer.secho(f"skipped {len(paths) - len(kept)} corrupt image(s) (data.corrupt_images=skip)",
                        fg=typer.colors.YELLOW, err=True)
        meta = {**embedder.metadata, "model_file": str(Path(model).resolve()), "flip_used": str(embedder.flip).lower()}
        if where is not None:  # `reid search` labels its queries from the same manifest
            meta["labels_manifest"] = str(Path(where).resolve())
        ff = FeatureFile(paths=[paths[i] for i in kept], features=feats, pids=[pids[i] for i in kept],  # type: ignore[arg-type]
                         camids=[camids[i] for i in kept], normalized=embedder.normalize, metadata=meta)  # type: ignore[arg-type]
        save_features(output, ff)
        typer.echo(f"wrote {output}: {feats.shape[0]} x {feats.shape[1]} float32 features "
                   f"({'L2-normalised' if embedder.normalize else 'raw'})")
