#!/usr/bin/env python
"""Run DPM++ Stage I -> II -> III on one dataset, then print fast-reid's evaluation table.

    python tools/run_pipeline.py --config-file configs/Synthetic/dpmpp.yml --output-dir output/pipeline [KEY VALUE ...]

Stages whose artifact exists are skipped; an interrupted stage resumes from its last checkpoint.
"""
import argparse
import os
from collections import OrderedDict

import fastreid_dpmpp  # noqa: F401
from fastreid.evaluation.testing import print_csv_format
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.engine.defaults import USER_ERRORS
from fastreid_dpmpp.engine.pipeline import evaluate_checkpoint, plan_stages, run_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the Stage III (DPM++) config")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied to every stage")
    args = parser.parse_args()
    setup_logger(name="fastreid")
    # the stage scripts are this tool's neighbours (also when fastreid_dpmpp is installed without the repository)
    tools_dir = os.path.dirname(os.path.abspath(__file__))
    timings = run_pipeline(args.config_file, args.output_dir, args.opts, tools_dir=tools_dir)
    final = plan_stages(args.config_file, args.output_dir, args.opts)[-1]
    # the config fast-reid saved for the trained model (number of classes and cameras filled in)
    results = evaluate_checkpoint(os.path.join(final.output_dir, "config.yaml"), final.artifact_path,
                                  output_dir=os.path.join(args.output_dir, "eval"))
    for dataset, metrics in results.items():
        print_csv_format(OrderedDict(metrics, dataset=dataset))
    print("Stage times (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None  # the message says it all; no traceback
