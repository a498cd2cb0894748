#!/usr/bin/env python
"""DPMHeadR50: the DPM++ head in fast-reid's stock Baseline with a ResNet-50 (a fast-reid project; see README.md).

    python projects/DPMHeadR50/train_net.py --config-file projects/DPMHeadR50/configs/Synthetic.yml
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fastreid_dpmpp  # noqa: E402,F401  (fast-reid fixes; registers DPMHead, build_tapped_resnet_backbone, datasets)
from fastreid_dpmpp.engine.defaults import launch_from_command_line, train_or_evaluate  # noqa: E402

main = train_or_evaluate

if __name__ == "__main__":
    launch_from_command_line(main)
