"""Dynamic masked matching (SPEC §6) as a fast-reid evaluator.

Contract between a model and this evaluator. fast-reid's ``inference_on_dataset`` wants ONE tensor per
batch (it averages the model's output over the image and its flip, then calls ``process``), so a
model with masked matching returns

    cat([g, m̄], dim=1)     (B, 2·W)

with g the W-dimensional test descriptor and m̄ the HMG mask laid over the descriptor's dimensions:
the mask values where it acts, ones where the descriptor is compared unmasked (e.g. m̄ = [m, 1…1] for
g = concat[v, v_p] and a mask over v). :func:`pack_descriptor_and_mask` builds it and
:func:`unpack_descriptor_and_mask` splits it in half, so the evaluator needs no knowledge of the model's
widths. With a mask of ones the masked similarity is the plain cosine similarity.
"""
import copy
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics

from fastreid.evaluation.query_expansion import aqe
from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils import comm

from .masked_matching import DISTANCES, blocked_masked_distance

__all__ = ["DistanceReidEvaluator", "MaskedReidEvaluator", "pack_descriptor_and_mask", "unpack_descriptor_and_mask"]

logger = logging.getLogger("fastreid.dpmpp.masked_evaluator")


def pack_descriptor_and_mask(descriptor, mask, offset=0):
    """(B, W) descriptor and (B, D_m) mask acting on descriptor dims [offset, offset + D_m) ->
    (B, 2W) = cat([descriptor, mask laid over the descriptor with ones elsewhere])."""
    if descriptor.dim() != 2 or mask.dim() != 2 or mask.shape[0] != descriptor.shape[0] \
            or offset < 0 or offset + mask.shape[1] > descriptor.shape[1]:
        raise ValueError(
            f"masked_evaluator.py: a {tuple(mask.shape)} mask at offset {offset} does not fit the "
            f"{tuple(descriptor.shape)} descriptor")
    width, mask_dim = descriptor.shape[1], mask.shape[1]
    ones = descriptor.new_ones
    laid = torch.cat([ones(mask.shape[0], offset), mask.to(descriptor.dtype),
                      ones(mask.shape[0], width - offset - mask_dim)], dim=1)
    return torch.cat([descriptor, laid], dim=1)


def unpack_descriptor_and_mask(features):
    """(N, 2W) -> descriptors (N, W), masks (N, W): the inverse of :func:`pack_descriptor_and_mask`."""
    if features.dim() != 2 or features.shape[1] % 2:
        raise ValueError(
            f"masked_evaluator.py: MaskedReidEvaluator expects model outputs cat([descriptor, mask]) of even "
            f"width (see pack_descriptor_and_mask), got {tuple(features.shape)}; is the model a DPMHead "
            "model with TEST.MASKED_MATCHING.ENABLED?")
    return features.chunk(2, dim=1)


class DistanceReidEvaluator(ReidEvaluator):
    """fast-reid's ``ReidEvaluator`` whose distance matrix comes from ``query_gallery_distance(query, gallery)``
    (subclasses define it): gathering and metrics are the parent's."""

    def _gathered_predictions(self):
        """The parent's gathering: None on the non-main processes of a multi-process run."""
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            return predictions if comm.is_main_process() else None
        return self._predictions

    def evaluate(self):
        predictions = self._gathered_predictions()
        if predictions is None:
            return {}
        features = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        nq = self._num_query
        dist = self.query_gallery_distance(features[:nq], features[nq:])
        self._results = self._ranking_results(dist, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
        return copy.deepcopy(self._results)

    def _ranking_results(self, dist, query_pids, gallery_pids, query_camids, gallery_camids):
        """The parent's metrics on a given distance matrix (fast-reid's evaluate_rank / evaluate_roc)."""
        from fastreid.evaluation.rank import evaluate_rank
        results = OrderedDict()
        cmc, all_ap, all_inp = evaluate_rank(dist, query_pids, gallery_pids, query_camids, gallery_camids)
        mean_ap, mean_inp = np.mean(all_ap), np.mean(all_inp)
        for rank in (1, 5, 10):
            results[f"Rank-{rank}"] = cmc[rank - 1] * 100
        results["mAP"] = mean_ap * 100
        results["mINP"] = mean_inp * 100
        results["metric"] = (mean_ap + cmc[0]) / 2 * 100
        if self.cfg.TEST.ROC.ENABLED:
            from fastreid.evaluation.roc import evaluate_roc
            scores, labels = evaluate_roc(dist, query_pids, gallery_pids, query_camids, gallery_camids)
            fprs, tprs, _ = metrics.roc_curve(labels, scores)
            for fpr in (1e-4, 1e-3, 1e-2):
                results[f"TPR@FPR={fpr:.0e}"] = tprs[np.argmin(np.abs(fprs - fpr))]
        return results


class MaskedReidEvaluator(DistanceReidEvaluator):
    """fast-reid's ``ReidEvaluator`` with the query-mask distance of SPEC §6 in place of ``build_dist``.

    Order of operations as in the parent: gather (multi-process), AQE on the descriptors
    (TEST.AQE.*), distance, re-ranking (TEST.RERANK.*: fast-reid's k-reciprocal Jaccard distance of the
    L2-normalised descriptors, combined as jaccard·(1−λ) + masked·λ), then CMC / mAP / mINP / metric and,
    with TEST.ROC.ENABLED, TPR@FPR — all with fast-reid's own functions. ``TEST.METRIC`` is replaced by
    the masked distance (TEST.MASKED_MATCHING.DISTANCE: "cosine" = 1 − sim, "angular" = arccos sim),
    computed over blocks of TEST.MASKED_MATCHING.BLOCK_SIZE gallery rows with matrix products only.
    Only the query's mask is used (gallery masks are stored but ignored, as in DPM).
    """

    def __init__(self, cfg, num_query, output_dir=None):
        super().__init__(cfg, num_query, output_dir)
        options = cfg.TEST.MASKED_MATCHING
        if options.DISTANCE not in DISTANCES:
            raise ValueError(f"TEST.MASKED_MATCHING.DISTANCE must be one of {DISTANCES}, got {options.DISTANCE!r}")
        self.distance = options.DISTANCE
        self.block_size = int(options.BLOCK_SIZE)
        if self.block_size < 1:
            raise ValueError(f"TEST.MASKED_MATCHING.BLOCK_SIZE must be >= 1, got {options.BLOCK_SIZE}")
        if cfg.TEST.METRIC != "cosine":
            logger.info("TEST.METRIC=%s is not used: masked matching ranks by the %s masked distance",
                        cfg.TEST.METRIC, self.distance)

    def masked_query_distance(self, query_features, gallery_features):
        """(Q, 2W), (G, 2W) packed outputs -> numpy (Q, G) distance matrix (AQE and re-ranking included)."""
        query, query_masks = unpack_descriptor_and_mask(query_features)
        gallery, _ = unpack_descriptor_and_mask(gallery_features)
        test = self.cfg.TEST
        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            query, gallery = aqe(query, gallery, test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA)
        dist = blocked_masked_distance(query, gallery, query_masks, distance=self.distance,
                                       block_size=self.block_size)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting")
            # TEST.RERANK.METHOD / BLOCK_SIZE pick the Jaccard formulation and its blocked sparse form (rerank.py)
            from .rerank import reranked_distance
            dist = reranked_distance(F.normalize(query, dim=1), F.normalize(gallery, dim=1), dist, test.RERANK)
        return dist

    query_gallery_distance = masked_query_distance
