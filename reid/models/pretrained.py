"""Starting weights: ImageNet through torch hub's cache (torchvision, IBN-Net), or a local file; never pickle.

``model.pretrained``:

* ``none``: keep the random initialisation.
* ``imagenet``: torchvision's ``IMAGENET1K_V1`` ResNet weights (the ones the published strong-baseline
  numbers start from; IBN-Net's release for the IBN-a backbones, see below), read from torch hub's
  cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch/hub/checkpoints`` by default), and
  downloaded there (``torch.hub.download_url_to_file``, hash prefix checked) when missing. The
  download has a socket timeout, so a machine without internet fails in seconds, before training
  (:func:`require_pretrained`), with a :class:`CheckpointError` that names the file, the folder to put
  it in and both fixes (:func:`offline_message`), instead of hanging. ``reid weights fetch BACKBONE``
  (:func:`fetch_imagenet`) fills the cache on a machine with internet.
* ``file``: ``model.pretrained_path``, loaded with ``weights_only=True``. Accepted: a raw backbone
  state dict in torchvision layout (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``fc.*``),
  the same inside ``{"state_dict": ...}`` or ``{"model": ...}``, with or without DataParallel's
  ``module.`` prefix, reid-strong-baseline's layout (``base.*``, ``bottleneck.*``), the
  original IBN-Net release (``layer1.0.bn1.IN.weight``), or a reid checkpoint.

IBN-a and ``imagenet``: torchvision has no IBN-a weights, and loading the plain ResNet would leave the
13 (ResNet50) / 30 (ResNet101) split ``bn1`` layers at their initial values. ``resnet50_ibn_a`` and
``resnet101_ibn_a`` therefore load IBN-Net's own ImageNet release (``resnet50_ibn_a-d9d0bb7b.pth``,
``resnet101_ibn_a-59ea0ac6.pth``, the weights the published IBN-a ReID results start from), through the
same torch hub cache folder and the same hash-prefix check as torchvision's files. Their key names are
IBN-Net's ``resnet_ibn_a`` (``conv1``, ``bn1``, ``layer1.0.bn1.IN.weight``, ``layer1.0.bn1.BN.running_mean``,
``fc``), which is our backbone's layout after :func:`to_model_keys` (``reid/models/ibn.py`` keeps the
``IN``/``BN`` names on purpose). A file copied into the cache by hand (the offline route) has its
SHA-256 prefix checked against its name, as a download would.

Backbone family: a state dict holding IBN-a tensors (``bn1.IN``) is refused for a plain ResNet and a
plain one for an IBN-a backbone, before anything is copied: either way a quarter of the first
normalisation layers would be silently left as initialised. ``imagenet`` weights must moreover cover
every backbone tensor (a file that does not is refused, not half-loaded).

Everything is copied by :func:`load_matching` (reid-strong-baseline's ``load_param``): every tensor whose
name and shape match, except the classifier (the class count differs between datasets) and the ImageNet
``fc``. It returns a :class:`LoadReport`, which is also logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from reid.config import ModelConfig
from reid.checkpoint import FORMAT, load_state
from reid.errors import CheckpointError
from reid.models.backbones import infer_backbone_name, is_ibn, plain_name
from reid.models.reid_model import ReIDModel

log = logging.getLogger(__name__)

#: Prefixes never copied from a pretrained file: our classifier and the ImageNet head.
HEAD_PREFIXES: tuple[str, ...] = ("classifier", "fc")
#: Seconds a stalled download may wait on the network before giving up.
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass
class LoadReport:
    """What :func:`load_matching` did with each tensor.

    ``loaded``: copied into the model. ``skipped``: present in the model but not copied, with the
    reason (``excluded (classifier)``, a shape mismatch). ``unexpected``: in the file but not in the
    model. ``missing``: in the model but not loaded from the file (left as initialised).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self, limit: int = 6) -> str:
        """One paragraph for the log: counts, then the first few names of each kind."""

        def some(names: list[str]) -> str:
            return ", ".join(names[:limit]) + (f", ... (+{len(names) - limit})" if len(names) > limit else "")

        lines = [f"{self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, "
                 f"unexpected {len(self.unexpected)}, left as initialised {len(self.missing)}"]
        if self.skipped:
            lines.append("  skipped: " + some([f"{k} ({r})" for k, r in self.skipped.items()]))
        if self.unexpected:
            lines.append("  not in the model: " + some(self.unexpected))
        if self.missing:
            lines.append("  not in the file: " + some(self.missing))
        return "\n".join(lines)


def _excluded(key: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if key == prefix or key.startswith(prefix + "."):
            return prefix
    return None


def load_matching(
    model_or_module: nn.Module,
    state_dict: Mapping[str, Any],
    exclude_prefixes: tuple[str, ...] = ("classifier",),
    source: str = "state dict",
) -> LoadReport:
    """Copy every tensor of ``state_dict`` whose name and shape match, except ``exclude_prefixes``.

    Names are compared as they are (map them first, see :func:`to_model_keys`). Values are cast to the
    model's dtype and device by ``load_state_dict``.
    """
    own = model_or_module.state_dict()
    report = LoadReport(source=source)
    chosen: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix = _excluded(key, exclude_prefixes)
        if prefix is not None:
            report.skipped[key] = f"excluded ({prefix})"
        elif key not in own:
            report.unexpected.append(key)
        elif not isinstance(value, Tensor):
            report.skipped[key] = f"not a tensor ({type(value).__name__})"
        elif value.shape != own[key].shape:
            report.skipped[key] = f"shape {list(value.shape)} in file, {list(own[key].shape)} in model"
        else:
            chosen[key] = value
    model_or_module.load_state_dict(chosen, strict=False)
    report.loaded = list(chosen)
    report.missing = [k for k in own if k not in chosen and k not in report.skipped]
    return report


# -- reading weights files ----------------------------------------------------------------------------
def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def to_model_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename torchvision / IBN-Net / seed-project / DataParallel keys into :class:`ReIDModel` names.

    ``conv1.*``/``bn1.*`` -> ``backbone.stem.*``, ``layerN.*`` -> ``backbone.layerN.*``, ``base.`` (the
    reid-strong-baseline's backbone) is dropped, its ``bottleneck.*`` (BN-neck) becomes ``neck.*``; names already in our
    layout and anything unknown are kept (the latter is reported as unexpected).
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        k = _strip(key, "module.")
        if k.startswith("base."):
            k = k[len("base."):]
        elif k.startswith("bottleneck."):
            k = "neck." + k[len("bottleneck."):]
        if k.startswith(("conv1.", "bn1.")):
            k = "backbone.stem." + k
        elif k.startswith("layer") and k[5:6].isdigit():
            k = "backbone." + k
        out[k] = value
    return out


def _unwrap(obj: Any, source: str) -> dict[str, Any]:
    """The state dict inside a reid checkpoint or a ``{"state_dict"|"model": ...}`` wrapper."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj.get("format") == FORMAT:
            obj = obj.get("model")
            continue
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{source} holds no state dict of tensors (top level: {keys}); expected a state dict, "
            "{'state_dict': ...}, {'model': ...} or a reid checkpoint"
        )
    return dict(obj)


def _check_architecture(state: Mapping[str, Any], model: ReIDModel, source: str) -> None:
    """Refuse weights of another depth or family up front: loading 'what fits' would half-load the model."""
    saved = infer_backbone_name(state, "backbone.")
    if saved is not None and plain_name(saved) != plain_name(model.backbone_name):
        raise CheckpointError(
            f"{source} holds {saved} weights but model.backbone is {model.backbone_name}; "
            f"use weights of a {plain_name(model.backbone_name)} or set model.backbone to match"
        )
    if saved is not None and is_ibn(saved) != is_ibn(model.backbone_name):
        family = {True: "IBN-a", False: "plain ResNet"}
        raise CheckpointError(
            f"{source} holds {family[is_ibn(saved)]} weights ({saved}) but model.backbone is "
            f"{model.backbone_name} ({family[is_ibn(model.backbone_name)]}): the split bn1 layers of layers 1-3 "
            f"would not load. Use {saved} weights with model.backbone={saved}, or weights of a "
            f"{model.backbone_name}"
        )


def _apply(model: ReIDModel, state: Mapping[str, Any], source: str) -> LoadReport:
    state = to_model_keys(state)
    _check_architecture(state, model, source)
    report = load_matching(model, state, exclude_prefixes=HEAD_PREFIXES, source=source)
    if not report.loaded:
        raise CheckpointError(
            f"no tensor of {source} matches {model.backbone_name} (first keys: {list(state)[:5]}); "
            "is it a ResNet state dict?"
        )
    return report


# -- ImageNet through torch hub's cache: torchvision's ResNets, IBN-Net's release for IBN-a -------------
#: Where IBN-Net publishes its ImageNet weights (``<base>/<file>``).
IBN_RELEASE_BASE = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0"
#: IBN-a backbone -> IBN-Net's release file; the part after ``-`` is the SHA-256 prefix torch hub checks.
IBN_A_RELEASES: dict[str, str] = {
    "resnet50_ibn_a": "resnet50_ibn_a-d9d0bb7b.pth",
    "resnet101_ibn_a": "resnet101_ibn_a-59ea0ac6.pth",
}


def imagenet_weights(backbone: str) -> Any:
    """torchvision's ``ResNetXX_Weights.IMAGENET1K_V1`` for a plain backbone."""
    import torchvision.models as tvm

    depth = plain_name(backbone).removeprefix("resnet")
    enum = getattr(tvm, f"ResNet{depth}_Weights", None)
    if enum is None:
        raise CheckpointError(f"torchvision has no ImageNet weights for {backbone}")
    return enum.IMAGENET1K_V1


def imagenet_url(backbone: str) -> str:
    """The ImageNet weights' URL: IBN-Net's release for IBN-a, torchvision's for a plain ResNet."""
    if is_ibn(backbone):
        if backbone not in IBN_A_RELEASES:
            raise CheckpointError(f"IBN-Net publishes no ImageNet weights for {backbone}; use model.pretrained=file "
                                  "or model.pretrained=none")
        return f"{IBN_RELEASE_BASE}/{IBN_A_RELEASES[backbone]}"
    return str(imagenet_weights(backbone).url)


def imagenet_cache_path(backbone: str) -> Path:
    """Where torch hub caches (and torchvision's ``get_state_dict`` looks for) a backbone's weights."""
    filename = os.path.basename(urlparse(imagenet_url(backbone)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub opens the URL without a timeout; a black-holed network would otherwise hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _check_hash_prefix(path: Path) -> None:
    """The SHA-256 prefix in a hub file name (``name-<hex>.pth``) must match the file, as after a download.

    torch hub checks it only when it downloads; a file copied into the cache by hand (what the offline
    message asks for) would otherwise be trusted whatever it holds.
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    if not match or not match.group(1):
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise CheckpointError(
            f"{path} does not match the SHA-256 prefix in its name ({match.group(1)}; the file's is "
            f"{digest.hexdigest()[:len(match.group(1))]}): a partial or different file. Delete it and let it "
            "download again, or copy the original release file there"
        )


def offline_message(backbone: str, path: Path, url: str, reason: str) -> str:
    """What to do when ImageNet weights are neither cached nor downloadable: the file, the folder, both fixes."""
    return (
        f"model.pretrained=imagenet needs the ImageNet weights of {backbone}, {path.name}, which are not in torch "
        f"hub's cache folder {path.parent} and could not be downloaded ({reason}). Either:\n"
        f"  1. on a machine with internet run `reid weights fetch {backbone}` (it downloads {url} and prints the "
        f"folder), then copy it here as {path} (or set TORCH_HOME to a folder whose "
        "hub/checkpoints/ holds it), or\n"
        "  2. train from scratch: `dvc exp run -S model.pretrained=none` (or `reid train -o model.pretrained=none`). "
        "The published numbers start from ImageNet weights; from scratch they are far lower.\n"
        "A copy kept elsewhere: model.pretrained=file with model.pretrained_path=<file>."
    )


def fetch_imagenet(backbone: str) -> Path:
    """The ImageNet weights file of ``backbone`` in torch hub's cache, downloaded (hash-checked) if missing.

    Only the file is fetched (nothing is loaded), so it serves both the start of training and
    ``reid weights fetch`` on a login node whose GPU nodes have no internet.
    """
    url = imagenet_url(backbone)
    path = imagenet_cache_path(backbone)
    if path.is_file():
        if is_ibn(backbone):  # a hand-copied IBN-Net file (torchvision's cached files are trusted, as by torchvision)
            _check_hash_prefix(path)
        return path
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=False)
    except Exception as exc:  # URLError, timeout, HTTP, disk or hash errors: all mean "not available"
        raise CheckpointError(offline_message(backbone, path, url, f"{type(exc).__name__}: {exc}")) from None
    return path


def imagenet_state_dict(backbone: str) -> tuple[dict[str, Any], Path]:
    """The cached (or freshly downloaded, hash-checked) ImageNet state dict and its file."""
    path = fetch_imagenet(backbone)
    return load_state(path), path


def require_pretrained(config: ModelConfig, backbone: str | None = None) -> Path | None:
    """Make sure the starting weights ``config`` asks for are on this machine; their file, or None.

    Called by the trainer before anything else (no MLflow run, no output), so an offline node fails in
    seconds with :func:`offline_message` instead of after reading the dataset. ``imagenet`` downloads the
    file into torch hub's cache when it is missing and the network allows.
    """
    if config.pretrained == "imagenet":
        return fetch_imagenet(backbone or config.backbone)
    if config.pretrained == "file":
        if config.pretrained_path is None or not Path(config.pretrained_path).is_file():
            raise CheckpointError(
                f"model.pretrained=file but model.pretrained_path={config.pretrained_path} is not a file; point it "
                "at a .pth state dict, or use model.pretrained=imagenet / none"
            )
        return Path(config.pretrained_path)
    return None


def load_pretrained(model: ReIDModel, config: ModelConfig) -> LoadReport | None:
    """Load ``config.pretrained`` weights into ``model`` (see the module docstring); None for ``none``."""
    if config.pretrained == "none":
        return None
    if config.pretrained == "imagenet":
        state, path = imagenet_state_dict(model.backbone_name)
        report = _apply(model, state, f"ImageNet {model.backbone_name} weights ({path})")
        # ImageNet weights are the whole backbone or nothing (old torchvision files lack only the counters).
        absent = [k for k in report.missing if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
        if absent:
            raise CheckpointError(
                f"{path} leaves {len(absent)} backbone tensors of {model.backbone_name} unloaded "
                f"({', '.join(absent[:4])}{', ...' if len(absent) > 4 else ''}): not the ImageNet weights of this "
                "backbone. Delete it from the cache, or use model.pretrained=file / none"
            )
    elif config.pretrained == "file":
        if config.pretrained_path is None:
            raise CheckpointError("model.pretrained=file needs model.pretrained_path (a .pth state dict)")
        path = Path(config.pretrained_path)
        report = _apply(model, _unwrap(load_state(path), str(path)), str(path))
    else:  # pragma: no cover - the config validator allows only the three above
        raise CheckpointError(f"unknown model.pretrained {config.pretrained!r}; use none, imagenet or file")
    # Dropping the classifier/fc is the point; anything else not loaded deserves a look.
    surprising = report.unexpected or [k for k, r in report.skipped.items() if not r.startswith("excluded")]
    (log.warning if surprising else log.info)("%s", report.summary())
    return report
