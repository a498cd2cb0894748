"""open_clip's own trainer with the plugin's model configs registered:

    python -m fastreid_dpmpp.pretraining.open_clip_entry <open_clip_train arguments>

``tools/pretrain_clip.py`` runs this in a subprocess (open_clip_train configures the root logger for itself).
"""
import sys

from ..modeling.backbones.open_clip_configs import register_model_configs


def _image_sizes_as_tuples():
    """open_clip keeps a JSON ``image_size`` list as a list, which timm's training transform cannot take
    (``(3,) + image_size``): registered configs get tuples."""
    from open_clip import factory
    for config in factory._MODEL_CONFIGS.values():
        vision = config.get("vision_cfg", {})
        if isinstance(vision.get("image_size"), list):
            vision["image_size"] = tuple(vision["image_size"])


def main(argv=None):
    register_model_configs()
    _image_sizes_as_tuples()
    from open_clip_train.main import main as open_clip_train_main
    return open_clip_train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main() or 0)
