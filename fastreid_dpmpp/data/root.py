"""The dataset root (DATASETS.ROOT, else the FASTREID_DATASETS variable, else ``datasets``) and the per-run dataset
options that fast-reid does not pass to the dataset classes (DATASETS.SKIP_BAD_FILES)."""
import os

from .datasets import set_skip_bad_files

__all__ = ["dataset_root", "apply_dataset_root"]


def dataset_root(cfg):
    return cfg.DATASETS.get("ROOT", "") or os.getenv("FASTREID_DATASETS", "datasets")


def apply_dataset_root(cfg):
    """fast-reid reads FASTREID_DATASETS once, at import; DATASETS.ROOT overrides it at run time. The dataset
    classes get DATASETS.SKIP_BAD_FILES the same way (fast-reid does not pass them the config)."""
    import fastreid.data.build as data_build

    data_build._root = dataset_root(cfg)
    set_skip_bad_files(cfg.DATASETS.get("SKIP_BAD_FILES", False))
