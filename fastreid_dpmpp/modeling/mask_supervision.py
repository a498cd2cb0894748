"""Direct supervision of the DPM mask [ours; not in the paper] (MODEL.LOSSES.MASK_SUPERVISION).

The paper trains the HMG mask only through L_mask (the masked-prototype ArcFace loss). The mask it should
predict for an occluded image is known where a clean reference of the same image exists: keep the channels that
the occlusion changes least (the "oracle channel mask" of docs/EVALUATION.md). Two references:

* "spt_pairs": SPT synthesises an occluded version x̃_i of anchor x_i (SPEC §4); the clean anchor's feature,
  computed without gradient, is the reference of x̃_i — an oracle target for every synthesised sample;
* "prototype": the identity's own prototype P_y (Eq. 8) is the reference of every sample — no extra forward,
  but the target then also marks channels that differ for other reasons (view, camera).

Target t_i ∈ {0, 1}^D: 1 on the ``keep`` fraction of channels with the smallest |ŷ_i − r̂_i| (both L2-normalised,
in the space the mask acts on); loss = binary cross-entropy between the mask m_i and t_i, averaged over the
supervised samples.
"""
import torch
import torch.nn.functional as F

__all__ = ["SOURCES", "agreement_target", "mask_supervision_loss"]

SOURCES = ("spt_pairs", "prototype")


def agreement_target(features, reference, keep):
    """(B, D) 0/1 target keeping the ``keep`` fraction of channels where the L2-normalised ``features`` and
    ``reference`` differ least (no gradient)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"MODEL.LOSSES.MASK_SUPERVISION.KEEP must be in (0, 1], got {keep}")
    with torch.no_grad():
        change = (F.normalize(features.float(), dim=1) - F.normalize(reference.float(), dim=1)).abs()
        count = max(1, int(round(keep * change.shape[1])))
        target = torch.zeros_like(change)
        target.scatter_(1, change.topk(count, dim=1, largest=False).indices, 1.0)
    return target


def mask_supervision_loss(masks, target, rows=None):
    """Binary cross-entropy of masks (B, D) in (0, 1) against 0/1 targets, over ``rows`` (bool (B,)) or all;
    0 (with a graph) when no row is supervised."""
    if rows is not None:
        if not bool(rows.any()):
            return masks.sum() * 0.0
        masks, target = masks[rows], target[rows]
    return F.binary_cross_entropy(masks.float().clamp(1e-6, 1 - 1e-6), target.float())
