"""The project's evaluation protocol on extracted features (docs/EVALUATION.md): per-query metrics, bootstrap
intervals over queries, paired deltas between two arms, breakdowns, and reference masks.

Everything here works on arrays (one row per image) so that every arm of a comparison is scored by the same
code on the same queries. Ranking follows fast-reid's market1501 protocol (``fastreid.evaluation.rank``):
gallery rows of the query's identity *and* camera are discarded; a query without a valid match is left out.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .masked_matching import SPEC_PLACEMENT, masked_distance

__all__ = ["cosine_distance", "query_distance", "per_query_metrics", "summarize", "bootstrap_interval", "seed_mean_std",
           "paired_delta", "breakdown", "coverage_bins", "own_camera_top1_share", "channel_change",
           "keep_least_changed", "oracle_channel_masks",
           "shuffled_rows", "COVERAGE_BINS"]

COVERAGE_BINS = (0.2, 0.3, 0.4, 0.5, 0.6)


def _tensor(x):
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()


def cosine_distance(query, gallery):
    """(Q, D), (G, D) -> numpy (Q, G) 1 − cosine similarity."""
    q, g = F.normalize(_tensor(query), dim=1), F.normalize(_tensor(gallery), dim=1)
    return (1.0 - q @ g.t()).numpy()


def query_distance(query, gallery, query_masks=None, masked_dims=None, placement=SPEC_PLACEMENT):
    """Plain cosine distance, or the masked distance with the query's masks when given: SPEC §6 by default,
    another Table IV placement with ``placement`` = (side, before_norm)."""
    if query_masks is None:
        return cosine_distance(query, gallery)
    side, before_norm = placement
    return masked_distance(_tensor(query), _tensor(gallery), _tensor(query_masks), masked_dims=masked_dims,
                           side=side, before_norm=before_norm).numpy()


def per_query_metrics(dist, query_pids, gallery_pids, query_camids, gallery_camids):
    """Per query: average precision, rank of the first true match (1-based), the gallery row ranked first.

    Returns dict of (Q,) arrays: ``ap`` (NaN for a query without a valid match), ``first_hit`` (inf likewise),
    ``top1`` (gallery row index), ``valid`` (bool). Same numbers as fast-reid's ``evaluate_rank``."""
    dist = np.asarray(dist)
    q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    q_cams, g_cams = np.asarray(query_camids), np.asarray(gallery_camids)
    order = np.argsort(dist, axis=1, kind="stable")
    same_id = g_pids[order] == q_pids[:, None]
    junk = same_id & (g_cams[order] == q_cams[:, None])
    kept = ~junk
    matches = same_id & kept
    kept_rank = np.cumsum(kept, axis=1)
    hits = np.cumsum(matches, axis=1)
    num_pos = matches.sum(axis=1)
    valid = num_pos > 0
    precision = np.where(matches, hits / np.maximum(kept_rank, 1), 0.0).sum(axis=1)
    ap = np.where(valid, precision / np.maximum(num_pos, 1), np.nan)
    first_hit = np.where(valid, np.where(matches, kept_rank, np.iinfo(np.int64).max).min(axis=1).astype(float), np.inf)
    first_kept = np.argmax(kept, axis=1)
    top1 = order[np.arange(len(order)), first_kept]
    return dict(ap=ap, first_hit=first_hit, top1=top1, valid=valid)


def summarize(metrics, rows=None):
    """mAP and Rank-1/5/10 (in %) over the valid queries (of ``rows`` when given)."""
    valid = metrics["valid"] if rows is None else metrics["valid"] & rows
    if not valid.any():
        return dict(mAP=float("nan"), **{f"Rank-{k}": float("nan") for k in (1, 5, 10)}, queries=0)
    first = metrics["first_hit"][valid]
    out = {"mAP": 100.0 * float(np.mean(metrics["ap"][valid]))}
    out.update({f"Rank-{k}": 100.0 * float(np.mean(first <= k)) for k in (1, 5, 10)})
    out["queries"] = int(valid.sum())
    return out


def _valid_values(metrics, key="ap"):
    values = metrics[key][metrics["valid"]]
    return values if key == "ap" else (values <= 1).astype(float)


def seed_mean_std(values):
    """(mean, sample std) of per-seed values; std 0.0 for a single value."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def bootstrap_interval(values, num_samples=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of the mean of ``values`` (resampling them with replacement), in the
    values' units; returns (low, high)."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(num_samples, len(values)))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_delta(metrics_a, metrics_b, key="ap", num_samples=2000, seed=0):
    """Mean of (b − a) over the queries valid in both, with a paired bootstrap interval, in %:
    dict(delta, low, high). ``key`` "ap" (mAP) or "first_hit" (Rank-1)."""
    both = metrics_a["valid"] & metrics_b["valid"]
    if key == "ap":
        a, b = metrics_a["ap"][both], metrics_b["ap"][both]
    else:
        a, b = (metrics_a[key][both] <= 1).astype(float), (metrics_b[key][both] <= 1).astype(float)
    diff = 100.0 * (b - a)
    low, high = bootstrap_interval(diff, num_samples=num_samples, seed=seed)
    return dict(delta=float(diff.mean()), low=low, high=high)


def coverage_bins(covered, edges=COVERAGE_BINS):
    """Labels like "0.2-0.3" for the covered body fraction of each query ("none" when 0)."""
    covered = np.asarray(covered, float)
    labels = np.full(covered.shape, "none", dtype=object)
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (covered >= low) & ((covered < high) | ((high == edges[-1]) & (covered <= high)))
        labels[inside] = f"{low:.1f}-{high:.1f}"
    return labels


def breakdown(metrics, labels):
    """``summarize`` per distinct label (e.g. occluder kind of each query)."""
    labels = np.asarray(labels, dtype=object)
    return {str(label): summarize(metrics, labels == label) for label in sorted(set(labels.tolist()))}


def own_camera_top1_share(metrics, query_camids, gallery_camids):
    """Share (in %) of valid queries whose first-ranked kept gallery image comes from the query's own camera."""
    valid = metrics["valid"]
    same = np.asarray(gallery_camids)[metrics["top1"]] == np.asarray(query_camids)
    return 100.0 * float(same[valid].mean())


def chance_own_camera_share(query_camids, gallery_camids):
    """Expected own-camera top-1 share of a random ranking: per query, the share of gallery rows from its camera."""
    q, g = np.asarray(query_camids), np.asarray(gallery_camids)
    return 100.0 * float(np.mean([(g == c).mean() for c in q]))


def channel_change(occluded, holistic):
    """(Q, D) |q̂_occ − q̂_hol|: how much each channel of the L2-normalised query moves under its occluder."""
    return (F.normalize(_tensor(occluded), dim=1) - F.normalize(_tensor(holistic), dim=1)).abs().numpy()


def keep_least_changed(change, keep_fraction):
    """Per row, a 0/1 mask keeping the ``keep_fraction`` of channels with the smallest ``change`` (Q, D)."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    change = _tensor(change)
    keep = max(1, int(round(keep_fraction * change.shape[1])))
    masks = torch.zeros_like(change)
    masks.scatter_(1, change.argsort(dim=1)[:, :keep], 1.0)
    return masks.numpy()


def oracle_channel_masks(occluded, holistic, keep_fraction):
    """Per query, a 0/1 mask keeping the ``keep_fraction`` of channels that change least between the occluded
    query and its unoccluded twin (both L2-normalised): |q̂_occ − q̂_hol| smallest. An upper reference for what a
    channel mask computed from the query could reach; it uses the twin, which no method sees."""
    return keep_least_changed(channel_change(occluded, holistic), keep_fraction)


def shuffled_rows(array, seed=0):
    """The rows of ``array`` permuted across queries (a derangement when possible): the control that tells an
    image-specific mask from one that is the same for every image."""
    array = np.asarray(array)
    n = len(array)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if n > 1:
        fixed = perm == np.arange(n)
        perm[fixed] = np.roll(perm[fixed], 1) if fixed.sum() > 1 else perm[fixed]
        if (perm == np.arange(n)).any():
            perm = np.roll(np.arange(n), 1)
    return array[perm]
