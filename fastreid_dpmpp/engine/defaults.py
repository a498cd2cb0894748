"""Config set-up shared by tools/train_net.py, the stage runners and the pipeline."""
import logging
import os

import torch
from fastreid.config import get_cfg
from fastreid.engine import default_setup
from fastreid.utils.env import seed_all_rng

from ..config import add_dpmpp_config

logger = logging.getLogger("fastreid.dpmpp.engine")


def dataset_root(cfg):
    return cfg.DATASETS.ROOT or os.getenv("FASTREID_DATASETS", "datasets")


def apply_dataset_root(cfg):
    """fast-reid reads FASTREID_DATASETS once, at import; DATASETS.ROOT overrides it at run time."""
    import fastreid.data.build as data_build
    data_build._root = dataset_root(cfg)


def adapt_to_device(cfg):
    """Run a GPU config on a machine without CUDA: MODEL.DEVICE -> cpu and AMP off (both need CUDA)."""
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu, SOLVER.AMP.ENABLED False).")
        cfg.MODEL.DEVICE = "cpu"
        cfg.SOLVER.AMP.ENABLED = False
    return cfg


def load_config(config_file, opts=()):
    cfg = get_cfg()
    add_dpmpp_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return adapt_to_device(cfg)


def setup(args):
    """fast-reid's ``setup(args)``: config from file + command-line opts, output dir, logger, seed."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    apply_dataset_root(cfg)
    return cfg


def train_or_evaluate(args, trainer_cls=None):
    """The body of fast-reid's ``tools/train_net.py``: train (``--resume`` continues) or ``--eval-only``."""
    from fastreid.utils.checkpoint import Checkpointer

    from .trainer import DPMPPTrainer, with_camera_count
    trainer_cls = trainer_cls or DPMPPTrainer
    cfg = setup(args)
    if args.eval_only:
        cfg = with_camera_count(cfg)
        model = trainer_cls.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_from_command_line(main):
    """Parse fast-reid's default arguments and run ``main(args)`` through fast-reid's ``launch``."""
    from fastreid.engine import default_argument_parser, launch
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
