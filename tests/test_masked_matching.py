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
