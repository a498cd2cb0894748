#!/usr/bin/env python
"""Evaluate a trained model under the evaluation protocol (docs/EVALUATION.md) on splits of the frozen synthetic
benchmark: every descriptor space, SIE on/off at test, plain / masked / shuffled-mask / oracle-mask matching,
holistic twins, breakdowns, bootstrap intervals, per-query APs for paired deltas.

    python tools/evaluate_protocol.py --config-file <run>/config.yaml --splits val --output <run>/protocol_val.json \\
        MODEL.WEIGHTS <run>/model_final.pth

With no MODEL.WEIGHTS the model is evaluated as built (e.g. zero-shot from MODEL.VIT.WEIGHTS).
"""
import argparse
import sys

import fastreid_dpmpp  # noqa: F401
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.data.benchmark import SPLITS, ensure_benchmark
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.protocol_eval import evaluate_model, interpolate_backbone, write_results
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
from fastreid_dpmpp.engine.trainer import DPMPPTrainer, with_camera_count


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(SPLITS))
    parser.add_argument("--training", default="occluded", help="training protocol whose benchmark roots to use")
    parser.add_argument("--benchmark-dir", default="output/benchmark")
    parser.add_argument("--spaces", nargs="*", default=None, help="descriptor spaces (default: all the model has)")
    parser.add_argument("--sie", nargs="+", default=["off", "on"], choices=["off", "on"],
                        help="SIE at test (models without camera embeddings are evaluated once, off)")
    parser.add_argument("--output", required=True, help="results JSON")
    parser.add_argument("--sps-weights", default="", help="a Stage II SPS checkpoint: adds the spatial-visibility "
                        "reference (patch tokens pooled under its saliency)")
    parser.add_argument("--interpolate", type=float, default=1.0,
                        help="WiSE-FT: backbone = (1 - a) * zero-shot (MODEL.VIT.WEIGHTS) + a * fine-tuned (1.0 = off)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logger(name="fastreid")
    roots = {split: ensure_benchmark(args.benchmark_dir, args.training, split) for split in args.splits}
    cfg = load_config(args.config_file, list(args.opts) + ["DATASETS.ROOT", roots[args.splits[0]]])
    cfg = with_camera_count(cfg)
    model = DPMPPTrainer.build_model(cfg)
    zero_shot = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    if cfg.MODEL.WEIGHTS:
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    if args.interpolate != 1.0:
        interpolate_backbone(model.backbone, zero_shot, args.interpolate)
    sps_model = load_frozen_sps_model(cfg, args.sps_weights, key="--sps-weights") if args.sps_weights else None
    sie_settings = tuple(setting == "on" for setting in dict.fromkeys(args.sie))
    results = evaluate_model(model, cfg, roots, spaces=args.spaces, sie_settings=sie_settings, sps_model=sps_model)
    results["interpolate"] = args.interpolate
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
