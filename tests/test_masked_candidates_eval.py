"""MaskedReidEvaluator with TEST.MASKED_MATCHING.CANDIDATES = K > 0: FAISS candidates + exact masked re-scoring,
metrics from the top-K lists (truncated at K) against the exhaustive masked evaluator and a naive per-query loop."""
import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.evaluation import masked_evaluator
from fastreid_dpmpp.evaluation.masked_evaluator import (
    MaskedReidEvaluator,
    pack_descriptor_and_mask,
    ranked_list_metrics,
)
from fastreid_dpmpp.evaluation.masked_matching import masked_topk

NUM_QUERY, NUM_GALLERY, WIDTH, NUM_IDS = 30, 200, 16, 12
KEYS = ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")


def cfg_with(*opts):
    return load_config("", ["MODEL.DEVICE", "cpu", *opts])


def identity_split(sign_gallery=False, width=WIDTH, seed=0):
    """Packed outputs, ids and cameras. Descriptors = identity centre + noise; queries of ids 0..11 from cameras
    0..2 (ids 10 and 11 only in the gallery under the query's own camera: invalid queries); gallery from 3
    cameras (so some same-id-same-camera junk). Masks uniform in [0.05, 1).

    sign_gallery: gallery rows are ±1 sign vectors (the identity's signs with 40 % flipped), so every ĝ_k² is
    1/W and the masked similarity's denominator sqrt(Σ m_k² ĝ_k²) is the same for all gallery rows of a query:
    the masked ranking then equals the inner-product ranking of normalize(q̂ ⊙ m), the direction the flat index
    searches with, and the index recalls the exact masked top-K by construction."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_IDS, width, generator=generator)
    q_pids = torch.arange(NUM_QUERY) % NUM_IDS
    q_cams = torch.arange(NUM_QUERY) % 3
    g_pids = torch.randint(0, NUM_IDS - 2, (NUM_GALLERY,), generator=generator)
    g_cams = torch.randint(0, 3, (NUM_GALLERY,), generator=generator)
    g_pids[:4], g_cams[:4] = torch.tensor([10, 10, 11, 11]), torch.tensor([1, 1, 2, 2])  # queries 10, 11 are on 1, 2
    pids, cams = torch.cat([q_pids, g_pids]), torch.cat([q_cams, g_cams])
    descriptors = centres[pids] + 0.9 * torch.randn(len(pids), width, generator=generator)
    if sign_gallery:
        flips = torch.where(torch.rand(NUM_GALLERY, width, generator=generator) < 0.4, -1.0, 1.0)
        descriptors[NUM_QUERY:] = centres[g_pids].sign() * flips
    masks = 0.05 + 0.95 * torch.rand(len(pids), width, generator=generator)
    return pack_descriptor_and_mask(descriptors, masks), descriptors, masks, pids, cams


def evaluate(cfg, packed, pids, cams, batch=32):
    evaluator = MaskedReidEvaluator(cfg, NUM_QUERY)
    evaluator.reset()
    for start in range(0, packed.shape[0], batch):
        sl = slice(start, start + batch)
        evaluator.process({"targets": pids[sl], "camids": cams[sl]}, packed[sl])
    return evaluator.evaluate()


def forbid_dense_matrix(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the candidate path must not build the (Q, G) distance matrix")
    monkeypatch.setattr(masked_evaluator, "blocked_masked_distance", refuse)


@pytest.mark.parametrize("index", ["flat", "ivf"])  # ivf: 5 lists, nprobe 5 = every list, so K = G returns all rows
def test_all_candidates_reproduce_the_exhaustive_evaluator(monkeypatch, index):
    packed, _, _, pids, cams = identity_split()
    exhaustive = evaluate(cfg_with(), packed, pids, cams)
    forbid_dense_matrix(monkeypatch)
    candidate = evaluate(cfg_with("TEST.MASKED_MATCHING.CANDIDATES", str(NUM_GALLERY),
                                  "TEST.MASKED_MATCHING.INDEX", index), packed, pids, cams)
    assert list(candidate) == KEYS == list(exhaustive)
    for key in KEYS:
        assert candidate[key] == pytest.approx(exhaustive[key], abs=1e-4), key  # percent: 1e-6 as a fraction


def test_small_k_keeps_ranks_and_lower_bounds_map(monkeypatch):
    k = 24
    packed, descriptors, masks, pids, cams = identity_split(sign_gallery=True, width=64)
    exhaustive = evaluate(cfg_with(), packed, pids, cams)
    cfg = cfg_with("TEST.MASKED_MATCHING.CANDIDATES", str(k), "TEST.MASKED_MATCHING.BLOCK_SIZE", "50",
                   "TEST.MASKED_MATCHING.CANDIDATE_FACTOR", "1")
    ranked = MaskedReidEvaluator(cfg, NUM_QUERY).masked_candidate_ranking(packed[:NUM_QUERY], packed[NUM_QUERY:])
    assert ranked.shape == (NUM_QUERY, k)
    # precondition: the flat index recalled the exact masked top-K, in the same order
    _, exact = masked_topk(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:], masks[:NUM_QUERY], k)
    assert np.array_equal(ranked, exact.numpy())
    # ...and every list keeps >= 10 rows once same-id-same-camera junk is removed, so Rank-1/5/10 are exact
    g_pids, g_cams = pids[NUM_QUERY:].numpy()[ranked], cams[NUM_QUERY:].numpy()[ranked]
    junk = (g_pids == pids[:NUM_QUERY, None].numpy()) & (g_cams == cams[:NUM_QUERY, None].numpy())
    assert (k - junk.sum(1)).min() >= 10

    forbid_dense_matrix(monkeypatch)
    truncated = evaluate(cfg, packed, pids, cams)
    for key in ("Rank-1", "Rank-5", "Rank-10"):
        assert truncated[key] == pytest.approx(exhaustive[key], abs=1e-4), key
    assert truncated["mAP"] <= exhaustive["mAP"] + 1e-6
    assert truncated["mAP"] < exhaustive["mAP"] - 1.0  # K = 24 of ~20 positives per id: truncation does bite
    assert truncated["mINP"] <= exhaustive["mINP"] + 1e-6


def test_candidate_factor_recovers_the_exact_top_k_that_k_candidates_miss():
    """Random masks: the masked score's denominator differs per gallery row, so the index's K best by the masked
    query's direction are not always the exact masked top-K; retrieving c·K (here all rows) and keeping the best K
    by the exact masked score is exact."""
    k = 10
    packed, descriptors, masks, _, _ = identity_split(width=32)
    _, exact = masked_topk(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:], masks[:NUM_QUERY], k)

    def ranking(factor):
        cfg = cfg_with("TEST.MASKED_MATCHING.CANDIDATES", str(k), "TEST.MASKED_MATCHING.CANDIDATE_FACTOR", str(factor))
        return MaskedReidEvaluator(cfg, NUM_QUERY).masked_candidate_ranking(packed[:NUM_QUERY], packed[NUM_QUERY:])

    assert not np.array_equal(ranking(1), exact.numpy())  # the approximation this key exists for
    assert np.array_equal(ranking(NUM_GALLERY // k), exact.numpy())


def naive_truncated_ap(ranked, q_pid, q_cam, g_pids, g_cams):
    """One query, plain loop: skip rows of the query's id and camera; AP = Σ precision at each retrieved valid
    match / number of valid matches in the whole gallery."""
    num_valid = sum(1 for p, c in zip(g_pids, g_cams) if p == q_pid and c != q_cam)
    kept, hits, total = 0, 0, 0.0
    for row in ranked:
        if row < 0 or (g_pids[row] == q_pid and g_cams[row] == q_cam):
            continue
        kept += 1
        if g_pids[row] == q_pid:
            hits += 1
            total += hits / kept
    return total / num_valid


def test_truncated_metrics_on_a_hand_made_case():
    #            row: 0  1  2  3  4  5  6
    g_pids = np.array([1, 2, 1, 1, 3, 1, 4])
    g_cams = np.array([1, 1, 0, 2, 0, 1, 0])
    q_pids, q_cams = np.array([1, 4, 9, 3]), np.array([0, 1, 0, 2])
    ranked = np.array([
        [1, 0, 2, 3],    # id 1 cam 0: miss, hit, junk (row 2), hit; row 5 never retrieved -> AP (1/2 + 2/3) / 3
        [6, 0, -1, -1],  # id 4 cam 1: hit at rank 1, all its 1 valid matches retrieved -> AP 1, INP 1
        [0, 1, 2, 3],    # id 9: not in the gallery -> not a valid query
        [0, 1, 3, 2],    # id 3 cam 2: its valid match (row 4) not in the list -> AP 0, INP 0
    ])
    cmc, all_ap, all_inp = ranked_list_metrics(ranked, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_allclose(all_ap, [7 / 18, 1.0, 0.0], atol=1e-12)
    for q, ap in zip((0, 1, 3), all_ap):
        assert ap == pytest.approx(naive_truncated_ap(ranked[q], q_pids[q], q_cams[q], g_pids, g_cams), abs=1e-12)
    np.testing.assert_allclose(all_inp, [0.0, 1.0, 0.0])  # query 0 misses row 5; query 3 misses row 4
    # first kept hit ranks: 2, 1, never -> CMC over the 3 valid queries
    np.testing.assert_allclose(cmc, [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3], atol=1e-7)


def test_truncated_ap_matches_the_naive_loop_on_random_lists():
    rng = np.random.default_rng(0)
    g_pids, g_cams = rng.integers(0, 6, 80), rng.integers(0, 3, 80)
    q_pids, q_cams = rng.integers(0, 7, 25), rng.integers(0, 3, 25)
    ranked = np.stack([rng.permutation(80)[:15] for _ in range(25)])
    ranked[::4, -3:] = -1
    _, all_ap, _ = ranked_list_metrics(ranked, q_pids, g_pids, q_cams, g_cams)
    valid = [q for q in range(25) if ((g_pids == q_pids[q]) & (g_cams != q_cams[q])).any()]
    expected = [naive_truncated_ap(ranked[q], q_pids[q], q_cams[q], g_pids, g_cams) for q in valid]
    assert len(all_ap) == len(valid) < 25
    np.testing.assert_allclose(all_ap, expected, atol=1e-12)


@pytest.mark.parametrize("opts,message", [
    (("TEST.MASKED_MATCHING.CANDIDATES", "-1"), "CANDIDATES must be 0"),
    (("TEST.MASKED_MATCHING.CANDIDATE_FACTOR", "0"), "CANDIDATE_FACTOR must be an integer >= 1"),
    (("TEST.MASKED_MATCHING.INDEX", "hnsw"), "INDEX must be one of"),
    (("TEST.MASKED_MATCHING.CANDIDATES", "10", "TEST.RERANK.ENABLED", "True"), "TEST.RERANK.ENABLED"),
    (("TEST.MASKED_MATCHING.CANDIDATES", "10", "TEST.AQE.ENABLED", "True"), "TEST.AQE.ENABLED"),
    (("TEST.MASKED_MATCHING.CANDIDATES", "10", "TEST.ROC.ENABLED", "True"), "TEST.ROC.ENABLED"),
])
def test_bad_candidate_options_are_refused(opts, message):
    with pytest.raises(ValueError, match=message):
        MaskedReidEvaluator(cfg_with(*opts), NUM_QUERY)
    with pytest.raises(ValueError, match="no query identity"):
        ranked_list_metrics(np.zeros((1, 2), dtype=int), np.array([5]), np.array([1, 2]), np.array([0]),
                            np.array([1, 1]))
