"""``reid weights fetch BACKBONE``: put a backbone's ImageNet weights into torch hub's cache.

For clusters whose GPU nodes have no internet: run it on a login node (or any machine with internet),
then copy the printed file into the same folder on the GPU nodes (``$TORCH_HOME/hub/checkpoints``,
``~/.cache/torch/hub/checkpoints`` by default), or point ``TORCH_HOME`` at a shared folder. ``reid train``
with ``model.pretrained=imagenet`` then starts from it without the network. The logic (URLs, hash
check, timeout) is :func:`reid.models.pretrained.fetch_imagenet`.
"""

from __future__ import annotations

import enum
from typing import Annotated, get_args

import typer

from reid.commands._common import clean_errors
from reid.config import ModelConfig

Backbone = enum.Enum("Backbone", {name: name for name in get_args(ModelConfig.model_fields["backbone"].annotation)},
                     type=str)

app = typer.Typer(help="ImageNet starting weights in torch hub's cache (offline GPU nodes).", no_args_is_help=True)


@app.command("fetch")
def fetch(
    backbone: Annotated[Backbone, typer.Argument(help="model.backbone whose ImageNet weights to fetch.")],
) -> None:
    """Download BACKBONE's ImageNet weights into torch hub's cache (if missing) and print the file and folder."""
    with clean_errors():
        from reid.models.pretrained import fetch_imagenet, imagenet_cache_path

        name = backbone.value
        present = imagenet_cache_path(name).is_file()
        path = fetch_imagenet(name)
        typer.echo(f"{'already in the cache' if present else 'downloaded'}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        typer.echo(f"offline machines: copy {path.name} into their torch hub cache folder, the same as here:")
        typer.echo(str(path.parent))
