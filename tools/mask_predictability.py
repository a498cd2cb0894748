#!/usr/bin/env python
"""Can a channel mask computed from the occluded query recover the oracle mask's gain? And what would hiding the
occluder's patches from the ViT do instead? (fastreid_dpmpp/analysis/mask_predictability.py and
spatial_visibility.py; issue 13.)

Per trained run: fit the channel-mask predictors on one split's queries and twins, score them on other splits,
and score the spatial reference (the occluder's patches, or as many random ones, hidden from attention):

    python tools/mask_predictability.py --run-dir output/experiments/mask_predictability/dpm/seed1

Report over runs (mean ± std over seeds, paired deltas against the constant mask with bootstrap intervals):

    python tools/mask_predictability.py --report output/experiments/mask_predictability
"""
import argparse
import glob
import itertools
import json
import logging
import os
import sys

import fastreid_dpmpp  # noqa: F401
import numpy as np
import torch
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.analysis.figures import plot_bar_panels
from fastreid_dpmpp.analysis.mask_predictability import PREDICTORS, QueryInputs, fit_predictors, score_masks
from fastreid_dpmpp.analysis.spatial_visibility import (OccluderPatchProbe, occluder_patches, patch_agreement,
                                                       random_patches_like)
from fastreid_dpmpp.checkpoint import atomic_write_text
from fastreid_dpmpp.data.benchmark import SPLITS, ensure_benchmark
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.experiment import protocol_chance, verdict
from fastreid_dpmpp.data.datasets import OccludedDuke, OccludedDukeHolisticQuery
from fastreid_dpmpp.engine.protocol_eval import descriptor_spaces, image_meta, split_features, test_loader
from fastreid_dpmpp.engine.sps_checkpoint import load_frozen_sps_model
from fastreid_dpmpp.engine.trainer import DPMPPTrainer, with_camera_count
from fastreid_dpmpp.evaluation import protocol as P
from fastreid_dpmpp.evaluation.masked_evaluator import test_placement
from fastreid_dpmpp.modeling.stage3_patch_transfer import binarize_saliency, resize_masks

RESULT_FILE = "mask_predictability.json"
REPORT_NAME = "mask_predictability_report"      # .md and .png in the --report folder
ROWS = ("plain", "learned") + PREDICTORS + ("oracle",)
SPATIAL_ROWS = ("plain", "spatial_random", "spatial_sps", "spatial_probe", "spatial_oracle", "holistic")
logger = logging.getLogger("fastreid.dpmpp.mask_predictability")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-dir", nargs="+", help="trained runs (config.yaml + model_final.pth) to analyse")
    what.add_argument("--report", help=f"a folder of <arm>/seed<k>/{RESULT_FILE} to summarise")
    parser.add_argument("--fit-split", default="val", choices=sorted(SPLITS))
    parser.add_argument("--eval-splits", nargs="+", default=["test1", "test2"], choices=sorted(SPLITS))
    parser.add_argument("--training", default="occluded")
    parser.add_argument("--benchmark-dir", default="output/benchmark")
    parser.add_argument("--space", default="concat_bn", help="descriptor space (protocol_eval.descriptor_spaces)")
    parser.add_argument("--sps-weights", default="", help="a Stage II SPS checkpoint: adds the row that hides the "
                        "patches it calls not salient (computed from the query alone)")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5],
                        help="fraction(s) of channels every mask keeps (each scored separately)")
    return parser


def _load_model(run_dir, root):
    config, weights = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "model_final.pth")
    for path in (config, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--run-dir {run_dir}: {os.path.basename(path)} not found (expected a trained "
                                    "run of train_net.py or tools/compare.py)")
    cfg = with_camera_count(load_config(config, ["DATASETS.ROOT", root, "MODEL.WEIGHTS", weights]))
    model = DPMPPTrainer.build_model(cfg)
    Checkpointer(model).load(weights)
    return model, cfg


def _split_inputs(model, cfg, root, space):
    """(QueryInputs, gallery dict, learned masks or None, the dims they act on) of one split, SIE off."""
    data = split_features(model, cfg, root, use_cameras=False, patch_tokens=True)
    parts = ("query", "query_holistic", "gallery")
    stacked = {name: np.concatenate([data[s]["features"][name] for s in parts])
               for name in data["query"]["features"] if name != "patch_tokens"}
    spaces = descriptor_spaces(stacked)
    if space not in spaces:
        raise ValueError(f"--space {space!r}: this model has {sorted(spaces)}")
    descriptor, mask_dims = spaces[space]
    nq, nh = len(data["query"]["pids"]), len(data["query_holistic"]["pids"])
    kinds, _ = image_meta(root, data["query"]["paths"])
    query = QueryInputs(descriptor[:nq], data["query"]["features"]["patch_tokens"], kinds, data["query"]["pids"],
                        data["query"]["camids"], descriptor[nq:nq + nh])
    gallery = dict(descriptors=descriptor[nq + nh:], pids=data["gallery"]["pids"], camids=data["gallery"]["camids"])
    masks = stacked.get("mask")
    return query, gallery, (masks[:nq] if masks is not None else None), mask_dims


def _not_salient(sps_model, images, grid):
    saliency = sps_model.saliency(images, None)
    return ~resize_masks(binarize_saliency(saliency, sps_model.grid_size), grid).flatten(1).bool()


@torch.no_grad()
def _query_batches(model, root, cfg):
    """[(normalised images, occluder patches (B, N) bool, last-block patch tokens (B, N, W))] of a split's
    occluded queries, in order."""
    backbone = model.backbone
    loaders = (test_loader(cfg, OccludedDuke(root=root).query),
               test_loader(cfg, OccludedDukeHolisticQuery(root=root).query))
    batches = []
    for occluded, holistic in zip(*loaders):
        images = model.preprocess_image(occluded)
        hidden = occluder_patches(occluded["images"], holistic["images"], backbone.patch_size, backbone.stride)
        batches.append((images, hidden, backbone.forward_features(images)["patch_tokens"].float().cpu()))
    return batches


def fit_occluder_probe(batches):
    return OccluderPatchProbe().fit(torch.cat([b[2] for b in batches]).numpy(),
                                    torch.cat([b[1] for b in batches]).numpy())


@torch.no_grad()
def _spatial_descriptors(model, batches, space, sps_model=None, probe=None, seed=0):
    """{row: (Q, W) descriptors of the occluded queries with some patches hidden from attention}: the occluder's
    ("spatial_oracle"), as many random ones ("spatial_random"), those the SPS model calls not salient
    ("spatial_sps") and those the probe calls occluded ("spatial_probe"); with the mean share of patches each
    hides ("<row>_hidden") and the probe's agreement with the occluder's patches. An image whose every patch
    would be hidden keeps them all."""
    backbone, generator = model.backbone, torch.Generator().manual_seed(seed)
    collected, hidden_by_row = {}, {}
    for images, hidden, tokens in batches:
        variants = {"spatial_oracle": hidden, "spatial_random": random_patches_like(hidden, generator)}
        if sps_model is not None:
            variants["spatial_sps"] = _not_salient(sps_model, images, backbone.grid_size)
        if probe is not None:
            variants["spatial_probe"] = torch.as_tensor(probe.predict(tokens.numpy()))
        for name, hide in variants.items():
            hidden_by_row.setdefault(name, []).append(hide)
            visible = ~hide
            visible[~visible.any(1)] = True
            outputs = backbone.forward_features(images, None, visible_patches=visible)
            for feature, value in model.features_of(outputs).items():
                collected.setdefault(name, {}).setdefault(feature, []).append(value.float().cpu())
    out = {name: descriptor_spaces({k: torch.cat(v).numpy() for k, v in features.items()})[space][0]
           for name, features in collected.items()}
    out.update({f"{name}_hidden": float(torch.cat(h).float().mean()) for name, h in hidden_by_row.items()})
    if probe is not None:
        out["probe_agreement"] = patch_agreement(torch.cat(hidden_by_row["spatial_probe"]).numpy(),
                                                 torch.cat(hidden_by_row["spatial_oracle"]).numpy())
    return out


def _spatial_rows(query, gallery, spatial):
    def scored(descriptors):
        return P.per_query_metrics(P.query_distance(descriptors, gallery["descriptors"]), query.pids, gallery["pids"],
                                   query.camids, gallery["camids"])
    rows = {"plain": scored(query.descriptors), "holistic": scored(query.holistic)}
    rows.update({name: scored(spatial[name]) for name in SPATIAL_ROWS if name in spatial})
    return rows


def _as_json(rows):
    return {name: dict(P.summarize(metrics), per_query_ap=metrics["ap"].tolist()) for name, metrics in rows.items()}


def _keep_key(keep):
    return f"keep{keep:g}"


def analyse_run(run_dir, args):
    roots = {split: ensure_benchmark(args.benchmark_dir, args.training, split)
             for split in [args.fit_split] + args.eval_splits}
    model, cfg = _load_model(run_dir, roots[args.fit_split])
    sps_model = load_frozen_sps_model(cfg, args.sps_weights, key="--sps-weights") if args.sps_weights else None
    fit_inputs, _, _, _ = _split_inputs(model, cfg, roots[args.fit_split], args.space)
    predictors = fit_predictors(fit_inputs)
    probe = fit_occluder_probe(_query_batches(model, roots[args.fit_split], cfg))
    result = dict(run_dir=run_dir, fit_split=args.fit_split, space=args.space,
                  ridge_alpha={name: p.alpha for name, p in predictors.items() if hasattr(p, "alpha")}, splits={},
                  spatial={})
    for split in args.eval_splits:
        query, gallery, masks, mask_dims = _split_inputs(model, cfg, roots[split], args.space)
        spatial = _spatial_descriptors(model, _query_batches(model, roots[split], cfg), args.space, sps_model, probe)
        scored = _as_json(_spatial_rows(query, gallery, spatial))
        result["spatial"][split] = dict(scored, **{k: v for k, v in spatial.items() if not isinstance(v, np.ndarray)})
        logger.info("%s %s spatial (occluder: %.0f %% of patches; probe IoU %.2f): %s", run_dir, split,
                    100 * spatial["spatial_oracle_hidden"], spatial["probe_agreement"]["iou"],
                    ", ".join(f"{name} {row['mAP']:.1f}" for name, row in scored.items()))
        result["splits"][split] = {}
        for keep in args.keep:
            scored = _as_json(score_masks(predictors, query, gallery, keep, masks, mask_dims, test_placement(cfg)))
            result["splits"][split][_keep_key(keep)] = scored
            logger.info("%s %s keep %g: %s", run_dir, split, keep,
                        ", ".join(f"{name} {row['mAP']:.1f}" for name, row in scored.items()))
    atomic_write_text(json.dumps(result, indent=1), os.path.join(run_dir, RESULT_FILE))
    return result


def _share_of_gain(rows, name, bound):
    headroom = rows[bound]["mAP"] - rows["plain"]["mAP"]
    return (rows[name]["mAP"] - rows["plain"]["mAP"]) / headroom if headroom > 0 else float("nan")


def summary_rows(per_seed, names=ROWS, reference="constant", bound="oracle"):
    """Per row of ``names`` present in every seed's rows: mAP mean ± std over ``per_seed`` ({row: summary with
    per_query_ap} per seed), the paired delta against ``reference`` (per seed; bootstrap interval over queries of
    the seed-averaged per-query AP difference), its reading, and the share of ``bound``'s gain over plain
    matching it recovers."""
    table = []
    for name in names:
        if not all(name in s for s in per_seed):
            continue
        row = dict(row=name, mAP=P.seed_mean_std([s[name]["mAP"] for s in per_seed]),
                   recovered=P.seed_mean_std([_share_of_gain(s, name, bound) for s in per_seed]))
        if name != reference:
            per_query = np.mean([np.subtract(s[name]["per_query_ap"], s[reference]["per_query_ap"])
                                 for s in per_seed], axis=0)
            row["delta"] = P.seed_mean_std([s[name]["mAP"] - s[reference]["mAP"] for s in per_seed])
            row["delta_ci"] = P.bootstrap_interval(100.0 * per_query[np.isfinite(per_query)])
        table.append(row)
    return table


def _table(rows, reference, bound_label):
    from tabulate import tabulate
    body = [[row["row"], "{:.1f} ± {:.1f}".format(*row["mAP"]),
             "{:+.1f} ± {:.1f}".format(*row["delta"]) if "delta" in row else "reference",
             "[{:+.1f}, {:+.1f}]".format(*row["delta_ci"]) if "delta_ci" in row else "",
             verdict(row), "{:+.2f} ± {:.2f}".format(*row["recovered"])] for row in rows]
    return tabulate(body, headers=["row", "mAP occ.", f"Δ vs {reference} (per seed)", "Δ 95% CI (queries)",
                                   "reading", bound_label], tablefmt="github", disable_numparse=True)


def report(root, args):
    runs = sorted(glob.glob(os.path.join(root, "*", "seed*", RESULT_FILE)))
    if not runs:
        raise FileNotFoundError(f"--report {root}: no <arm>/seed<k>/{RESULT_FILE} found")
    by_arm = {}
    for path in runs:
        arm = os.path.basename(os.path.dirname(os.path.dirname(path)))
        with open(path) as f:
            by_arm.setdefault(arm, []).append(json.load(f))
    lines = [f"# Mask predictability ({args.space}; predictors fitted on "
             f"{next(iter(by_arm.values()))[0]['fit_split']}; every mask keeps the same fraction of channels)", ""]
    chance = {split: protocol_chance(args.benchmark_dir, args.training, split)["mAP"][0] for split in args.eval_splits}
    for split, keep in itertools.product(args.eval_splits, args.keep):
        lines += [f"## Channel masks: {split}, keep {keep:g} (random ranking {chance[split]:.1f} mAP)", ""]
        for arm, results in sorted(by_arm.items()):
            rows = summary_rows([r["splits"][split][_keep_key(keep)] for r in results])
            lines += [f"### {arm} ({_seeds(results)})", "", _table(rows, "constant", "share of oracle gain"), ""]
    for split in args.eval_splits:
        lines += [f"## Spatial reference: {split} (random ranking {chance[split]:.1f} mAP)", ""]
        for arm, results in sorted(by_arm.items()):
            per_seed = [r["spatial"][split] for r in results]
            hidden = ", ".join(f"{name} hides {100 * np.mean([s[name + '_hidden'] for s in per_seed]):.0f} %"
                               for name in SPATIAL_ROWS if all(f"{name}_hidden" in s for s in per_seed))
            if all("probe_agreement" in s for s in per_seed):
                hidden += f"; probe vs occluder patches IoU {np.mean([s['probe_agreement']['iou'] for s in per_seed]):.2f}"
            rows = summary_rows(per_seed, SPATIAL_ROWS, "spatial_random", "holistic")
            lines += [f"### {arm} ({_seeds(results)}; {hidden})", "",
                      _table(rows, "spatial_random", "share of the occlusion gap closed"), ""]
    text = "\n".join(lines)
    atomic_write_text(text, os.path.join(root, f"{REPORT_NAME}.md"))
    _figure(by_arm, args, os.path.join(root, f"{REPORT_NAME}.png"))
    print(text)


def _figure(by_arm, args, path):
    """Channel masks (first --keep) and the spatial reference of each arm on the first --eval-splits split."""
    split, keep = args.eval_splits[0], args.keep[0]
    panels = []
    for arm, results in sorted(by_arm.items()):
        channel = summary_rows([r["splits"][split][_keep_key(keep)] for r in results])
        spatial = summary_rows([r["spatial"][split] for r in results], SPATIAL_ROWS, "spatial_random", "holistic")
        panels.append([(f"{arm}: channel masks keeping {keep:g} of the channels", _bars(channel)),
                       (f"{arm}: patches hidden from attention", _bars(spatial))])
    plot_bar_panels(panels, path, title=f"What a mask could do on {split} (mean ± std over {len(results)} seeds)")


def _bars(rows):
    return [(row["row"], row["mAP"][0], row["mAP"][1]) for row in rows]


def _seeds(results):
    return ", ".join(os.path.basename(r["run_dir"].rstrip("/")) for r in results)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logger(name="fastreid")
    if args.report:
        report(args.report, args)
        return 0
    for run_dir in args.run_dir:
        analyse_run(run_dir, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
