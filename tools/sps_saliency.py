#!/usr/bin/env python
"""Where Stage II's SPS puts its identity set: per-patch saliency of one or more SPS models on the same images.

    python tools/sps_saliency.py --config-file configs/Synthetic/dpmpp.yml \\
        --sps rho0.3=output/.../stage2/sps_final.pth --sps rho0.5=output/.../sps_final.pth \\
        --images "output/benchmark/occluded/val/Occluded_Duke/bounding_box_train/*.jpg" --output sps_saliency.png

Prints, per model, over --num-images images (evenly spaced in the sorted list): mean soft saliency, salient
fraction (>= SPT.THRESHOLD, the identity set SPT uses), saturated fraction, and the salient share of the centre
columns (the synthetic persons stand there) against the border columns, and how far every image's identity set is one
fixed spatial template (agreement with the per-patch majority); draws the first --num-drawn of them.

With --twins the images must be occluded queries of a generated benchmark (``.../query/*.jpg``): their unoccluded
twins (``query_holistic/``) locate each occluder, and a second table says how much of the occluder lies on the
person (the twins' majority identity set) and how much of that the identity set keeps — the part Eq. 7 can never
paste on an anchor — against the same rate on the person's visible patches.
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

from fastreid_dpmpp.analysis.spatial_visibility import occluder_patches  # noqa: E402
from fastreid_dpmpp.analysis.sps_saliency import (  # noqa: E402
    occluder_in_identity_set, plot_saliency_maps, saliency_layout)
from fastreid_dpmpp.engine.defaults import load_config  # noqa: E402
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model  # noqa: E402
from fastreid_dpmpp.modeling.stage3_patch_transfer import binarize_saliency  # noqa: E402

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


def twin_paths(paths):
    """The unoccluded twin of each occluded query: the same file name in the sibling query_holistic/ folder."""
    twins = [os.path.join(os.path.dirname(os.path.dirname(path)), "query_holistic", os.path.basename(path))
             for path in paths]
    missing = [path for path in twins if not os.path.isfile(path)]
    if any(os.path.basename(os.path.dirname(path)) != "query" for path in paths) or missing:
        raise SystemExit(f"error: --twins needs occluded queries (.../query/*.jpg) whose twins exist in "
                         f"query_holistic/; missing e.g. {missing[:1]}")
    return twins


def saliency_of(model, images):
    with torch.no_grad():
        return torch.cat([model.saliency(model.preprocess_image(chunk), None).float() for chunk in images.split(64)])


def occluder_row(label, model, saliency, images, twins, threshold):
    """One row of the --twins table; ``saliency`` is the model's (B, N) saliency of ``images``."""
    salient = binarize_saliency(saliency, model.grid_size, threshold).flatten(1)
    person = binarize_saliency(saliency_of(model, twins), model.grid_size, threshold).flatten(1).float().mean(0) >= 0.5
    occluder = occluder_patches(images, twins, model.backbone.patch_size, model.backbone.stride)
    numbers = occluder_in_identity_set(salient, occluder, person)
    return (f"| {label} | {100 * numbers['occluder_on_person']:.0f} | {100 * numbers['occluder_kept']:.0f} | "
            f"{100 * numbers['visible_kept']:.0f} | {100 * numbers['occluder_transferable']:.0f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a Stage III / DPM++ config (model and input size)")
    parser.add_argument("--sps", type=_labelled, action="append", required=True, help="LABEL=PATH of an SPS "
                        "checkpoint (Stage II output); repeat for several")
    parser.add_argument("--images", required=True, help="glob of the images")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--num-drawn", type=int, default=8)
    parser.add_argument("--output", required=True, help="PNG of the saliency maps")
    parser.add_argument("--twins", action="store_true", help="the images are occluded queries: also measure how "
                        "much of each occluder the identity set keeps (needs query_holistic/ beside query/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="fastreid")
    cfg = load_config(args.config_file, args.opts)
    paths = sorted(glob.glob(args.images))
    if not paths:
        raise SystemExit(f"error: --images {args.images!r} matches no file")
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, min(args.num_images, len(paths))).astype(int)]
    images = load_images(paths, cfg)
    twins = load_images(twin_paths(paths), cfg) if args.twins else None
    occluder_lines = ["| SPS | occluder patches inside the twins' identity set % | of those kept in the identity set % "
                      "| visible patches of the twins' identity set kept % | occluder patches a partner hands over % |",
                      "|---|---|---|---|---|"]
    lines = ["| SPS | mean saliency | salient % | saturated % | centre columns salient % | border columns salient % "
             "| agreement with the majority template % |", "|---|---|---|---|---|---|---|"]
    maps = []
    for label, path in args.sps:
        model = load_frozen_sps_model(cfg, path)
        saliency = saliency_of(model, images)
        if args.twins:
            occluder_lines.append(occluder_row(label, model, saliency, images, twins, cfg.SPT.THRESHOLD))
        summary = saliency_layout(saliency, model.grid_size, cfg.SPT.THRESHOLD)
        lines.append(f"| {label} | {summary['mean_saliency']:.2f} | {100 * summary['salient_fraction']:.0f} | "
                     f"{100 * summary['saturated_fraction']:.0f} | {100 * summary['centre_salient']:.0f} | "
                     f"{100 * summary['border_salient']:.0f} | {100 * summary['template_agreement']:.0f} |")
        maps.append(saliency[:args.num_drawn].reshape(-1, *model.grid_size))
    drawn = images[:args.num_drawn].permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).numpy()
    plot_saliency_maps(drawn, maps, [label for label, _ in args.sps], args.output,
                       title=f"SPS saliency (bright = identity set), {len(paths)} images summarised")
    print("\n".join(lines))
    if args.twins:
        print("\n".join([""] + occluder_lines))
    logger.info("saliency maps drawn to %s", args.output)


if __name__ == "__main__":
    main()
