"""Stage III — SPT: saliency-guided patch transfer (SPEC §4), as pure vectorised torch functions.

Pipeline for one training batch (all functions work on the whole batch at once, no per-sample loops):

1. ``binarize_saliency``      frozen SPS saliency (B, N) -> binary masks M (B, Hp, Wp), M = [s >= 0.5].
2. ``overlap_matrix``         OIoU (Eq. 6) or IoU (Eq. 5) between every pair of masks.
3. ``rolled_overlap_matrix``  the same, maximised over horizontal circular rolls of the anchor (mask rolling).
4. ``select_partners``        occlusion-aware pairing: top-10 % candidates, one random draw, α / β test.
5. ``synthesize_tokens``      Eq. 7 on the patch tokens, before class token / position embedding.
6. ``ignored_partner_classes`` / ``excluded_negative_pairs``: candidate-identity ignoring for the losses.

``synthesis_statistics`` feeds the per-iteration log. The same operation drawn on pixels, for pictures only (training
works on tokens), is in ``fastreid_dpmpp/analysis/spt_samples.py``.

Conventions: a mask batch is a bool tensor (B, Hp, Wp) (row-major over the patch grid, Hp rows = image
height); ``partners[i] = j`` means sample i is synthesised with sample j as the occlusion source, and
``partners[i] = -1`` means sample i is left unchanged.
"""
import logging
import math

import torch
import torch.nn.functional as F

_FILE = "fastreid_dpmpp/modeling/stage3_patch_transfer.py"  # named in error messages
logger = logging.getLogger("fastreid.dpmpp.spt")

NO_PARTNER = -1
OVERLAP_MODES = ("oiou", "iou")

__all__ = [
    "NO_PARTNER",
    "binarize_saliency",
    "overlap_matrix",
    "rolled_overlap_matrix",
    "candidate_count",
    "select_partners",
    "resize_masks",
    "KEEP_CHOICES",
    "synthesize_tokens",
    "ignored_partner_classes",
    "excluded_negative_pairs",
    "synthesis_statistics",
    "PatchTransfer",
]


# ----------------------------------------------------------------------------------------- validation
def _check_masks(masks, where):
    if not torch.is_tensor(masks) or masks.dim() != 3:
        shape = tuple(masks.shape) if torch.is_tensor(masks) else type(masks).__name__
        raise ValueError(f"{_FILE} {where}: masks must be a (B, Hp, Wp) tensor, got {shape}")


def _check_mode(mode, where):
    if mode not in OVERLAP_MODES:
        raise ValueError(f"{_FILE} {where}: mode must be one of {OVERLAP_MODES}, got {mode!r}")


def _check_partners(partners, batch_size, where):
    if partners.dim() != 1 or partners.numel() != batch_size:
        raise ValueError(
            f"{_FILE} {where}: partners must have shape ({batch_size},), "
            f"got {tuple(partners.shape)}"
        )
    if partners.numel() and (partners.min() < NO_PARTNER or partners.max() >= batch_size):
        raise ValueError(
            f"{_FILE} {where}: partners must lie in [-1, {batch_size - 1}], "
            f"got values in [{int(partners.min())}, {int(partners.max())}]"
        )


def _flat_float(masks):
    """(B, Hp, Wp) binary masks -> (B, Hp·Wp) float 0/1 (counts stay exact in float32 up to 2^24)."""
    return (masks != 0).flatten(1).float()


# ----------------------------------------------------------------------------------------- step 1
def binarize_saliency(saliency, grid, threshold=0.5):
    """Identity set of each image: patches with saliency ≥ threshold (SPEC §3 output, §4.1).

    saliency: (B, N) in (0, 1), row-major over the patch grid; grid: (Hp, Wp) with Hp·Wp = N.
    Returns a bool tensor (B, Hp, Wp).
    """
    hp, wp = int(grid[0]), int(grid[1])
    if saliency.dim() != 2 or saliency.shape[1] != hp * wp:
        raise ValueError(
            f"{_FILE} binarize_saliency: saliency must be (B, {hp}·{wp}={hp * wp}) for "
            f"grid {(hp, wp)}, got {tuple(saliency.shape)}"
        )
    return (saliency >= threshold).reshape(saliency.shape[0], hp, wp)


# ----------------------------------------------------------------------------------------- step 2
def _overlap_from_counts(intersection, area_anchor, area_candidate, mode):
    """Overlap ratio from counts. intersection (..., B, B); area_anchor (B,) indexes rows, area_candidate columns."""
    if mode == "oiou":
        denominator = area_candidate.expand_as(intersection)            # Eq. 6: |M_j|, the candidate's area
    else:
        denominator = area_anchor.unsqueeze(-1) + area_candidate - intersection  # Eq. 5: |M_i ∨ M_j|
    ratio = intersection / denominator.clamp(min=1.0)
    return torch.where(denominator > 0, ratio, torch.zeros_like(ratio))


def overlap_matrix(masks, mode="oiou"):
    """Pairwise overlap of binary masks, (B, Hp, Wp) -> (B, B); row i = anchor (target), column j = candidate.

    mode="oiou", Eq. 6: [i, j] = |M_i ∧ M_j| / |M_j|  (over the candidate's salient area; 0 when |M_j| = 0).
    mode="iou",  Eq. 5: [i, j] = |M_i ∧ M_j| / |M_i ∨ M_j|  (0 when both masks are empty).
    """
    _check_masks(masks, "overlap_matrix")
    _check_mode(mode, "overlap_matrix")
    flat = _flat_float(masks)
    area = flat.sum(dim=1)
    return _overlap_from_counts(flat @ flat.t(), area, area, mode)


def _all_horizontal_rolls(masks):
    """(B, Hp, Wp) -> (Wp, B, Hp, Wp): entry r is torch.roll(masks, r, dims=-1) (rows never shift)."""
    wp = masks.shape[-1]
    shift = torch.arange(wp, device=masks.device)
    column = torch.arange(wp, device=masks.device)
    source_column = (column.unsqueeze(0) - shift.unsqueeze(1)) % wp    # roll by r: out[c] = in[(c - r) mod Wp]
    return masks[:, :, source_column].permute(2, 0, 1, 3)


def rolled_overlap_matrix(masks, mode="oiou"):
    """Mask rolling score (SPEC §4.3): [i, j] = max_{r=0..Wp-1} overlap(roll_r(M_i), M_j), shape (B, B).

    The anchor mask is rolled circularly along the width axis; all Wp rolls are scored in one batched matmul.
    Rolling preserves |M_i|, so only the intersection changes with r.
    """
    _check_masks(masks, "rolled_overlap_matrix")
    _check_mode(mode, "rolled_overlap_matrix")
    flat = _flat_float(masks)
    area = flat.sum(dim=1)
    rolled = _flat_float(_all_horizontal_rolls(masks).flatten(0, 1)).view(masks.shape[-1], *flat.shape)
    intersection = rolled @ flat.t()                                   # (Wp, B, B)
    return _overlap_from_counts(intersection, area, area, mode).amax(dim=0)


# ----------------------------------------------------------------------------------------- step 3-4
def candidate_count(batch_size, top_fraction):
    """How many ranked candidates are kept: max(1, round_half_up(top_fraction·(B−1))), at most B−1."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(
            f"{_FILE} candidate_count: top_fraction (SPT.TOP_FRACTION) must be in (0, 1], "
            f"got {top_fraction}"
        )
    return min(max(1, int(math.floor(top_fraction * (batch_size - 1) + 0.5))), max(batch_size - 1, 0))


def _uniform(shape, generator, device):
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def select_partners(masks, labels, alpha=0.7, beta=0.7, top_fraction=0.1, prob=0.5, use_oiou=True,
                    use_rolling=True, generator=None, min_partner_area=0.0):
    """Occlusion-aware pairing (SPEC §4.2-4.4). Returns partners (B,) long, −1 = no synthesis.

    For every anchor i, in one vectorised pass:
      * valid candidates: j ≠ i, labels[j] ≠ labels[i], |M_j| > 0 (an empty candidate mask would replace the
        whole image and is never useful) and |M_j| ≥ ``min_partner_area``·|M_i| (the partner guard, ours: OIoU
        divides by |M_j|, so a tiny partner mask inside the anchor's scores ≈ 1 and would hand over almost the
        whole image under the anchor's label; 0 = SPEC, no guard);
      * rank them by score(i, j) = rolled overlap (``use_rolling``) or plain overlap, where overlap is OIoU
        (``use_oiou``, Eq. 6) or IoU (Eq. 5);
      * keep the top k = ``candidate_count(B, top_fraction)`` valid candidates (fewer if fewer are valid) and draw
        one uniformly among them;
      * accept j if overlap(i, j) ≥ α (unrolled, same measure) and score(i, j) ≥ β;
      * each sample is considered at all with probability ``prob``.
    A sample with no valid candidate, or whose single draw fails the α / β test, is left unchanged (no retry).
    Ties in the ranking are broken uniformly at random (random column order, then a stable sort), so which
    of several equal-score candidates enter the top k does not depend on batch order.
    Random draws, in order: per-row tie-break keys (B, B), the pick (B,), the consider coin (B,); the result is
    deterministic given ``generator``.
    Note: with rolling and OIoU, score ≥ overlap (roll r = 0 is included), so β only bites when β > α.
    """
    _check_masks(masks, "select_partners")
    batch_size = masks.shape[0]
    device = masks.device
    if labels.dim() != 1 or labels.numel() != batch_size:
        raise ValueError(
            f"{_FILE} select_partners: labels must have shape ({batch_size},), "
            f"got {tuple(labels.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(
            f"{_FILE} select_partners: prob (SPT.PROB) must be in [0, 1], got {prob}"
        )
    k = candidate_count(batch_size, top_fraction)
    partners = torch.full((batch_size,), NO_PARTNER, dtype=torch.long, device=device)
    if batch_size < 2:
        return partners

    mode = "oiou" if use_oiou else "iou"
    overlap = overlap_matrix(masks, mode)
    score = rolled_overlap_matrix(masks, mode) if use_rolling else overlap

    labels = labels.to(device)
    area = masks.flatten(1).sum(dim=1).float()
    valid = (labels.unsqueeze(1) != labels.unsqueeze(0)) & (area > 0).unsqueeze(0)
    if min_partner_area > 0:
        valid &= area.unsqueeze(0) >= min_partner_area * area.unsqueeze(1)
    valid.fill_diagonal_(False)
    masked_score = score.masked_fill(~valid, float("-inf"))

    # Random tie-break: shuffle each row's columns, then a stable descending sort keeps the shuffled order
    # among equal scores.
    shuffled_columns = _uniform((batch_size, batch_size), generator, device).argsort(dim=1)
    order = masked_score.gather(1, shuffled_columns).sort(dim=1, descending=True, stable=True).indices
    top_candidates = shuffled_columns.gather(1, order[:, :k])          # (B, k), valid ones first

    n_choices = valid.sum(dim=1).clamp(max=k)                          # valid candidates inside the top k
    pick = (_uniform((batch_size,), generator, device) * n_choices).long().clamp(max=k - 1)
    chosen = top_candidates.gather(1, pick.unsqueeze(1)).squeeze(1)
    considered = _uniform((batch_size,), generator, device) < prob

    rows = torch.arange(batch_size, device=device)
    accept = (
        considered
        & (n_choices > 0)
        & (overlap[rows, chosen] >= alpha)
        & (score[rows, chosen] >= beta)
    )
    return torch.where(accept, chosen, partners)


# ----------------------------------------------------------------------------------------- step 5
def resize_masks(masks, grid):
    """Nearest-neighbour resize of binary masks (B, Hp, Wp) -> bool (B, H, W), grid = (H, W) (SPEC §4.5)."""
    _check_masks(masks, "resize_masks")
    size = (int(grid[0]), int(grid[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks != 0
    resized = F.interpolate((masks != 0).unsqueeze(1).float(), size=size, mode="nearest")
    return resized.squeeze(1) > 0.5


KEEP_CHOICES = ("partner", "union")


def synthesize_tokens(tokens, partners, partner_masks, keep="partner"):
    """Eq. 7 on patch tokens: x̃_i = x_i ⊙ M_j + x_j ⊙ (1 − M_j) for j = partners[i]; rows with −1 unchanged.

    keep="union" [ours] keeps the anchor inside M_i ∨ M_j instead of M_j alone: the partner then supplies only the
    patches that neither image's identity set covers (its background and what occludes it there), never a patch
    of the anchor's own identity set.

    tokens: (B, N, D) patch embeddings (before class token / position embedding).
    partners: (B,) long from ``select_partners``.
    partner_masks: the batch's own binary masks on the token grid, (B, Hp, Wp) or (B, N) with Hp·Wp = N
        (``resize_masks`` first if the SPS grid differs); row j is sample j's mask, gathered here for every
        anchor whose partner is j.
    Every x_j is read from the input ``tokens`` (never from an already synthesised row), so there are no chains.
    Out of place and differentiable w.r.t. ``tokens``.
    """
    if tokens.dim() != 3:
        raise ValueError(
            f"{_FILE} synthesize_tokens: tokens must be (B, N, D), got {tuple(tokens.shape)}"
        )
    batch_size, num_tokens, _ = tokens.shape
    partners = partners.to(tokens.device)
    _check_partners(partners, batch_size, "synthesize_tokens")
    flat_masks = partner_masks.reshape(partner_masks.shape[0], -1)
    if tuple(flat_masks.shape) != (batch_size, num_tokens):
        raise ValueError(
            f"{_FILE} synthesize_tokens: partner_masks must hold {num_tokens} cells for each of "
            f"the {batch_size} samples (resize_masks to the token grid first), got {tuple(partner_masks.shape)}"
        )
    if keep not in KEEP_CHOICES:
        raise ValueError(f"{_FILE} synthesize_tokens: keep must be one of {KEEP_CHOICES} (SPT.KEEP), got {keep!r}")
    has_partner = partners >= 0
    # Rows without a partner read from themselves with an all-ones mask, so one select covers the batch;
    # a select (not x·M + x_j·(1−M)) is exact for binary masks and never mixes inf/NaN from the other source.
    source = torch.where(has_partner, partners, torch.arange(batch_size, device=tokens.device))
    flat_masks = flat_masks.to(tokens.device) != 0
    keep_own = flat_masks[source] | ~has_partner.unsqueeze(1)   # M_j on i's grid, (B, N)
    if keep == "union":
        keep_own = keep_own | flat_masks
    return torch.where(keep_own.unsqueeze(-1), tokens, tokens[source])


class PatchTransfer:
    """Eq. 7 for one batch as the backbone's ``patch_transform`` (applied to the patch tokens right after the patch
    embedding): ``PatchTransfer(partners, partner_masks, keep)(tokens) = synthesize_tokens(tokens, partners,
    partner_masks, keep)``."""

    def __init__(self, partners, partner_masks, keep="partner"):
        self.partners, self.partner_masks, self.keep = partners, partner_masks, keep

    def __call__(self, tokens):
        return synthesize_tokens(tokens, partners=self.partners, partner_masks=self.partner_masks, keep=self.keep)


# ----------------------------------------------------------------------------------------- step 6
def ignored_partner_classes(partners, labels):
    """Class index to drop from sample i's softmax (logit → −∞): labels[partners[i]], or −1 when none.

    −1 also when the partner shares i's identity (select_partners never does that; ignoring one's own class
    would be harmful).
    """
    _check_partners(partners, labels.numel(), "ignored_partner_classes")
    partner_labels = labels[partners.clamp(min=0)]
    keep = (partners >= 0) & (partner_labels != labels)
    return torch.where(keep, partner_labels, torch.full_like(partner_labels, NO_PARTNER))


def excluded_negative_pairs(partners, labels):
    """(B, B) bool: [i, k] True when k has the identity of i's partner, so k is not a triplet negative of i."""
    ignored = ignored_partner_classes(partners, labels)
    return (ignored.unsqueeze(1) >= 0) & (labels.unsqueeze(0) == ignored.unsqueeze(1))


# ----------------------------------------------------------------------------------------- logging
def synthesis_statistics(partners, masks, keep="partner"):
    """Per-iteration SPT statistics (floats; the mean ratios are 0.0 when nothing was synthesised), for the
    ``keep`` rule of :func:`synthesize_tokens`:

    spt_fraction             fraction of the batch synthesised;
    spt_mean_oiou            mean unrolled OIoU(M_i, M_j) of the accepted pairs;
    spt_covered_fraction     mean fraction of the anchor's salient patches replaced by the partner
                             (|M_i ∧ ¬M_j| / |M_i|; 0 with keep="union"), i.e. how much of the person gets occluded;
    spt_transferred_fraction mean fraction of all patches taken from the partner (1 − |M_j| / N; with
                             keep="union" 1 − |M_i ∨ M_j| / N).
    """
    _check_masks(masks, "synthesis_statistics")
    batch_size = masks.shape[0]
    partners = partners.to(masks.device)
    _check_partners(partners, batch_size, "synthesis_statistics")
    accepted = partners >= 0
    stats = {"spt_fraction": accepted.float().mean().item() if batch_size else 0.0}
    if not bool(accepted.any()):
        stats.update(spt_mean_oiou=0.0, spt_covered_fraction=0.0, spt_transferred_fraction=0.0)
        return stats
    anchors = _flat_float(masks)[accepted]
    sources = _flat_float(masks)[partners[accepted]]
    anchor_area = anchors.sum(dim=1)
    source_area = sources.sum(dim=1)
    intersection = (anchors * sources).sum(dim=1)
    kept_area = source_area if keep == "partner" else anchor_area + source_area - intersection
    oiou = torch.where(source_area > 0, intersection / source_area.clamp(min=1), torch.zeros_like(source_area))
    covered = torch.where(
        anchor_area > 0, (anchor_area - intersection) / anchor_area.clamp(min=1), torch.zeros_like(anchor_area)
    ) if keep == "partner" else torch.zeros_like(anchor_area)
    stats.update(
        spt_mean_oiou=oiou.mean().item(),
        spt_covered_fraction=covered.mean().item(),
        spt_transferred_fraction=(1 - kept_area / anchors.shape[1]).mean().item(),
    )
    return stats
