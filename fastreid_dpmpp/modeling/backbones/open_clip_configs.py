"""open_clip model configs shipped with the plugin (``model_configs/*.json``), registered with open_clip's
factory so that open_clip, its trainer (``open_clip_train``) and ``MODEL.VIT.ARCH`` all know them by name.

``DPMPP-Tiny-ViT-16``: the tiny CLIP of ``configs/Synthetic/Base-Tiny.yml`` (visual width 128, 4 blocks,
4 heads, patch 16, 128x64 input; text width 64, 2 blocks, 2 heads; joint width 64; QuickGELU), the
architecture of the project's pretrained synthetic CLIP (``tools/pretrain_clip.py``).
"""
import os

__all__ = ["MODEL_CONFIG_DIR", "TINY_CLIP", "register_model_configs"]

MODEL_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")
TINY_CLIP = "DPMPP-Tiny-ViT-16"


def register_model_configs():
    """Add the plugin's configs to open_clip's registry (idempotent)."""
    import open_clip
    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
