#!/usr/bin/env python
"""Pretrain the project's tiny CLIP the way CLIP is made: contrastive image-caption training with open_clip's
own trainer, on a synthetic pedestrian corpus written by the benchmark's generator (other identities, other
cameras), then export the weights that MODEL.VIT.WEIGHTS loads.

    python tools/pretrain_clip.py --output-dir output/pretrain --epochs 30 --seed 0 \\
        --export pretrained/dpmpp_tiny_clip_synthetic.pt

Re-running resumes: the corpus is written once, open_clip_train continues from its newest epoch checkpoint.
"""
import argparse
import json
import os
import sys

import fastreid_dpmpp  # noqa: F401
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.pretraining.clip_pretraining import PretrainRecipe, epoch_checkpoints, export_weights, pretrain
from fastreid_dpmpp.pretraining.corpus import CORPUS_META, write_caption_csvs, write_corpus
from fastreid_dpmpp.pretraining.zero_shot import reproduction_check


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/pretrain", help="open_clip logs and checkpoints")
    parser.add_argument("--corpus", default=None, help="corpus folder (default <output-dir>/corpus)")
    parser.add_argument("--corpus-seed", type=int, default=0)
    parser.add_argument("--num-ids", type=int, default=2500, help="corpus identities (8 images each)")
    parser.add_argument("--images-per-id", type=int, default=8)
    parser.add_argument("--val-ids", type=int, default=100, help="held-out identities (val CSV)")
    parser.add_argument("--occluded-fraction", type=float, default=0.4)
    parser.add_argument("--plain-captions", action="store_true",
                        help="captions do not name the occluder (default: they do)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-frequency", type=int, default=5, help="epochs between saved checkpoints")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (0: default)")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers")
    parser.add_argument("--export", default="", help="write the chosen epoch's weights here (a plain state dict)")
    parser.add_argument("--export-epoch", type=int, default=0, help="epoch to export (0: the last)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="fastreid")
    corpus = args.corpus or os.path.join(args.output_dir, "corpus")
    if not os.path.isfile(os.path.join(corpus, CORPUS_META)):
        logger.info("writing the pretraining corpus to %s", corpus)
        write_corpus(corpus, seed=args.corpus_seed, num_ids=args.num_ids, images_per_id=args.images_per_id,
                     occluded_fraction=args.occluded_fraction, val_ids=args.val_ids)
    write_caption_csvs(corpus, name_occluder=not args.plain_captions)
    recipe = PretrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd,
                            warmup=args.warmup, seed=args.seed, name_occluder=not args.plain_captions,
                            workers=args.workers, threads=args.threads, save_frequency=args.save_frequency)
    pretrain(recipe, corpus, args.output_dir)
    if args.export:
        epoch = args.export_epoch or args.epochs
        checkpoints = epoch_checkpoints(args.output_dir, recipe)
        if epoch not in checkpoints:
            raise SystemExit(f"no checkpoint of epoch {epoch}; saved epochs: {sorted(checkpoints)}")
        digest = export_weights(checkpoints[epoch], args.export)
        record = dict(weights=os.path.basename(args.export), sha256=digest, epoch=epoch,
                      command="python tools/pretrain_clip.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      recipe=vars(recipe), corpus=dict(seed=args.corpus_seed, num_ids=args.num_ids,
                                                       images_per_id=args.images_per_id, val_ids=args.val_ids,
                                                       occluded_fraction=args.occluded_fraction),
                      check=reproduction_check(args.export, os.path.join(args.output_dir, "reproduction_check")))
        with open(os.path.splitext(args.export)[0] + ".json", "w") as f:
            json.dump(record, f, indent=2, default=list)
        logger.info("exported epoch %d weights to %s (sha256 %s)", epoch, args.export, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
