"""Dynamic masked matching (SPEC §6) as a fast-reid evaluator.

The model side of the contract (what a model returns in eval: cat([descriptor, mask]), and which configs make it
return that) is :mod:`fastreid_dpmpp.model_outputs`; this evaluator unpacks it with
:func:`~fastreid_dpmpp.model_outputs.unpack_descriptor_and_mask` (re-exported here with
:func:`~fastreid_dpmpp.model_outputs.pack_descriptor_and_mask`). With a mask of ones the masked similarity is the
plain cosine similarity.

Galleries too large to score exhaustively (TEST.MASKED_MATCHING.CANDIDATES = K > 0): FAISS retrieves K
candidates per query (TEST.MASKED_MATCHING.INDEX), they are re-scored exactly (``masked_search``) and the
metrics are computed from the (Q, K) ranked lists by :func:`ranked_list_metrics` — no (Q, G) matrix.
"""
import copy
import logging
from collections import OrderedDict

import numpy as np
import torch.nn.functional as F

from fastreid.evaluation.query_expansion import aqe

from ..model_outputs import pack_descriptor_and_mask, unpack_descriptor_and_mask
from .distance_evaluator import DistanceReidEvaluator
from .masked_matching import DISTANCES, SPEC_PLACEMENT, blocked_masked_distance, build_gallery_index, masked_search
from .rerank import reranked_distance

__all__ = ["DistanceReidEvaluator", "MaskedReidEvaluator", "pack_descriptor_and_mask", "unpack_descriptor_and_mask",
           "ranked_list_metrics", "CANDIDATE_INDEXES"]

CANDIDATE_INDEXES = ("flat", "ivf", "ivfpq")

logger = logging.getLogger("fastreid.dpmpp.masked_evaluator")


def _compact_codes(values, *others):
    """Integer codes 0..n−1 of ``values`` (and of the same kind of labels in ``others``), shared by all."""
    _, codes = np.unique(np.concatenate([values, *others]), return_inverse=True)
    return np.split(codes.reshape(-1), np.cumsum([len(values)] + [len(o) for o in others])[:-1])


def _valid_positive_counts(query_pids, gallery_pids, query_camids, gallery_camids):
    """Per query, the gallery rows with its id from another camera (fast-reid's valid matches), counted in
    O((Q + G) log G) from per-id and per-(id, camera) gallery counts — no (Q, G) comparison."""
    q_pid, g_pid = _compact_codes(query_pids, gallery_pids)
    q_cam, g_cam = _compact_codes(query_camids, gallery_camids)
    num_cams = int(max(q_cam.max(initial=0), g_cam.max(initial=0))) + 1
    q_pair, g_pair = q_pid.astype(np.int64) * num_cams + q_cam, g_pid.astype(np.int64) * num_cams + g_cam
    sorted_pids, sorted_pairs = np.sort(g_pid), np.sort(g_pair)

    def count(sorted_keys, keys):
        return np.searchsorted(sorted_keys, keys, side="right") - np.searchsorted(sorted_keys, keys, side="left")

    return count(sorted_pids, q_pid) - count(sorted_pairs, q_pair)


def ranked_list_metrics(ranked, query_pids, gallery_pids, query_camids, gallery_camids, max_rank=50):
    """fast-reid's market1501 ranking metrics (``evaluation/rank.py``) from truncated ranked lists.

    Args:
        ranked: (Q, K) int gallery rows per query, best first; −1 = no result (treated as not retrieved).
        query_pids, gallery_pids, query_camids, gallery_camids: 1-D label arrays.
        max_rank: CMC length (capped at the gallery size, as fast-reid).
    Returns:
        (cmc (max_rank,) float32, all_ap (V,), all_inp (V,)) like fast-reid's ``evaluate_rank``, over the V
        valid queries. As in fast-reid, gallery rows of the query's id AND camera are removed from each list,
        a query is valid when the gallery holds at least one row of its id from another camera (counted over
        the whole gallery, not the list), and CMC(r) is the fraction of valid queries with a valid match
        within the first r kept rows.
        Truncation at K: valid matches outside the list count as never retrieved, so
        AP = Σ_{retrieved matches} precision@rank / (number of valid matches in the gallery),
        INP = 0 unless every valid match is in the list. When the lists are the exact masked top-K (e.g. a
        flat index that recalls it), CMC(r) is exact for r ≤ the number of kept rows in every list, and AP,
        INP and CMC(r) are lower bounds of the exhaustive values (all equal for K = G). With approximate
        candidates they are the metrics of that approximate ranking (not bounds: a missed negative raises
        the ranks of the matches below it).
    """
    ranked = np.asarray(ranked)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    if ranked.ndim != 2 or ranked.shape[0] != len(query_pids) or ranked.shape[1] < 1 \
            or ranked.max(initial=-1) >= len(gallery_pids):
        raise ValueError(f"masked_evaluator.py: ranked lists must be (Q={len(query_pids)}, K >= 1) gallery rows < "
                         f"{len(gallery_pids)} (−1 = none), got shape {ranked.shape}")
    num_positives = _valid_positive_counts(query_pids, gallery_pids, query_camids, gallery_camids)
    valid_query = num_positives > 0
    if not valid_query.any():
        raise ValueError("masked_evaluator.py: no query identity appears in the gallery under another camera")

    retrieved = ranked >= 0
    rows = np.where(retrieved, ranked, 0)
    same_id = (gallery_pids[rows] == query_pids[:, None]) & retrieved
    junk = same_id & (gallery_camids[rows] == query_camids[:, None])
    kept = retrieved & ~junk
    matches = same_id & kept
    kept_rank = np.cumsum(kept, axis=1)                          # 1-based rank among the kept rows
    hits = np.cumsum(matches, axis=1)
    precision_sum = np.where(matches, hits / np.maximum(kept_rank, 1), 0.0).sum(axis=1)

    matches, kept_rank, hits = matches[valid_query], kept_rank[valid_query], hits[valid_query]
    num_positives = num_positives[valid_query]
    all_ap = precision_sum[valid_query] / num_positives
    last_hit_rank = np.where(matches, kept_rank, 0).max(axis=1)
    all_inp = np.where(hits[:, -1] == num_positives, num_positives / np.maximum(last_hit_rank, 1), 0.0)

    first_hit_rank = np.where(matches, kept_rank, np.iinfo(np.int64).max).min(axis=1)
    ranks = np.arange(1, min(max_rank, len(gallery_pids)) + 1)
    cmc = (first_hit_rank[:, None] <= ranks[None, :]).mean(axis=0).astype(np.float32)
    return cmc, all_ap, all_inp


def _candidate_options(cfg):
    """(K, index type) from TEST.MASKED_MATCHING.{CANDIDATES, INDEX}; K > 0 excludes the options that need the
    full (Q, G) matrix (AQE, re-ranking, ROC)."""
    options, test = cfg.TEST.MASKED_MATCHING, cfg.TEST
    candidates = int(options.CANDIDATES)
    if candidates < 0:
        raise ValueError(f"TEST.MASKED_MATCHING.CANDIDATES must be 0 (exhaustive) or K > 0, got {options.CANDIDATES}")
    factor = options.CANDIDATE_FACTOR
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"TEST.MASKED_MATCHING.CANDIDATE_FACTOR must be an integer >= 1, got {factor!r}")
    if options.INDEX not in CANDIDATE_INDEXES:
        raise ValueError(f"TEST.MASKED_MATCHING.INDEX must be one of {CANDIDATE_INDEXES}, got {options.INDEX!r}")
    if candidates > 0:
        switches = (("TEST.AQE.ENABLED", test.AQE.ENABLED), ("TEST.RERANK.ENABLED", test.RERANK.ENABLED),
                    ("TEST.ROC.ENABLED", test.ROC.ENABLED))
        dense = [key for key, on in switches if on]
        if dense:
            raise ValueError(f"TEST.MASKED_MATCHING.CANDIDATES={candidates} ranks K candidates per query without a "
                             f"(Q, G) matrix, which {', '.join(dense)} need: set them False or CANDIDATES 0")
    return candidates, options.INDEX, factor


PLACEMENTS = ("gallery", "training")


def test_placement(cfg):
    """(side, before_norm) of masked matching: SPEC §6 ("gallery": the query's mask on the gallery descriptor,
    re-normalised — the prototype side of Eq. 10), or the Table IV placement the model was trained with
    ("training": MODEL.DPMPP.MASK_SIDE / MASK_BEFORE_NORM, the gallery playing the prototype)."""
    placement = cfg.TEST.MASKED_MATCHING.PLACEMENT
    if placement not in PLACEMENTS:
        raise ValueError(f"TEST.MASKED_MATCHING.PLACEMENT must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "gallery":
        return SPEC_PLACEMENT
    return cfg.MODEL.DPMPP.MASK_SIDE, bool(cfg.MODEL.DPMPP.MASK_BEFORE_NORM)


class MaskedReidEvaluator(DistanceReidEvaluator):
    """fast-reid's ``ReidEvaluator`` with the query-mask distance of SPEC §6 in place of ``build_dist``.

    Order of operations as in the parent: gather (multi-process), AQE on the descriptors
    (TEST.AQE.*), distance, re-ranking (TEST.RERANK.*: fast-reid's k-reciprocal Jaccard distance of the
    L2-normalised descriptors, combined as jaccard·(1−λ) + masked·λ), then CMC / mAP / mINP / metric and,
    with TEST.ROC.ENABLED, TPR@FPR — all with fast-reid's own functions. ``TEST.METRIC`` is replaced by
    the masked distance (TEST.MASKED_MATCHING.DISTANCE: "cosine" = 1 − sim, "angular" = arccos sim),
    computed over blocks of TEST.MASKED_MATCHING.BLOCK_SIZE gallery rows with matrix products only.
    Only the query's mask is used (gallery masks are stored but ignored, as in DPM).

    TEST.MASKED_MATCHING.CANDIDATES = K > 0 (large galleries): no distance matrix; K candidates per query from
    a FAISS index (TEST.MASKED_MATCHING.INDEX), exact masked re-scoring, and the same result keys computed
    from the top-K lists (:func:`ranked_list_metrics`: truncated at K, lower bounds; exact for K = G with an
    index that returns every row). AQE, re-ranking and ROC need the full matrix and are refused there.
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
        self.candidates, self.index_type, self.candidate_factor = _candidate_options(cfg)
        self.side, self.before_norm = test_placement(cfg)
        if self.candidates > 0 and (self.side, self.before_norm) != SPEC_PLACEMENT:
            raise ValueError("TEST.MASKED_MATCHING.CANDIDATES > 0 re-scores FAISS candidates with SPEC §6's placement "
                             "only: set TEST.MASKED_MATCHING.PLACEMENT 'gallery' or CANDIDATES 0")

    def evaluate(self):
        if self.candidates <= 0:
            return super().evaluate()
        gathered = self._gathered_arrays()
        if gathered is None:
            return {}
        features, pids, camids = gathered
        nq = self._num_query
        ranked = self.masked_candidate_ranking(features[:nq], features[nq:])
        self._results = self._truncated_ranking_results(ranked, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
        return copy.deepcopy(self._results)

    def masked_candidate_ranking(self, query_features, gallery_features):
        """(Q, 2W), (G, 2W) packed outputs -> (Q, K) int64 gallery rows by descending masked similarity:
        CANDIDATE_FACTOR·K FAISS candidates per query (TEST.MASKED_MATCHING.INDEX) re-scored exactly
        (``masked_search``), the best K kept.
        Memory: the index, the (Q, K) lists and (query block · K · W) re-scoring intermediates, with query
        blocks of max(1, BLOCK_SIZE // K) rows; never a (Q, G) matrix."""
        query, query_masks = unpack_descriptor_and_mask(query_features)
        gallery, _ = unpack_descriptor_and_mask(gallery_features)
        k = min(self.candidates, gallery.shape[0])
        retrieved = min(k * self.candidate_factor, gallery.shape[0])
        index = build_gallery_index(gallery, index_type=self.index_type)
        _, ranked = masked_search(query, query_masks, index, k, candidates=retrieved, gallery_features=gallery,
                                  query_block_size=max(1, self.block_size // retrieved))
        return ranked

    def _truncated_ranking_results(self, ranked, query_pids, gallery_pids, query_camids, gallery_camids):
        """fast-reid's result keys from the (Q, K) lists (``ranked_list_metrics``: lower bounds, truncated at K)."""
        logger.info("Masked matching over %d %s-index candidates per query: the metrics below are TRUNCATED at "
                    "K=%d (positives outside the top-K count as never retrieved: mAP, mINP and Rank-k beyond the "
                    "list are lower bounds of the exhaustive values when the index recalls the exact top-K)",
                    ranked.shape[1], self.index_type, ranked.shape[1])
        cmc, all_ap, all_inp = ranked_list_metrics(ranked, query_pids, gallery_pids, query_camids, gallery_camids)
        mean_ap, mean_inp = np.mean(all_ap), np.mean(all_inp)
        results = OrderedDict()
        for rank in (1, 5, 10):
            results[f"Rank-{rank}"] = cmc[min(rank, len(cmc)) - 1] * 100
        results["mAP"] = mean_ap * 100
        results["mINP"] = mean_inp * 100
        results["metric"] = (mean_ap + cmc[0]) / 2 * 100
        return results

    def masked_query_distance(self, query_features, gallery_features):
        """(Q, 2W), (G, 2W) packed outputs -> numpy (Q, G) distance matrix (AQE and re-ranking included)."""
        query, query_masks = unpack_descriptor_and_mask(query_features)
        gallery, _ = unpack_descriptor_and_mask(gallery_features)
        test = self.cfg.TEST
        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            query, gallery = aqe(query, gallery, test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA)
        dist = blocked_masked_distance(query, gallery, query_masks, distance=self.distance,
                                       block_size=self.block_size, side=self.side, before_norm=self.before_norm)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting")
            # TEST.RERANK.METHOD / BLOCK_SIZE pick the Jaccard formulation and its blocked sparse form (rerank.py)
            dist = reranked_distance(F.normalize(query, dim=1), F.normalize(gallery, dim=1), dist, test.RERANK)
        return dist

    query_gallery_distance = masked_query_distance
