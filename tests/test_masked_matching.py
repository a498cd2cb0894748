"""Dynamic masked matching (SPEC §6) against a naive per-pair implementation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from fastreid_dpmpp.evaluation.masked_matching import (
    blocked_masked_distance,
    masked_distance,
    masked_similarity,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _naive_similarity(query, gallery, masks, masked_dims=None):
    """sim(q, g) = ⟨q̂, normalize(m̄ ⊙ ĝ)⟩ with m̄ = mask over the first masked_dims dims, ones after."""
    q_list, g_list, m_list = query.tolist(), gallery.tolist(), masks.tolist()
    width = len(q_list[0])
    limit = width if masked_dims is None else masked_dims
    result = []
    for q, m in zip(q_list, m_list):
        q_norm = math.sqrt(sum(x * x for x in q))
        row = []
        for g in g_list:
            g_norm = math.sqrt(sum(x * x for x in g))
            weights = [m[k] if k < limit else 1.0 for k in range(width)]
            masked_g = [weights[k] * g[k] / g_norm for k in range(width)]
            masked_norm = math.sqrt(sum(x * x for x in masked_g))
            row.append(sum(q[k] / q_norm * masked_g[k] / masked_norm for k in range(width)))
        result.append(row)
    return torch.tensor(result, dtype=torch.float64)


def test_masked_similarity_matches_naive_per_pair():
    query, gallery, masks = torch.randn(3, 6), torch.randn(5, 6) * 3, torch.rand(3, 6)
    got = masked_similarity(query, gallery, masks)
    assert got.shape == (3, 5)
    assert torch.allclose(got.double(), _naive_similarity(query, gallery, masks), atol=1e-5)


def test_masked_dims_mask_only_the_leading_part():
    query, gallery, masks = torch.randn(4, 7), torch.randn(6, 7), torch.rand(4, 4)
    got = masked_similarity(query, gallery, masks, masked_dims=4)
    assert torch.allclose(got.double(), _naive_similarity(query, gallery, masks, masked_dims=4), atol=1e-5)
    # the trailing dims are unmasked: same as passing an explicit mask of ones there
    padded = torch.cat([masks, torch.ones(4, 3)], dim=1)
    assert torch.allclose(got, masked_similarity(query, gallery, padded), atol=1e-6)


def test_unit_mask_gives_plain_cosine():
    query, gallery = torch.randn(3, 5), torch.randn(4, 5)
    plain = F.normalize(query, dim=1) @ F.normalize(gallery, dim=1).t()
    assert torch.allclose(masked_similarity(query, gallery, torch.ones(3, 5)), plain, atol=1e-6)
    assert torch.allclose(masked_similarity(query, gallery, torch.ones(3, 2), masked_dims=2), plain, atol=1e-6)


def test_only_the_query_mask_matters_and_zeroed_dims_are_ignored():
    query, gallery = torch.randn(1, 4), torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    changed = gallery.clone()
    changed[:, 2:] = torch.randn(2, 2) * 10  # dims the query masks out (up to the gallery's own norm)
    # q̂ keeps its full-width normalisation: cosine on the kept dims times ‖q_kept‖ / ‖q‖ (a per-query
    # constant, so the ranking equals cosine ranking on the kept dims)
    expected = F.cosine_similarity(query[:, :2], gallery[:, :2]) * query[0, :2].norm() / query[0].norm()
    assert torch.allclose(masked_similarity(query, gallery, mask)[0], expected, atol=1e-6)
    assert torch.allclose(masked_similarity(query, changed, mask), masked_similarity(query, gallery, mask), atol=1e-6)


def test_distances():
    query, gallery, masks = torch.randn(3, 6), torch.randn(4, 6), torch.rand(3, 6)
    sim = _naive_similarity(query, gallery, masks).float()
    assert torch.allclose(masked_distance(query, gallery, masks), 1 - sim, atol=1e-5)
    angular = masked_distance(query, gallery, masks, distance="angular")
    assert torch.allclose(angular, torch.arccos(sim.clamp(-1, 1)), atol=1e-4)
    same = masked_distance(gallery[:1], gallery[:1], torch.ones(1, 6), distance="angular")
    assert torch.isfinite(same).all() and same.item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="DISTANCE"):
        masked_distance(query, gallery, masks, distance="euclidean")


@pytest.mark.parametrize("distance", ["cosine", "angular"])
def test_blocked_equals_unblocked(distance):
    query, gallery, masks = torch.randn(4, 9), torch.randn(11, 9), torch.rand(4, 5)
    full = masked_distance(query, gallery, masks, masked_dims=5, distance=distance).numpy()
    for block_size in (1, 3, 11, 4096):
        blocked = blocked_masked_distance(query, gallery, masks, masked_dims=5, distance=distance,
                                          block_size=block_size)
        assert isinstance(blocked, np.ndarray) and blocked.dtype == np.float32 and blocked.shape == (4, 11)
        np.testing.assert_allclose(blocked, full, atol=1e-6)


def test_bad_inputs_are_rejected():
    query, gallery = torch.randn(2, 6), torch.randn(3, 6)
    with pytest.raises(ValueError, match="masked_dims"):
        masked_similarity(query, gallery, torch.rand(2, 4))  # wider descriptor needs masked_dims
    with pytest.raises(ValueError, match="masked_dims"):
        masked_similarity(query, gallery, torch.rand(2, 4), masked_dims=3)
    with pytest.raises(ValueError, match="one mask per query"):
        masked_similarity(query, gallery, torch.rand(3, 6))
    with pytest.raises(ValueError, match="BLOCK_SIZE"):
        blocked_masked_distance(query, gallery, torch.rand(2, 6), block_size=0)


# ---------------------------------------------------------------- large galleries: blocks and FAISS candidates
from fastreid_dpmpp.evaluation.masked_matching import (  # noqa: E402
    build_gallery_index,
    masked_search,
    masked_topk,
)


def _naive_topk(query, gallery, masks, k, masked_dims=None):
    sim = _naive_similarity(query, gallery, masks, masked_dims)
    scores, indices = sim.sort(dim=1, descending=True)
    return scores[:, :k], indices[:, :k]


def test_blocked_distance_equals_exhaustive_for_any_block_sizes():
    query, gallery, masks = torch.randn(7, 6), torch.randn(11, 6), torch.rand(7, 4)
    exhaustive = masked_distance(query, gallery, masks, masked_dims=4).numpy()
    for block, query_block in ((1, 1), (3, 2), (4, None), (100, 100)):
        got = blocked_masked_distance(query, gallery, masks, masked_dims=4, block_size=block,
                                      query_block_size=query_block)
        assert np.allclose(got, exhaustive, atol=1e-6), (block, query_block)
    with pytest.raises(ValueError, match="query_block_size"):
        blocked_masked_distance(query, gallery, masks, masked_dims=4, query_block_size=0)


def test_streaming_topk_equals_naive_ranking():
    query, gallery, masks = torch.randn(5, 6), torch.randn(13, 6), torch.rand(5, 6)
    expected_scores, expected_indices = _naive_topk(query, gallery, masks, 4)
    for block in (1, 3, 13, 50):
        scores, indices = masked_topk(query, gallery, masks, 4, block_size=block)
        assert torch.equal(indices, expected_indices), block
        assert torch.allclose(scores.double(), expected_scores, atol=1e-5)


@pytest.mark.parametrize("candidate_query", ["masked", "plain"])
def test_candidate_search_with_the_whole_gallery_equals_exhaustive(candidate_query):
    query, gallery, masks = torch.randn(9, 8), torch.randn(40, 8) * 2, torch.rand(9, 5)
    expected_scores, expected_indices = _naive_topk(query, gallery, masks, 6, masked_dims=5)
    scores, indices = masked_search(query, masks, gallery, k=6, candidates=40, masked_dims=5,
                                    candidate_query=candidate_query, query_block_size=4)
    assert np.array_equal(indices, expected_indices.numpy())
    assert np.allclose(scores, expected_scores.numpy(), atol=1e-5)
    # a prebuilt index with the vectors reconstructed from it (flat and IVF-flat are exact)
    for index_type in ("flat", "ivf"):
        index = build_gallery_index(gallery, index_type=index_type, nlist=2)
        if index_type == "ivf":
            index.nprobe = 2  # all lists: IVF-flat then returns every row
        scores, indices = masked_search(query, masks, index, k=6, candidates=40, masked_dims=5)
        assert np.array_equal(indices, expected_indices.numpy()), index_type


def test_candidate_search_rescores_exactly_what_faiss_returns():
    # K < G: every returned score is the exact masked similarity of the returned row, in descending order,
    # and a unit mask with the plain candidate query finds the true top-k (the index ranks by plain cosine).
    query, gallery, masks = torch.randn(6, 8), torch.randn(50, 8), torch.rand(6, 8)
    scores, indices = masked_search(query, masks, gallery, k=3, candidates=10)
    exact = masked_similarity(query, gallery, masks).numpy()
    assert np.allclose(scores, np.take_along_axis(exact, indices, axis=1), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    ones = torch.ones(6, 8)
    _, plain_indices = masked_search(query, ones, gallery, k=3, candidates=3, candidate_query="plain")
    assert np.array_equal(plain_indices, _naive_topk(query, gallery, ones, 3)[1].numpy())


def test_masked_search_rejects_mismatched_index():
    gallery = torch.randn(10, 4)
    index = build_gallery_index(torch.randn(12, 4))
    with pytest.raises(ValueError, match="index holds 12"):
        masked_search(torch.randn(2, 4), torch.rand(2, 4), index, k=2, gallery_features=gallery)
    with pytest.raises(ValueError, match="index_type"):
        build_gallery_index(gallery, index_type="hnsw")
