"""Dynamic masked matching (SPEC §6): the query's HMG mask re-weights every gallery descriptor.

sim(q, g) = ⟨q̂, normalize(m_q ⊙ ĝ)⟩ = [(q̂ ⊙ m_q) · ĝ] / sqrt[(m_q ⊙ m_q) · (ĝ ⊙ ĝ)]

Wider descriptors (``masked_dims``): with the test descriptor concat[v, v_p] (D + D_t) and a mask over
the D dims of v, the mask is extended with ones over the remaining dims, so both parts share one
normalisation:
    sim = [Σ_{k<D} q̂_k m_k ĝ_k + Σ_{k≥D} q̂_k ĝ_k] / sqrt[Σ_{k<D} m_k² ĝ_k² + Σ_{k≥D} ĝ_k²]
q̂ and ĝ are the full descriptors L2-normalised over all their dims. A mask of ones gives plain cosine.
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DISTANCES", "masked_similarity", "masked_distance", "blocked_masked_distance"]

DISTANCES = ("cosine", "angular")
_NORM_EPS = 1e-12


def _full_width_masks(query_masks, descriptor_dim, masked_dims):
    """(Q, D_m) masks -> (Q, descriptor_dim), ones over the unmasked tail."""
    mask_dim = query_masks.shape[1]
    expected = descriptor_dim if masked_dims is None else masked_dims
    if mask_dim != expected or expected > descriptor_dim:
        raise ValueError(
            f"masked_matching.py: query masks have {mask_dim} dims, descriptors {descriptor_dim}, "
            f"masked_dims={masked_dims}: the mask must cover exactly masked_dims <= descriptor dims "
            "(masked_dims=None: the whole descriptor)"
        )
    if mask_dim == descriptor_dim:
        return query_masks
    tail = query_masks.new_ones(query_masks.shape[0], descriptor_dim - mask_dim)
    return torch.cat([query_masks, tail], dim=1)


def _check_inputs(query, gallery, query_masks):
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"masked_matching.py: expected query (Q, D) and gallery (G, D), got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    if query_masks.dim() != 2 or query_masks.shape[0] != query.shape[0]:
        raise ValueError(
            f"masked_matching.py: expected one mask per query, (Q={query.shape[0]}, D_m), got "
            f"{tuple(query_masks.shape)}"
        )


def _prepare_query(query, query_masks, masked_dims):
    """Returns (q̂ ⊙ m, m ⊙ m), the two (Q, D) factors of numerator and denominator."""
    masks = _full_width_masks(query_masks.float(), query.shape[1], masked_dims)
    unit_query = F.normalize(query.float(), dim=1)
    return unit_query * masks, masks * masks


def _similarity_to(gallery, masked_query, squared_masks):
    unit_gallery = F.normalize(gallery.float(), dim=1)
    numerator = masked_query @ unit_gallery.t()
    squared_norm = squared_masks @ (unit_gallery * unit_gallery).t()
    return numerator / squared_norm.clamp_min(_NORM_EPS * _NORM_EPS).sqrt()


def _to_distance(similarity, distance):
    if distance == "cosine":
        return 1.0 - similarity
    return torch.arccos(similarity.clamp(-1.0, 1.0))


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(
            f"masked_matching.py: distance (TEST.MASKED_MATCHING.DISTANCE) must be one of {DISTANCES}, "
            f"got {distance!r}"
        )


def masked_similarity(query, gallery, query_masks, masked_dims=None):
    """(Q, D), (G, D), (Q, D_m) -> (Q, G) float32 masked similarities (module docstring)."""
    _check_inputs(query, gallery, query_masks)
    masked_query, squared_masks = _prepare_query(query, query_masks, masked_dims)
    return _similarity_to(gallery, masked_query, squared_masks)


def masked_distance(query, gallery, query_masks, masked_dims=None, distance="cosine"):
    """(Q, G) distance: 1 − sim ("cosine") or arccos(sim clamped to [−1, 1]) ("angular")."""
    _check_distance(distance)
    return _to_distance(masked_similarity(query, gallery, query_masks, masked_dims), distance)


@torch.no_grad()
def blocked_masked_distance(query, gallery, query_masks, masked_dims=None, distance="cosine", block_size=4096):
    """``masked_distance`` computed over blocks of ``block_size`` gallery rows (float32, memory
    O(Q·block_size) for the intermediates), returned as a numpy (Q, G) float32 array like fast-reid's
    ``build_dist``."""
    _check_distance(distance)
    _check_inputs(query, gallery, query_masks)
    if block_size < 1:
        raise ValueError(
            f"masked_matching.py: block_size (TEST.MASKED_MATCHING.BLOCK_SIZE) must be >= 1, got {block_size}"
        )
    masked_query, squared_masks = _prepare_query(query, query_masks, masked_dims)
    result = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    for start in range(0, gallery.shape[0], block_size):
        block = gallery[start:start + block_size]
        similarity = _similarity_to(block, masked_query, squared_masks)
        result[:, start:start + block.shape[0]] = _to_distance(similarity, distance).cpu().numpy()
    return result
