#!/usr/bin/env python
"""Zero-shot evaluation of CLIP weights (no ReID training): caption retrieval on held-out corpus pairs and
ReID on a split of the frozen synthetic benchmark, against the same architecture at random init.

    python tools/zero_shot.py --weights pretrained/dpmpp_tiny_clip_synthetic.pt --split val \\
        --captions output/pretrain/corpus/val_named.csv --output zero_shot_val.json

Features: "open_clip vp" = open_clip's own image embedding (patch stride 16, the pretraining grid);
"project v / vp / concat" = the project's backbone (configs/Synthetic/Base-Tiny.yml: stride 12, position
table resized) with v, v_p and the CLIP baseline's test descriptor L2(concat[v, v_p]).
"""
import argparse
import json
import os
import sys

import fastreid_dpmpp  # noqa: F401
from fastreid.utils.logger import setup_logger
from tabulate import tabulate

from fastreid_dpmpp.data.benchmark import benchmark_id, ensure_benchmark
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.pretraining.zero_shot import OpenCLIPEncoder, ProjectEncoder, caption_retrieval, zero_shot_reid

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "Synthetic",
                      "Base-Tiny.yml")


def evaluate(weights, root, captions, config_file, seed, opts=()):
    result = {}
    open_clip_encoder = OpenCLIPEncoder(weights, seed=seed)
    if captions:
        result["captions"] = caption_retrieval(open_clip_encoder, captions)
    result["reid"] = {f"open_clip {k}": v for k, v in zero_shot_reid(open_clip_encoder, root).items()}
    cfg = load_config(config_file, ["MODEL.VIT.WEIGHTS", weights or "", "SEED", seed] + list(opts))
    result["reid"].update({f"project {k}": v for k, v in zero_shot_reid(ProjectEncoder(cfg), root).items()})
    return result


def table(results):
    rows = []
    for name, result in results.items():
        for feature, reid in result["reid"].items():
            caps = result.get("captions", {})
            rows.append([name, feature] + [f"{reid[q][m]:.1f}" for q in ("occluded", "holistic") for m in ("Rank-1", "mAP")]
                        + [f"{caps[k]:.1f}" if k in caps else "" for k in
                           ("i2t_R@1_identity", "t2i_R@1_identity", "i2t_R@5_identity", "t2i_R@5_identity")])
    headers = ["weights", "feature", "R1 occ", "mAP occ", "R1 hol", "mAP hol", "i2t R@1", "t2i R@1", "i2t R@5",
               "t2i R@5"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True, help="weights files ('' = random init)")
    parser.add_argument("--split", default="val", help="benchmark split (val / test1 / test2)")
    parser.add_argument("--training", default="occluded", help="benchmark training protocol (same test splits)")
    parser.add_argument("--benchmark-dir", default="output/benchmark")
    parser.add_argument("--captions", default="", help="held-out caption CSV of the corpus (val_*.csv)")
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init model")
    parser.add_argument("--output", default="", help="write the results as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the project's config, e.g. "
                        "MODEL.BACKBONE.STRIDE_SIZE '(16, 16)' for the pretraining grid")
    args = parser.parse_args(argv)
    setup_logger(name="fastreid")
    root = ensure_benchmark(args.benchmark_dir, args.training, args.split)
    results = {(w or "random init"): evaluate(w, root, args.captions, args.config_file, args.seed, args.opts)
               for w in args.weights}
    print(f"\nZero-shot on benchmark {benchmark_id()} split {args.split} (numbers in %):\n")
    print(table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(benchmark_id=benchmark_id(), split=args.split, results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
