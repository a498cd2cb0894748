#!/usr/bin/env python
"""DPMHeadR50: the DPM++ head in fast-reid's stock Baseline with a ResNet-50 (a fast-reid project; see README.md).

    python projects/DPMHeadR50/train_net.py --config-file projects/DPMHeadR50/configs/Synthetic.yml
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes; must come before fastreid.engine)
import fastreid_dpmpp.data  # noqa: E402,F401  (registers OccludedDuke, OccludedREID)
import fastreid_dpmpp.modeling.backbones.tapped_cnn  # noqa: E402,F401  (registers build_tapped_resnet_backbone)
import fastreid_dpmpp.modeling.heads  # noqa: E402,F401  (registers DPMHead)
from fastreid.engine import default_argument_parser, launch  # noqa: E402
from fastreid.utils.checkpoint import Checkpointer  # noqa: E402

from fastreid_dpmpp.engine import DPMPPTrainer, setup  # noqa: E402


def main(args):
    cfg = setup(args)
    if args.eval_only:
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
