"""Breakdowns written by every evaluation of the trainer (docs/EVALUATION.md §6).

``with_breakdowns(evaluator_class)`` returns a subclass of a fast-reid evaluator that, after fast-reid's own
metrics, ranks the same features again with the same distance and reports the share of top-1 matches from the
query's own camera (against its chance share) and, when the test images come from a synthetic benchmark (a
``meta.json`` beside the split folders), mAP / Rank-1 per occluder kind and per covered-body bin. The numbers are
logged and written to ``<OUTPUT_DIR>/breakdowns_<dataset>.json``; fast-reid's result dict is unchanged.
"""
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.utils import comm

from . import protocol as P

__all__ = ["with_breakdowns", "image_meta"]

logger = logging.getLogger("fastreid.dpmpp.breakdown")

META_FILE = "meta.json"


def image_meta(paths):
    """(occluder kinds, covered fractions) of images of a synthetic benchmark, or (None, None) for other data:
    the meta.json of the layout folder that holds each image's split folder."""
    cache, kinds, covered = {}, [], []
    for path in paths:
        layout = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if layout not in cache:
            meta_path = os.path.join(layout, META_FILE)
            cache[layout] = json.load(open(meta_path))["images"] if os.path.isfile(meta_path) else None
        images = cache[layout]
        info = images.get(os.path.relpath(os.path.abspath(path), layout)) if images is not None else None
        if info is None:
            return None, None
        kinds.append(info["occluder"] or "none")
        covered.append(info["covered"])
    return np.array(kinds, dtype=object), np.array(covered, float)


def _breakdowns(dist, paths, pids, camids, num_query):
    q, g = slice(0, num_query), slice(num_query, None)
    metrics = P.per_query_metrics(dist, pids[q], pids[g], camids[q], camids[g])
    out = {"own_camera_top1": P.own_camera_top1_share(metrics, camids[q], camids[g]),
           "own_camera_top1_chance": P.chance_own_camera_share(camids[q], camids[g])}
    kinds, covered = image_meta(paths[:num_query])
    if kinds is not None:
        out["by_occluder"] = P.breakdown(metrics, kinds)
        out["by_coverage"] = P.breakdown(metrics, P.coverage_bins(covered))
    return out


def _log(name, result):
    logger.info("%s: %.1f %% of the top-1 matches come from the query's own camera (chance %.1f %%)", name,
                result["own_camera_top1"], result["own_camera_top1_chance"])
    for key, title in (("by_occluder", "occluder"), ("by_coverage", "covered body")):
        for label, summary in result.get(key, {}).items():
            logger.info("%s: %s %-10s mAP %5.1f  Rank-1 %5.1f  (%d queries)", name, title, label, summary["mAP"],
                        summary["Rank-1"], summary["queries"])


def with_breakdowns(evaluator_class):
    """A subclass of ``evaluator_class`` (fast-reid's ReidEvaluator or one of ours) that adds the breakdowns; its
    constructor takes the dataset name first. The ranking is the evaluator's own distance (ours), or the cosine
    distance for fast-reid's ReidEvaluator (without its optional AQE / re-ranking)."""

    class BreakdownEvaluator(evaluator_class):
        def __init__(self, dataset_name, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._dataset_name = dataset_name
            self._paths = []

        def reset(self):
            super().reset()
            self._paths = []

        def process(self, inputs, outputs):
            super().process(inputs, outputs)
            self._paths.extend(inputs.get("img_paths", []))

        def _breakdown_distance(self, features):
            query, gallery = features[:self._num_query], features[self._num_query:]
            if hasattr(self, "query_gallery_distance"):       # ours: the evaluator's own (masked) distance
                return np.asarray(self.query_gallery_distance(query, gallery))
            return 1.0 - (F.normalize(query, dim=1) @ F.normalize(gallery, dim=1).t()).numpy()

        def evaluate(self):
            results = super().evaluate()
            if comm.get_world_size() > 1 or not results or len(self._paths) != sum(
                    len(p["pids"]) for p in self._predictions):
                return results            # breakdowns from one process's complete predictions only
            features = torch.cat([p["feats"] for p in self._predictions])
            pids = torch.cat([p["pids"] for p in self._predictions]).numpy()
            camids = torch.cat([p["camids"] for p in self._predictions]).numpy()
            result = _breakdowns(self._breakdown_distance(features), self._paths, pids, camids, self._num_query)
            _log(self._dataset_name, result)
            if self._output_dir:
                os.makedirs(self._output_dir, exist_ok=True)
                with open(os.path.join(self._output_dir, f"breakdowns_{self._dataset_name}.json"), "w") as f:
                    json.dump(result, f, indent=1)
            return results

    BreakdownEvaluator.__name__ = f"{evaluator_class.__name__}WithBreakdowns"
    return BreakdownEvaluator
