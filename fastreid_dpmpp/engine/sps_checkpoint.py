"""The Stage II output file: the SPS checkpoint that Stage III's SPT reads (SPEC §3 -> §4), as
``fastreid_dpmpp/text_prototypes.py`` is Stage I's.

Writer: Stage II (``engine/stage2.py``, :func:`save_sps_checkpoint`) at the end of training, atomically, to
``OUTPUT_DIR/STAGE2.OUTPUT``. Reader: Stage III (SPT.SPS_WEIGHTS; ``engine/stage3_spt_hook.py``, the protocol
tools) with :func:`load_frozen_sps_model`. The file is a plain dict (loads with ``torch.load(weights_only=True)``)::

    {"model": SPSModel state dict,
     "sps_meta": {"backbone_config": {dotted key: value} of BACKBONE_KEYS (what rebuilds the same SPS backbone),
                  "num_classes": C, "grid": [Hp, Wp], "image_size": [H, W], "epochs": E}}

Stage III also accepts one of Stage II's fast-reid checkpoints (``stage2/model_final.pth``: ``{"model": ...}``
without ``sps_meta``; the trainer's own backbone keys are used then). Every problem raises :class:`SPSWeightsError`
naming the config key the file came from and the file.

This module sits in the engine layer (not beside text_prototypes.py) because building the SPS model needs the
registered meta-architecture; no model code reads the file.
"""
import logging
import os

from fastreid.modeling.meta_arch import build_model

from ..checkpoint import atomic_torch_save, trusted_torch_load
from ..modeling.module_utils import freeze_model

logger = logging.getLogger("fastreid.dpmpp.sps_checkpoint")

__all__ = ["SPSWeightsError", "SPS_META_KEY", "CONFIG_KEY", "BACKBONE_KEYS", "backbone_config", "save_sps_checkpoint",
           "read_sps_checkpoint", "sps_model_config", "load_frozen_sps_model"]

CONFIG_KEY = "SPT.SPS_WEIGHTS"
SPS_META_KEY = "sps_meta"
CLASSIFIER_KEY = "heads.classifier.weight"

# Recorded in the SPS checkpoint: what Stage III needs to rebuild the same SPS backbone.
BACKBONE_KEYS = (
    "MODEL.BACKBONE.STRIDE_SIZE", "MODEL.BACKBONE.SIE_COE",
    "MODEL.VIT.FAMILY", "MODEL.VIT.ARCH", "MODEL.VIT.WIDTH", "MODEL.VIT.LAYERS", "MODEL.VIT.HEADS",
    "MODEL.VIT.EMBED_DIM", "MODEL.VIT.TEXT_WIDTH", "MODEL.VIT.TEXT_LAYERS", "MODEL.VIT.TEXT_HEADS",
    "MODEL.VIT.QUICK_GELU", "MODEL.VIT.SIE_ENABLED", "MODEL.VIT.SIE_MODE", "MODEL.VIT.NUM_CAMERAS",
    "MODEL.VIT.TAPS",
)


class SPSWeightsError(ValueError):
    """SPT.SPS_WEIGHTS is unset, missing, or does not hold an SPS model matching the config."""


# ----------------------------------------------------------------------------- writer (Stage II)
def _config_value(cfg, dotted_key):
    node = cfg
    for part in dotted_key.split("."):
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def backbone_config(cfg):
    """{dotted key: value} of :data:`BACKBONE_KEYS` (plain Python values, loadable with weights_only)."""
    return {key: _config_value(cfg, key) for key in BACKBONE_KEYS}


def save_sps_checkpoint(path, model, cfg, epochs):
    """``{"model": state dict, "sps_meta": {...}}`` of the (unwrapped) SPS ``model`` trained with ``cfg``, written
    atomically to ``path``."""
    meta = {
        "backbone_config": backbone_config(cfg),
        "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES),
        "grid": [int(v) for v in model.grid_size],
        "image_size": [int(v) for v in cfg.INPUT.SIZE_TRAIN],
        "epochs": int(epochs),
    }
    atomic_torch_save({"model": model.state_dict(), SPS_META_KEY: meta}, path)
    logger.info("Stage II: SPS checkpoint written to %s", path)
    return path


# ----------------------------------------------------------------------------- reader (Stage III)
def read_sps_checkpoint(path, key=CONFIG_KEY):
    """The checked content of an SPS file (a dict with a "model" state dict); raises SPSWeightsError naming ``key``
    and ``path`` when it is unset, missing, unreadable or of another kind."""
    if not path:
        raise SPSWeightsError(f"{key} is empty: set it to the Stage II checkpoint (OUTPUT_DIR/STAGE2.OUTPUT written "
                              f"by tools/train_stage2.py)")
    if not os.path.isfile(path):
        raise SPSWeightsError(f"{key}: the SPS checkpoint '{path}' does not exist (run Stage II, "
                              f"tools/train_stage2.py, or point {key} at its STAGE2.OUTPUT file)")
    try:
        checkpoint = trusted_torch_load(path, what=f"SPS checkpoint ({key})")
    except Exception as e:
        raise SPSWeightsError(f"{key}: cannot read the SPS checkpoint '{path}': {e}") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise SPSWeightsError(f"{key}: '{path}' is not an SPS checkpoint: expected a dict with a 'model' state dict "
                              f"(tools/train_stage2.py's STAGE2.OUTPUT or a Stage II model_final.pth)")
    return checkpoint


def sps_model_config(cfg, checkpoint):
    """A frozen copy of ``cfg`` that builds the SPS model of ``checkpoint``: META_ARCHITECTURE SPSModel, the backbone
    keys recorded by Stage II (if any), the class count of its classifier, no weights file (all weights come from
    the checkpoint)."""
    cfg = cfg.clone()
    cfg.defrost()
    recorded = checkpoint.get(SPS_META_KEY, {}).get("backbone_config", {})
    if recorded:
        cfg.merge_from_list([item for key, value in recorded.items() for item in (key, value)])
    cfg.MODEL.META_ARCHITECTURE = "SPSModel"
    cfg.MODEL.VIT.WEIGHTS = ""
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DPMPP.TEXT_PROTOTYPES = ""     # Stage III's T: the SPS model has no text branch
    cfg.MODEL.VIT.FREEZE_BLOCKS = 0
    classifier = checkpoint["model"].get(CLASSIFIER_KEY)
    if classifier is not None:
        cfg.MODEL.HEADS.NUM_CLASSES = int(classifier.shape[0])
    cfg.SPT.ENABLED = False
    cfg.freeze()
    return cfg


def load_frozen_sps_model(cfg, path=None, key=CONFIG_KEY):
    """Build the SPS model, load SPT.SPS_WEIGHTS (or ``path``) strictly, freeze it (eval, no grad). Errors name the
    config ``key`` the file came from and the file."""
    path = cfg.SPT.SPS_WEIGHTS if path is None else path
    checkpoint = read_sps_checkpoint(path, key)
    sps_cfg = sps_model_config(cfg, checkpoint)
    model = build_model(sps_cfg)
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as e:
        raise SPSWeightsError(
            f"{key}: '{path}' does not match the SPS model built from the config (same MODEL.VIT.*, "
            f"MODEL.BACKBONE.STRIDE_SIZE, INPUT.SIZE_TRAIN and MODEL.VIT.NUM_CAMERAS as Stage II are needed): "
            f"{str(e)[:1500]}") from e
    logger.info("Loaded the frozen SPS model from %s (%s; grid %s)", path, key, model.grid_size)
    return freeze_model(model)
