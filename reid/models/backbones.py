"""ResNet backbones (optionally IBN-a) cut at layer4, with the strong baseline's last-stride trick.

The ResNets are torchvision's own definitions (``weights=None``; pretrained weights are loaded
separately by :mod:`reid.models.pretrained`), regrouped as ``stem`` (conv1, bn1, relu, maxpool) and
``layer1..layer4``; the ImageNet ``avgpool``/``fc`` head is dropped because the ReID model pools and
classifies itself. Parameter names are therefore torchvision's with ``conv1``/``bn1`` moved under
``stem.``, which keeps torchvision (and IBN-Net) state dicts loadable by a plain rename.

``last_stride=1`` removes the downsampling of layer4 (the stride of its first block's 3x3 conv -- conv1
in a BasicBlock, conv2 in a torchvision "v1.5" Bottleneck -- and of its downsample shortcut): the final
map at 256 x 128 input is 16 x 8 instead of 8 x 4, which is worth about +1.4 mAP on Market-1501 for
some extra compute in layer4 only. No weight changes shape, so ImageNet weights still load.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from reid.config import STAGES
from reid.models.ibn import apply_ibn_a

#: Every backbone name -> (torchvision constructor, IBN-a?).
_CONSTRUCTORS: dict[str, tuple[Callable[..., ResNet], bool]] = {
    "resnet18": (tv_resnet.resnet18, False),
    "resnet34": (tv_resnet.resnet34, False),
    "resnet50": (tv_resnet.resnet50, False),
    "resnet101": (tv_resnet.resnet101, False),
    "resnet152": (tv_resnet.resnet152, False),
    "resnet50_ibn_a": (tv_resnet.resnet50, True),
    "resnet101_ibn_a": (tv_resnet.resnet101, True),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_CONSTRUCTORS)

#: Block type and blocks per stage of each plain depth; used to recognise a state dict's architecture.
_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def plain_name(name: str) -> str:
    """``resnet50_ibn_a`` -> ``resnet50``: the torchvision depth a backbone is built from."""
    return name.removesuffix("_ibn_a")


def is_ibn(name: str) -> bool:
    return name.endswith("_ibn_a")


def _block_out_channels(block: nn.Module) -> int:
    if isinstance(block, Bottleneck):
        return int(block.conv3.out_channels)
    if isinstance(block, BasicBlock):
        return int(block.conv2.out_channels)
    raise TypeError(f"unexpected ResNet block {type(block).__name__}")


def set_last_stride(net: nn.Module, stride: int) -> None:
    """Set the stride of layer4's first block (its strided conv and its shortcut) in place."""
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {stride}")
    block = net.layer4[0]
    strided = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


class Backbone(nn.Module):
    """``stem`` + ``layer1..layer4`` of a ResNet; ``forward(x)`` -> the layer4 map ``[B, C, h, w]``.

    ``forward(x, return_stages=True)`` -> ``{"layer1": ..., "layer4": ...}`` (every stage's map), at no
    extra cost: the stages are computed anyway. ``stage_channels`` gives each stage's channel count,
    ``out_channels`` that of layer4 (the embedding size D of the ReID model).
    """

    def __init__(self, name: str, net: ResNet, last_stride: int) -> None:
        super().__init__()
        self.name = name
        self.last_stride = int(last_stride)
        self.stem = nn.Sequential(
            OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage_channels: dict[str, int] = {s: _block_out_channels(getattr(self, s)[-1]) for s in STAGES}

    @property
    def out_channels(self) -> int:
        return self.stage_channels["layer4"]

    def forward(self, x: Tensor, return_stages: bool = False) -> Tensor | dict[str, Tensor]:
        x = self.stem(x)
        if not return_stages:
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        stages: dict[str, Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            stages[name] = x
        return stages


def build_backbone(name: str, last_stride: int = 1) -> Backbone:
    """A randomly initialised backbone (torchvision init); see the module docstring."""
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    constructor, ibn = _CONSTRUCTORS[name]
    net = constructor(weights=None)
    if ibn:
        apply_ibn_a(net)
    set_last_stride(net, last_stride)
    return Backbone(name, net, last_stride)


def infer_backbone_name(state_dict: Mapping[str, object], prefix: str = "") -> str | None:
    """The backbone a state dict was saved from, from its key layout; None when unrecognisable.

    ``prefix`` is what precedes ``layer1.`` in the keys (``"backbone."`` for a ReID model, ``""`` for
    torchvision). Works on names only, so it also names a checkpoint that would not load.
    """
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set(), 4: set()}
    bottleneck = ibn = False
    for key in state_dict:
        if not key.startswith(prefix + "layer"):
            continue
        parts = key[len(prefix):].split(".")
        if len(parts) < 3 or not parts[0][5:].isdigit() or not parts[1].isdigit():
            continue
        stage = int(parts[0][5:])
        if stage in blocks:
            blocks[stage].add(int(parts[1]))
        bottleneck = bottleneck or parts[2] == "conv3"
        ibn = ibn or (parts[2] == "bn1" and len(parts) > 3 and parts[3] == "IN")
    counts = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    kind = "bottleneck" if bottleneck else "basic"
    for name, layout in _LAYOUTS.items():
        if layout == (kind, counts):
            return f"{name}_ibn_a" if ibn else name
    return None
