"""DPM++ backbones; importing this package registers them in fast-reid's BACKBONE_REGISTRY and the plugin's
model configs (``model_configs/``) in open_clip's."""
from .open_clip_configs import TINY_CLIP, register_model_configs

register_model_configs()

from .clip_vit import ReIDViT, build_clip_model, build_clip_vit_backbone  # noqa: E402,F401
from .tapped_cnn import build_tapped_resnet_backbone  # noqa: E402,F401
from .efficientnet_lite import build_efficientnet_lite_backbone  # noqa: E402,F401
