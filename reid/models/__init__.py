"""ReID models: ResNet(-IBN-a) backbones, the BN-neck model, starting weights and inference loading.

``reid.models.pretrained`` and ``reid.models.inference`` are imported on demand (they pull in the
checkpoint code); the model classes are re-exported here.
"""

from reid.models.backbones import BACKBONE_NAMES, Backbone, build_backbone
from reid.models.reid_model import ReIDModel, build_model

__all__ = ["BACKBONE_NAMES", "Backbone", "ReIDModel", "build_backbone", "build_model"]
