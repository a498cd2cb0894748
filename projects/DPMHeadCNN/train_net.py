#!/usr/bin/env python
"""DPMHeadCNN: the DPM++ head on an ImageNet-pretrained CNN in fast-reid's Baseline (a fast-reid project; README.md).

    python projects/DPMHeadCNN/train_net.py --config-file projects/DPMHeadCNN/configs/dpm.yml [--eval-only] [KEY VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes; registers CNNBaseline, DPMHead, the tapped backbones, datasets)
from fastreid_dpmpp.engine.defaults import launch_from_command_line, train_or_evaluate  # noqa: E402

main = train_or_evaluate

if __name__ == "__main__":
    launch_from_command_line(main)
