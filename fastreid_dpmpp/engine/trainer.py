"""fast-reid's DefaultTrainer with the few DPM++ additions; everything else is fast-reid's own."""
import logging

from fastreid.data.build import _test_loader_from_config, build_reid_test_loader
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.engine import DefaultTrainer

from .defaults import apply_dataset_root, dataset_root

logger = logging.getLogger("fastreid.dpmpp.trainer")


def count_training_cameras(cfg):
    """Number of distinct cameras over the training datasets (rows of the SIE table)."""
    cameras = set()
    for name in cfg.DATASETS.NAMES:
        dataset = DATASET_REGISTRY.get(name)(root=dataset_root(cfg), combineall=cfg.DATASETS.COMBINEALL)
        cameras.update(camid for _, _, camid in dataset.train)
    return len(cameras)


def with_camera_count(cfg):
    """Fill MODEL.VIT.NUM_CAMERAS from the training data when SIE is on and the config leaves it at 0."""
    if "VIT" not in cfg.MODEL or cfg.MODEL.VIT.NUM_CAMERAS > 0 or not cfg.MODEL.VIT.SIE_ENABLED:
        return cfg
    apply_dataset_root(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.VIT.NUM_CAMERAS = count_training_cameras(cfg)
    logger.info(f"Auto-scaling MODEL.VIT.NUM_CAMERAS={cfg.MODEL.VIT.NUM_CAMERAS}")
    cfg.freeze()
    return cfg


class DPMPPTrainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(with_camera_count(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # fast-reid's test loader always uses 4 workers; honour DATALOADER.NUM_WORKERS (2-core machines).
        args = _test_loader_from_config(cfg, dataset_name=dataset_name)
        return build_reid_test_loader(**args, num_workers=cfg.DATALOADER.NUM_WORKERS)
