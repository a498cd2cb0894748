#!/usr/bin/env python
"""Can a channel mask computed from the occluded query recover the oracle mask's gain?
(fastreid_dpmpp/analysis/mask_predictability.py; issue 13.)

Per trained run: fit the mask predictors on one split's queries and twins, score them on other splits:

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
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.logger import setup_logger

from fastreid_dpmpp.analysis.mask_predictability import PREDICTORS, QueryInputs, fit_predictors, score_masks
from fastreid_dpmpp.checkpoint import atomic_write_text
from fastreid_dpmpp.data.benchmark import SPLITS, ensure_benchmark
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.experiment import protocol_chance, verdict
from fastreid_dpmpp.engine.protocol_eval import descriptor_spaces, image_meta, split_features
from fastreid_dpmpp.engine.trainer import DPMPPTrainer, with_camera_count
from fastreid_dpmpp.evaluation import protocol as P
from fastreid_dpmpp.evaluation.masked_evaluator import test_placement

RESULT_FILE = "mask_predictability.json"
ROWS = ("plain", "learned") + PREDICTORS + ("oracle",)
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


def _keep_key(keep):
    return f"keep{keep:g}"


def analyse_run(run_dir, args):
    roots = {split: ensure_benchmark(args.benchmark_dir, args.training, split)
             for split in [args.fit_split] + args.eval_splits}
    model, cfg = _load_model(run_dir, roots[args.fit_split])
    fit_inputs, _, _, _ = _split_inputs(model, cfg, roots[args.fit_split], args.space)
    predictors = fit_predictors(fit_inputs)
    result = dict(run_dir=run_dir, fit_split=args.fit_split, space=args.space,
                  ridge_alpha={name: p.alpha for name, p in predictors.items() if hasattr(p, "alpha")}, splits={})
    for split in args.eval_splits:
        query, gallery, masks, mask_dims = _split_inputs(model, cfg, roots[split], args.space)
        result["splits"][split] = {}
        for keep in args.keep:
            rows = score_masks(predictors, query, gallery, keep, masks, mask_dims, test_placement(cfg))
            scored = {name: dict(P.summarize(metrics), per_query_ap=metrics["ap"].tolist())
                      for name, metrics in rows.items()}
            result["splits"][split][_keep_key(keep)] = scored
            logger.info("%s %s keep %g: %s", run_dir, split, keep,
                        ", ".join(f"{name} {row['mAP']:.1f}" for name, row in scored.items()))
    atomic_write_text(json.dumps(result, indent=1), os.path.join(run_dir, RESULT_FILE))
    return result


def _mean_std(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _share_of_oracle_gain(rows, name):
    headroom = rows["oracle"]["mAP"] - rows["plain"]["mAP"]
    return (rows[name]["mAP"] - rows["plain"]["mAP"]) / headroom if headroom > 0 else float("nan")


def summary_rows(results, split, keep):
    """Per row of ``ROWS`` present in every result: mAP mean ± std over ``results`` (one per seed), the paired
    delta against the constant mask (per seed; bootstrap interval over queries of the seed-averaged per-query
    AP difference), its reading, and the share of the oracle's gain over plain matching it recovers."""
    splits = [r["splits"][split][_keep_key(keep)] for r in results]
    table = []
    for name in ROWS:
        if not all(name in s for s in splits):
            continue
        row = dict(row=name, mAP=_mean_std([s[name]["mAP"] for s in splits]),
                   recovered=_mean_std([_share_of_oracle_gain(s, name) for s in splits]))
        if name != "constant":
            per_query = np.mean([np.subtract(s[name]["per_query_ap"], s["constant"]["per_query_ap"])
                                 for s in splits], axis=0)
            row["delta"] = _mean_std([s[name]["mAP"] - s["constant"]["mAP"] for s in splits])
            row["delta_ci"] = P.bootstrap_interval(100.0 * per_query[np.isfinite(per_query)])
        table.append(row)
    return table


def report(root, args):
    from tabulate import tabulate
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
    for split, keep in itertools.product(args.eval_splits, args.keep):
        chance = protocol_chance(args.benchmark_dir, args.training, split)
        lines += [f"## {split}, keep {keep:g} (random ranking {chance['mAP'][0]:.1f} mAP)", ""]
        for arm, results in sorted(by_arm.items()):
            seeds = ", ".join(os.path.basename(r["run_dir"].rstrip("/")) for r in results)
            body = [[row["row"], "{:.1f} ± {:.1f}".format(*row["mAP"]),
                     "{:+.1f} ± {:.1f}".format(*row["delta"]) if "delta" in row else "reference",
                     "[{:+.1f}, {:+.1f}]".format(*row["delta_ci"]) if "delta_ci" in row else "",
                     verdict(row), "{:+.2f} ± {:.2f}".format(*row["recovered"])]
                    for row in summary_rows(results, split, keep)]
            lines += [f"### {arm} ({seeds})", "", tabulate(
                body, headers=["mask", "mAP occ.", "Δ vs constant (per seed)", "Δ 95% CI (queries)", "reading",
                               "share of oracle gain"], tablefmt="github", disable_numparse=True), ""]
    text = "\n".join(lines)
    atomic_write_text(text, os.path.join(root, "mask_predictability.md"))
    print(text)


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
