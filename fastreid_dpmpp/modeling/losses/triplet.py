"""Batch-hard triplet loss (SPEC §5, L_tri) with SPT's excluded negatives (SPEC §4.6)."""
import torch
import torch.nn.functional as F

__all__ = ["batch_hard_triplet_loss", "pairwise_euclidean_distance"]


def pairwise_euclidean_distance(x, y):
    """(M, D), (N, D) -> (M, N) Euclidean distances; squared distances are clamped at 1e-12 before
    the square root so that the gradient stays finite on identical rows (fast-reid's convention)."""
    squared = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
    return squared.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features, targets, margin=0.3, normalize=False, excluded_negatives=None):
    """Batch-hard triplet loss on Euclidean distances.

    For each anchor a: d_ap = max distance to a sample of the same identity (the anchor itself included,
    as in fast-reid), d_an = min distance to a sample of another identity that is not excluded.
      margin > 0:  L = mean_a max(0, d_ap − d_an + margin)      (margin ranking)
      margin == 0: L = mean_a log(1 + exp(d_ap − d_an))          (soft margin)

    ``excluded_negatives`` (B, B) bool: entry (a, k) True means k is never a negative of a — SPT's
    candidate-identity ignoring excludes the samples of the partner's identity (SPEC §4.6). It does not
    affect positives. Anchors left without any negative are dropped from the mean; if no anchor has a
    negative the loss is 0 (still attached to the graph).

    Args:
        features: (B, D) float.
        targets: (B,) long identity labels.
        margin: ≥ 0.
        normalize: L2-normalise features first.
        excluded_negatives: None or (B, B) bool.
    """
    if features.dim() != 2 or targets.shape != (features.shape[0],):
        raise ValueError(
            f"triplet.py: expected features (B, D) and targets (B,), got {tuple(features.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if margin < 0:
        raise ValueError(f"triplet.py: margin must be >= 0 (0 = soft margin), got {margin}")
    batch = features.shape[0]
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean_distance(features, features)

    same_identity = targets.unsqueeze(0) == targets.unsqueeze(1)
    is_negative = ~same_identity
    if excluded_negatives is not None:
        if excluded_negatives.shape != (batch, batch) or excluded_negatives.dtype != torch.bool:
            raise ValueError(
                f"triplet.py: excluded_negatives must be a ({batch}, {batch}) bool tensor, got "
                f"{tuple(excluded_negatives.shape)} {excluded_negatives.dtype}"
            )
        is_negative = is_negative & ~excluded_negatives

    hardest_positive = dist.masked_fill(~same_identity, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(~is_negative, float("inf")).amin(dim=1)
    has_negative = is_negative.any(dim=1)
    # Anchors without a negative get d_an = +inf, hence a loss term of exactly 0 (and zero gradient).
    gap = hardest_positive - hardest_negative
    per_anchor = F.relu(gap + margin) if margin > 0 else F.softplus(gap)
    per_anchor = per_anchor.masked_fill(~has_negative, 0.0)
    return per_anchor.sum() / has_negative.sum().clamp_min(1)
