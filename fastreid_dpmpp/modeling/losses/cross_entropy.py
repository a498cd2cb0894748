"""Label-smoothed cross-entropy with per-sample ignored classes (SPEC §4.6 and §5).

Used by L_coarse (Eq. 13, logits f_p·Tᵀ), L_id (Eq. 14, logits f·Pᵀ) and L_mask (Eq. 15-16, ArcFace
logits). A sample synthesised by SPT keeps its own label y_i; its partner's identity y_j is removed
from its softmax ("candidate-identity ignoring", SPEC §4 step 6).
"""
import torch
import torch.nn.functional as F

__all__ = ["cross_entropy_with_ignored_classes"]

NO_IGNORED_CLASS = -1


def _check_ignored_classes(ignored_classes, targets, num_classes):
    if ignored_classes.shape != targets.shape:
        raise ValueError(
            f"cross_entropy.py: ignored_classes must have the shape of targets {tuple(targets.shape)}, "
            f"got {tuple(ignored_classes.shape)}"
        )
    out_of_range = (ignored_classes < NO_IGNORED_CLASS) | (ignored_classes >= num_classes)
    ignores_own_label = ignored_classes == targets
    if bool((out_of_range | ignores_own_label).any()):
        raise ValueError(
            "cross_entropy.py: ignored_classes must be -1 (none) or a class index in [0, "
            f"{num_classes}) different from the sample's own target; got {ignored_classes.tolist()} "
            f"for targets {targets.tolist()}"
        )


def cross_entropy_with_ignored_classes(logits, targets, epsilon=0.1, ignored_classes=None):
    """Mean label-smoothed CE over the batch, with one optionally ignored class per sample.

    Smoothing follows CLIP-ReID's ``CrossEntropyLabelSmooth`` (and ``F.cross_entropy(label_smoothing=ε)``):
    the target distribution is q = (1 − ε)·onehot(y) + ε/C over all C classes. (fast-reid's own
    ``cross_entropy_loss`` spreads ε over the C − 1 non-target classes instead; the difference is a
    constant shift of the target weight by ε/C.)

    Candidate-identity ignoring (SPEC §4.6): for sample b with ``ignored_classes[b] = k ≥ 0`` the logit
    of class k is set to −∞ before the softmax, and k receives no smoothing mass, i.e. q spreads ε over
    the remaining C − 1 classes. This equals deleting column k from that sample's logits.

    Args:
        logits: (B, C) float.
        targets: (B,) long, class indices.
        epsilon: label-smoothing ε in [0, 1).
        ignored_classes: None or (B,) long; −1 = nothing ignored. A sample may not ignore its own target.
    Returns:
        scalar loss.
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"cross_entropy.py: expected logits (B, C) and targets (B,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"cross_entropy.py: epsilon must be in [0, 1), got {epsilon}")
    num_classes = logits.shape[1]

    kept = torch.ones_like(logits, dtype=torch.bool)
    if ignored_classes is not None:
        _check_ignored_classes(ignored_classes, targets, num_classes)
        has_ignored = ignored_classes >= 0
        rows = torch.nonzero(has_ignored, as_tuple=True)[0]
        kept[rows, ignored_classes[rows]] = False
        logits = logits.masked_fill(~kept, float("-inf"))

    log_probs = F.log_softmax(logits.float(), dim=1)
    # Zero the −∞ entries so that 0 · (−∞) never produces NaN in the smoothing sum.
    log_probs = log_probs.masked_fill(~kept, 0.0)
    target_log_prob = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    mean_kept_log_prob = log_probs.sum(dim=1) / kept.sum(dim=1)
    loss = -(1.0 - epsilon) * target_log_prob - epsilon * mean_kept_log_prob
    return loss.mean()
