"""Dynamic masked matching (SPEC §6): the query's HMG mask re-weights every gallery descriptor.

sim(q, g) = ⟨q̂, normalize(m_q ⊙ ĝ)⟩ = [(q̂ ⊙ m_q) · ĝ] / sqrt[(m_q ⊙ m_q) · (ĝ ⊙ ĝ)]

Wider descriptors (``masked_dims``): with the test descriptor concat[v, v_p] (D + D_t) and a mask over
the D dims of v, the mask is extended with ones over the remaining dims, so both parts share one
normalisation:
    sim = [Σ_{k<D} q̂_k m_k ĝ_k + Σ_{k≥D} q̂_k ĝ_k] / sqrt[Σ_{k<D} m_k² ĝ_k² + Σ_{k≥D} ĝ_k²]
q̂ and ĝ are the full descriptors L2-normalised over all their dims. A mask of ones gives plain cosine.

Large galleries: ``blocked_masked_distance`` blocks over gallery rows and query rows (intermediates
O(query_block · block)); ``masked_search`` retrieves K candidates per query from a FAISS inner-product
index of the L2-normalised gallery descriptors and re-scores them exactly, so only (Q, K) similarities
are ever formed. With K = gallery size it returns the exhaustive masked top-k.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..masked_cosine import masked_cosine

__all__ = ["DISTANCES", "SPEC_PLACEMENT", "CANDIDATE_QUERIES", "masked_similarity", "masked_distance", "blocked_masked_distance",
           "masked_topk", "build_gallery_index", "masked_search"]

DISTANCES = ("cosine", "angular")
SPEC_PLACEMENT = ("prototype", True)   # (side, before_norm) of SPEC §6: normalize(m ⊙ ĝ)


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


def _query_masks(query, query_masks, masked_dims):
    """The (Q, W) full-width masks of the queries, float32."""
    return _full_width_masks(query_masks.float(), query.shape[1], masked_dims)


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


def masked_similarity(query, gallery, query_masks, masked_dims=None, side="prototype", before_norm=True):
    """(Q, D), (G, D), (Q, D_m) -> (Q, G) float32 masked similarities (module docstring); ``side`` /
    ``before_norm``: the placement of ``fastreid_dpmpp.masked_cosine`` (the gallery plays the prototype)."""
    _check_inputs(query, gallery, query_masks)
    return masked_cosine(query.float(), gallery.float(), _query_masks(query, query_masks, masked_dims), side,
                         before_norm)


def masked_distance(query, gallery, query_masks, masked_dims=None, distance="cosine", side="prototype",
                    before_norm=True):
    """(Q, G) distance: 1 − sim ("cosine") or arccos(sim clamped to [−1, 1]) ("angular")."""
    _check_distance(distance)
    return _to_distance(masked_similarity(query, gallery, query_masks, masked_dims, side, before_norm), distance)


def _check_block(name, value):
    if value < 1:
        raise ValueError(
            f"masked_matching.py: {name} (TEST.MASKED_MATCHING.BLOCK_SIZE) must be >= 1, got {value}"
        )


@torch.no_grad()
def blocked_masked_distance(query, gallery, query_masks, masked_dims=None, distance="cosine", block_size=4096,
                            query_block_size=None, side="prototype", before_norm=True):
    """``masked_distance`` computed over blocks of ``block_size`` gallery rows and ``query_block_size`` query
    rows (default: all queries; float32, memory O(query_block_size·block_size) for the intermediates),
    returned as a numpy (Q, G) float32 array like fast-reid's ``build_dist``."""
    _check_distance(distance)
    _check_inputs(query, gallery, query_masks)
    _check_block("block_size", block_size)
    query_block_size = query.shape[0] if query_block_size is None else query_block_size
    _check_block("query_block_size", query_block_size)
    result = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    for q_start in range(0, query.shape[0], query_block_size):
        q_stop = q_start + query_block_size
        rows, masks = query[q_start:q_stop].float(), _query_masks(query, query_masks[q_start:q_stop], masked_dims)
        for start in range(0, gallery.shape[0], block_size):
            block = gallery[start:start + block_size]
            similarity = masked_cosine(rows, block.float(), masks, side, before_norm)
            result[q_start:q_stop, start:start + block.shape[0]] = _to_distance(similarity, distance).cpu().numpy()
    return result


@torch.no_grad()
def masked_topk(query, gallery, query_masks, k, masked_dims=None, block_size=4096):
    """Exhaustive masked top-k, streaming over gallery blocks (memory O(Q·(block_size + k))):
    (scores (Q, k) similarities, descending; indices (Q, k) int64 gallery rows)."""
    _check_inputs(query, gallery, query_masks)
    _check_block("block_size", block_size)
    k = _check_k(k, gallery.shape[0])
    rows, masks = query.float(), _query_masks(query, query_masks, masked_dims)
    best_scores = rows.new_full((query.shape[0], 0), float("-inf"))
    best_indices = torch.zeros((query.shape[0], 0), dtype=torch.long, device=rows.device)
    for start in range(0, gallery.shape[0], block_size):
        block = gallery[start:start + block_size].to(rows.device).float()
        scores = torch.cat([best_scores, masked_cosine(rows, block, masks)], dim=1)
        indices = torch.cat([best_indices, torch.arange(start, start + block.shape[0],
                                                        device=rows.device).expand(query.shape[0], -1)], 1)
        best_scores, order = scores.topk(min(k, scores.shape[1]), dim=1)
        best_indices = indices.gather(1, order)
    return best_scores, best_indices


# ---------------------------------------------------------------- FAISS candidates + exact re-scoring
CANDIDATE_QUERIES = ("masked", "plain")


def _check_k(k, gallery_size):
    if k < 1 or gallery_size < 1:
        raise ValueError(f"masked_matching.py: need k >= 1 and a non-empty gallery, got k={k}, "
                         f"gallery size {gallery_size}")
    return min(int(k), gallery_size)


def _float32_rows(x):
    array = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return np.ascontiguousarray(array, dtype=np.float32)


def build_gallery_index(gallery, index_type="flat", nlist=None, pq_m=None, pq_bits=8, seed=0):
    """A FAISS inner-product index of the L2-normalised (G, W) gallery descriptors.

    index_type: "flat" (exact IndexFlatIP), "ivf" (IndexIVFFlat, ``nlist`` lists, default ≈ 4·sqrt(G)) or
    "ivfpq" (IndexIVFPQ, ``pq_m`` sub-quantisers of ``pq_bits`` bits; W must be divisible by pq_m).
    IVF indexes are trained on the gallery itself. Set ``index.nprobe`` to trade recall for speed.
    """
    import faiss

    vectors = _float32_rows(F.normalize(torch.as_tensor(_float32_rows(gallery)), dim=1))
    count, width = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(width)
    elif index_type in ("ivf", "ivfpq"):
        nlist = nlist or max(1, min(count // 39, int(4 * np.sqrt(count))))
        quantizer = faiss.IndexFlatIP(width)
        if index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            pq_m = pq_m or next(m for m in (64, 32, 16, 8, 4, 2, 1) if width % m == 0)
            if width % pq_m:
                raise ValueError(f"masked_matching.py: IVF-PQ needs the descriptor width {width} divisible by "
                                 f"pq_m={pq_m}")
            index = faiss.IndexIVFPQ(quantizer, width, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
        index.nprobe = min(nlist, 8)
    else:
        raise ValueError(f"masked_matching.py: index_type must be 'flat', 'ivf' or 'ivfpq', got {index_type!r}")
    index.add(vectors)
    return index


def _candidate_vectors(query, query_masks, masked_dims, candidate_query):
    """The FAISS search vectors: q̂ ("plain") or normalize(q̂ ⊙ m) ("masked", the numerator's direction)."""
    if candidate_query not in CANDIDATE_QUERIES:
        raise ValueError(f"masked_matching.py: candidate_query must be one of {CANDIDATE_QUERIES}, "
                         f"got {candidate_query!r}")
    unit_query = F.normalize(query.float(), dim=1)
    vectors = unit_query * _query_masks(query, query_masks, masked_dims) if candidate_query == "masked" else unit_query
    return _float32_rows(F.normalize(vectors, dim=1))


def _rescore_candidates(query, query_masks, gallery, candidates, masked_dims):
    """Exact masked similarity of each query to its own (Q, K) candidate rows (−inf where FAISS gave −1)."""
    valid = candidates >= 0
    rows = gallery[candidates.clamp_min(0)].float()                            # (Q, K, W)
    scores = masked_cosine(query.float(), rows, _query_masks(query, query_masks, masked_dims))
    return scores.masked_fill(~valid, float("-inf"))


@torch.no_grad()
def masked_search(query, query_masks, gallery_index_or_features, k, candidates=100, masked_dims=None,
                  gallery_features=None, candidate_query="masked", query_block_size=64):
    """Top-k gallery rows by the masked similarity (SPEC §6), via FAISS candidates and exact re-scoring.

    Args:
        query: (Q, W) descriptors; query_masks: (Q, D_m) masks (``masked_dims`` as in ``masked_similarity``).
        gallery_index_or_features: (G, W) gallery descriptors (an exact IndexFlatIP is built over them), or
            a FAISS inner-product index over the L2-normalised gallery (``build_gallery_index``); with an
            index, ``gallery_features`` (G, W) are used for the exact re-scoring, or else the vectors are
            reconstructed from the index (exact for flat/IVF-flat, approximate for PQ).
        k: results per query; candidates: K ≥ k rows retrieved per query before re-scoring.
        candidate_query: "masked" searches with normalize(q̂ ⊙ m), "plain" with q̂.
        query_block_size: queries re-scored at once (memory O(query_block_size · K · W)).
    Returns:
        (scores, indices): (Q, k) float32 masked similarities, descending, and int64 gallery rows
        (−1 with score −inf where the index returned fewer than k rows).
    """
    import faiss

    if isinstance(gallery_index_or_features, faiss.Index):
        index = gallery_index_or_features
        if gallery_features is None:
            gallery_features = torch.from_numpy(index.reconstruct_n(0, index.ntotal)) if not hasattr(
                index, "make_direct_map") else _reconstruct_ivf(index)
    else:
        gallery_features = gallery_index_or_features
        index = build_gallery_index(gallery_features)
    gallery = torch.as_tensor(_float32_rows(gallery_features))
    query = torch.as_tensor(_float32_rows(query))
    query_masks = torch.as_tensor(_float32_rows(query_masks))
    _check_inputs(query, gallery, query_masks)
    if index.ntotal != gallery.shape[0] or index.d != gallery.shape[1]:
        raise ValueError(f"masked_matching.py: the index holds {index.ntotal} vectors of {index.d} dims, the "
                         f"gallery features are {tuple(gallery.shape)}")
    k = _check_k(k, gallery.shape[0])
    candidates = max(k, min(int(candidates), gallery.shape[0]))
    _check_block("query_block_size", query_block_size)
    all_scores, all_indices = [], []
    for start in range(0, query.shape[0], query_block_size):
        block, block_masks = query[start:start + query_block_size], query_masks[start:start + query_block_size]
        _, found = index.search(_candidate_vectors(block, block_masks, masked_dims, candidate_query), candidates)
        found = torch.from_numpy(found).long()
        scores = _rescore_candidates(block, block_masks, gallery, found, masked_dims)
        top_scores, order = scores.topk(k, dim=1)
        all_scores.append(top_scores)
        all_indices.append(found.gather(1, order).masked_fill(torch.isinf(top_scores), -1))
    return torch.cat(all_scores).numpy(), torch.cat(all_indices).numpy()


def _reconstruct_ivf(index):
    index.make_direct_map()
    return torch.from_numpy(index.reconstruct_n(0, index.ntotal))
