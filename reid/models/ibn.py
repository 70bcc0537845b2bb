"""IBN-a: Instance-Batch Normalisation in the first norm of each bottleneck of layers 1-3.

IBN-Net (Pan et al., 2018) observed that InstanceNorm removes appearance (colour, contrast, style)
variation from the shallow feature maps while BatchNorm keeps the content information the deeper
layers need. IBN-a therefore splits the channels of ``bn1`` (the norm after the first 1x1 conv) of
every bottleneck in layers 1-3: the first half goes through ``InstanceNorm2d(affine=True)``, the rest
through ``BatchNorm2d``. ``layer4`` stays plain, so the final embedding is still batch-normalised.
In ReID this buys robustness to camera and dataset shift at almost no compute.

We build the network by *replacing* ``bn1`` inside a torchvision ResNet instead of re-implementing
the ResNet, so every other parameter keeps torchvision's name and plain ResNet ImageNet weights load
wherever the shapes match. The submodule names ``IN`` and ``BN`` are those of the original IBN-Net
release, so its ImageNet weights (``layer1.0.bn1.IN.weight`` ...) load unchanged with
``model.pretrained=file``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

#: Layers whose bottlenecks get IBN-a; ``layer4`` is left plain on purpose (see module docstring).
IBN_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3")


class IBN(nn.Module):
    """``cat(InstanceNorm(x[:, :h]), BatchNorm(x[:, h:]))`` with ``h = int(channels * ratio)``.

    ``ratio`` is the fraction of channels that are instance-normalised (0.5 in IBN-a).
    """

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"IBN ratio must be in (0, 1), got {ratio}")
        self.channels = int(channels)
        self.half = int(channels * ratio)
        if not 0 < self.half < channels:
            raise ValueError(f"IBN with {channels} channels and ratio {ratio} leaves one side empty")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        first, rest = torch.split(x, [self.half, self.channels - self.half], dim=1)
        # The norms accept the strided channel slices as they are. BatchNorm keeps a channels_last
        # input channels_last, but instance_norm always returns a contiguous NCHW tensor, and `cat`
        # of an NCHW and a channels_last tensor is NCHW: the block's output (and its gradient) would
        # leave channels_last and every following conv would convert it back. So the instance-norm half
        # is put into the input's memory format (a copy of half the channels) before the cat, which
        # then keeps that format.
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        return torch.cat((self.IN(first).contiguous(memory_format=fmt), self.BN(rest).contiguous(memory_format=fmt)),
                         dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, instance_norm_channels={self.half}"


def apply_ibn_a(net: ResNet, ratio: float = 0.5) -> ResNet:
    """Turn a torchvision bottleneck ResNet into ResNet-IBN-a, in place, and return it.

    Every ``bn1`` of the bottlenecks in :data:`IBN_LAYERS` is replaced by :class:`IBN`; nothing else
    changes, so the stride, the downsample path and all other parameter names stay torchvision's.
    """
    for layer_name in IBN_LAYERS:
        layer: nn.Sequential = getattr(net, layer_name)
        for block in layer:
            if not isinstance(block, Bottleneck):
                raise ValueError(f"IBN-a needs bottleneck blocks; {layer_name} holds {type(block).__name__}")
            block.bn1 = IBN(block.bn1.num_features, ratio)
    return net
