"""DPM++ backbones; importing this package registers them in fast-reid's BACKBONE_REGISTRY."""
from .clip_vit import ReIDViT, build_clip_model, build_clip_vit_backbone  # noqa: F401
from .tapped_cnn import build_tapped_resnet_backbone  # noqa: F401
