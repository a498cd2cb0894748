#!/usr/bin/env python
"""What the paper's mask loss asks of the DPM mask, measured on SPT pairs of training batches
(fastreid_dpmpp/analysis/mask_learning.py): alignment of −∂L_mask/∂m and of the learned mask with the channels the
synthetic occlusion changes least, and the mask's spread.

    python tools/diagnose_masks.py --config-file <run>/config.yaml --sps-weights <stage2>/sps_final.pth \\
        --batches 20 --output <run>/mask_learning.json MODEL.WEIGHTS <run>/model_final.pth
"""
import argparse
import itertools
import json
import sys

import fastreid_dpmpp  # noqa: F401
import torch
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.analysis.mask_learning import mask_learning_statistics
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
from fastreid_dpmpp.engine.trainer import DPMPPTrainer, with_camera_count
from fastreid_dpmpp.modeling.stage3_synthesizer import SPTSynthesizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--sps-weights", required=True, help="the Stage II SPS checkpoint that drives SPT")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--output", default="")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="fastreid")
    cfg = with_camera_count(load_config(args.config_file, list(args.opts) + ["SPT.ENABLED", "False"]))
    model = DPMPPTrainer.build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.manual_seed(0)
    synthesizer = SPTSynthesizer.from_config(cfg, load_frozen_sps_model(cfg, args.sps_weights, "--sps-weights"),
                                             model.backbone.grid_size, seed=0)
    batches = itertools.islice(iter(DPMPPTrainer.build_train_loader(cfg)), args.batches)
    result = mask_learning_statistics(model, synthesizer, batches, args.keep)
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
