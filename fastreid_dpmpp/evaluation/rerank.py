"""k-reciprocal re-ranking with bounded memory: k-NN lists from FAISS (GPU or CPU, chosen at run time),
sparse V rows, Jaccard distance through an inverted index, query block by query block.

Two formulations, selected by ``TEST.RERANK.METHOD``:

* ``"jaccard"`` — fast-reid's ``compute_jaccard_distance`` (``build_dist(metric="jaccard")``): k1 nearest
  neighbours (self included), V = softmax(−‖x_i − x_j‖²) over the expanded k-reciprocal set, local query
  expansion over k2 neighbours, Jaccard distance clipped at 0. The evaluator combines it with its own
  distance: d* = (1 − λ) d_J + λ d.
* ``"kreciprocal"`` — Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
  CVPR 2017, as in their released code (and fast-reid's ``evaluation/rerank.py::re_ranking``):
  d(i, j) = ‖x_i − x_j‖² / max_r ‖x_i − x_r‖² (the row-normalised squared Euclidean distance);
  N(i, k) = the k + 1 nearest rows (i itself included); R(i, k) = {j ∈ N(i, k) : i ∈ N(j, k)} (Eq. 4);
  R*(i, k) = R(i, k) ∪ R(c, ½k) for every c ∈ R(i, k) with |R(i, k) ∩ R(c, ½k)| > ⅔ |R(c, ½k)| (Eq. 6);
  V_ij = e^{−d(i, j)} / Σ_{r ∈ R*(i)} e^{−d(i, r)} on R*(i, k1), 0 elsewhere (Eq. 7, normalised as in the
  code); local query expansion V_i ← mean_{j ∈ N(i, k2)} V_j (Eq. 11, first k2 ranks, i included);
  d_J(i, j) = 1 − Σ min(V_i, V_j) / Σ max(V_i, V_j) (Eq. 10; rows sum to 1, so Σ max = 2 − Σ min);
  d*(q, g) = (1 − λ) d_J(q, g) + λ d(q, g) (Eq. 12).

Memory: besides the (N, D) features and the sparse V (O(N · |R*|) entries), every dense temporary is at
most ``block_size`` rows wide; ``iter_kreciprocal_rerank`` yields the (Q, G) result in query blocks so a
caller can keep, e.g., only each query's top-k.
"""
import logging

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from fastreid.evaluation.query_expansion import aqe
from fastreid.utils.compute_dist import build_dist

from ..compat import faiss_gpu_available
from .distance_evaluator import DistanceReidEvaluator

__all__ = [
    "METHODS", "DEFAULT_BLOCK_SIZE", "rerank_options", "knn_search", "farthest_squared_distance",
    "k_reciprocal_sets", "expanded_k_reciprocal_sets", "encode_neighbourhoods", "iter_jaccard_blocks",
    "jaccard_distance", "iter_kreciprocal_rerank", "kreciprocal_rerank", "reranked_distance",
    "uses_rerank_evaluator", "RerankReidEvaluator",
]

logger = logging.getLogger("fastreid.dpmpp.rerank")

METHODS = ("jaccard", "kreciprocal")
DEFAULT_BLOCK_SIZE = 1024
_PAIRS_PER_CHUNK = 1 << 21  # (query entry, gallery row) pairs materialised at once in the Jaccard step


def _as_float32(features, name):
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"rerank.py: {name} must be a 2-D (rows, dims) array, got shape {features.shape}")
    return features


def _check_block_size(block_size):
    if int(block_size) < 1:
        raise ValueError(f"rerank.py: block_size (TEST.RERANK.BLOCK_SIZE) must be >= 1, got {block_size}")
    return int(block_size)


def rerank_options(rerank_cfg):
    """TEST.RERANK -> (method, block_size). METHOD defaults to "jaccard"; BLOCK_SIZE 0 (default) keeps
    fast-reid's dense Jaccard path for "jaccard" and means DEFAULT_BLOCK_SIZE for "kreciprocal"."""
    method = rerank_cfg.get("METHOD", "jaccard")
    if method not in METHODS:
        raise ValueError(f"TEST.RERANK.METHOD must be one of {METHODS}, got {method!r}")
    block_size = int(rerank_cfg.get("BLOCK_SIZE", 0))
    if block_size < 0:
        raise ValueError(f"TEST.RERANK.BLOCK_SIZE must be >= 0 (0 = default), got {block_size}")
    return method, block_size


def _flat_index(dim, inner_product=False):
    import faiss
    index = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    if faiss_gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def _search(index, queries, k, block_size):
    """FAISS search of ``queries`` in blocks of ``block_size`` rows -> (scores, indices)."""
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block_size):
        stop = start + block_size
        scores[start:stop], indices[start:stop] = index.search(queries[start:stop], k)
    return scores, indices


def knn_search(features, k, block_size=DEFAULT_BLOCK_SIZE):
    """(N, D) -> (N, k) int64: each row's k nearest rows by squared L2 distance, nearest first (the row itself
    first unless duplicated), from a FAISS flat index (GPU when faiss-gpu sees a device, CPU otherwise)."""
    features = _as_float32(features, "features")
    if not 1 <= k <= len(features):
        raise ValueError(f"rerank.py: k-NN width {k} must be in [1, number of rows = {len(features)}] "
                         "(lower TEST.RERANK.K1 / K2)")
    index = _flat_index(features.shape[1])
    index.add(features)
    return _search(index, features, k, _check_block_size(block_size))[1]


def farthest_squared_distance(features, block_size=DEFAULT_BLOCK_SIZE):
    """max_r ‖x_i − x_r‖² for every row i, as a maximum-inner-product FAISS search of the augmented
    vectors [x_r, ‖x_r‖²] with queries [−2 x_i, 1] (no (N, N) matrix)."""
    features = _as_float32(features, "features")
    norms = np.einsum("nd,nd->n", features.astype(np.float64), features.astype(np.float64))
    base = np.hstack([features, norms[:, None].astype(np.float32)])
    queries = np.hstack([-2.0 * features, np.ones((len(features), 1), dtype=np.float32)])
    index = _flat_index(base.shape[1], inner_product=True)
    index.add(base)
    best = _search(index, np.ascontiguousarray(queries), 1, _check_block_size(block_size))[0][:, 0]
    return np.maximum(norms + best, np.finfo(np.float32).tiny)


def k_reciprocal_sets(neighbours, k, block_size=DEFAULT_BLOCK_SIZE):
    """R(i, k) = {j ∈ N(i, k) : i ∈ N(j, k)} with N(i, k) = the first k + 1 columns of ``neighbours``
    (fewer if it is narrower). -> (N, k + 1) int64, non-members replaced by −1 (rank order kept)."""
    forward = neighbours[:, :k + 1]
    sets = np.full_like(forward, -1)
    for start in range(0, len(forward), block_size):
        rows = np.arange(start, min(start + block_size, len(forward)))
        backward = forward[forward[rows]]                                   # (B, k+1, k+1)
        reciprocal = (backward == rows[:, None, None]).any(axis=2)
        sets[rows] = np.where(reciprocal, forward[rows], -1)
    return sets


def expanded_k_reciprocal_sets(sets, half_sets, block_size=DEFAULT_BLOCK_SIZE):
    """R*(i) = R(i) ∪ R(c, ½k) for the c ∈ R(i) with |R(i) ∩ R(c, ½k)| > ⅔ |R(c, ½k)| (Zhong et al. Eq. 6).
    ``sets`` (N, K) and ``half_sets`` (N, H) are −1 padded. -> CSR pattern (indptr, indices), columns sorted."""
    counts, columns = [], []
    for start in range(0, len(sets), block_size):
        own = sets[start:start + block_size]                                # (B, K)
        candidate_sets = half_sets[np.maximum(own, 0)]                      # (B, K, H)
        valid = (candidate_sets >= 0) & (own >= 0)[:, :, None]
        shared = (candidate_sets[..., None] == own[:, None, None, :]).any(axis=3) & valid
        accepted = shared.sum(axis=2) > 2.0 / 3 * valid.sum(axis=2)        # (B, K)
        added = np.where(accepted[:, :, None] & valid, candidate_sets, -1).reshape(len(own), -1)
        members = np.sort(np.concatenate([own, added], axis=1), axis=1)
        first = np.ones_like(members, dtype=bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        keep = first & (members >= 0)
        counts.append(keep.sum(axis=1))
        columns.append(members[keep])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return indptr, np.concatenate(columns).astype(np.int64)


def _pair_squared_distances(features, rows, cols):
    """‖x_rows − x_cols‖² pair by pair (float64), in chunks: never a (pairs, D) array larger than a chunk."""
    out = np.empty(len(rows), dtype=np.float64)
    chunk = max(1, (1 << 22) // max(1, features.shape[1]))
    for start in range(0, len(rows), chunk):
        sl = slice(start, start + chunk)
        diff = features[rows[sl]].astype(np.float64) - features[cols[sl]]
        out[sl] = np.einsum("nd,nd->n", diff, diff)
    return out


def _row_segments(values, indptr, ufunc, empty):
    """ufunc.reduceat per CSR row, ``empty`` for rows without entries."""
    out = np.full(len(indptr) - 1, empty, dtype=np.float64)
    nonempty = np.diff(indptr) > 0
    if nonempty.any():
        out[nonempty] = ufunc.reduceat(values, indptr[:-1][nonempty])
    return out


def encode_neighbourhoods(features, k1, k2, method="kreciprocal", block_size=DEFAULT_BLOCK_SIZE):
    """The k-reciprocal feature V (after local query expansion) of every row, as a scipy CSR (N, N) matrix,
    and for "kreciprocal" the row normalisers max_r ‖x_i − x_r‖² (None for "jaccard")."""
    if method not in METHODS:
        raise ValueError(f"rerank.py: method must be one of {METHODS}, got {method!r}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"rerank.py: TEST.RERANK.K1 and K2 must be >= 1, got K1={k1}, K2={k2}")
    features = _as_float32(features, "features")
    block_size = _check_block_size(block_size)
    n = len(features)
    # fast-reid searches k1 columns (N(i, k1) is then k1 wide); the original ranks k1 + 1 (and k2) columns
    width = min(k1, n) if method == "jaccard" else min(max(k1 + 1, k2), n)
    neighbours = knn_search(features, width, block_size)
    sets = k_reciprocal_sets(neighbours, k1, block_size)
    half_sets = k_reciprocal_sets(neighbours, int(np.around(k1 / 2.0)), block_size)
    indptr, cols = expanded_k_reciprocal_sets(sets, half_sets, block_size)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    squared = _pair_squared_distances(features, rows, cols)
    row_max = None
    if method == "kreciprocal":
        row_max = farthest_squared_distance(features, block_size)
        exponent = -squared / row_max[rows]
    else:  # softmax(−‖x_i − x_j‖²) over the row, shifted by the row minimum for stability
        exponent = -(squared - _row_segments(squared, indptr, np.minimum, 0.0)[rows])
    weights = np.exp(exponent)
    weights /= _row_segments(weights, indptr, np.add, 1.0)[rows]
    encoding = sp.csr_matrix((weights, cols, indptr), shape=(n, n))
    if k2 != 1:
        expansion = neighbours[:, :k2]
        average = sp.csr_matrix((np.full(expansion.size, 1.0 / expansion.shape[1]), expansion.ravel(),
                                 np.arange(0, expansion.size + 1, expansion.shape[1])), shape=(n, n))
        encoding = (average @ encoding).tocsr()
    encoding.sort_indices()
    return encoding, row_max


def _min_sums(query_rows, gallery_by_column, num_gallery):
    """Σ_j min(V_qj, V_gj) for the query rows (a CSR block) against all gallery rows, through the gallery's
    inverted index (CSC: for each column j the gallery rows with V_gj ≠ 0). -> (B, G) float64."""
    out = np.zeros((query_rows.shape[0], num_gallery), dtype=np.float64)
    entry_rows = np.repeat(np.arange(query_rows.shape[0]), np.diff(query_rows.indptr))
    entry_cols, entry_values = query_rows.indices, query_rows.data
    col_start = gallery_by_column.indptr[entry_cols]
    col_count = gallery_by_column.indptr[entry_cols + 1] - col_start
    pair_end = np.cumsum(col_count)
    first = 0
    while first < len(entry_cols):
        # consecutive entries whose pairs fit in one chunk (at least one entry)
        last = max(first + 1, int(np.searchsorted(pair_end, pair_end[first] - col_count[first] + _PAIRS_PER_CHUNK,
                                                  side="right")))
        counts = col_count[first:last]
        entry = np.repeat(np.arange(first, last), counts)
        offset = np.arange(len(entry)) - np.repeat(np.cumsum(counts) - counts, counts)
        position = col_start[entry] + offset
        gallery = gallery_by_column.indices[position]
        mins = np.minimum(entry_values[entry], gallery_by_column.data[position])
        row0, row1 = entry_rows[first], entry_rows[last - 1] + 1
        flat = (entry_rows[entry] - row0) * num_gallery + gallery
        out[row0:row1] += np.bincount(flat, weights=mins, minlength=(row1 - row0) * num_gallery).reshape(
            row1 - row0, num_gallery)
        first = last
    return out


def iter_jaccard_blocks(encoding, num_query, block_size=DEFAULT_BLOCK_SIZE, clip=False):
    """Yields (start, stop, d_J[start:stop]) for the query rows of ``encoding`` against its gallery rows
    [num_query:), d_J = 1 − m / (2 − m) with m = Σ min(V_q, V_g) (float32 blocks of ≤ block_size queries)."""
    block_size = _check_block_size(block_size)
    gallery_by_column = encoding[num_query:].tocsc()
    num_gallery = encoding.shape[0] - num_query
    for start in range(0, num_query, block_size):
        stop = min(start + block_size, num_query)
        m = _min_sums(encoding[start:stop], gallery_by_column, num_gallery)
        block = (1.0 - m / (2.0 - m)).astype(np.float32)
        if clip:
            np.maximum(block, 0.0, out=block)
        yield start, stop, block


def jaccard_distance(query, gallery, k1=20, k2=6, method="jaccard", block_size=DEFAULT_BLOCK_SIZE):
    """(Q, D), (G, D) -> (Q, G) float32 Jaccard distance d_J of ``method`` ("jaccard": fast-reid's
    compute_jaccard_distance, clipped at 0; "kreciprocal": Zhong et al. Eq. 10)."""
    query, gallery = _as_float32(query, "query"), _as_float32(gallery, "gallery")
    encoding, _ = encode_neighbourhoods(np.vstack([query, gallery]), k1, k2, method, block_size)
    out = np.empty((len(query), len(gallery)), dtype=np.float32)
    for start, stop, block in iter_jaccard_blocks(encoding, len(query), block_size, clip=method == "jaccard"):
        out[start:stop] = block
    return out


def iter_kreciprocal_rerank(query, gallery, k1=20, k2=6, lambda_value=0.3, block_size=DEFAULT_BLOCK_SIZE):
    """Zhong et al.'s re-ranked distance d* = (1 − λ) d_J + λ d (Eq. 12), yielded as (start, stop, block)
    over query blocks; d is the row-normalised squared Euclidean distance of the features."""
    query, gallery = _as_float32(query, "query"), _as_float32(gallery, "gallery")
    block_size = _check_block_size(block_size)
    features = np.vstack([query, gallery])
    encoding, row_max = encode_neighbourhoods(features, k1, k2, "kreciprocal", block_size)
    gallery_norms = np.einsum("nd,nd->n", gallery, gallery)
    for start, stop, jaccard in iter_jaccard_blocks(encoding, len(query), block_size):
        q = query[start:stop]
        squared = np.einsum("nd,nd->n", q, q)[:, None] + gallery_norms[None, :] - 2.0 * (q @ gallery.T)
        original = np.maximum(squared, 0.0) / row_max[start:stop, None]
        yield start, stop, ((1.0 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)


def kreciprocal_rerank(query, gallery, k1=20, k2=6, lambda_value=0.3, block_size=DEFAULT_BLOCK_SIZE):
    """(Q, D), (G, D) -> (Q, G) float32: Zhong et al.'s original k-reciprocal re-ranking (Eq. 12)."""
    out = np.empty((len(query), len(gallery)), dtype=np.float32)
    for start, stop, block in iter_kreciprocal_rerank(query, gallery, k1, k2, lambda_value, block_size):
        out[start:stop] = block
    return out


def reranked_distance(query, gallery, dist, rerank_cfg):
    """An evaluator's distance after TEST.RERANK re-ranking.

    "jaccard": (1 − λ) d_J + λ ``dist`` with fast-reid's d_J (its dense ``build_dist`` when BLOCK_SIZE is 0,
    the blocked sparse equivalent otherwise). "kreciprocal": with ``dist`` None, Zhong et al.'s d* (their d);
    with a ``dist`` (e.g. the masked distance), (1 − λ) d_J + λ ``dist`` with their d_J."""
    method, block_size = rerank_options(rerank_cfg)
    k1, k2, lam = int(rerank_cfg.K1), int(rerank_cfg.K2), float(rerank_cfg.LAMBDA)
    if method == "kreciprocal" and dist is None:
        return kreciprocal_rerank(query, gallery, k1, k2, lam, block_size or DEFAULT_BLOCK_SIZE)
    if dist is None:
        raise ValueError("rerank.py: TEST.RERANK.METHOD 'jaccard' needs the evaluator's distance to combine with")
    if method == "jaccard" and block_size == 0:
        jaccard = build_dist(torch.as_tensor(query), torch.as_tensor(gallery), metric="jaccard", k1=k1, k2=k2)
    else:
        jaccard = jaccard_distance(query, gallery, k1, k2, method, block_size or DEFAULT_BLOCK_SIZE)
    return jaccard * (1 - lam) + np.asarray(dist) * lam


def uses_rerank_evaluator(cfg):
    """True when TEST.RERANK asks for something fast-reid's ReidEvaluator does not do: METHOD "kreciprocal"
    or a BLOCK_SIZE (otherwise the stock evaluator stays in charge, unchanged)."""
    if not cfg.TEST.RERANK.ENABLED:
        return False
    method, block_size = rerank_options(cfg.TEST.RERANK)
    return method == "kreciprocal" or block_size > 0


class RerankReidEvaluator(DistanceReidEvaluator):
    """fast-reid's ``ReidEvaluator`` (same AQE, TEST.METRIC distance, metrics) with the re-ranking of
    :func:`reranked_distance`: "jaccard" = fast-reid's formula, blocked and sparse; "kreciprocal" = Zhong et
    al.'s d* on the (L2-normalised when TEST.METRIC is cosine) features."""

    def __init__(self, cfg, num_query, output_dir=None):
        rerank_options(cfg.TEST.RERANK)  # a bad METHOD / BLOCK_SIZE fails here, not after inference
        super().__init__(cfg, num_query, output_dir)

    def query_gallery_distance(self, query, gallery):
        test = self.cfg.TEST
        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            query, gallery = aqe(query, gallery, test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA)
        method, _ = rerank_options(test.RERANK)
        dist = None if test.RERANK.ENABLED and method == "kreciprocal" else build_dist(query, gallery, test.METRIC)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting (%s)", method)
            if test.METRIC == "cosine":
                query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
            dist = reranked_distance(query, gallery, dist, test.RERANK)
        return dist
