#!/usr/bin/env python
"""Train / evaluate a DPM++ (or CLIP baseline) model with fast-reid's trainer, as fast-reid's tools/train_net.py:

    python tools/train_net.py --config-file configs/Synthetic/dpmpp.yml [--resume] [--eval-only MODEL.WEIGHTS ...] [KEY VALUE ...]
"""
import fastreid_dpmpp  # noqa: F401  (fixes fast-reid for this stack; registers the DPM++ components)
from fastreid_dpmpp.engine.defaults import launch_from_command_line, train_or_evaluate

main = train_or_evaluate

if __name__ == "__main__":
    launch_from_command_line(main)
