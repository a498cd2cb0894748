#!/usr/bin/env python
"""Train / evaluate a DPM++ (or CLIP baseline) model with fast-reid's trainer, as fast-reid's tools/train_net.py."""
import sys

import fastreid_dpmpp  # noqa: F401  (fixes fast-reid for this stack; registers the DPM++ components)
from fastreid.engine import default_argument_parser, launch
from fastreid.utils.checkpoint import Checkpointer

from fastreid_dpmpp.engine import DPMPPTrainer, setup
from fastreid_dpmpp.engine.trainer import with_camera_count


def main(args):
    cfg = setup(args)
    if args.eval_only:
        cfg = with_camera_count(cfg)
        model = DPMPPTrainer.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return DPMPPTrainer.test(cfg, model)
    trainer = DPMPPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    sys.exit(0)
