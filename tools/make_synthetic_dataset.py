#!/usr/bin/env python
"""Write the synthetic occluded ReID benchmark in the real dataset layouts.

    python tools/make_synthetic_dataset.py --root datasets/synthetic --seed 0 --preview docs/synthetic.png

then train / test with FASTREID_DATASETS=datasets/synthetic (or DATASETS.ROOT) and the dataset names
OccludedDuke, OccludedDukeHolisticQuery, Market1501, OccludedREID (and DukeMTMC with --layout ... dukemtmc).
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastreid_dpmpp.data.synthetic import LAYOUT_DIRS, make_preview, make_synthetic_benchmark  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="output folder (the FASTREID_DATASETS root)")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--layout", nargs="+", default=["all"], choices=["all"] + list(LAYOUT_DIRS),
                   help="layouts to write; 'all' = occluded_duke market1501 occluded_reid")
    p.add_argument("--height", type=int, default=128, help="image height")
    p.add_argument("--width", type=int, default=64, help="image width")
    p.add_argument("--num-train-ids", type=int, default=70)
    p.add_argument("--images-per-train-id", type=int, default=8)
    p.add_argument("--num-test-ids", type=int, default=50)
    p.add_argument("--max-queries-per-id", type=int, default=2)
    p.add_argument("--gallery-images-per-id", type=int, default=4)
    p.add_argument("--num-distractor-ids", type=int, default=30)
    p.add_argument("--train-occluded-fraction", type=float, default=0.35)
    p.add_argument("--gallery-occluded-fraction", type=float, default=0.1)
    p.add_argument("--oreid-num-ids", type=int, default=50)
    p.add_argument("--oreid-images-per-id", type=int, default=5)
    p.add_argument("--preview", default="", help="also write a contact sheet PNG of samples here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    layout = "all" if "all" in args.layout else args.layout
    summary = make_synthetic_benchmark(
        args.root, seed=args.seed, layout=layout, image_size=(args.height, args.width),
        num_train_ids=args.num_train_ids, images_per_train_id=args.images_per_train_id,
        num_test_ids=args.num_test_ids, max_queries_per_id=args.max_queries_per_id,
        gallery_images_per_id=args.gallery_images_per_id, num_distractor_ids=args.num_distractor_ids,
        train_occluded_fraction=args.train_occluded_fraction, gallery_occluded_fraction=args.gallery_occluded_fraction,
        oreid_num_ids=args.oreid_num_ids, oreid_images_per_id=args.oreid_images_per_id)
    if args.preview:
        summary["preview"] = make_preview(args.root, args.preview)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
