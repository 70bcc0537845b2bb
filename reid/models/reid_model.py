"""The ReID model of the strong baseline: backbone -> global average pooling -> BN-neck -> classifier.

Why a BN-neck: the ID (softmax) loss wants features that are separable by hyperplanes on a normalised,
roughly spherical distribution, while the triplet loss wants them separated by Euclidean distance in
free space; optimising both on one vector makes them fight. The BN-neck gives each loss its own view:
the triplet loss sees ``global_feat`` (before the BatchNorm), the classifier sees ``bn_feat`` (after).
The BatchNorm's bias is frozen at zero (a shift would only move the features away from the origin,
which hurts the cosine-based retrieval) and the classifier has no bias for the same reason; together
worth about +4 mAP on Market-1501.

Outputs
-------
* train mode: ``{"logits": [B, C], "global_feat": [B, D], "bn_feat": [B, D],
  "stage_feats": {"layer1".."layer4": [B, C_s]}}``. ``stage_feats`` are the globally pooled stage maps
  used by self-distillation; pooling costs nothing next to the convolutions.
* eval mode: the embedding ``[B, D]`` only -- ``bn_feat`` when ``neck == "bnneck"`` and
  ``neck_feat == "after"`` (the recipe's test feature), otherwise ``global_feat``.
* :meth:`ReIDModel.forward_all` returns the train-mode dict in whatever mode the model is in (in eval
  mode the BN-neck uses its running statistics): what a frozen offline teacher needs.

``build_model`` never loads pretrained weights: the trainer calls :func:`reid.models.pretrained.
load_pretrained` for a fresh run, and a resumed run or an inference load takes the checkpoint's.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from reid.config import Config
from reid.errors import ReidError
from reid.models.backbones import Backbone, build_backbone


def global_average_pool(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, C]``; works for any memory format (a mean over the spatial dims)."""
    return x.mean(dim=(2, 3))


class ReIDModel(nn.Module):
    """Backbone, BN-neck and classifier; see the module docstring for the outputs."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        neck: Literal["bnneck", "none"] = "bnneck",
        neck_feat: Literal["after", "before"] = "after",
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ReidError(f"the classifier needs at least one class, got num_classes={num_classes}")
        if neck not in ("bnneck", "none"):
            raise ReidError(f"unknown neck {neck!r}; use 'bnneck' or 'none'")
        if neck_feat not in ("after", "before"):
            raise ReidError(f"unknown neck_feat {neck_feat!r}; use 'after' or 'before'")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.neck_type = neck
        self.neck_feat = neck_feat
        dim = backbone.out_channels
        self.neck: nn.Module
        if neck == "bnneck":
            bn = nn.BatchNorm1d(dim)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            bn.bias.requires_grad_(False)  # frozen at zero: see the module docstring
            self.neck = bn
        else:
            self.neck = nn.Identity()
        self.classifier = nn.Linear(dim, self.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self._backbone_frozen = False

    # -- facts other modules read ------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """D: the size of ``global_feat``, ``bn_feat`` and the eval-mode embedding."""
        return self.backbone.out_channels

    @property
    def stage_channels(self) -> dict[str, int]:
        return dict(self.backbone.stage_channels)

    @property
    def backbone_name(self) -> str:
        return self.backbone.name

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    # -- forward -----------------------------------------------------------------------------------
    def forward_all(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        """Every output (the train-mode dict), computed in the model's current mode."""
        stages = self.backbone(x, return_stages=True)
        assert isinstance(stages, dict)
        stage_feats = {name: global_average_pool(fmap) for name, fmap in stages.items()}
        global_feat = stage_feats["layer4"]
        bn_feat = self.neck(global_feat)
        logits = self.classifier(bn_feat)
        return {"logits": logits, "global_feat": global_feat, "bn_feat": bn_feat, "stage_feats": stage_feats}

    def embed(self, x: Tensor) -> Tensor:
        """The test embedding ``[B, D]`` in the model's current mode (layer4 only, no classifier)."""
        fmap = self.backbone(x)
        assert isinstance(fmap, Tensor)
        global_feat = global_average_pool(fmap)
        if self.neck_type == "bnneck" and self.neck_feat == "after":
            return self.neck(global_feat)
        return global_feat

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]] | Tensor:
        if self.training:
            return self.forward_all(x)
        return self.embed(x)

    # -- transfer learning ---------------------------------------------------------------------------
    def freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) training the backbone; the neck and classifier always train.

        Freezing sets ``requires_grad=False`` on every backbone parameter *and* keeps the backbone in
        eval mode while frozen (also through later ``model.train()`` calls): otherwise its BatchNorm
        layers would keep overwriting their (pretrained) running statistics with those of the new
        domain while the affine weights cannot adapt, which is the usual transfer-learning convention.
        Unfreezing restores ``requires_grad`` and the model's current train/eval mode.
        """
        self._backbone_frozen = bool(frozen)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.backbone.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "ReIDModel":
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.train(False)
        return self


def build_model(config: Config, num_classes: int) -> ReIDModel:
    """The model ``config.model`` describes, randomly initialised (see the module docstring)."""
    m = config.model
    backbone = build_backbone(m.backbone, m.last_stride)
    return ReIDModel(backbone, num_classes, neck=m.neck, neck_feat=m.neck_feat)
