"""MaskedReidEvaluator (SPEC §6) against a naive per-pair masked matching, with fast-reid's AQE, re-ranking and
metrics, and the trainer's choice between it and fast-reid's stock ReidEvaluator."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.evaluation import ReidEvaluator
from fastreid.evaluation.query_expansion import aqe
from fastreid.evaluation.rank import evaluate_rank
from fastreid.utils.compute_dist import build_dist
from fastreid_dpmpp.engine import DPMPPTrainer, load_config
from fastreid_dpmpp.evaluation.masked_evaluator import (
    MaskedReidEvaluator,
    pack_descriptor_and_mask,
    unpack_descriptor_and_mask,
)

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/Synthetic/dpmpp.yml")
NUM_QUERY, NUM_GALLERY, WIDTH = 5, 60, 7  # >= 50 gallery entries per query for fast-reid's Python ranking


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")  # no compile step: fast-reid's Python ranking


def evaluator_cfg(*opts):
    return load_config("", ["MODEL.DEVICE", "cpu", *opts])


def naive_distance(query, gallery, masks, distance="cosine"):
    """Per pair: sim = ⟨q̂, normalize(m_q ⊙ ĝ)⟩ with the full-width mask m_q; 1 − sim or arccos(sim)."""
    rows = []
    for q, m in zip(query.tolist(), masks.tolist()):
        q_norm = math.sqrt(sum(x * x for x in q))
        row = []
        for g in gallery.tolist():
            g_norm = math.sqrt(sum(x * x for x in g))
            masked = [mk * gk / g_norm for mk, gk in zip(m, g)]
            masked_norm = math.sqrt(sum(x * x for x in masked))
            sim = sum(qk / q_norm * xk / masked_norm for qk, xk in zip(q, masked))
            row.append(1.0 - sim if distance == "cosine" else math.acos(max(-1.0, min(1.0, sim))))
        rows.append(row)
    return np.array(rows)


def random_split(mask_dim=WIDTH, offset=0):
    """Descriptors, masks (mask_dim wide, acting from ``offset``), ids and cameras for query + gallery."""
    total = NUM_QUERY + NUM_GALLERY
    descriptors = torch.randn(total, WIDTH)
    masks = torch.rand(total, mask_dim) * 0.9 + 0.05
    pids = torch.cat([torch.arange(NUM_QUERY), torch.randint(0, 8, (NUM_GALLERY,))])
    camids = torch.cat([torch.zeros(NUM_QUERY, dtype=torch.long), torch.randint(0, 3, (NUM_GALLERY,))])
    packed = pack_descriptor_and_mask(descriptors, masks, offset)
    return descriptors, masks, packed, pids, camids


def feed(evaluator, features, pids, camids, batch=16):
    evaluator.reset()
    for start in range(0, features.shape[0], batch):
        sl = slice(start, start + batch)
        evaluator.process({"targets": pids[sl], "camids": camids[sl]}, features[sl])


def full_width(masks, offset):
    ones = torch.ones(masks.shape[0], WIDTH)
    ones[:, offset:offset + masks.shape[1]] = masks
    return ones


def test_pack_lays_the_mask_over_the_descriptor_and_unpack_inverts_it():
    descriptor, mask = torch.randn(2, 5), torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    packed = pack_descriptor_and_mask(descriptor, mask, offset=1)
    assert torch.equal(packed[:, :5], descriptor)
    assert torch.equal(packed[:, 5:], torch.tensor([[1, 0.1, 0.2, 0.3, 1], [1, 0.4, 0.5, 0.6, 1]]))
    back_descriptor, back_mask = unpack_descriptor_and_mask(packed)
    assert torch.equal(back_descriptor, descriptor) and torch.equal(back_mask, packed[:, 5:])
    with pytest.raises(ValueError, match="does not fit"):
        pack_descriptor_and_mask(descriptor, mask, offset=3)
    with pytest.raises(ValueError, match="even"):
        unpack_descriptor_and_mask(torch.randn(3, 7))


@pytest.mark.parametrize("distance", ["cosine", "angular"])
@pytest.mark.parametrize("mask_dim,offset", [(WIDTH, 0), (4, 0), (3, 4)])  # whole, over v, over v_p
def test_distance_equals_a_naive_per_pair_computation(distance, mask_dim, offset):
    descriptors, masks, packed, pids, camids = random_split(mask_dim, offset)
    evaluator = MaskedReidEvaluator(
        evaluator_cfg("TEST.MASKED_MATCHING.DISTANCE", distance, "TEST.MASKED_MATCHING.BLOCK_SIZE", "7"),
        NUM_QUERY)
    dist = evaluator.masked_query_distance(packed[:NUM_QUERY], packed[NUM_QUERY:])
    expected = naive_distance(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:],
                              full_width(masks[:NUM_QUERY], offset), distance)
    assert dist.shape == (NUM_QUERY, NUM_GALLERY)
    np.testing.assert_allclose(dist, expected, atol=1e-5)

    feed(evaluator, packed, pids, camids)
    results = evaluator.evaluate()
    cmc, ap, inp = evaluate_rank(expected, pids[:NUM_QUERY].numpy(), pids[NUM_QUERY:].numpy(),
                                 camids[:NUM_QUERY].numpy(), camids[NUM_QUERY:].numpy())
    assert results["Rank-1"] == pytest.approx(cmc[0] * 100)
    assert results["mAP"] == pytest.approx(np.mean(ap) * 100)
    assert results["mINP"] == pytest.approx(np.mean(inp) * 100)


def test_masks_change_the_ranking():
    descriptors, masks, packed, _, _ = random_split(4, 0)
    evaluator = MaskedReidEvaluator(evaluator_cfg(), NUM_QUERY)
    masked = evaluator.masked_query_distance(packed[:NUM_QUERY], packed[NUM_QUERY:])
    cosine = build_dist(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:], "cosine")
    assert np.abs(masked - cosine).max() > 1e-3


def test_aqe_runs_on_the_descriptors_before_masked_matching():
    descriptors, masks, packed, _, _ = random_split(4, 0)
    evaluator = MaskedReidEvaluator(evaluator_cfg("TEST.AQE.ENABLED", "True", "TEST.AQE.QE_K", "3"), NUM_QUERY)
    dist = evaluator.masked_query_distance(packed[:NUM_QUERY], packed[NUM_QUERY:])
    query, gallery = aqe(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:], 1, 3, 3.0)
    expected = naive_distance(query, gallery, full_width(masks[:NUM_QUERY], 0))
    np.testing.assert_allclose(dist, expected, atol=1e-5)
    assert np.abs(expected - naive_distance(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:],
                                            full_width(masks[:NUM_QUERY], 0))).max() > 1e-3


def test_reranking_combines_jaccard_with_the_masked_distance():
    descriptors, masks, packed, _, _ = random_split(4, 0)
    cfg = evaluator_cfg("TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "6", "TEST.RERANK.K2", "2",
                        "TEST.RERANK.LAMBDA", "0.3")
    dist = MaskedReidEvaluator(cfg, NUM_QUERY).masked_query_distance(packed[:NUM_QUERY], packed[NUM_QUERY:])
    jaccard = build_dist(F.normalize(descriptors[:NUM_QUERY], dim=1), F.normalize(descriptors[NUM_QUERY:], dim=1),
                         metric="jaccard", k1=6, k2=2)
    naive = naive_distance(descriptors[:NUM_QUERY], descriptors[NUM_QUERY:], full_width(masks[:NUM_QUERY], 0))
    np.testing.assert_allclose(dist, 0.7 * jaccard + 0.3 * naive, atol=1e-5)


def test_masks_of_ones_reproduce_the_stock_evaluator():
    descriptors, _, _, pids, camids = random_split()
    packed = pack_descriptor_and_mask(descriptors, torch.ones_like(descriptors))
    cfg = evaluator_cfg("TEST.ROC.ENABLED", "True")
    masked, stock = MaskedReidEvaluator(cfg, NUM_QUERY), ReidEvaluator(cfg, NUM_QUERY)
    feed(masked, packed, pids, camids)
    feed(stock, descriptors, pids, camids)
    ours, theirs = masked.evaluate(), stock.evaluate()
    assert list(ours) == list(theirs) and "TPR@FPR=1e-02" in ours
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key


@pytest.mark.parametrize("opts,expected", [
    ((), MaskedReidEvaluator),
    (("TEST.MASKED_MATCHING.ENABLED", "False"), ReidEvaluator),
    (("MODEL.DPMPP.DPM_ENABLED", "False"), ReidEvaluator),
    (("MODEL.DPMPP.MASKED_PROTOTYPE", "none"), ReidEvaluator),
    (("MODEL.META_ARCHITECTURE", "CLIPBaseline", "MODEL.HEADS.NAME", "CLIPReIDHead"), ReidEvaluator),
])
def test_trainer_picks_the_evaluator_from_the_config(monkeypatch, opts, expected):
    monkeypatch.setattr(DPMPPTrainer, "build_test_loader", classmethod(lambda cls, cfg, name: ("loader", 3)))
    cfg = load_config(CONFIG, list(opts))
    loader, evaluator = DPMPPTrainer.build_evaluator(cfg, "OccludedDuke")
    # the chosen evaluator, with the breakdowns added (evaluation/breakdown.py)
    assert loader == "loader" and type(evaluator).__mro__[1] is expected and evaluator._num_query == 3
    assert type(evaluator).__name__ == f"{expected.__name__}WithBreakdowns" and evaluator._dataset_name == "OccludedDuke"
