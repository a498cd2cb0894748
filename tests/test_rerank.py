"""k-reciprocal re-ranking (evaluation/rerank.py): the original formulation (Zhong et al., CVPR 2017) against an
independent dense implementation written here from the paper's equations, the blocked/sparse path against the
unblocked one, fast-reid's Jaccard formulation against fast-reid's own dense compute_jaccard_distance, and the
evaluators' wiring (TEST.RERANK.METHOD / BLOCK_SIZE)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid.evaluation import ReidEvaluator
from fastreid.evaluation.rank import evaluate_rank
from fastreid.utils.compute_dist import build_dist
from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.evaluation.masked_evaluator import MaskedReidEvaluator, pack_descriptor_and_mask
from fastreid_dpmpp.evaluation.rerank import (
    RerankReidEvaluator,
    farthest_squared_distance,
    iter_kreciprocal_rerank,
    jaccard_distance,
    k_reciprocal_sets,
    kreciprocal_rerank,
    rerank_options,
    uses_rerank_evaluator,
)

NUM_QUERY, NUM_GALLERY, DIM = 12, 58, 8


@pytest.fixture(autouse=True)
def _no_cython(monkeypatch):
    monkeypatch.setenv("FASTREID_DPMPP_NO_CYTHON", "1")


def clustered_features(seed=0, num_query=NUM_QUERY, num_gallery=NUM_GALLERY, dim=DIM):
    """Identities = random centres, images = centre + noise: reciprocal neighbourhoods are not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(14, dim))
    labels = rng.integers(0, len(centres), num_query + num_gallery)
    x = (centres[labels] + 0.6 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    return x[:num_query], x[num_query:]


def paper_rerank(query, gallery, k1, k2, lam):
    """Dense, set-based, straight from the paper: returns (d*, d_J) on the query × gallery block.

    d = squared Euclidean distance normalised by each row's maximum; N(p, k) = the k + 1 first ranks
    (p included); R(p, k) = {g ∈ N(p, k) : p ∈ N(g, k)}; R*(p, k) = R(p, k) ∪ R(q, k/2) for q ∈ R(p, k) with
    |R(p, k) ∩ R(q, k/2)| > 2/3 |R(q, k/2)|; V_pg = e^{-d(p,g)} on R*(p, k) (normalised to sum 1);
    V_p ← mean of V_g over N(p, k2) (its k2 first ranks); d_J = 1 − Σ min(V_p, V_g) / Σ max(V_p, V_g);
    d* = (1 − λ) d_J + λ d."""
    x = np.vstack([query, gallery]).astype(np.float64)
    n = len(x)
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d = squared / squared.max(axis=1, keepdims=True)
    order = np.argsort(d, axis=1, kind="stable")

    def neighbourhood(p, k):
        return set(order[p, :k + 1].tolist())

    def reciprocal(p, k):
        return {g for g in neighbourhood(p, k) if p in neighbourhood(g, k)}

    half = k1 // 2
    v = np.zeros((n, n))
    for p in range(n):
        expanded = set(reciprocal(p, k1))
        for q in reciprocal(p, k1):
            candidate = reciprocal(q, half)
            if len(reciprocal(p, k1) & candidate) > 2.0 / 3.0 * len(candidate):
                expanded |= candidate
        members = sorted(expanded)
        v[p, members] = np.exp(-d[p, members])
        v[p] /= v[p].sum()
    v = np.stack([v[order[p, :k2]].mean(axis=0) for p in range(n)])
    jaccard = np.empty((n, n))
    for p in range(n):
        jaccard[p] = 1.0 - np.minimum(v[p], v).sum(axis=1) / np.maximum(v[p], v).sum(axis=1)
    final = (1 - lam) * jaccard + lam * d
    nq = len(query)
    return final[:nq, nq:], jaccard[:nq, nq:]


@pytest.mark.parametrize("k1,k2,lam,block_size", [(6, 3, 0.3, 5), (8, 1, 0.3, 1000), (10, 4, 0.0, 7)])
def test_original_reranking_equals_the_dense_paper_implementation(k1, k2, lam, block_size):
    query, gallery = clustered_features()
    expected, expected_jaccard = paper_rerank(query, gallery, k1, k2, lam)
    assert expected_jaccard.min() < 0.9  # reciprocal neighbourhoods overlap: d_J is not the trivial all-ones
    ours = kreciprocal_rerank(query, gallery, k1, k2, lam, block_size=block_size)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(jaccard_distance(query, gallery, k1, k2, "kreciprocal", block_size),
                               expected_jaccard, atol=1e-5)


def test_blocked_sparse_path_equals_the_unblocked_one_and_yields_bounded_blocks():
    query, gallery = clustered_features(seed=1)
    whole = kreciprocal_rerank(query, gallery, 8, 3, 0.3, block_size=10_000)
    pieces = list(iter_kreciprocal_rerank(query, gallery, 8, 3, 0.3, block_size=5))
    assert [(a, b) for a, b, _ in pieces] == [(0, 5), (5, 10), (10, 12)]
    assert all(block.shape == (b - a, NUM_GALLERY) for a, b, block in pieces)
    np.testing.assert_allclose(np.vstack([block for _, _, block in pieces]), whole, atol=1e-6)


def test_fastreid_formulation_equals_fastreid_dense_jaccard():
    query, gallery = (F.normalize(torch.from_numpy(x), dim=1) for x in clustered_features(seed=2))
    expected = build_dist(query, gallery, metric="jaccard", k1=8, k2=3)  # fast-reid's dense N×N code
    assert expected.min() < 0.9
    for block_size in (4, 1000):
        np.testing.assert_allclose(jaccard_distance(query, gallery, 8, 3, "jaccard", block_size), expected,
                                   atol=1e-5)


def test_k_reciprocal_sets_by_hand():
    # N(i, 1) = the first two columns: N(0)={0,1}, N(1)={1,0}, N(2)={2,0}; 0 is not near 2 -> R(2)={2}
    neighbours = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    np.testing.assert_array_equal(k_reciprocal_sets(neighbours, 1, block_size=2), [[0, 1], [1, 0], [2, -1]])


def test_farthest_squared_distance_is_the_row_maximum():
    x = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    dense = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1).max(axis=1)
    np.testing.assert_allclose(farthest_squared_distance(x, block_size=7), dense, rtol=1e-5)


def rerank_cfg(method=None, block_size=None, lam="0.3"):
    cfg = load_config("", ["MODEL.DEVICE", "cpu", "TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "6",
                           "TEST.RERANK.K2", "2", "TEST.RERANK.LAMBDA", lam])
    cfg.defrost()
    if method is not None:
        cfg.TEST.RERANK.METHOD = method
    if block_size is not None:
        cfg.TEST.RERANK.BLOCK_SIZE = block_size
    return cfg


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="TEST.RERANK.METHOD"):
        rerank_options(rerank_cfg("zhong").TEST.RERANK)
    with pytest.raises(ValueError, match="TEST.RERANK.BLOCK_SIZE"):
        rerank_options(rerank_cfg("jaccard", -1).TEST.RERANK)


def test_stock_behaviour_is_kept_unless_asked_for():
    assert not uses_rerank_evaluator(rerank_cfg())
    assert not uses_rerank_evaluator(rerank_cfg("jaccard", 0))
    assert uses_rerank_evaluator(rerank_cfg("jaccard", 16))
    assert uses_rerank_evaluator(rerank_cfg("kreciprocal"))
    cfg = rerank_cfg("kreciprocal")
    cfg.TEST.RERANK.ENABLED = False
    assert not uses_rerank_evaluator(cfg)


def feed(evaluator, features, pids, camids):
    evaluator.reset()
    for start in range(0, len(features), 16):
        sl = slice(start, start + 16)
        evaluator.process({"targets": pids[sl], "camids": camids[sl]}, features[sl])


def labelled_features():
    query, gallery = clustered_features(seed=4)
    features = torch.from_numpy(np.vstack([query, gallery]))
    pids = torch.cat([torch.arange(NUM_QUERY) % 6, torch.arange(NUM_GALLERY) % 6])
    camids = torch.cat([torch.zeros(NUM_QUERY, dtype=torch.long), torch.ones(NUM_GALLERY, dtype=torch.long)])
    return features, pids, camids


def test_blocked_jaccard_evaluator_reproduces_the_stock_evaluator():
    features, pids, camids = labelled_features()
    ours, stock = RerankReidEvaluator(rerank_cfg("jaccard", 5), NUM_QUERY), ReidEvaluator(rerank_cfg(), NUM_QUERY)
    feed(ours, features, pids, camids)
    feed(stock, features, pids, camids)
    mine, theirs = ours.evaluate(), stock.evaluate()
    assert list(mine) == list(theirs)
    for key in theirs:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-4), key


def test_kreciprocal_evaluator_ranks_by_the_original_reranked_distance():
    features, pids, camids = labelled_features()
    evaluator = RerankReidEvaluator(rerank_cfg("kreciprocal", 4), NUM_QUERY)
    feed(evaluator, features, pids, camids)
    results = evaluator.evaluate()
    normalised = F.normalize(features, dim=1).numpy()  # TEST.METRIC cosine: features L2-normalised first
    expected, _ = paper_rerank(normalised[:NUM_QUERY], normalised[NUM_QUERY:], 6, 2, 0.3)
    cmc, ap, _ = evaluate_rank(expected, pids[:NUM_QUERY].numpy(), pids[NUM_QUERY:].numpy(),
                               camids[:NUM_QUERY].numpy(), camids[NUM_QUERY:].numpy(), use_cython=False)
    assert results["Rank-1"] == pytest.approx(cmc[0] * 100, abs=1e-4)
    assert results["mAP"] == pytest.approx(np.mean(ap) * 100, abs=1e-4)


@pytest.mark.parametrize("method", ["jaccard", "kreciprocal"])
def test_masked_evaluator_combines_the_chosen_jaccard_with_the_masked_distance(method):
    query, gallery = clustered_features(seed=5)
    descriptors = torch.from_numpy(np.vstack([query, gallery]))
    masks = torch.rand(len(descriptors), DIM) * 0.9 + 0.05
    packed = pack_descriptor_and_mask(descriptors, masks)
    masked_only = MaskedReidEvaluator(rerank_cfg(method, 4, lam="1.0"), NUM_QUERY).masked_query_distance(
        packed[:NUM_QUERY], packed[NUM_QUERY:])
    dist = MaskedReidEvaluator(rerank_cfg(method, 4), NUM_QUERY).masked_query_distance(
        packed[:NUM_QUERY], packed[NUM_QUERY:])
    normalised = F.normalize(descriptors, dim=1)
    if method == "jaccard":
        jaccard = build_dist(normalised[:NUM_QUERY], normalised[NUM_QUERY:], metric="jaccard", k1=6, k2=2)
    else:
        _, jaccard = paper_rerank(normalised[:NUM_QUERY].numpy(), normalised[NUM_QUERY:].numpy(), 6, 2, 0.0)
    np.testing.assert_allclose(dist, 0.7 * jaccard + 0.3 * masked_only, atol=1e-5)


def test_trainer_picks_the_rerank_evaluator_only_when_asked(monkeypatch):
    from fastreid_dpmpp.engine import trainer as trainer_module
    monkeypatch.setattr(trainer_module.DPMPPTrainer, "build_test_loader", classmethod(lambda cls, cfg, name: (None, 3)))
    monkeypatch.setattr(trainer_module, "emits_query_masks", lambda cfg: False)
    for cfg, expected in ((rerank_cfg(), ReidEvaluator), (rerank_cfg("kreciprocal"), RerankReidEvaluator),
                          (rerank_cfg("jaccard", 64), RerankReidEvaluator)):
        _, evaluator = trainer_module.DPMPPTrainer.build_evaluator(cfg, "Synthetic")
        assert type(evaluator).__mro__[1] is expected       # the chosen evaluator, with the breakdowns added
