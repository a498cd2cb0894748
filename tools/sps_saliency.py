#!/usr/bin/env python
"""Where Stage II's SPS puts its identity set: per-patch saliency of one or more SPS models on the same images.

    python tools/sps_saliency.py --config-file configs/Synthetic/dpmpp.yml \\
        --sps rho0.3=output/.../stage2/sps_final.pth --sps rho0.5=output/.../sps_final.pth \\
        --images "output/benchmark/occluded/val/Occluded_Duke/bounding_box_train/*.jpg" --output sps_saliency.png

Prints, per model, over --num-images images (evenly spaced in the sorted list): mean soft saliency, salient
fraction (>= SPT.THRESHOLD, the identity set SPT uses), saturated fraction, and the salient share of the centre
columns (the synthetic persons stand there) against the border columns, and how far every image's identity set is one
fixed spatial template (agreement with the per-patch majority); draws the first --num-drawn of them.
"""
import argparse
import glob
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastreid_dpmpp  # noqa: E402,F401
from fastreid.utils.logger import setup_logger  # noqa: E402

from fastreid_dpmpp.analysis.sps_saliency import plot_saliency_maps, saliency_layout  # noqa: E402
from fastreid_dpmpp.engine.defaults import load_config  # noqa: E402
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model  # noqa: E402

logger = logging.getLogger("fastreid.dpmpp.sps_saliency")


def _labelled(text):
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--sps expects LABEL=PATH, got {text!r}")
    return label, path


def load_images(paths, cfg):
    """(B, 3, H, W) float in 0-255 through fast-reid's test transform (the model normalises)."""
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms
    transform = build_transforms(cfg, is_train=False)
    return torch.stack([transform(read_image(path, "RGB")) for path in paths])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a Stage III / DPM++ config (model and input size)")
    parser.add_argument("--sps", type=_labelled, action="append", required=True, help="LABEL=PATH of an SPS "
                        "checkpoint (Stage II output); repeat for several")
    parser.add_argument("--images", required=True, help="glob of the images")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--num-drawn", type=int, default=8)
    parser.add_argument("--output", required=True, help="PNG of the saliency maps")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="fastreid")
    cfg = load_config(args.config_file, args.opts)
    paths = sorted(glob.glob(args.images))
    if not paths:
        raise SystemExit(f"error: --images {args.images!r} matches no file")
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, min(args.num_images, len(paths))).astype(int)]
    images = load_images(paths, cfg)
    lines = ["| SPS | mean saliency | salient % | saturated % | centre columns salient % | border columns salient % "
             "| agreement with the majority template % |", "|---|---|---|---|---|---|---|"]
    maps = []
    for label, path in args.sps:
        model = load_frozen_sps_model(cfg, path)
        with torch.no_grad():
            saliency = torch.cat([model.saliency(model.preprocess_image(chunk), None).float()
                                  for chunk in images.split(64)])
        summary = saliency_layout(saliency, model.grid_size, cfg.SPT.THRESHOLD)
        lines.append(f"| {label} | {summary['mean_saliency']:.2f} | {100 * summary['salient_fraction']:.0f} | "
                     f"{100 * summary['saturated_fraction']:.0f} | {100 * summary['centre_salient']:.0f} | "
                     f"{100 * summary['border_salient']:.0f} | {100 * summary['template_agreement']:.0f} |")
        maps.append(saliency[:args.num_drawn].reshape(-1, *model.grid_size))
    drawn = images[:args.num_drawn].permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).numpy()
    plot_saliency_maps(drawn, maps, [label for label, _ in args.sps], args.output,
                       title=f"SPS saliency (bright = identity set), {len(paths)} images summarised")
    print("\n".join(lines))
    logger.info("saliency maps drawn to %s", args.output)


if __name__ == "__main__":
    main()
